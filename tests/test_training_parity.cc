// Training numerics against the fixtures: MNRL loss and gradients of every parameter (full
// fine-tuning), LoRA embeddings/loss/gradients, three AdamW steps, and merged weights.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"
#include "fixtures.h"
#include "io/safetensors.h"
#include "model/encoder.h"
#include "model/linear.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"
#include "train/lora.h"
#include "train/step.h"

namespace et::test {
namespace {

// linear_forward_add sums a LoRA Linear's output into a residual (LoRA branch first, then the
// base product with its bias), equal to linear_forward plus the residual; residual_buffer sums
// in place only into a tensor no one else holds; an input's own buffer is refused.
TEST(Linear, ForwardAddSumsIntoTheResidualAndSparesSharedInputs) {
  auto be = make_cpu_backend();
  Rng rng(7);
  auto rand = [&](const Shape& s) { return uniform_tensor(rng, s); };
  ParamStore store;
  Linear l;
  l.in = 3;
  l.out = 5;
  l.weight = store.add("w", rand({5, 3}));
  l.bias = store.add("b", rand({5}));
  l.lora_a = store.add("a", rand({2, 3}));
  l.lora_b = store.add("B", rand({5, 2}));
  l.lora_scaling = 0.7f;
  const Tensor x = rand({4, 3}), r = rand({4, 5});
  Tensor want = linear_forward(*be, l, x, nullptr, nullptr);
  for (int64_t i = 0; i < want.numel(); ++i) want.f32()[i] += r.f32()[i];

  Tensor shared = cpu_clone(r);
  const Tensor keep = shared;  // a second holder: the sum must not touch this buffer
  Tensor sum = residual_buffer(*be, shared, DType::F32);
  EXPECT_NE(sum.data, keep.data);
  linear_forward_add(*be, l, x, sum, nullptr, nullptr);
  EXPECT_LT(rel_error(sum, want), 1e-6);
  EXPECT_EQ(rel_error(keep, r), 0.0) << "a shared residual was overwritten";

  Tensor own = cpu_clone(r);
  const void* own_data = own.data;
  Tensor in_place = residual_buffer(*be, std::move(own), DType::F32);
  EXPECT_EQ(in_place.data, own_data) << "a sole holder's buffer should be reused";
  linear_forward_add(*be, l, x, in_place, nullptr, nullptr);
  EXPECT_LT(rel_error(in_place, want), 1e-6);

  Linear square = l;
  square.out = 3;
  square.weight = store.add("w3", rand({3, 3}));
  square.bias = nullptr;
  square.lora_a = square.lora_b = nullptr;
  Tensor x3 = rand({4, 3});
  EXPECT_THROW(linear_forward_add(*be, square, x3, x3, nullptr, nullptr), Error);
}

// A Linear whose input is act(pre), or a GLU's act(pre) * up (also from a packed [pre | up]),
// kept as those alone (with_activation_input, as the FFN output projections under LoRA): dx and
// every LoRA gradient equal those of the same backward with the input materialised; a trainable W,
// whose gradient needs the input itself, is refused with the Linear's name.
TEST(Linear, ActivationInputEqualsMaterialisedInput) {
  auto be = make_cpu_backend();
  Rng rng(13);
  auto rand = [&](const Shape& s) { return uniform_tensor(rng, s); };
  const int64_t n = 6, in = 8, out = 5, r = 3;
  ParamStore store;
  Linear l;
  l.name = "ffn_out";
  l.in = in;
  l.out = out;
  l.weight = store.add("ffn_out.weight", rand({out, in}));
  l.lora_a = store.add("ffn_out.A", rand({r, in}));
  l.lora_b = store.add("ffn_out.B", rand({out, r}));
  l.lora_scaling = 1.5f;
  const Tensor g_a0 = rand({r, in}), g_b0 = rand({out, r});
  for (Param* p : {l.lora_a, l.lora_b}) p->trainable = true;
  const Tensor pre = rand({n, in}), dy = rand({n, out});
  Tensor h = cpu_empty({n, in});
  be->act_forward(Act::GeluErf, pre, h);
  // the GLU forms too: act(pre) * up, and pre = [gate | up] packed
  Tensor up = rand({n, in}), packed = side_by_side(pre, up), h_glu = cpu_empty({n, in});
  be->glu_forward(Act::GeluErf, pre, up, h_glu);
  // form 0: act(pre); 1: act(pre) * up; 2: the same from the packed [pre | up]
  auto run = [&](int form, bool from_pre) {
    const Tensor& input = form == 0 ? h : h_glu;
    l.lora_a->grad = cpu_clone(g_a0);
    l.lora_b->grad = cpu_clone(g_b0);
    LinearSaved s;
    (void)linear_forward(*be, l, input, &s, nullptr);
    drop_saved_input(s, input);
    if (!from_pre)
      s = with_saved_input(s, input);
    else if (form == 0)
      s = with_activation_input(s, Act::GeluErf, pre);
    else if (form == 1)
      s = with_activation_input(s, Act::GeluErf, pre, up);
    else
      s = with_activation_input(s, Act::GeluErf, packed, Tensor{}, true);
    Tensor dx = cpu_empty({n, in});
    linear_backward(*be, l, s, dy, &dx, false);
    return std::vector<Tensor>{dx, cpu_clone(l.lora_a->grad), cpu_clone(l.lora_b->grad)};
  };
  for (int form = 0; form < 3; ++form) {
    SCOPED_TRACE(form);
    const std::vector<Tensor> want = run(form, false), got = run(form, true);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_LT(rel_error(got[i], want[i]), 1e-6) << i;
    EXPECT_GT(rel_error(want[1], g_a0), 1e-3) << "dA must have changed";
  }

  l.weight->trainable = true;
  l.weight->grad = cpu_empty({out, in});
  LinearSaved s;
  (void)linear_forward(*be, l, h, &s, nullptr);
  drop_saved_input(s, h);
  s = with_activation_input(s, Act::GeluErf, pre);
  Tensor dx = cpu_empty({n, in});
  try {
    linear_backward(*be, l, s, dy, &dx, false);
    ADD_FAILURE() << "a trainable weight without its input was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ffn_out.weight"), std::string::npos) << e.what();
  }
}

