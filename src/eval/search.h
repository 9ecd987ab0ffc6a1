// Exact top-k search by cosine (or dot product) over a corpus of embeddings, in chunks so that
// a corpus of millions of documents needs memory for one chunk of scores at a time.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/backend.h"

namespace et {

// queries [Q, d], corpus [N, d] (host F32). Returns for each query the indices of its top k
// documents, best first. `cosine` normalises both sides first.
std::vector<std::vector<int32_t>> exact_top_k(const Backend& be, const Tensor& queries,
                                              const Tensor& corpus, int k, bool cosine,
                                              int64_t chunk = 65536);

}  // namespace et
