#include "eval/ir_metrics.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace et {

int IrKs::max_k() const {
  int k = 0;
  for (const auto* v : {&accuracy, &precision_recall, &mrr, &ndcg, &map})
    for (int x : *v) k = std::max(k, x);
  return k;
}

static double dcg(const std::vector<int>& rel, int k) {
  double s = 0;
  for (int i = 0; i < std::min<int>(k, static_cast<int>(rel.size())); ++i)
    s += rel[i] / std::log2(i + 2.0);
  return s;
}

json ir_metrics(const std::vector<std::vector<int32_t>>& ranked,
                const std::vector<std::set<int32_t>>& relevant, const IrKs& ks) {
  ET_CHECK(ranked.size() == relevant.size(), "ir_metrics: ", ranked.size(), " rankings for ",
           relevant.size(), " queries");
  const size_t nq = ranked.size();
  ET_CHECK(nq > 0, "ir_metrics: no queries");
  std::map<int, double> acc, prec, rec, mrr, ndcg, map;
  for (size_t q = 0; q < nq; ++q) {
    const auto& hits = ranked[q];
    const auto& rel = relevant[q];
    ET_CHECK(!rel.empty(), "ir_metrics: query ", q, " has no relevant document");
    auto is_rel = [&](size_t i) { return i < hits.size() && rel.count(hits[i]) > 0; };
    for (int k : ks.accuracy) {
      bool any = false;
      for (int i = 0; i < k; ++i) any |= is_rel(i);
      acc[k] += any;
    }
    for (int k : ks.precision_recall) {
      int n = 0;
      for (int i = 0; i < k; ++i) n += is_rel(i);
      prec[k] += static_cast<double>(n) / k;
      rec[k] += static_cast<double>(n) / static_cast<double>(rel.size());
    }
    for (int k : ks.mrr) {
      for (int i = 0; i < k; ++i)
        if (is_rel(i)) {
          mrr[k] += 1.0 / (i + 1);
          break;
        }
    }
    for (int k : ks.ndcg) {
      std::vector<int> predicted;
      for (int i = 0; i < k && i < static_cast<int>(hits.size()); ++i)
        predicted.push_back(is_rel(i));
      ndcg[k] += dcg(predicted, k) / dcg(std::vector<int>(rel.size(), 1), k);
    }
    for (int k : ks.map) {
      int correct = 0;
      double sum = 0;
      for (int i = 0; i < k && i < static_cast<int>(hits.size()); ++i)
        if (is_rel(i)) sum += static_cast<double>(++correct) / (i + 1);
      map[k] += sum / std::min<double>(k, static_cast<double>(rel.size()));
    }
  }
  auto avg = [&](const std::map<int, double>& m) {
    json j = json::object();
    for (const auto& [k, v] : m) j[std::to_string(k)] = v / static_cast<double>(nq);
    return j;
  };
  return {{"accuracy@k", avg(acc)}, {"precision@k", avg(prec)}, {"recall@k", avg(rec)},
          {"mrr@k", avg(mrr)},      {"ndcg@k", avg(ndcg)},      {"map@k", avg(map)}};
}

}  // namespace et
