// Batch samplers of sentence-transformers: the plain one (shuffled rows in fixed-size batches)
// and NO_DUPLICATES (no text appears twice in a batch, which would make in-batch negatives
// false negatives). The order of an epoch depends only on (seed, epoch), so a resumed run
// replays exactly the batches it would have seen.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/dataset.h"

namespace et {

enum class BatchSampler { Batch, NoDuplicates };

BatchSampler parse_batch_sampler(const std::string& name);
std::vector<std::vector<int32_t>> epoch_batches(const TextDataset& ds, int batch_size,
                                                BatchSampler sampler, uint64_t seed, int epoch,
                                                bool drop_last);

}  // namespace et
