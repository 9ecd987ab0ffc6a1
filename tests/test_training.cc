// The training toolbox: loss fixtures, schedules, samplers, datasets, checkpoints and resume,
// adapter and merged-model round trips.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"
#include "fixtures.h"
#include "io/dataset.h"
#include "io/safetensors.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"
#include "train/checkpoint.h"
#include "train/lora.h"
#include "train/loss_device.h"
#include "train/losses.h"
#include "train/step.h"
#include "train/trainer.h"

namespace et::test {
namespace {

namespace fs = std::filesystem;

TEST(Losses, MnrlMatchesSentenceTransformers) {
  std::string dir = fixtures_root() + "/losses";
  SKIP_WITHOUT_FIXTURES(dir);
  TensorFile f = read_safetensors(dir + "/expected.safetensors");
  json meta = read_json_file(dir + "/meta.json");
  int checked = 0;
  for (const char* name :
       {"mnrl_pair", "mnrl_triplet", "mnrl_symmetric", "matryoshka_mnrl_16_8_4"}) {
    ASSERT_TRUE(meta.contains(name) && meta[name].contains("columns")) << name;
    std::vector<Tensor> cols;
    for (const auto& c : meta[name]["columns"])
      cols.push_back(to_f32(f.at("input." + c.get<std::string>())));
    LossSpec spec;
    spec.scale = meta[name]["params"].value("scale", 20.0);
    const std::string cls = meta[name]["class"];
    if (cls == "MultipleNegativesSymmetricRankingLoss") spec.kind = LossKind::MNRLSymmetric;
    if (cls == "MatryoshkaLoss") {
      // "(16, 8, 4)" and "(1, 1, 1)" as the fixture writes the tuples
      auto tuple = [](std::string t) {
        std::vector<double> v;
        for (char& ch : t)
          if (ch == '(' || ch == ')' || ch == ',') ch = ' ';
        std::istringstream in(t);
        for (double x; in >> x;) v.push_back(x);
        return v;
      };
      for (double x : tuple(meta[name]["params"]["matryoshka_dims"]))
        spec.matryoshka_dims.push_back(static_cast<int>(x));
      spec.matryoshka_weights = tuple(meta[name]["params"]["matryoshka_weights"]);
      EXPECT_EQ(meta[name]["params"]["loss"], "MultipleNegativesRankingLoss");
      spec.scale = 20.0;
    }
    LossOutput out = compute_loss(spec, cols);
    float ref = f.at(std::string(name) + ".loss").f32()[0];
    EXPECT_NEAR(out.loss, ref, 1e-5 * std::abs(ref)) << name;
    for (size_t i = 0; i < cols.size(); ++i) {
      std::string key = std::string(name) + ".grad." + meta[name]["columns"][i].get<std::string>();
      EXPECT_LT(rel_error(out.grads[i], to_f32(f.at(key))), 1e-5) << key;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

// The backend-op form of MNRL (what a GPU step runs, here on the CPU backend in fp32) against
// the same sentence-transformers values: the embeddings stacked as a step embeds them.
TEST(Losses, MnrlOnBackendMatchesSentenceTransformers) {
  std::string dir = fixtures_root() + "/losses";
  SKIP_WITHOUT_FIXTURES(dir);
  TensorFile f = read_safetensors(dir + "/expected.safetensors");
  json meta = read_json_file(dir + "/meta.json");
  auto be = make_cpu_backend();
  for (const char* name : {"mnrl_pair", "mnrl_triplet", "mnrl_symmetric"}) {
    std::vector<Tensor> cols;
    for (const auto& c : meta[name]["columns"])
      cols.push_back(to_f32(f.at("input." + c.get<std::string>())));
    const int64_t rows = cols[0].dim(0), d = cols[0].dim(1);
    Tensor emb = cpu_empty({rows * static_cast<int64_t>(cols.size()), d});
    for (size_t c = 0; c < cols.size(); ++c)
      std::copy(cols[c].f32(), cols[c].f32() + rows * d, emb.f32() + c * rows * d);
    const bool symmetric = meta[name]["class"] == "MultipleNegativesSymmetricRankingLoss";
    const double grad_scale = 0.25;
    BackendLoss out = mnrl_on_backend(*be, emb, rows, meta[name]["params"].value("scale", 20.0),
                                      symmetric, grad_scale);
    float ref = f.at(std::string(name) + ".loss").f32()[0];
    EXPECT_NEAR(backend_loss_value(*be, out), ref, 1e-5 * std::abs(ref)) << name;
    for (size_t c = 0; c < cols.size(); ++c) {
      std::string key = std::string(name) + ".grad." + meta[name]["columns"][c].get<std::string>();
      Tensor want = to_f32(f.at(key));
      for (int64_t i = 0; i < want.numel(); ++i) want.f32()[i] *= grad_scale;
      EXPECT_LT(rel_error(out.d_emb.rows(c * rows, (c + 1) * rows), want), 1e-5) << key;
    }
  }
  // rows that do not split into anchors and whole candidate columns name the problem
  try {
    mnrl_on_backend(*be, cpu_zeros({7, 4}), 3, 20.0, false, 1.0);
    ADD_FAILURE() << "no error for 7 embeddings in columns of 3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("whole candidate columns of 3"), std::string::npos)
        << e.what();
  }
}

// The pairwise/triplet losses against sentence-transformers' own classes.
TEST(Losses, PairwiseAndTripletLossesMatchSentenceTransformers) {
  std::string dir = fixtures_root() + "/losses";
  SKIP_WITHOUT_FIXTURES(dir);
  TensorFile f = read_safetensors(dir + "/expected.safetensors");
  json meta = read_json_file(dir + "/meta.json");
  auto labels_of = [&](const json& m) {
    std::vector<double> v;
    if (m["labels"].is_null()) return v;
    Tensor t = to_f32(f.at("input." + m["labels"].get<std::string>()));
    for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.f32()[i]);
    return v;
  };
  int checked = 0;
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    const json& m = *it;
    if (!m.contains("class")) continue;  // a case the generator could not produce
    const std::string cls = m["class"];
    std::vector<Tensor> cols;
    for (const auto& c : m["columns"])
      cols.push_back(to_f32(f.at("input." + c.get<std::string>())));
    std::vector<double> y = labels_of(m);
    const json& prm = m["params"];
    LossOutput out;
    if (cls == "TripletLoss") {
      std::string metric = prm.value("distance_metric", "");
      Distance d = metric.find("COSINE") != std::string::npos      ? Distance::Cosine
                   : metric.find("MANHATTAN") != std::string::npos ? Distance::Manhattan
                                                                   : Distance::Euclidean;
      out = triplet_loss(cols, d, prm.value("triplet_margin", 5.0));
    } else if (cls == "CoSENTLoss" || cls == "AnglELoss") {
      out = cosent_loss(cols, y, prm.value("scale", 20.0), cls == "AnglELoss");
    } else if (cls == "ContrastiveLoss") {
      out = contrastive_loss(cols, y, prm.value("margin", 0.5));
    } else if (cls == "OnlineContrastiveLoss") {
      out = online_contrastive_loss(cols, y, prm.value("margin", 0.5));
    } else if (cls == "MarginMSELoss") {
      out = margin_mse_loss(cols, y);
    } else if (cls == "CosineSimilarityLoss") {
      out = cosine_similarity_loss(cols, y);
    } else {
      continue;  // the MNRL family is checked above
    }
    const float ref = f.at(it.key() + ".loss").f32()[0];
    EXPECT_NEAR(out.loss, ref, 1e-5 * std::abs(ref) + 1e-7) << it.key();
    for (size_t i = 0; i < cols.size(); ++i) {
      std::string key = it.key() + ".grad." + m["columns"][i].get<std::string>();
      Tensor g = to_f32(f.at(key));
      double gn = std::sqrt(make_cpu_backend()->sum_squares(g));
      EXPECT_LT(rel_error(out.grads[i], g) * gn, 1e-5 * gn + 1e-7) << key;
    }
    ++checked;
  }
  EXPECT_GE(checked, 6);
}

// CosineSimilarityLoss has no fixture (the generator failed on it): central differences.
TEST(Losses, CosineSimilarityLossMatchesFiniteDifferences) {
  Tensor a = cpu_from({0.3f, -1.2f, 0.5f, 2.0f, 0.1f, -0.4f}, {2, 3});
  Tensor p = cpu_from({1.1f, 0.2f, -0.7f, 0.9f, -1.3f, 0.6f}, {2, 3});
  std::vector<double> y{0.8, -0.1};
  LossOutput out = cosine_similarity_loss({a, p}, y);
  for (int c = 0; c < 2; ++c)
    for (int64_t i = 0; i < 6; ++i) {
      Tensor* t = c == 0 ? &a : &p;
      const float orig = t->f32()[i];
      t->f32()[i] = orig + 1e-3f;
      double lp = cosine_similarity_loss({a, p}, y).loss;
      t->f32()[i] = orig - 1e-3f;
      double lm = cosine_similarity_loss({a, p}, y).loss;
      t->f32()[i] = orig;
      EXPECT_NEAR(out.grads[c].f32()[i], (lp - lm) / 2e-3, 1e-4) << c << " " << i;
    }
}

// GradCache: mini-batches of 5 texts give the gradients of one big batch.
TEST(Losses, CachedMnrlEqualsMnrl) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  auto cols = fixture_columns(root);
  std::vector<Tensor> grads[2];
  double loss[2];
  for (int cached = 0; cached < 2; ++cached) {
    auto be = make_cpu_backend();
    auto m = load_sentence_model(root + "/model", *be);
    load_adapter(*be, *m, root + "/adapter");
    auto params = set_trainable(*be, *m, TrainMode::Lora);
    LossSpec spec;
    spec.mini_batch_size = cached ? 5 : 0;
    loss[cached] = train_step_grads(*be, *m, cols, spec, 1.0, nullptr)();
    for (Param* p : params) grads[cached].push_back(cpu_clone(p->grad));
  }
  EXPECT_NEAR(loss[1], loss[0], 1e-6 * loss[0]);  // float32 embeddings from other batches
  for (size_t i = 0; i < grads[0].size(); ++i)
    EXPECT_LT(rel_error(grads[1][i], grads[0][i]), 1e-5) << i;
}

// The loss by backend ops, as GPU steps compute it (train_step_grads takes this path there),
// against the host loss of a plain step: in one batch and in GradCache mini-batches of 5 texts
// (whose rows of dL/d(embeddings) must reach the right mini-batch), for MNRL, its symmetric
// form and MNRL inside MatryoshkaLoss (full and half width, weights 1 and 0.5). fp32 ops
// against the host's doubles: 1e-5 on the loss, 1e-4 on the gradients.
TEST(Losses, MnrlStepOnBackendMatchesHostStep) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  const std::vector<PackedBatch> cols = fixture_columns(root);
  const int64_t rows = cols[0].size();
  std::vector<LossSpec> specs(3);
  specs[1].kind = LossKind::MNRLSymmetric;
  {
    auto be = make_cpu_backend();
    const int d = load_sentence_model(root + "/model", *be)->embedding_dim();
    specs[2].matryoshka_dims = {d, d / 2};
    specs[2].matryoshka_weights = {1.0, 0.5};
  }
  const char* names[] = {"MNRL", "symmetric MNRL", "Matryoshka MNRL"};
  for (size_t k = 0; k < specs.size(); ++k) {
    const LossSpec& spec = specs[k];
    auto run = [&](int per_mini_batch, std::vector<Tensor>* grads) {
      auto be = make_cpu_backend();
      auto m = load_sentence_model(root + "/model", *be);
      load_adapter(*be, *m, root + "/adapter");
      auto params = set_trainable(*be, *m, TrainMode::Lora);
      double loss = 0;
      if (per_mini_batch == 0) {
        loss = train_step_grads(*be, *m, cols, spec, 0.5, nullptr)();
      } else {
        std::vector<PackedBatch> mini(1);
        for (const PackedBatch& c : cols)
          for (int i = 0; i < c.size(); ++i) {
            if (mini.back().size() == per_mini_batch) mini.emplace_back();
            mini.back().add({c.ids.begin() + c.cu_seqlens[i], c.ids.begin() + c.cu_seqlens[i + 1]});
          }
        loss = mnrl_step_on_backend(*be, *m, mini, rows, spec, 0.5, nullptr)();
      }
      for (Param* p : params) grads->push_back(cpu_clone(p->grad));
      return loss;
    };
    std::vector<Tensor> host, whole, cached;
    const double l_host = run(0, &host), l_whole = run(1000, &whole), l_cached = run(5, &cached);
    EXPECT_NEAR(l_whole, l_host, 1e-5 * l_host) << names[k];
    EXPECT_NEAR(l_cached, l_host, 1e-5 * l_host) << names[k];
    for (size_t i = 0; i < host.size(); ++i) {
      EXPECT_LT(rel_error(whole[i], host[i]), 1e-4) << names[k] << " one batch, parameter " << i;
      EXPECT_LT(rel_error(cached[i], host[i]), 1e-4) << names[k] << " GradCache, parameter " << i;
    }
  }
}

TEST(Schedule, TransformersFormulas) {
  // linear, 10 steps, 2 warm-up: 0, 0.5, then down from 1 to 0 over steps 2..10
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::Linear, 0, 2, 10), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::Linear, 1, 2, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::Linear, 2, 2, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::Linear, 6, 2, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::Linear, 10, 2, 10), 0.0);
  EXPECT_NEAR(lr_multiplier(LrSchedule::Cosine, 6, 2, 10), 0.5, 1e-12);
  EXPECT_NEAR(lr_multiplier(LrSchedule::Cosine, 4, 2, 10), 0.5 * (1 + std::cos(M_PI / 4)), 1e-12);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::ConstantWithWarmup, 1, 4, 10), 0.25);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::ConstantWithWarmup, 7, 4, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::Constant, 0, 4, 10), 1.0);
  EXPECT_EQ(warmup_steps_for(0, 0.1, 95), 10);  // ceil(9.5)
  EXPECT_EQ(warmup_steps_for(3, 0.5, 95), 3);
  EXPECT_THROW(parse_lr_schedule("polynomial_fancy"), Error);
}

