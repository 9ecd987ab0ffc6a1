// Retrieval evaluation: exact top-k search and InformationRetrievalEvaluator's metrics on the
// ir_metrics fixture (30 queries, 300 documents).
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "eval/ir_metrics.h"
#include "eval/search.h"
#include "fixtures.h"
#include "io/retrieval_data.h"
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
    for (const auto& doc : exp["relevant_docs"][(
             std::snprintf(qid, sizeof(qid), "q%lld", static_cast<long long>(i)), qid)])
      rel[i].insert(std::stoi(doc.get<std::string>().substr(1)));
  json got = ir_metrics(ranked, rel, ks);
  int checked = 0;
  for (auto it = exp["metrics"].begin(); it != exp["metrics"].end(); ++it) {
    ASSERT_TRUE(got.contains(it.key())) << it.key();
    for (auto kv = it->begin(); kv != it->end(); ++kv) {
      EXPECT_NEAR(got[it.key()][kv.key()].get<double>(), kv->get<double>(), 1e-9)
          << it.key() << " " << kv.key();
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

namespace et::test {
namespace {

TEST(Eval, BeirFolderAndPairsFile) {
  std::string dir = temp_dir("beir");
  make_dirs(dir + "/qrels");
  write_text_atomic(dir + "/corpus.jsonl",
                    "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"first\"}\n"
                    "{\"_id\": 7, \"text\": \"second\"}\n");
  write_text_atomic(
      dir + "/queries.jsonl",
      "{\"_id\": \"q1\", \"text\": \"which\"}\n{\"_id\": \"q2\", \"text\": \"none\"}\n");
  write_text_atomic(dir + "/qrels/test.tsv",
                    "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t7\t2\nq2\td1\t0\n");
  RetrievalSet r = read_retrieval_set(dir, "test");
  ASSERT_EQ(r.queries.size(), 1u);  // q2's only judgement has score 0
  EXPECT_EQ(r.docs[0], "T first");
  EXPECT_EQ(r.relevant[0], (std::set<int32_t>{0, 1}));
  write_text_atomic(dir + "/qrels/dev.tsv", "q1\tmissing\t1\n");
  EXPECT_THROW(read_retrieval_set(dir, "dev"), Error);
  EXPECT_THROW(read_retrieval_set(dir, "train"), Error);
  write_text_atomic(
      dir + "/pairs.jsonl",
      "{\"anchor\": \"a\", \"positive\": \"p\"}\n{\"anchor\": \"b\", \"positive\": \"p\"}\n"
      "{\"anchor\": \"c\", \"positive\": \"x\"}\n");
  RetrievalSet p = read_retrieval_set(dir + "/pairs.jsonl");
  EXPECT_EQ(p.queries.size(), 3u);
  EXPECT_EQ(p.docs.size(), 2u);  // duplicate passages are one document
  EXPECT_EQ(p.relevant[1], (std::set<int32_t>{0}));
}

TEST(Eval, CliComparesWithBaseline) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary";
  std::string dir = temp_dir("eval_cli");
  std::string rows;
  char a[64], p[64];
  for (int i = 0; i < 20; ++i) {
    std::snprintf(a, sizeof(a), "w%d w%d", i, i + 100);
    std::snprintf(p, sizeof(p), "w%d w%d w%d", i, i + 200, i + 300);
    rows += json{{"anchor", a}, {"positive", p}}.dump() + "\n";
  }
  write_text_atomic(dir + "/pairs.jsonl", rows);
  std::string out;
  ASSERT_EQ(run_command(embedtune_bin() + " eval --model " + root + "/model --baseline-model " +
                            root + "/model_saved_by_reference --data " + dir +
                            "/pairs.jsonl --output " + dir + "/r.json",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("ndcg@10"), std::string::npos) << out;
  json r = read_json_file(dir + "/r.json");
  // the same model in both layouts: identical metrics
  EXPECT_EQ(r["result"]["metrics"], r["baseline"]["metrics"]);
  EXPECT_EQ(r["queries"], 20);
}

}  // namespace
}  // namespace et::test
