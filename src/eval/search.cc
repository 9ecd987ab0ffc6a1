#include "eval/search.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "core/error.h"

namespace et {

static Tensor normalized(const Tensor& x) {
  Tensor y = cpu_clone(x);
  const int64_t n = x.dim(0), d = x.dim(1);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < d; ++j)
      s += static_cast<double>(y.f32()[i * d + j]) * y.f32()[i * d + j];
    const float inv = static_cast<float>(1.0 / std::max(std::sqrt(s), 1e-12));
    for (int64_t j = 0; j < d; ++j) y.f32()[i * d + j] *= inv;
  }
  return y;
}

std::vector<std::vector<int32_t>> exact_top_k(const Backend& be, const Tensor& queries,
                                              const Tensor& corpus, int k, bool cosine,
                                              int64_t chunk) {
  ET_CHECK(queries.ndim() == 2 && corpus.ndim() == 2 && queries.dim(1) == corpus.dim(1),
           "search: queries ", shape_str(queries.shape), " and corpus ", shape_str(corpus.shape),
           " must be [n, d] with the same d");
  const int64_t nq = queries.dim(0), n = corpus.dim(0);
  Tensor q = be.upload(cosine ? normalized(queries) : queries);
  // per query: a heap of the best k (score, index) so far whose top is the worst of them;
  // higher score first, ties by lower index
  using Hit = std::pair<float, int32_t>;
  auto better = [](const Hit& a, const Hit& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  using Heap = std::priority_queue<Hit, std::vector<Hit>, decltype(better)>;
  std::vector<Heap> heaps(static_cast<size_t>(nq), Heap(better));
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = std::min(n, c0 + chunk);
    Tensor part = corpus.rows(c0, c1);
    Tensor dev = be.upload(cosine ? normalized(part) : cpu_clone(part));
    Tensor scores = be.empty({nq, c1 - c0}, DType::F32);
    be.matmul(q, false, dev, true, scores);
    Tensor h = be.download(scores);
    for (int64_t i = 0; i < nq; ++i) {
      auto& heap = heaps[i];
      for (int64_t j = 0; j < c1 - c0; ++j) {
        Hit hit{h.f32()[i * (c1 - c0) + j], static_cast<int32_t>(c0 + j)};
        if (static_cast<int>(heap.size()) < k) {
          heap.push(hit);
        } else if (better(hit, heap.top())) {
          heap.pop();
          heap.push(hit);
        }
      }
    }
  }
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(nq));
  for (int64_t i = 0; i < nq; ++i) {
    std::vector<Hit> hits;
    while (!heaps[i].empty()) {
      hits.push_back(heaps[i].top());
      heaps[i].pop();
    }
    std::sort(hits.begin(), hits.end(), better);
    for (const Hit& h : hits) out[i].push_back(h.second);
  }
  return out;
}

}  // namespace et
