// Dropout (ops/dropout_mask.h) on the CPU reference: the mask's statistics, its regeneration
// from the seed (also for a row slice), dropout_add, attention-probability dropout against
// central finite differences, and the config's dropout fields.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "fixtures.h"
#include "model/config.h"
#include "model/encoder.h"
#include "ops/cpu/cpu_backend.h"

namespace et::test {
namespace {

// The fraction of dropped elements is p (binomial: 6 standard deviations over 10^6 elements),
// kept ones are scaled by exactly 1 / (1 - p), neighbours along a row and down a column are
// independent (both dropped with probability p^2), another seed gives another mask, and the
// mask of a row slice (first_row) is that of the full tensor's rows.
TEST(Dropout, MaskStatisticsScaleAndRegeneration) {
  auto be = make_cpu_backend();
  Rng rng(3);
  const int64_t R = 1000, C = 1000, n = R * C;
  Tensor x =
      uniform_tensor(rng, {R, C}, 0.5f, 1.5f);  // all positive: a zero output is a dropped element
  for (float p : {0.1f, 0.5f}) {
    SCOPED_TRACE(p);
    Tensor y = cpu_empty({R, C}), y2 = cpu_empty({R, C});
    be->dropout(x, {p, 1234}, 0, y);
    be->dropout(x, {p, 1234}, 0, y2);
    int64_t dropped = 0, both_row = 0, both_col = 0, bad_scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float v = y.f32()[i];
      if (v == 0) {
        ++dropped;
        if (i % C + 1 < C && y.f32()[i + 1] == 0) ++both_row;
        if (i + C < n && y.f32()[i + C] == 0) ++both_col;
      } else if (v != x.f32()[i] * (1.0f / (1.0f - p))) {
        ++bad_scale;
      }
    }
    const double sd = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(static_cast<double>(dropped) / n, p, 6 * sd);
    EXPECT_NEAR(static_cast<double>(both_row) / (R * (C - 1)), p * p, 6 * std::sqrt(p * p / n));
    EXPECT_NEAR(static_cast<double>(both_col) / ((R - 1) * C), p * p, 6 * std::sqrt(p * p / n));
    EXPECT_EQ(bad_scale, 0);
    EXPECT_EQ(rel_error(y2, y), 0.0);  // the same seed, the same mask
    // another seed: the masks agree where both keep or both drop, (1-p)^2 + p^2 of the time
    Tensor z = cpu_empty({R, C});
    be->dropout(x, {p, 1235}, 0, z);
    int64_t same = 0;
    for (int64_t i = 0; i < n; ++i) same += (z.f32()[i] == 0) == (y.f32()[i] == 0);
    const double agree = (1 - p) * (1 - p) + p * p;
    EXPECT_NEAR(static_cast<double>(same) / n, agree, 6 * std::sqrt(agree * (1 - agree) / n));
    // rows [300, 700) alone, told where they start, take the full tensor's mask
    Tensor part = cpu_empty({400, C});
    be->dropout(x.rows(300, 700), {p, 1234}, 300, part);
    EXPECT_EQ(rel_error(part.f32(), y.f32() + 300 * C, 400 * C), 0.0);
    // dropout_add: y += dropout(x), in place into a residual
    Tensor res = uniform_tensor(rng, {R, C}, -1, 1), expect = cpu_empty({R, C});
    be->add(res, y, expect);
    be->dropout_add(x, {p, 1234}, 0, res);
    EXPECT_EQ(rel_error(res, expect), 0.0);
  }
  // p = 0 is the identity; p outside [0, 1) is refused
  Tensor y = cpu_empty({R, C});
  be->dropout(x, {0.0f, 9}, 0, y);
  EXPECT_EQ(rel_error(y, x), 0.0);
  EXPECT_THROW(be->dropout(x, {1.0f, 9}, 0, y), Error);
}

// Attention with dropout on its probabilities is a fixed differentiable function for a fixed
// seed: its backward must match central differences of L = sum(out * W) in q, k and v (fp32,
// step 1e-2 relative to the inputs' unit scale; tolerance 2e-3 relative to the largest
// gradient), for plain, causal and relative-bias attention with grouped heads. Dropout must
// change the output, and regenerating the mask in backward must not depend on the call.
TEST(Dropout, AttentionGradientsMatchFiniteDifferences) {
  auto be = make_cpu_backend();
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant);
    Rng rng(11 + variant);
    AttentionArgs a;
    a.cu_seqlens = {0, 5, 12};
    a.n_heads = 2;
    a.n_kv_heads = variant == 1 ? 1 : 2;
    a.head_dim = 4;
    a.scale = 0.5f;
    a.causal = variant == 1;
    Tensor table = uniform_tensor(rng, {8, 2}, -1, 1);
    if (variant == 2) {
      a.rel_bias = &table;
      a.rel_buckets = 8;
    }
    a.dropout = {0.3f, 77 + static_cast<uint64_t>(variant)};
    const int64_t T = 12, qc = a.n_heads * a.head_dim, kc = a.n_kv_heads * a.head_dim;
    Tensor q = uniform_tensor(rng, {T, qc}, -1, 1), k = uniform_tensor(rng, {T, kc}, -1, 1),
           v = uniform_tensor(rng, {T, kc}, -1, 1), w = uniform_tensor(rng, {T, qc}, -1, 1);
    auto loss = [&](const AttentionArgs& args) {
      Tensor out = cpu_empty({T, qc}), lse = cpu_empty({T, a.n_heads});
      be->attention_forward(args, q, k, v, out, lse);
      double s = 0;
      for (int64_t i = 0; i < out.numel(); ++i) s += static_cast<double>(out.f32()[i]) * w.f32()[i];
      return s;
    };
    AttentionArgs plain = a;
    plain.dropout = {};
    EXPECT_GT(std::abs(loss(a) - loss(plain)), 1e-3);
    Tensor out = cpu_empty({T, qc}), lse = cpu_empty({T, a.n_heads});
    be->attention_forward(a, q, k, v, out, lse);
    Tensor dq = cpu_empty(q.shape), dk = cpu_empty(k.shape), dv = cpu_empty(v.shape);
    be->attention_backward(a, q, k, v, out, lse, w, dq, dk, dv, nullptr);
    for (auto [x, g] : {std::pair{&q, &dq}, std::pair{&k, &dk}, std::pair{&v, &dv}}) {
      float gmax = 0;
      for (int64_t i = 0; i < g->numel(); ++i) gmax = std::max(gmax, std::abs(g->f32()[i]));
      ASSERT_GT(gmax, 0);
      for (int64_t i = 0; i < x->numel(); ++i) {
        const float keep = x->f32()[i], h = 1e-2f;
        x->f32()[i] = keep + h;
        const double up = loss(a);
        x->f32()[i] = keep - h;
        const double down = loss(a);
        x->f32()[i] = keep;
        EXPECT_NEAR((up - down) / (2 * h), g->f32()[i], 2e-3 * gmax) << "element " << i;
      }
    }
  }
}