TextDataset dataset_with_duplicates() {
  TextDataset ds;
  ds.columns = {"anchor", "positive"};
  for (int i = 0; i < 40; ++i) {
    // every 4 rows share a positive: such rows must never meet in one NO_DUPLICATES batch
    char q[16], p[16];  // (snprintf: string concatenation trips GCC 12's -Wrestrict bug 105329)
    std::snprintf(q, sizeof(q), "q%d", i);
    std::snprintf(p, sizeof(p), "p%d", i / 4);
    ds.rows.push_back({q, p});
    ds.lines.push_back(i + 1);
  }
  return ds;
}

TEST(Sampler, NoDuplicatesKeepsTextsUniqueAndCoversEveryRow) {
  TextDataset ds = dataset_with_duplicates();
  auto batches = epoch_batches(ds, 8, BatchSampler::NoDuplicates, 7, 0, false);
  std::multiset<int32_t> seen;
  for (const auto& b : batches) {
    std::set<std::string> texts;
    for (int32_t r : b) {
      for (const auto& t : ds.rows[r]) EXPECT_TRUE(texts.insert(t).second) << "duplicate " << t;
      seen.insert(r);
    }
  }
  EXPECT_EQ(seen.size(), 40u);
  EXPECT_EQ(std::set<int32_t>(seen.begin(), seen.end()).size(), 40u);
  EXPECT_EQ(batches, epoch_batches(ds, 8, BatchSampler::NoDuplicates, 7, 0, false));
  EXPECT_NE(batches, epoch_batches(ds, 8, BatchSampler::NoDuplicates, 7, 1, false));
  // The plain sampler: contiguous batches of the shuffled order, last one partial.
  auto plain = epoch_batches(ds, 16, BatchSampler::Batch, 7, 0, false);
  ASSERT_EQ(plain.size(), 3u);
  EXPECT_EQ(plain[2].size(), 8u);
  EXPECT_EQ(epoch_batches(ds, 16, BatchSampler::Batch, 7, 0, true).size(), 2u);
}