// A LoRA Linear's rank-r term left to the activation beside it (LoraTerm): W1 -> act forward,
// with the term added by act_forward_adding, equals the Linear's own output through act_forward
// (pre too: it must hold the summed output for the backward), and dx of a Linear whose input is
// act(pre), with the term added by act_backward_adding, equals dx through act_backward (and a
// GLU's gradients through glu_backward_adding those through glu_backward). Without
// LoRA, or with LoRA dropout in backward (its mask applies to the term), no term is handed out.
TEST(Linear, RankTermInTheActivationPassEqualsTheLinearsOwn) {
  auto be = make_cpu_backend();
  Rng rng(21);
  auto rand = [&](const Shape& s) { return uniform_tensor(rng, s); };
  const int64_t n = 7, in = 6, f = 10, r = 3;
  ParamStore store;
  auto lora_linear = [&](const std::string& name, int64_t lin, int64_t lout) {
    Linear l;
    l.name = name;
    l.in = lin;
    l.out = lout;
    l.weight = store.add(name + ".weight", rand({lout, lin}));
    l.bias = store.add(name + ".bias", rand({lout}));
    l.lora_a = store.add(name + ".A", rand({r, lin}));
    l.lora_b = store.add(name + ".B", rand({lout, r}));
    l.lora_scaling = 1.25f;
    l.lora_a->trainable = l.lora_b->trainable = true;
    l.lora_a->grad = cpu_zeros({r, lin});
    l.lora_b->grad = cpu_zeros({lout, r});
    return l;
  };
  const Linear w1 = lora_linear("w1", in, f), w2 = lora_linear("w2", f, in);
  const Tensor x = rand({n, in});

  const Tensor pre_want = linear_forward(*be, w1, x, nullptr, nullptr);
  Tensor h_want = cpu_empty({n, f});
  be->act_forward(Act::GeluErf, pre_want, h_want);
  LoraTerm term;
  Tensor pre = linear_forward(*be, w1, x, nullptr, nullptr, &term);
  ASSERT_TRUE(term.defined());
  EXPECT_GT(rel_error(pre, pre_want), 1e-3) << "the term should have been left out";
  Tensor h = cpu_empty({n, f});
  act_forward_adding(*be, Act::GeluErf, term, pre, h);
  EXPECT_LT(rel_error(pre, pre_want), 1e-6);
  EXPECT_LT(rel_error(h, h_want), 1e-6);

  const Tensor dy = rand({n, in});
  LinearSaved s;
  (void)linear_forward(*be, w2, h_want, &s, nullptr);
  Tensor dh_want = cpu_empty({n, f}), dpre_want = cpu_empty({n, f});
  linear_backward(*be, w2, s, dy, &dh_want, false);
  be->act_backward(Act::GeluErf, pre_want, dh_want, dpre_want);
  Tensor dh = cpu_empty({n, f});
  linear_backward(*be, w2, s, dy, &dh, false, &term);
  ASSERT_TRUE(term.defined());
  act_backward_adding(*be, Act::GeluErf, term, pre_want, dh, dh);
  EXPECT_LT(rel_error(dh, dpre_want), 1e-6);
  // a GLU's backward: d(gate), d(up) from dm with its term added in the pass, apart and packed
  const Tensor up = rand({n, f}), packed = side_by_side(pre_want, up);
  Tensor dm_want = cpu_empty({n, f}), dg_want = cpu_empty({n, f}), du_want = cpu_empty({n, f});
  linear_backward(*be, w2, s, dy, &dm_want, false);
  be->glu_backward(Act::GeluTanh, pre_want, up, dm_want, dg_want, du_want);
  Tensor dgu_want = cpu_empty({n, 2 * f});
  be->glu_packed_backward(Act::GeluTanh, packed, dm_want, dgu_want);
  for (bool packed_form : {false, true}) {
    SCOPED_TRACE(packed_form ? "packed" : "apart");
    Tensor dm = cpu_empty({n, f}), dg = cpu_empty({n, packed_form ? 2 * f : f}),
           du = cpu_empty({n, f});
    linear_backward(*be, w2, s, dy, &dm, false, &term);
    ASSERT_TRUE(term.defined());
    glu_backward_adding(*be, Act::GeluTanh, term, packed_form ? packed : pre_want,
                        packed_form ? nullptr : &up, dm, dg, packed_form ? nullptr : &du);
    EXPECT_LT(rel_error(dg, packed_form ? dgu_want : dg_want), 1e-6);
    if (!packed_form) {
      EXPECT_LT(rel_error(du, du_want), 1e-6);
    }
  }

  Linear plain = w1;
  plain.lora_a = plain.lora_b = nullptr;
  (void)linear_forward(*be, plain, x, nullptr, nullptr, &term);
  EXPECT_FALSE(term.defined());
  LinearSaved dropped = s;
  dropped.mask = {0.5f, 99};
  Tensor dh_dropped = cpu_empty({n, f});
  linear_backward(*be, w2, dropped, dy, &dh_dropped, false, &term);
  EXPECT_FALSE(term.defined()) << "LoRA dropout's mask applies to the term: the Linear adds it";
}