// The dropout probabilities of config.json: BERT's hidden/attention_probs_dropout_prob (0.1
// when absent, transformers' default), DistilBERT's dropout/attention_dropout, values outside
// [0, 1) refused naming the field; the rotary families' non-zero dropout is named, and model
// dropout for them is refused (an error naming the fields, not a silent no-op).
TEST(Dropout, ConfigFieldsAndUnsupportedFamilies) {
  json bert = {{"model_type", "bert"},          {"hidden_size", 8},
               {"num_hidden_layers", 1},        {"num_attention_heads", 2},
               {"intermediate_size", 16},       {"vocab_size", 10},
               {"max_position_embeddings", 16}, {"hidden_dropout_prob", 0.2}};
  ModelConfig c = parse_model_config(bert, "config.json");
  EXPECT_FLOAT_EQ(c.hidden_dropout, 0.2f);
  EXPECT_FLOAT_EQ(c.attention_dropout, 0.1f);
  bert["attention_probs_dropout_prob"] = 1.5;
  try {
    parse_model_config(bert, "config.json");
    ADD_FAILURE() << "dropout 1.5 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_probs_dropout_prob"), std::string::npos);
  }
  json distil = {{"model_type", "distilbert"},
                 {"dim", 8},
                 {"n_layers", 1},
                 {"n_heads", 2},
                 {"hidden_dim", 16},
                 {"vocab_size", 10},
                 {"max_position_embeddings", 16},
                 {"dropout", 0.0},
                 {"attention_dropout", 0.3}};
  c = parse_model_config(distil, "config.json");
  EXPECT_FLOAT_EQ(c.hidden_dropout, 0.0f);
  EXPECT_FLOAT_EQ(c.attention_dropout, 0.3f);
  json modern = {{"model_type", "modernbert"},    {"hidden_size", 8},
                 {"num_hidden_layers", 1},        {"num_attention_heads", 2},
                 {"intermediate_size", 16},       {"vocab_size", 10},
                 {"max_position_embeddings", 16}, {"attention_dropout", 0.0}};
  Encoder e;
  e.rotary = true;
  e.rotary_enc.cfg = parse_model_config(modern, "config.json");
  EXPECT_TRUE(e.rotary_enc.cfg.unsupported_dropout.empty());
  set_model_dropout(e, true);  // nothing to apply: allowed
  modern["mlp_dropout"] = 0.1;
  e.rotary_enc.cfg = parse_model_config(modern, "config.json");
  try {
    set_model_dropout(e, true);
    ADD_FAILURE() << "model dropout of modernbert accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("mlp_dropout"), std::string::npos) << err.what();
  }
  set_model_dropout(e, false);
}

}  // namespace
}  // namespace et::test
