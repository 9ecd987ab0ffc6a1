// Retrieval evaluation of a model on a RetrievalSet: embed queries and corpus, rank the corpus
// for each query exactly (cosine, or dot for dot-product models), and compute the
// InformationRetrievalEvaluator metrics. Shared by `embedtune eval` and the trainer.
#pragma once

#include <functional>
#include <string>

#include "eval/ir_metrics.h"
#include "io/retrieval_data.h"
#include "model/sentence_model.h"

namespace et {

struct RetrievalEvalOptions {
  std::string query_prompt, document_prompt;
  int batch_size = 64;
  // called with ("queries" | "corpus", texts done, texts total) while embedding
  std::function<void(const char*, int64_t, int64_t)> progress;
};

json evaluate_retrieval(const Backend& be, const SentenceModel& m, const RetrievalSet& data,
                        const RetrievalEvalOptions& o = {});

}  // namespace et