// Linears on one input with their A factors stacked in one buffer (as refresh_product_copies lays
// out the bf16 copies on the GPU; here the fp32 values themselves, so the CPU runs the grouped
// path): outputs, every gradient and the summed input gradient equal the Linears run one by one.
TEST(Linear, GroupedLoraEqualsLinearsOneByOne) {
  auto be = make_cpu_backend();
  Rng rng(11);
  auto rand = [&](const Shape& s) { return uniform_tensor(rng, s); };
  const int64_t n = 7, in = 6;
  const std::vector<int64_t> outs = {5, 6, 4}, ranks = {2, 3, 2};
  ParamStore store;
  std::vector<Linear> ls(3);
  Tensor stacked = cpu_empty({7, in});
  for (size_t i = 0, r0 = 0; i < ls.size(); r0 += ranks[i], ++i) {
    Linear& l = ls[i];
    l.name = "l" + std::to_string(i);
    l.in = in;
    l.out = outs[i];
    l.weight = store.add(l.name + ".w", rand({outs[i], in}));
    l.bias = store.add(l.name + ".b", rand({outs[i]}));
    l.lora_a = store.add(l.name + ".A", rand({ranks[i], in}));
    l.lora_b = store.add(l.name + ".B", rand({outs[i], ranks[i]}));
    l.lora_scaling = 0.5f + static_cast<float>(i);
    for (Param* p : {l.lora_a, l.lora_b}) {
      p->trainable = true;
      p->grad = rand(p->value.shape);  // gradients accumulate into what is there
    }
  }
  const LinearGroup group = {&ls[0], &ls[1], &ls[2]};
  const Tensor x = rand({n, in}), dx0 = rand({n, in});
  std::vector<Tensor> dys;
  for (int64_t o : outs) dys.push_back(rand({n, o}));
  auto grads = [&] {
    std::vector<Tensor> g;
    for (const Linear& l : ls)
      g.push_back(cpu_clone(l.lora_a->grad)), g.push_back(cpu_clone(l.lora_b->grad));
    return g;
  };
  const std::vector<Tensor> g0 = grads();
  auto run = [&](std::vector<Tensor>& ys, Tensor& dx) {
    for (size_t i = 0; i < ls.size(); ++i) {
      ls[i].lora_a->grad = cpu_clone(g0[2 * i]);
      ls[i].lora_b->grad = cpu_clone(g0[2 * i + 1]);
    }
    std::vector<LinearSaved> saved(3);
    ys = linear_group_forward(*be, group, x, {&saved[0], &saved[1], &saved[2]}, nullptr);
    dx = cpu_clone(dx0);
    linear_group_backward(*be, group, saved, dys, &dx, true);
    return saved[0].xa_t.defined();
  };
  std::vector<Tensor> y_one, y_grouped;
  Tensor dx_one, dx_grouped;
  EXPECT_FALSE(run(y_one, dx_one)) << "without stacked copies each Linear runs alone";
  const std::vector<Tensor> g_one = grads();
  for (size_t i = 0, r0 = 0; i < ls.size(); r0 += ranks[i], ++i) {
    Tensor rows = stacked.rows(static_cast<int64_t>(r0), static_cast<int64_t>(r0) + ranks[i]);
    std::copy_n(ls[i].lora_a->value.f32(), rows.numel(), rows.f32());
    ls[i].lora_a->value_bf16 = rows;
  }
  EXPECT_TRUE(run(y_grouped, dx_grouped)) << "stacked copies should take the grouped path";
  const std::vector<Tensor> g_grouped = grads();
  for (size_t i = 0; i < ls.size(); ++i) {
    EXPECT_LT(rel_error(y_grouped[i], y_one[i]), 1e-6) << "output " << i;
    EXPECT_LT(rel_error(g_grouped[2 * i], g_one[2 * i]), 1e-6) << "dA " << i;
    EXPECT_LT(rel_error(g_grouped[2 * i + 1], g_one[2 * i + 1]), 1e-6) << "dB " << i;
    EXPECT_GT(rel_error(g_one[2 * i], g0[2 * i]), 1e-3) << "dA " << i << " did not move";
  }
  EXPECT_LT(rel_error(dx_grouped, dx_one), 1e-6) << "summed input gradient";
  EXPECT_GT(rel_error(dx_one, dx0), 1e-3) << "dx was not accumulated";
}

