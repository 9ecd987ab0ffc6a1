// Asynchronous host -> device copies of small tables (token ids, positions, sequence and tile
// lists, loss gradients) through a ring of page-locked slots.
//
// A cudaMemcpy from pageable memory waits for all work queued before it, so every small upload
// in a step (tens per step: one tile list per attention call, ids, pooling tables) drained the
// GPU's queue and the host then refilled it launch by launch. Here the bytes are copied into
// a pinned slot and sent with cudaMemcpyAsync on the default stream, ordered after the work
// already queued without waiting for it. A slot is reused only after the copy that last read
// it has completed (its event); larger copies (weights, dropout masks) take the plain path.
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

#include <cuda_runtime.h>

namespace et::cuda {

struct HostStaging {
  static constexpr size_t kSlotBytes = size_t{1} << 20;
  static constexpr int kSlots = 16;

  std::mutex mu;
  char* pinned = nullptr;         // kSlots x kSlotBytes, allocated on first use
  std::vector<cudaEvent_t> done;  // per slot: recorded after the copy that read it
  int next = 0;

  HostStaging() = default;
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  ~HostStaging();
};

// dst (device) <- src (host), n bytes, ordered on the default stream. Returns when src may be
// reused: at once for copies of up to kSlotBytes, after the copy for larger ones.
void upload_bytes(HostStaging& st, void* dst, const void* src, size_t n);

}  // namespace et::cuda
