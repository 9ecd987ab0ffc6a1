// Retrieval metrics exactly as sentence-transformers' InformationRetrievalEvaluator computes
// them from each query's ranked hits (binary relevance):
//   accuracy@k  = 1 if any relevant document is in the top k
//   precision@k = relevant in top k / k;   recall@k = relevant in top k / |relevant|
//   MRR@k       = 1 / rank of the first relevant document within the top k (else 0)
//   NDCG@k      = sum_{i<k} rel_i / log2(i + 2), over the same sum for an ideal ranking of
//                 |relevant| ones (cut at k)
//   MAP@k       = sum over relevant hits in the top k of (hits so far / rank), divided by
//                 min(k, |relevant|)
// each averaged over queries. Default k lists: accuracy, precision, recall 1/3/5/10; MRR and
// NDCG 10; MAP 100.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "io/files.h"

namespace et {

struct IrKs {
  std::vector<int> accuracy{1, 3, 5, 10}, precision_recall{1, 3, 5, 10}, mrr{10}, ndcg{10},
      map{100};
  int max_k() const;
};

// ranked[q] = document indices of query q, best first (at least max_k of them, or all);
// relevant[q] = the relevant document indices. Returns {"accuracy@k": {"1": v, ...}, ...}.
json ir_metrics(const std::vector<std::vector<int32_t>>& ranked,
                const std::vector<std::set<int32_t>>& relevant, const IrKs& ks = {});

}  // namespace et