// A frozen LoRA Linear whose input is a norm's output x = xhat (w + offset): handed xhat and the
// norm's scale (with_normalized_input) instead of x, its backward gives the same dA, dB and dx,
// alone and in a group (the grouped path scales the stacked dA once); with W trainable it
// refuses, since dW needs x itself.
TEST(Linear, NormalizedInputGivesTheNormOutputsGradients) {
  auto be = make_cpu_backend();
  Rng rng(5);
  auto rand = [&](const Shape& s) { return uniform_tensor(rng, s); };
  const int64_t n = 9, in = 8, r = 2;
  const float offset = 1.0f;
  ParamStore store;
  std::vector<Linear> ls(2);
  Tensor stacked = cpu_empty({2 * r, in});
  for (size_t i = 0; i < ls.size(); ++i) {
    Linear& l = ls[i];
    l.name = "l" + std::to_string(i);
    l.in = in;
    l.out = 5 + static_cast<int64_t>(i);
    l.weight = store.add(l.name + ".w", rand({l.out, in}));
    l.lora_a = store.add(l.name + ".A", rand({r, in}));
    l.lora_b = store.add(l.name + ".B", rand({l.out, r}));
    l.lora_scaling = 2.0f;
    for (Param* p : {l.lora_a, l.lora_b}) p->trainable = true;
  }
  const Tensor xhat = rand({n, in}), w = rand({in});
  Tensor x = cpu_empty({n, in});
  be->norm_scale_shift(xhat, w, offset, nullptr, x);
  std::vector<Tensor> dys = {rand({n, 5}), rand({n, 6})};
  // dA, dB of each Linear and dx, from x itself or from xhat
  auto run = [&](bool grouped, bool normalized) {
    std::vector<LinearSaved> saved(2);
    if (grouped)
      (void)linear_group_forward(*be, {&ls[0], &ls[1]}, x, {&saved[0], &saved[1]}, nullptr);
    else
      for (size_t i = 0; i < ls.size(); ++i)
        (void)linear_forward(*be, ls[i], x, &saved[i], nullptr);
    for (size_t i = 0; i < ls.size(); ++i) {
      drop_saved_input(saved[i], x);  // as the model does with a recomputable input
      saved[i] = normalized ? with_normalized_input(saved[i], xhat, w, offset)
                            : with_saved_input(saved[i], x);
      for (Param* p : {ls[i].lora_a, ls[i].lora_b}) p->grad = cpu_zeros(p->value.shape);
    }
    Tensor dx = cpu_zeros({n, in});
    if (grouped) {
      EXPECT_TRUE(saved[0].xa_t.defined()) << "the grouped path was not taken";
      linear_group_backward(*be, {&ls[0], &ls[1]}, saved, dys, &dx, false);
    } else {
      for (size_t i = 0; i < ls.size(); ++i)
        linear_backward(*be, ls[i], saved[i], dys[i], &dx, i > 0);
    }
    std::vector<Tensor> out = {dx};
    for (const Linear& l : ls)
      out.push_back(cpu_clone(l.lora_a->grad)), out.push_back(cpu_clone(l.lora_b->grad));
    return out;
  };
  for (bool grouped : {false, true}) {
    SCOPED_TRACE(grouped ? "grouped" : "one by one");
    if (grouped)
      for (size_t i = 0; i < ls.size(); ++i) {
        Tensor rows = stacked.rows(static_cast<int64_t>(i) * r, static_cast<int64_t>(i + 1) * r);
        std::copy_n(ls[i].lora_a->value.f32(), rows.numel(), rows.f32());
        ls[i].lora_a->value_bf16 = rows;
      }
    const std::vector<Tensor> want = run(grouped, false), got = run(grouped, true);
    EXPECT_LT(rel_error(got[0], want[0]), 1e-6) << "dx";
    for (size_t i = 1; i < want.size(); ++i) {
      EXPECT_LT(rel_error(got[i], want[i]), 1e-5) << (i % 2 ? "dA " : "dB ") << (i - 1) / 2;
      EXPECT_GT(rel_error(want[i], cpu_zeros(want[i].shape)), 1e-3) << "no gradient " << i;
    }
  }
  ls[0].weight->trainable = true;
  ls[0].weight->grad = cpu_zeros(ls[0].weight->value.shape);
  LinearSaved s;
  (void)linear_forward(*be, ls[0], x, &s, nullptr);
  drop_saved_input(s, x);
  Tensor dx = cpu_zeros({n, in});
  EXPECT_THROW(
      linear_backward(*be, ls[0], with_normalized_input(s, xhat, w, offset), dys[0], &dx, false),
      Error);
}