TEST(Dataset, JsonlCsvTsvAndColumnMapping) {
  std::string dir = temp_dir("dataset");
  write_text_atomic(dir + "/a.jsonl",
                    "{\"question\": \"q1\", \"context\": \"c1\", \"id\": 3}\n\n"
                    "{\"question\": \"q2\", \"context\": \"c2\", \"id\": 4}\n");
  TextDataset j = read_text_dataset(dir + "/a.jsonl", {"question", "context"});
  ASSERT_EQ(j.rows.size(), 2u);
  EXPECT_EQ(j.rows[1][1], "c2");
  write_text_atomic(
      dir + "/b.csv",
      "anchor,positive,negative\n\"a, with comma\",\"multi\nline \"\"quoted\"\"\",n1\r\nx,y,z\n");
  TextDataset c = read_text_dataset(dir + "/b.csv");
  ASSERT_EQ(c.columns, (std::vector<std::string>{"anchor", "positive", "negative"}));
  ASSERT_EQ(c.rows.size(), 2u);
  EXPECT_EQ(c.rows[0][0], "a, with comma");
  EXPECT_EQ(c.rows[0][1], "multi\nline \"quoted\"");
  EXPECT_EQ(c.lines[1], 4u);
  write_text_atomic(dir + "/c.tsv", "anchor\tpositive\nhello\tworld\n");
  EXPECT_EQ(read_text_dataset(dir + "/c.tsv").rows[0][1], "world");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Dataset, BadRowsNameFileAndLine) {
  std::string dir = temp_dir("dataset_bad");
  write_text_atomic(dir + "/a.jsonl",
                    "{\"anchor\": \"x\", \"positive\": \"y\"}\n{\"anchor\": \"x\"}\n");
  EXPECT_NE(error_of([&] {
              read_text_dataset(dir + "/a.jsonl");
            }).find("a.jsonl:2: missing column 'positive'"),
            std::string::npos);
  write_text_atomic(dir + "/b.jsonl", "{\"anchor\": \"x\", \"positive\": 5}\n");
  EXPECT_NE(error_of([&] {
              read_text_dataset(dir + "/b.jsonl", {"anchor", "positive"});
            }).find("b.jsonl:1: column 'positive' must be a string"),
            std::string::npos);
  write_text_atomic(dir + "/c.jsonl", "{\"anchor\": \"x\", \"positive\": \"y\"}\n{broken\n");
  EXPECT_NE(error_of([&] { read_text_dataset(dir + "/c.jsonl"); }).find("c.jsonl:2: invalid JSON"),
            std::string::npos);
  write_text_atomic(dir + "/d.csv", "anchor,positive\na,b\nc\n");
  EXPECT_NE(error_of([&] { read_text_dataset(dir + "/d.csv"); }).find("d.csv:3: 1 fields"),
            std::string::npos);
  write_text_atomic(dir + "/e.csv", "anchor,positive\n\"a,b\n");
  EXPECT_NE(error_of([&] { read_text_dataset(dir + "/e.csv"); }).find("unterminated"),
            std::string::npos);
  write_text_atomic(dir + "/f.tsv", "anchor\tpositive\nok\tbad \xff\n");
  EXPECT_NE(error_of([&] {
              read_text_dataset(dir + "/f.tsv");
            }).find("f.tsv:2: column 'positive' is not valid UTF-8"),
            std::string::npos);
  write_text_atomic(dir + "/g.jsonl", "{\"q\": \"x\", \"d\": \"y\"}\n");
  EXPECT_NE(error_of([&] { read_text_dataset(dir + "/g.jsonl"); }).find("--columns"),
            std::string::npos);
}

