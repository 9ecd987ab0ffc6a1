// Retrieval evaluation: exact top-k search and InformationRetrievalEvaluator's metrics on the
// ir_metrics fixture (30 queries, 300 documents).
#include <gtest/gtest.h>

#include <random>

#include "eval/ir_metrics.h"
#include "eval/search.h"
#include "fixtures.h"
#include "io/safetensors.h"
#include "ops/cpu/cpu_backend.h"

namespace et::test {
namespace {

TEST(Eval, MetricsMatchInformationRetrievalEvaluator) {
  std::string dir = fixtures_root() + "/ir_metrics";
  SKIP_WITHOUT_FIXTURES(dir);
  TensorFile emb = read_safetensors(dir + "/embeddings.safetensors");
  json exp = read_json_file(dir + "/expected.json");
  Tensor q = to_f32(emb.at("queries")), c = to_f32(emb.at("corpus"));
  auto be = make_cpu_backend();
  IrKs ks;
  const json& d = exp["defaults"];
  ks.accuracy = d["accuracy_at_k"].get<std::vector<int>>();
  ks.precision_recall = d["precision_recall_at_k"].get<std::vector<int>>();
  ks.mrr = d["mrr_at_k"].get<std::vector<int>>();
  ks.ndcg = d["ndcg_at_k"].get<std::vector<int>>();
  ks.map = d["map_at_k"].get<std::vector<int>>();
  // chunks smaller than the corpus exercise the streaming top-k
  auto ranked = exact_top_k(*be, q, c, ks.max_k(), exp["similarity"] == "cosine", 64);
  std::vector<std::set<int32_t>> rel(static_cast<size_t>(q.dim(0)));
  char qid[32];  // (snprintf: string concatenation trips GCC 12's -Wrestrict bug 105329)
  for (int64_t i = 0; i < q.dim(0); ++i)
    for (const auto& doc : exp["relevant_docs"][(std::snprintf(qid, sizeof(qid), "q%lld", static_cast<long long>(i)), qid)])
      rel[i].insert(std::stoi(doc.get<std::string>().substr(1)));
  json got = ir_metrics(ranked, rel, ks);
  int checked = 0;
  for (auto it = exp["metrics"].begin(); it != exp["metrics"].end(); ++it) {
    ASSERT_TRUE(got.contains(it.key())) << it.key();
    for (auto kv = it->begin(); kv != it->end(); ++kv) {
      EXPECT_NEAR(got[it.key()][kv.key()].get<double>(), kv->get<double>(), 1e-9) << it.key() << " " << kv.key();
      ++checked;
    }
  }
  EXPECT_GE(checked, 15);
}

TEST(Eval, TopKMatchesFullSort) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  Tensor q = cpu_empty({7, 12}), c = cpu_empty({1000, 12});
  for (int64_t i = 0; i < q.numel(); ++i) q.f32()[i] = nd(rng);
  for (int64_t i = 0; i < c.numel(); ++i) c.f32()[i] = nd(rng);
  auto be = make_cpu_backend();
  auto got = exact_top_k(*be, q, c, 25, false, 97);
  for (int64_t i = 0; i < 7; ++i) {
    std::vector<std::pair<float, int32_t>> all;
    for (int32_t j = 0; j < 1000; ++j) {
      float s = 0;
      for (int t = 0; t < 12; ++t) s += q.f32()[i * 12 + t] * c.f32()[j * 12 + t];
      all.emplace_back(-s, j);
    }
    std::sort(all.begin(), all.end());
    ASSERT_EQ(got[i].size(), 25u);
    for (int r = 0; r < 25; ++r) EXPECT_EQ(got[i][r], all[r].second) << i << " rank " << r;
  }
}

}  // namespace
}  // namespace et::test