// "0.model.encoder.layer.0.attention.self.query.lora_A.default.weight" ->
// "encoder.layer.0.attention.self.query.lora_A.weight" (our store's names).
std::string store_name(std::string n) {
  if (n.rfind("0.model.", 0) == 0) n = n.substr(8);
  auto pos = n.find(".default.");
  if (pos != std::string::npos) n.erase(pos, 8);
  return n;
}

// The parameter a sentence-transformers name refers to: "0.model.<hf name>" in the
// Transformer's store, "<i>.linear.weight" in the Dense module of modules.json entry i.
Param* find_param(SentenceModel& m, const std::string& st_name) {
  size_t dot = st_name.find('.');
  int module = std::stoi(st_name.substr(0, dot));
  if (module == 0) return m.params.find(store_name(st_name));
  const std::string& path = m.modules.at(static_cast<size_t>(module)).path;
  for (DenseModule& d : m.dense)
    if (d.path == path) return d.params.find(st_name.substr(dot + 1));
  return nullptr;
}

class Training : public ::testing::TestWithParam<std::string> {};

TEST_P(Training, FullFineTuningGradients) {
  std::string root = model_fixture(GetParam());
  SKIP_WITHOUT_FIXTURES(root);
  for (const char* layout : {"model", "model_saved_by_reference"}) {
    SCOPED_TRACE(layout);
    auto be = make_cpu_backend();
    auto m = load_sentence_model(root + "/" + layout, *be);
    auto params = set_trainable(*be, *m, TrainMode::Full);
    double loss = train_step_grads(*be, *m, fixture_columns(root), LossSpec{}, 1.0, nullptr)();
    TensorFile exp = read_safetensors(root + "/expected.safetensors");
    EXPECT_NEAR(loss, exp.at("full.loss").f32()[0], 1e-5 * std::abs(exp.at("full.loss").f32()[0]));
    int checked = 0;
    for (const auto& [key, t] : exp.tensors) {
      if (key.rfind("full.grad.", 0) != 0) continue;
      Param* p = find_param(*m, key.substr(10));
      ASSERT_NE(p, nullptr) << key;
      ASSERT_TRUE(p->trainable) << key;
      // Some gradients are exactly zero in exact arithmetic (the key bias: softmax ignores a
      // constant shift of a row's scores), so a relative error alone is meaningless for them.
      Tensor ref = to_f32(t);
      double ref_norm = std::sqrt(be->sum_squares(ref));
      EXPECT_LT(rel_error(p->grad, ref) * ref_norm, 1e-4 * ref_norm + 1e-6) << key;
      ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(params.size()));
  }
}