// A small training set over the fixture's synthetic vocabulary ("w0".."w506").
std::string write_pairs(const std::string& dir, int rows) {
  std::string s;
  for (int i = 0; i < rows; ++i) {
    std::string a, p;
    for (int k = 0; k < 3 + i % 4; ++k) a += " w" + std::to_string((i * 7 + k * 13) % 500);
    for (int k = 0; k < 6 + i % 5; ++k) p += " w" + std::to_string((i * 11 + k * 17) % 500);
    s += json{{"anchor", a}, {"positive", p}}.dump() + "\n";
  }
  write_text_atomic(dir + "/pairs.jsonl", s);
  return dir + "/pairs.jsonl";
}

TrainConfig small_run(const std::string& model, const std::string& data, const std::string& out) {
  TrainConfig c;
  c.model = model;
  c.train_file = data;
  c.output_dir = out;
  c.learning_rate = 1e-3;
  c.per_device_train_batch_size = 4;
  c.gradient_accumulation_steps = 2;
  c.max_steps = 6;
  c.warmup_ratio = 0.2;
  c.save_steps = 3;
  c.lora.r = 4;
  c.lora.alpha = 8;
  c.lora.dropout = 0.1;
  c.quiet = true;
  return c;
}

TEST(Trainer, ResumeEqualsUninterrupted) {
  std::string root = model_fixture("mpnet");
  SKIP_WITHOUT_FIXTURES(root);
  std::string dir = temp_dir("resume");
  std::string data = write_pairs(dir, 30);
  auto be = make_cpu_backend();
  for (TrainMode mode : {TrainMode::Lora, TrainMode::Full}) {
    std::string tag = mode == TrainMode::Lora ? "lora" : "full";
    TrainConfig a = small_run(root + "/model", data, dir + "/a_" + tag);
    a.mode = mode;
    run_training(a, *be);
    TrainConfig b = small_run(root + "/model", data, dir + "/b_" + tag);
    b.mode = mode;
    b.stop_after_steps = 3;
    TrainResult rb = run_training(b, *be);
    EXPECT_EQ(rb.steps, 3);
    EXPECT_FALSE(file_exists(dir + "/b_" + tag + "/merged/model.safetensors"));
    b.stop_after_steps = -1;
    b.resume = true;
    run_training(b, *be);
    std::string f = mode == TrainMode::Lora ? "/adapter/adapter_model.safetensors"
                                            : "/merged/model.safetensors";
    TensorFile ta = read_safetensors(dir + "/a_" + tag + f);
    TensorFile tb = read_safetensors(dir + "/b_" + tag + f);
    ASSERT_EQ(ta.tensors.size(), tb.tensors.size());
    TensorFile base = read_safetensors(root + "/model/model.safetensors");
    double moved = 0;
    for (const auto& [name, t] : ta.tensors) {
      EXPECT_EQ(rel_error(tb.at(name), t), 0.0) << tag << " " << name;
      if (base.has(name)) moved += rel_error(t, base.at(name));
    }
    if (mode == TrainMode::Full) {
      EXPECT_GT(moved, 0.0);  // training changed the weights
    }
  }
  // Changed settings are refused on resume, naming the setting.
  TrainConfig c = small_run(root + "/model", data, dir + "/b_lora");
  c.resume = true;
  c.per_device_train_batch_size = 5;
  EXPECT_NE(error_of([&] { run_training(c, *be); }).find("per_device_train_batch_size"),
            std::string::npos);
}

