#include "eval/evaluate.h"

#include "eval/search.h"

namespace et {

json evaluate_retrieval(const Backend& be, const SentenceModel& m, const RetrievalSet& data,
                        const RetrievalEvalOptions& o) {
  auto progress = [&](const char* what, int64_t total) -> std::function<void(int64_t)> {
    if (!o.progress) return {};
    return [&o, what, total](int64_t done) { o.progress(what, done, total); };
  };
  Tensor q = embed_texts(be, m, data.queries, o.query_prompt, o.batch_size,
                         progress("queries", static_cast<int64_t>(data.queries.size())));
  Tensor d = embed_texts(be, m, data.docs, o.document_prompt, o.batch_size,
                         progress("corpus", static_cast<int64_t>(data.docs.size())));
  IrKs ks;
  return ir_metrics(exact_top_k(be, q, d, ks.max_k(), m.similarity_fn_name != "dot"), data.relevant,
                    ks);
}

}  // namespace et