TEST_P(Training, LoraEmbeddingsLossAndGradients) {
  std::string root = model_fixture(GetParam());
  SKIP_WITHOUT_FIXTURES(root);
  TensorFile exp = read_safetensors(root + "/expected.safetensors");
  for (const char* adapter : {"adapter", "adapter_saved_by_reference"}) {
    auto be = make_cpu_backend();
    auto m = load_sentence_model(root + "/model", *be);
    load_adapter(*be, *m, root + "/" + adapter);
    auto cols = fixture_columns(root);
    const char* names[] = {"anchor", "positive", "negative"};
    for (int c = 0; c < 3; ++c) {
      Tensor e = embed_forward(*be, *m, cols[c], nullptr, nullptr);
      EXPECT_LT(rel_error(e, to_f32(exp.at(std::string("lora.emb.") + names[c]))), 2e-5)
          << adapter << " " << names[c];
    }
    set_trainable(*be, *m, TrainMode::Lora);
    double loss = train_step_grads(*be, *m, cols, LossSpec{}, 1.0, nullptr)();
    float ref = exp.at("lora.loss").f32()[0];
    EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref)) << adapter;
    json meta = read_json_file(root + "/meta.json");
    int checked = 0;
    for (const auto& name : meta["lora_param_names"]) {
      std::string key = "lora.grad." + name.get<std::string>();
      Param* p = m->params.find(store_name(name.get<std::string>()));
      ASSERT_NE(p, nullptr) << key;
      Tensor ref_g = to_f32(exp.at(key));
      if (!p->trainable) {  // not on the embedding path: the reference gives it no gradient
        EXPECT_EQ(rel_error(ref_g, ref_g), 0.0);
        bool unused = false;
        for (const auto& u : meta["lora_unused_param_names"]) unused |= u == name;
        EXPECT_TRUE(unused) << key;
        continue;
      }
      EXPECT_LT(rel_error(p->grad, ref_g), 1e-4) << adapter << " " << key;
      ++checked;
    }
    EXPECT_GT(checked, 0);
  }
}