// Clipping by global norm inside adamw_step_all (Backend::GradClip) is torch's
// clip_grad_norm_: every gradient times max_norm / (norm + 1e-6) when that is below 1, computed
// here by hand, then plain AdamW; above the norm it changes nothing.
TEST(Optimizer, ClipByGlobalNormScalesEveryGradientFirst) {
  auto be = make_cpu_backend();
  Rng rng(7);
  auto rand = [&](int64_t n, float lo, float hi) { return uniform_tensor(rng, {n}, lo, hi); };
  const std::vector<int64_t> sizes{37, 5, 128};
  std::vector<Tensor> g0;
  double sq = 0;
  for (int64_t n : sizes) {
    g0.push_back(rand(n, -2, 2));
    for (int64_t i = 0; i < n; ++i)
      sq += static_cast<double>(g0.back().f32()[i]) * g0.back().f32()[i];
  }
  for (double max_norm : {0.5, 1e6}) {
    std::vector<Tensor> p, g, m, v, pr, gr, mr, vr;
    for (size_t k = 0; k < sizes.size(); ++k) {
      p.push_back(rand(sizes[k], -1, 1)), m.push_back(rand(sizes[k], -0.1f, 0.1f));
      v.push_back(rand(sizes[k], 0, 0.1f)), g.push_back(cpu_clone(g0[k]));
      pr.push_back(cpu_clone(p[k])), mr.push_back(cpu_clone(m[k])), vr.push_back(cpu_clone(v[k]));
      gr.push_back(cpu_clone(g0[k]));
    }
    std::vector<const Tensor*> gs;
    std::vector<Backend::AdamWSlot> slots;
    for (size_t k = 0; k < sizes.size(); ++k) {
      gs.push_back(&g[k]);
      slots.push_back({&p[k], &g[k], &m[k], &v[k]});
    }
    const Tensor norm_sq = be->sum_squares_all_dev(gs);
    EXPECT_NEAR(*static_cast<const double*>(be->download(norm_sq).data), sq, 1e-12 * sq);
    const Backend::GradClip clip{&norm_sq, max_norm};
    be->adamw_step_all(slots, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 3, false, &clip);
    const double c = max_norm / (std::sqrt(sq) + 1e-6);
    for (size_t k = 0; k < sizes.size(); ++k) {
      if (c < 1)
        for (int64_t i = 0; i < sizes[k]; ++i) gr[k].f32()[i] *= static_cast<float>(c);
      be->adamw_step(pr[k], gr[k], mr[k], vr[k], 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 3);
      EXPECT_EQ(rel_error(p[k], pr[k]), 0.0) << "max_norm " << max_norm << " tensor " << k;
      EXPECT_EQ(rel_error(m[k], mr[k]), 0.0) << "max_norm " << max_norm << " tensor " << k;
    }
    if (c < 1) {
      EXPECT_GT(rel_error(g[0], g0[0]), 0.1);  // the clip did scale
    }
  }
}

