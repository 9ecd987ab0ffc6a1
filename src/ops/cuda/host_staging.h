// Asynchronous host -> device copies of small tables (token ids, positions, sequence and tile
// lists, loss gradients) through a ring of page-locked slots, and device -> host reads of small
// results (loss terms, gradient norms) through page-locked slots held until read.
//
// A cudaMemcpy from pageable memory waits for all work queued before it, so every small upload
// in a step (tens per step: one tile list per attention call, ids, pooling tables) drained the
// GPU's queue and the host then refilled it launch by launch. Here the bytes are copied into
// a pinned slot and sent with cudaMemcpyAsync on the default stream, ordered after the work
// already queued without waiting for it. A slot is reused only after the copy that last read
// it has completed (its event); larger copies (weights, dropout masks) take the plain path.
#pragma once

#include <cstddef>
#include <memory>
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

  // Reads: a slot belongs to one PendingRead from its copy until it is read or dropped.
  static constexpr size_t kReadSlotBytes = size_t{64} << 10;
  static constexpr int kReadSlots = 32;
  char* read_pinned = nullptr;         // kReadSlots x kReadSlotBytes, allocated on first use
  std::vector<cudaEvent_t> read_done;  // per slot: recorded after its copy
  std::vector<bool> read_busy;

  HostStaging() = default;
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  ~HostStaging();
};

// dst (device) <- src (host), n bytes, ordered on the default stream. Returns when src may be
// reused: at once for copies of up to kSlotBytes, after the copy for larger ones.
void upload_bytes(HostStaging& st, void* dst, const void* src, size_t n);

// A device -> host copy queued on the default stream behind the work already there. read()
// waits for that copy alone (an event), not for work queued after it; the slot is freed when
// the PendingRead is destroyed.
struct PendingRead {
  std::shared_ptr<HostStaging> st;
  int slot = -1;
  size_t n = 0;
  void read(void* dst) const;  // n bytes into dst (may be called more than once)
  ~PendingRead();
};

// n bytes of device memory src; null when n exceeds kReadSlotBytes or every slot is held
// (the caller then copies synchronously).
std::shared_ptr<PendingRead> read_bytes_async(const std::shared_ptr<HostStaging>& st,
                                              const void* src, size_t n);

}  // namespace et::cuda
