// Model folder loading: both sentence-transformers layouts, plain transformers folders, and
// errors that name the file and field for broken folders.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "fixtures.h"
#include "io/safetensors.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"
#include "train/step.h"

namespace et::test {
namespace {

namespace fs = std::filesystem;

// A writable copy of a fixture model folder.
std::string copy_model(const std::string& arch, const std::string& name) {
  std::string dst = temp_dir(name);
  fs::copy(model_fixture(arch) + "/model", dst, fs::copy_options::recursive);
  for (auto& e : fs::recursive_directory_iterator(dst))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  return dst;
}

std::string load_error(const std::string& dir) {
  auto be = make_cpu_backend();
  try {
    load_sentence_model(dir, *be);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(ModelFolder, BothLayoutsDescribeTheSameModel) {
  SKIP_WITHOUT_FIXTURES(model_fixture("bert"));
  auto be = make_cpu_backend();
  for (const auto& arch : model_archs()) {
    auto a = load_sentence_model(model_fixture(arch) + "/model", *be);
    auto b = load_sentence_model(model_fixture(arch) + "/model_saved_by_reference", *be);
    EXPECT_EQ(a->pooling.modes, b->pooling.modes) << arch;
    EXPECT_EQ(a->normalize, b->normalize) << arch;
    EXPECT_TRUE(a->normalize) << arch;
    EXPECT_EQ(a->max_seq_length, b->max_seq_length) << arch;
    EXPECT_EQ(a->embedding_dim(), b->embedding_dim()) << arch;
    EXPECT_EQ(a->similarity_fn_name, "cosine");
    EXPECT_EQ(a->prompts.size(), 2u);
  }
}

TEST(ModelFolder, PlainTransformersFolderGetsMeanPooling) {
  SKIP_WITHOUT_FIXTURES(model_fixture("bert"));
  std::string d = copy_model("bert", "plain");
  fs::remove(d + "/modules.json");
  auto be = make_cpu_backend();
  auto m = load_sentence_model(d, *be);
  ASSERT_EQ(m->pooling.modes.size(), 1u);
  EXPECT_EQ(m->pooling.modes[0], PoolMode::Mean);
  EXPECT_FALSE(m->normalize);
  EXPECT_FALSE(m->has_st_config);
}

// The bert fixture with the given pooling config, a Dense module (in = 64 * modes, out 8,
// tanh) and optionally Normalize.
std::string model_with_dense(const std::string& name, const json& pooling, int modes,
                             bool normalize, Tensor* w_out = nullptr, Tensor* b_out = nullptr) {
  std::string d = copy_model("bert", name);
  write_json_atomic(d + "/1_Pooling/config.json", pooling);
  fs::create_directories(d + "/2_Dense");
  const int64_t in = 64 * modes;
  write_json_atomic(d + "/2_Dense/config.json",
                    json{{"in_features", in},
                         {"out_features", 8},
                         {"bias", true},
                         {"activation_function", "torch.nn.modules.activation.Tanh"}});
  Tensor w = cpu_empty({8, in}), b = cpu_empty({8});
  for (int64_t i = 0; i < w.numel(); ++i) w.f32()[i] = 0.05f * static_cast<float>((i * 7) % 13 - 6);
  for (int64_t i = 0; i < 8; ++i) b.f32()[i] = 0.1f * static_cast<float>(i) - 0.3f;
  write_safetensors(d + "/2_Dense/model.safetensors", {{"linear.weight", w}, {"linear.bias", b}});
  json mods = json::array({{{"idx", 0},
                            {"name", "0"},
                            {"path", ""},
                            {"type", "sentence_transformers.models.Transformer"}},
                           {{"idx", 1},
                            {"name", "1"},
                            {"path", "1_Pooling"},
                            {"type", "sentence_transformers.models.Pooling"}},
                           {{"idx", 2},
                            {"name", "2"},
                            {"path", "2_Dense"},
                            {"type", "sentence_transformers.models.Dense"}}});
  if (normalize)
    mods.push_back({{"idx", 3},
                    {"name", "3"},
                    {"path", "3_Normalize"},
                    {"type", "sentence_transformers.models.Normalize"}});
  write_json_atomic(d + "/modules.json", mods);
  if (w_out) *w_out = w;
  if (b_out) *b_out = b;
  return d;
}

TEST(ModelFolder, PoolingModesAndDense) {
  SKIP_WITHOUT_FIXTURES(model_fixture("bert"));
  Tensor w, b;
  std::string d = model_with_dense("pool_dense",
                                   json{{"pooling_mode_cls_token", true},
                                        {"pooling_mode_max_tokens", true},
                                        {"pooling_mode_mean_tokens", true},
                                        {"word_embedding_dimension", 64}},
                                   3, false, &w, &b);
  auto be = make_cpu_backend();
  auto m = load_sentence_model(d, *be);
  ASSERT_EQ(m->pooling.modes.size(), 3u);
  EXPECT_EQ(m->pooling.modes[0], PoolMode::Cls);
  EXPECT_EQ(m->pooling.modes[1], PoolMode::Max);
  EXPECT_EQ(m->embedding_dim(), 8);
  PackedBatch batch;
  batch.add({2, 10, 11, 12, 3});
  batch.add({2, 20, 3});
  Tensor e = embed_forward(*be, *m, batch, nullptr, nullptr);
  ASSERT_EQ(e.shape, Shape({2, 8}));
  // Recompute by hand: cls | max | mean of the hidden state, then tanh(W x + b).
  Tensor h = encoder_forward(*be, m->encoder, batch, nullptr, nullptr);
  for (int s = 0; s < 2; ++s) {
    int b0 = batch.cu_seqlens[s], b1 = batch.cu_seqlens[s + 1];
    std::vector<float> feat(192);
    for (int c = 0; c < 64; ++c) {
      float mx = -1e30f, sum = 0;
      for (int t = b0; t < b1; ++t) {
        mx = std::max(mx, h.f32()[t * 64 + c]);
        sum += h.f32()[t * 64 + c];
      }
      feat[c] = h.f32()[b0 * 64 + c];
      feat[64 + c] = mx;
      feat[128 + c] = sum / static_cast<float>(b1 - b0);
    }
    for (int o = 0; o < 8; ++o) {
      double acc = b.f32()[o];
      for (int i = 0; i < 192; ++i) acc += w.f32()[o * 192 + i] * feat[i];
      EXPECT_NEAR(e.f32()[s * 8 + o], std::tanh(acc), 1e-5);
    }
  }
}

// Backward of every pooling mode and of two modes side by side (with and without prompt
// exclusion), Dense(tanh) and Normalize against central finite differences of
// L = sum(R * embeddings).
TEST(ModelFolder, BackwardMatchesFiniteDifferences) {
  SKIP_WITHOUT_FIXTURES(model_fixture("bert"));
  auto be = make_cpu_backend();
  for (const char* mode :
       {"cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", "cls+max"}) {
    for (bool include_prompt : {true, false}) {
      const bool two = std::string(mode) == "cls+max";
      const json pooling = two ? json{{"pooling_mode_cls_token", true},
                                      {"pooling_mode_max_tokens", true},
                                      {"include_prompt", include_prompt}}
                               : json{{"pooling_mode", mode}, {"include_prompt", include_prompt}};
      std::string d = model_with_dense(two ? std::string("fd_cls_max") : std::string("fd_") + mode,
                                       pooling, two ? 2 : 1, true);
      auto m = load_sentence_model(d, *be);
      auto params = set_trainable(*be, *m, TrainMode::Full);
      PackedBatch batch;
      batch.add({2, 17, 301, 45, 9, 3}, include_prompt ? 0 : 2);
      batch.add({2, 88, 3}, include_prompt ? 0 : 1);
      batch.add({2, 5, 6, 7, 8, 9, 10, 11, 3}, include_prompt ? 0 : 3);
      Tensor r = cpu_empty({3, 8});
      for (int64_t i = 0; i < r.numel(); ++i)
        r.f32()[i] = std::sin(1.7f * static_cast<float>(i) + 0.3f);
      auto loss = [&]() {
        Tensor e = embed_forward(*be, *m, batch, nullptr, nullptr);
        double l = 0;
        for (int64_t i = 0; i < e.numel(); ++i) l += static_cast<double>(e.f32()[i]) * r.f32()[i];
        return l;
      };
      EmbedSaved saved;
      embed_forward(*be, *m, batch, &saved, nullptr);
      embed_backward(*be, *m, saved, r);
      for (const char* name :
           {"linear.weight", "encoder.layer.1.output.dense.weight",
            "encoder.layer.0.attention.self.query.weight", "embeddings.LayerNorm.weight"}) {
        Param* p = m->params.find(name);
        if (!p) p = m->dense[0].params.find(name);
        ASSERT_NE(p, nullptr) << name;
        for (int64_t idx : {int64_t{0}, int64_t{37}, p->value.numel() - 1}) {
          float* x = p->value.f32() + idx;
          const float orig = *x, eps = 1e-2f;
          *x = orig + eps;
          double lp = loss();
          *x = orig - eps;
          double lm = loss();
          *x = orig;
          double fd = (lp - lm) / (2 * eps), an = p->grad.f32()[idx];
          EXPECT_NEAR(an, fd, 2e-3 + 2e-2 * std::abs(fd))
              << mode << (include_prompt ? "" : " (prompt excluded) ") << name << "[" << idx << "]";
        }
      }
    }
  }
}

TEST(ModelFolder, BrokenFoldersGiveClearErrors) {
  SKIP_WITHOUT_FIXTURES(model_fixture("bert"));
  EXPECT_NE(load_error("/nonexistent/model").find("does not exist"), std::string::npos);

  std::string d = copy_model("bert", "bad_module");
  json mods = read_json_file(d + "/modules.json");
  mods[1]["type"] = "sentence_transformers.models.CNN";
  write_json_atomic(d + "/modules.json", mods);
  EXPECT_NE(load_error(d).find("'sentence_transformers.models.CNN'"), std::string::npos);

  d = copy_model("bert", "bad_pool");
  write_json_atomic(d + "/1_Pooling/config.json", json{{"pooling_mode", "median"}});
  EXPECT_NE(load_error(d).find("pooling_mode 'median'"), std::string::npos);

  d = copy_model("bert", "bad_config");
  json cfg = read_json_file(d + "/config.json");
  cfg["model_type"] = "t5";
  write_json_atomic(d + "/config.json", cfg);
  EXPECT_NE(load_error(d).find("model_type 't5'"), std::string::npos);
  cfg["model_type"] = "bert";
  cfg["hidden_size"] = "big";
  write_json_atomic(d + "/config.json", cfg);
  EXPECT_NE(load_error(d).find("'hidden_size'"), std::string::npos);

  d = copy_model("bert", "missing_weight");
  TensorFile tf = read_safetensors(d + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> keep;
  for (auto& [n, t] : tf.tensors)
    if (n != "encoder.layer.1.output.dense.weight") keep.emplace_back(n, cpu_clone(t));
  write_safetensors(d + "/model.safetensors", keep);
  EXPECT_NE(load_error(d).find("missing weight 'encoder.layer.1.output.dense.weight'"),
            std::string::npos);

  d = copy_model("bert", "bad_shape");
  tf = read_safetensors(d + "/model.safetensors");
  keep.clear();
  for (auto& [n, t] : tf.tensors)
    keep.emplace_back(
        n, n == "encoder.layer.0.attention.self.query.weight" ? cpu_zeros({64, 32}) : cpu_clone(t));
  write_safetensors(d + "/model.safetensors", keep);
  EXPECT_NE(load_error(d).find("has shape [64, 32], expected [64, 64]"), std::string::npos);

  d = copy_model("bert", "bad_json");
  write_text_atomic(d + "/config.json", "{\"model_type\": ");
  EXPECT_NE(load_error(d).find("invalid JSON"), std::string::npos);
}

TEST(ModelFolder, OverlongInputIsAnErrorNotACrash) {
  SKIP_WITHOUT_FIXTURES(model_fixture("bert"));
  auto be = make_cpu_backend();
  auto m = load_sentence_model(model_fixture("bert") + "/model", *be);
  PackedBatch b;
  b.add(std::vector<int32_t>(200, 7));  // 128 position embeddings
  EXPECT_THROW(embed_forward(*be, *m, b, nullptr, nullptr), Error);
  PackedBatch c;
  c.add({5, 100000});
  EXPECT_THROW(embed_forward(*be, *m, c, nullptr, nullptr), Error);
}

}  // namespace
}  // namespace et::test