// The trainer reads a step's loss and gradient norm once the next step is queued: every step
// still gets its own record, in order, and a non-finite loss stops the run naming its step
// before anything later is saved.
TEST(Trainer, LogsEveryStepInOrderAndStopsAtANonFiniteLoss) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  std::string dir = temp_dir("train_log_order");
  std::string data = write_pairs(dir, 16);
  auto be = make_cpu_backend();
  TrainConfig c = small_run(root + "/model", data, dir + "/out");
  c.logging_steps = 1;
  run_training(c, *be);
  std::istringstream log(read_text_file(dir + "/out/train_log.jsonl"));
  std::string line;
  int64_t expect = 1;
  while (std::getline(log, line)) {
    json j = json::parse(line);
    if (!j.contains("loss")) continue;
    EXPECT_EQ(j["step"].get<int64_t>(), expect++);
    EXPECT_TRUE(std::isfinite(j["loss"].get<double>()));
    EXPECT_GT(j["grad_norm"].get<double>(), 0.0);
  }
  EXPECT_EQ(expect, c.max_steps + 1);
  // the same model with NaN word embeddings: the first step's loss is NaN
  fs::copy(root + "/model", dir + "/nan_model", fs::copy_options::recursive);
  TensorFile w = read_safetensors(root + "/model/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, t] : w.tensors) {
    Tensor h = to_f32(t);
    if (name.find("word_embeddings") != std::string::npos)
      for (int64_t i = 0; i < h.numel(); ++i) h.f32()[i] = NAN;
    tensors.emplace_back(name, h);
  }
  write_safetensors(dir + "/nan_model/model.safetensors", tensors);
  TrainConfig bad = small_run(dir + "/nan_model", data, dir + "/nan_out");
  const std::string err = error_of([&] { run_training(bad, *be); });
  EXPECT_NE(err.find("loss became nan at step 1 "), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir + "/nan_out/checkpoints/checkpoint-3"));
}