TEST_P(Training, LoraAdamWThreeSteps) {
  std::string root = model_fixture(GetParam());
  SKIP_WITHOUT_FIXTURES(root);
  TensorFile exp = read_safetensors(root + "/expected.safetensors");
  json meta = read_json_file(root + "/meta.json");
  const json& opt = meta["adamw"];
  auto be = make_cpu_backend();
  auto m = load_sentence_model(root + "/model", *be);
  load_adapter(*be, *m, root + "/adapter");
  auto params = set_trainable(*be, *m, TrainMode::Lora);
  std::vector<Tensor> mom, vel;
  for (Param* p : params) {
    mom.push_back(be->zeros(p->value.shape));
    vel.push_back(be->zeros(p->value.shape));
  }
  auto cols = fixture_columns(root);
  const float* ref_losses = exp.at("lora.adamw.losses").f32();
  for (int step = 1; step <= opt["steps"].get<int>(); ++step) {
    zero_grads(*be, params);
    double loss = train_step_grads(*be, *m, cols, LossSpec{}, 1.0, nullptr)();
    // Step 1 is the forward alone; AdamW's first steps divide each gradient by its own
    // magnitude, so later losses carry the BLAS's summation order amplified (gemma3 step 3:
    // 2.6e-5 with two OpenBLAS threads on an AMD EPYC, exact with one).
    const double tol = step == 1 ? 2e-5 : 1e-4;
    EXPECT_NEAR(loss, ref_losses[step - 1], tol * std::abs(ref_losses[step - 1])) << step;
    for (size_t i = 0; i < params.size(); ++i)
      be->adamw_step(params[i]->value, params[i]->grad, mom[i], vel[i], opt["lr"], opt["betas"][0],
                     opt["betas"][1], opt["eps"], opt["weight_decay"], step);
  }
  for (const auto& name : meta["lora_param_names"]) {
    Param* p = m->params.find(store_name(name.get<std::string>()));
    ASSERT_NE(p, nullptr);
    EXPECT_LT(rel_error(p->value, to_f32(exp.at("lora.adamw.step3." + name.get<std::string>()))),
              1e-4)
        << name;
  }
  // Merged weights: W + s B A with the trained adapter, as merge_and_unload gives. Fixture
  // trees whose reference could not merge store the wrapped base weights under
  // "<module>.base_layer.*"; for those the expectation W + s B A is formed here, in double,
  // from the fixture's own base weights and step-3 adapters.
  merge_lora(*be, *m);
  const double s = meta["lora"]["lora_alpha"].get<double>() / meta["lora"]["r"].get<double>();
  int checked = 0;
  for (const auto& [key, t] : exp.tensors) {
    if (key.rfind("merged.", 0) != 0) continue;
    std::string name = key.substr(7);
    Tensor want = to_f32(t);
    size_t bl = name.find(".base_layer.");
    if (bl != std::string::npos) {
      std::string module = name.substr(0, bl);
      name.erase(bl, 11);
      if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0) {
        std::string pre = "lora.adamw.step3.0.model." + module;
        Tensor a = to_f32(exp.at(pre + ".lora_A.default.weight"));
        Tensor b = to_f32(exp.at(pre + ".lora_B.default.weight"));
        const int64_t out = b.dim(0), r = b.dim(1), in = a.dim(1);
        for (int64_t i = 0; i < out; ++i)
          for (int64_t j = 0; j < in; ++j) {
            double acc = 0;
            for (int64_t k = 0; k < r; ++k)
              acc += static_cast<double>(b.f32()[i * r + k]) * a.f32()[k * in + j];
            want.f32()[i * in + j] = static_cast<float>(want.f32()[i * in + j] + s * acc);
          }
      }
    }
    Param* p = m->params.find(name);
    ASSERT_NE(p, nullptr) << key;
    // The merged weights inherit the trained adapters' error (checked above at 1e-4).
    EXPECT_LT(rel_error(p->value, want), 1e-4) << key;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(m->params.params.size()));
}

// Gradient checkpointing recomputes each layer in backward: the same gradients, also with
// LoRA dropout and the model's own dropout (whose masks must be replayed) and in full
// fine-tuning.
TEST_P(Training, GradientCheckpointingGivesTheSameGradients) {
  std::string root = model_fixture(GetParam());
  SKIP_WITHOUT_FIXTURES(root);
  auto cols = fixture_columns(root);
  for (TrainMode mode : {TrainMode::Lora, TrainMode::Full}) {
    std::vector<Tensor> grads[2];
    for (int ckpt = 0; ckpt < 2; ++ckpt) {
      auto be = make_cpu_backend();
      auto m = load_sentence_model(root + "/model", *be);
      set_gradient_checkpointing(m->encoder, ckpt == 1);
      set_model_dropout(m->encoder, true);
      if (mode == TrainMode::Lora) {
        LoraConfig c;
        c.r = 4;
        c.alpha = 8;
        c.dropout = 0.2f;
        c.target_modules = default_lora_targets(m->cfg.family);
        apply_lora(*be, *m, c, 5);
        for (Linear* l : encoder_linears(m->encoder))
          if (l->lora_b) be->fill(l->lora_b->value, 0.01f);  // non-zero B: A gets gradients too
      }
      auto params = set_trainable(*be, *m, mode);
      Rng rng(99);
      train_step_grads(*be, *m, cols, LossSpec{}, 1.0, &rng);
      for (Param* p : params) grads[ckpt].push_back(cpu_clone(p->grad));
    }
    ASSERT_EQ(grads[0].size(), grads[1].size());
    for (size_t i = 0; i < grads[0].size(); ++i)
      EXPECT_EQ(rel_error(grads[1][i], grads[0][i]), 0.0) << i;
  }
}

