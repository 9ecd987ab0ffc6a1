#include "train/sampler.h"

#include <list>
#include <string_view>
#include <unordered_set>

#include "core/error.h"
#include "core/rng.h"

namespace et {

BatchSampler parse_batch_sampler(const std::string& n) {
  if (n == "batch_sampler" || n == "batch") return BatchSampler::Batch;
  if (n == "no_duplicates") return BatchSampler::NoDuplicates;
  fail("batch_sampler '", n, "' is not one of batch_sampler, no_duplicates");
}

std::vector<std::vector<int32_t>> epoch_batches(const TextDataset& ds, int batch_size,
                                                BatchSampler sampler, uint64_t seed, int epoch,
                                                bool drop_last) {
  ET_CHECK(batch_size > 0, "batch size must be positive");
  std::vector<int32_t> order(ds.rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  Rng rng(seed * 1000003ULL + static_cast<uint64_t>(epoch));
  rng.shuffle(order);
  std::vector<std::vector<int32_t>> out;
  if (sampler == BatchSampler::Batch) {
    for (size_t i = 0; i < order.size(); i += batch_size) {
      std::vector<int32_t> b(order.begin() + i,
                             order.begin() + std::min(order.size(), i + batch_size));
      if (static_cast<int>(b.size()) == batch_size || !drop_last) out.push_back(std::move(b));
    }
    return out;
  }
  // NO_DUPLICATES, as sentence-transformers' NoDuplicatesBatchSampler: walk the remaining rows
  // in order, skip a row sharing any text with the batch, close the batch when full; skipped
  // rows wait for a later batch.
  std::list<int32_t> remaining(order.begin(), order.end());
  while (!remaining.empty()) {
    std::unordered_set<std::string_view> seen;
    std::vector<int32_t> batch;
    for (auto it = remaining.begin();
         it != remaining.end() && static_cast<int>(batch.size()) < batch_size;) {
      const auto& row = ds.rows[*it];
      bool dup = false;
      for (const auto& t : row) dup |= seen.count(t) > 0;
      if (dup) {
        ++it;
        continue;
      }
      for (const auto& t : row) seen.insert(t);
      batch.push_back(*it);
      it = remaining.erase(it);
    }
    if (static_cast<int>(batch.size()) == batch_size || !drop_last) out.push_back(std::move(batch));
  }
  return out;
}

}  // namespace et