TEST(Trainer, OutputsLoadBackWithTheSameEmbeddings) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  std::string dir = temp_dir("roundtrip");
  std::string data = write_pairs(dir, 16);
  auto be = make_cpu_backend();
  TrainConfig c = small_run(root + "/model", data, dir + "/out");
  c.lora.dropout = 0;
  TrainResult r = run_training(c, *be);
  json log_first =
      json::parse(read_text_file(dir + "/out/train_log.jsonl")
                      .substr(0, read_text_file(dir + "/out/train_log.jsonl").find('\n')));
  EXPECT_TRUE(log_first.contains("loss") && log_first.contains("tokens_per_second"));
  // base + adapter (as peft applies it) == merged folder
  auto with_adapter = load_sentence_model(root + "/model", *be);
  load_adapter(*be, *with_adapter, r.adapter_dir);
  auto merged = load_sentence_model(r.merged_dir, *be);
  auto base = load_sentence_model(root + "/model", *be);
  json inputs = read_json_file(root + "/inputs.json");
  PackedBatch b;
  for (const auto& ids : inputs["positive"]) b.add(ids.get<std::vector<int32_t>>());
  Tensor e1 = embed_forward(*be, *with_adapter, b, nullptr, nullptr);
  Tensor e2 = embed_forward(*be, *merged, b, nullptr, nullptr);
  Tensor e0 = embed_forward(*be, *base, b, nullptr, nullptr);
  EXPECT_LT(rel_error(e2, e1), 1e-5);
  EXPECT_GT(rel_error(e1, e0), 1e-4);  // the adapter is not a no-op
  // The adapter folder is PEFT's: prefixed keys, LoRA config fields.
  json cfg = read_json_file(r.adapter_dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 4);
  TensorFile ad = read_safetensors(r.adapter_dir + "/adapter_model.safetensors");
  EXPECT_TRUE(ad.has("base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"));
  // Merged folder keeps the modules and configs.
  EXPECT_EQ(merged->pooling.modes, base->pooling.modes);
  EXPECT_TRUE(merged->normalize);
  EXPECT_EQ(merged->max_seq_length, base->max_seq_length);
}

TEST(Trainer, EvaluatesAndKeepsTheBestModel) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  std::string dir = temp_dir("train_eval");
  std::string data = write_pairs(dir, 40);
  auto be = make_cpu_backend();
  TrainConfig c = small_run(root + "/model", data, dir + "/out");
  c.lora.dropout = 0;
  c.learning_rate = 3e-2;  // large enough that the metric moves between evaluations
  c.eval_holdout = 0.25;
  c.eval_steps = 2;
  c.metric_for_best_model = "mrr@10";
  c.load_best_model_at_end = true;
  TrainResult r = run_training(c, *be);
  ASSERT_FALSE(r.final_metrics.is_null());
  EXPECT_TRUE(r.final_metrics.contains("ndcg@k"));
  // evaluations at steps 2 and 4 and at the end, each logged
  int evals = 0;
  double best_logged = -1;
  std::istringstream log(read_text_file(dir + "/out/train_log.jsonl"));
  for (std::string line; std::getline(log, line);) {
    json j = json::parse(line);
    if (!j.contains("eval")) continue;
    ++evals;
    best_logged = std::max(best_logged, j["eval"]["mrr@k"]["10"].get<double>());
  }
  EXPECT_EQ(evals, 3);
  EXPECT_DOUBLE_EQ(r.best_metric, best_logged);
  json best = read_json_file(dir + "/out/best/best.json");
  EXPECT_EQ(best["step"], r.best_step);
  // the final adapter holds the best evaluated weights
  TensorFile kept = read_safetensors(dir + "/out/best/trainable.safetensors");
  TensorFile adapter = read_safetensors(dir + "/out/adapter/adapter_model.safetensors");
  for (const auto& [name, t] : kept.tensors)
    EXPECT_EQ(rel_error(to_f32(adapter.at("base_model.model." + name)), to_f32(t)), 0.0) << name;
  json summary = read_json_file(dir + "/out/train_summary.json");
  EXPECT_EQ(summary["best"]["step"], r.best_step);
  // bad metric names are refused up front
  TrainConfig bad = c;
  bad.output_dir = dir + "/bad";
  bad.metric_for_best_model = "ndcg";
  EXPECT_THROW(run_training(bad, *be), Error);
}