// The model's own dropout in training (the BERT family: embeddings, attention probabilities,
// attention and FFN outputs), with full fine-tuning, with LoRA under LoRA dropout on every
// projection (the FFN's backward runs in row halves, each regenerating its rows of the masks)
// and with GradCache (mini-batches of 2 texts: the second pass must replay the first pass's
// masks, or its gradient is not that of the loss the first pass computed):
// for a fixed RNG the loss is a fixed differentiable function of the weights, so every
// parameter's gradient must match the central difference of the loss along that gradient,
// (L(w + h u) - L(w - h u)) / 2h = |g| for u = g / |g| (h = 3e-3; tolerance 2%, from fp32
// losses and third-order terms, plus 2e-4 of the largest gradient's norm: the fp32 loss's
// rounding, about 1e-7 of it, is a large part of the slope of the smallest LoRA gradients). Dropout
// must change the loss.
TEST_P(Training, ModelDropoutGradientsMatchFiniteDifferences) {
  for (int variant = 0; variant < 3; ++variant) {
    const TrainMode mode = variant == 1 ? TrainMode::Lora : TrainMode::Full;
    LossSpec spec;
    spec.mini_batch_size = variant == 2 ? 2 : 0;
    SCOPED_TRACE(variant == 0 ? "full" : variant == 1 ? "lora" : "full, GradCache");
    std::string root = model_fixture(GetParam());
    SKIP_WITHOUT_FIXTURES(root);
    auto cols = fixture_columns(root);
    auto be = make_cpu_backend();
    auto m = load_sentence_model(root + "/model", *be);
    if (is_rotary_family(m->cfg.family)) GTEST_SKIP() << "no model dropout in the rotary families";
    m->cfg.hidden_dropout = m->encoder.bert.cfg.hidden_dropout = 0.2f;
    m->cfg.attention_dropout = m->encoder.bert.cfg.attention_dropout = 0.2f;
    if (mode == TrainMode::Lora) {
      LoraConfig c;
      c.r = 4;
      c.alpha = 8;
      c.dropout = 0.2f;
      c.target_modules = {
          "query", "key",   "value", "dense",   "q",    "k",    "v",      "o",
          "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2", "attn.o", "intermediate.dense"};
      apply_lora(*be, *m, c, 5);
      for (Linear* l : encoder_linears(m->encoder))
        if (l->lora_b) be->fill(l->lora_b->value, 0.1f);  // the LoRA branch's share of dx shows
    }
    auto params = set_trainable(*be, *m, mode);
    const double plain = train_step_grads(*be, *m, cols, spec, 1.0, nullptr)();
    set_model_dropout(m->encoder, true);
    auto loss_at = [&] {
      Rng rng(5);  // the same masks on every evaluation
      return train_step_grads(*be, *m, cols, spec, 1.0, &rng)();
    };
    for (Param* p : params) be->fill(p->grad, 0.0f);
    const double dropped = loss_at();
    EXPECT_GT(std::abs(dropped - plain), 1e-3 * std::abs(plain));
    std::vector<Tensor> grads;
    for (Param* p : params) grads.push_back(cpu_clone(p->grad));
    int checked = 0;
    double max_norm = 0;
    for (const Tensor& g : grads) max_norm = std::max(max_norm, std::sqrt(be->sum_squares(g)));
    for (size_t i = 0; i < params.size(); ++i) {
      const double norm = std::sqrt(be->sum_squares(grads[i]));
      if (norm < 1e-4) continue;  // (the key bias: zero in exact arithmetic)
      Tensor& w = params[i]->value;
      Tensor w0 = cpu_clone(w);
      const float h = 3e-3f;
      auto shifted = [&](float sign) {
        for (int64_t j = 0; j < w.numel(); ++j)
          w.f32()[j] = w0.f32()[j] + sign * h * grads[i].f32()[j] / static_cast<float>(norm);
        return loss_at();
      };
      const double slope = (shifted(1) - shifted(-1)) / (2 * h);
      be->copy(w, w0);
      EXPECT_NEAR(slope, norm, 2e-2 * norm + 2e-4 * max_norm) << params[i]->name;
      ++checked;
    }
    EXPECT_GT(checked, static_cast<int>(params.size()) / 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Training, ::testing::ValuesIn(model_archs()),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace et::test