TEST(Trainer, LossesWithLabelsAndTriplets) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  std::string dir = temp_dir("train_losses");
  std::string csv = "sentence1,sentence2,score\n", triplets;
  char a[64], b[64], n[64];
  for (int i = 0; i < 16; ++i) {
    std::snprintf(a, sizeof(a), "w%d w%d", i, i + 50);
    std::snprintf(b, sizeof(b), "w%d w%d w%d", i, i + 60, i + 70);
    std::snprintf(n, sizeof(n), "w%d w%d", i + 200, i + 300);
    csv += std::string(a) + "," + b + "," + std::to_string((i % 5) / 4.0) + "\n";
    triplets += json{{"anchor", a}, {"positive", b}, {"negative", n}}.dump() + "\n";
  }
  write_text_atomic(dir + "/scores.csv", csv);
  write_text_atomic(dir + "/triplets.jsonl", triplets);
  auto be = make_cpu_backend();
  const std::pair<const char*, LossKind> runs[] = {{"scores.csv", LossKind::CoSENT},
                                                   {"scores.csv", LossKind::AnglE},
                                                   {"scores.csv", LossKind::CosineSimilarity},
                                                   {"scores.csv", LossKind::Contrastive},
                                                   {"scores.csv", LossKind::OnlineContrastive},
                                                   {"triplets.jsonl", LossKind::Triplet}};
  int k = 0;
  for (const auto& [file, kind] : runs) {
    TrainConfig c =
        small_run(root + "/model", dir + "/" + file, dir + "/out" + std::to_string(k++));
    c.loss.kind = kind;
    if (std::string(file) == "scores.csv") c.columns = {"sentence1", "sentence2"};
    c.max_steps = 2;
    TrainResult r = run_training(c, *be);
    EXPECT_TRUE(std::isfinite(r.last_loss)) << file;
    EXPECT_TRUE(file_exists(r.merged_dir + "/model.safetensors"));
  }
  // a loss that needs labels on data without them, and a column-count mismatch
  TrainConfig c = small_run(root + "/model", dir + "/triplets.jsonl", dir + "/bad");
  c.loss.kind = LossKind::CoSENT;
  EXPECT_NE(error_of([&] { run_training(c, *be); }).find("'label' or 'score'"), std::string::npos);
  c = small_run(root + "/model", dir + "/scores.csv", dir + "/bad2");
  c.columns = {"sentence1", "sentence2"};
  c.loss.kind = LossKind::Triplet;
  EXPECT_NE(error_of([&] { run_training(c, *be); }).find("takes 3 text columns"),
            std::string::npos);
  write_text_atomic(dir + "/badlabel.csv", "sentence1,sentence2,score\nx,y,high\n");
  EXPECT_NE(error_of([&] {
              read_text_dataset(dir + "/badlabel.csv", {"sentence1", "sentence2"});
            }).find("badlabel.csv:2: column 'score' must be a number"),
            std::string::npos);
}

TEST(Checkpoint, PartialFoldersAreIgnoredAndPruned) {
  std::string out = temp_dir("ckpt");
  auto be = make_cpu_backend();
  Param p{"w", cpu_from({1, 2, 3}, {3}), Tensor{}, true, Tensor{}, Tensor{}};
  std::vector<Param*> ps{&p};
  OptimizerState opt{{cpu_zeros({3})}, {cpu_zeros({3})}};
  TrainerState st;
  st.settings = {{"seed", 1}};
  for (int step : {2, 4, 6}) {
    st.step = step;
    save_checkpoint(*be, out + "/checkpoints/checkpoint-" + std::to_string(step), ps, opt, st);
  }
  fs::create_directories(out + "/checkpoints/checkpoint-8.partial");
  EXPECT_EQ(latest_checkpoint(out), out + "/checkpoints/checkpoint-6");
  prune_checkpoints(out, 2);
  EXPECT_FALSE(dir_exists(out + "/checkpoints/checkpoint-2"));
  EXPECT_TRUE(dir_exists(out + "/checkpoints/checkpoint-4"));
  p.value.f32()[0] = 9;
  TrainerState st2;
  st2.settings = st.settings;
  load_checkpoint(*be, out + "/checkpoints/checkpoint-6", ps, opt, st2);
  EXPECT_EQ(st2.step, 6);
  EXPECT_EQ(p.value.f32()[0], 1.0f);
}

}  // namespace
}  // namespace et::test
