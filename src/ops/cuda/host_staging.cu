#include "ops/cuda/host_staging.h"

#include <cstring>

#include "ops/cuda/cuda_common.h"

namespace et::cuda {

HostStaging::~HostStaging() {
  for (cudaEvent_t e : done) cudaEventDestroy(e);
  for (cudaEvent_t e : read_done) cudaEventDestroy(e);
  if (pinned) cudaFreeHost(pinned);
  if (read_pinned) cudaFreeHost(read_pinned);
}

void upload_bytes(HostStaging& st, void* dst, const void* src, size_t n) {
  if (n == 0) return;
  if (n > HostStaging::kSlotBytes) {
    ET_CUDA(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
    return;
  }
  std::lock_guard<std::mutex> g(st.mu);
  if (!st.pinned) {
    ET_CUDA(cudaMallocHost(&st.pinned, HostStaging::kSlotBytes * HostStaging::kSlots));
    st.done.resize(HostStaging::kSlots);
    for (cudaEvent_t& e : st.done) ET_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    for (cudaEvent_t e : st.done) ET_CUDA(cudaEventRecord(e, 0));
  }
  const int slot = st.next;
  st.next = (st.next + 1) % HostStaging::kSlots;
  // the copy that used this slot kSlots uploads ago must have read it (almost always done)
  ET_CUDA(cudaEventSynchronize(st.done[slot]));
  char* buf = st.pinned + static_cast<size_t>(slot) * HostStaging::kSlotBytes;
  std::memcpy(buf, src, n);
  ET_CUDA(cudaMemcpyAsync(dst, buf, n, cudaMemcpyHostToDevice, 0));
  ET_CUDA(cudaEventRecord(st.done[slot], 0));
}

std::shared_ptr<PendingRead> read_bytes_async(const std::shared_ptr<HostStaging>& st,
                                              const void* src, size_t n) {
  if (n > HostStaging::kReadSlotBytes) return nullptr;
  std::lock_guard<std::mutex> g(st->mu);
  if (!st->read_pinned) {
    ET_CUDA(
        cudaMallocHost(&st->read_pinned, HostStaging::kReadSlotBytes * HostStaging::kReadSlots));
    st->read_done.resize(HostStaging::kReadSlots);
    for (cudaEvent_t& e : st->read_done)
      ET_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    st->read_busy.assign(HostStaging::kReadSlots, false);
  }
  int slot = 0;
  while (slot < HostStaging::kReadSlots && st->read_busy[slot]) ++slot;
  if (slot == HostStaging::kReadSlots) return nullptr;
  st->read_busy[slot] = true;
  auto r = std::make_shared<PendingRead>();
  r->st = st;
  r->slot = slot;
  r->n = n;
  if (n > 0) {
    char* buf = st->read_pinned + static_cast<size_t>(slot) * HostStaging::kReadSlotBytes;
    ET_CUDA(cudaMemcpyAsync(buf, src, n, cudaMemcpyDeviceToHost, 0));
  }
  ET_CUDA(cudaEventRecord(st->read_done[slot], 0));
  return r;
}

void PendingRead::read(void* dst) const {
  ET_CUDA(cudaEventSynchronize(st->read_done[slot]));
  if (n > 0)
    std::memcpy(dst, st->read_pinned + static_cast<size_t>(slot) * HostStaging::kReadSlotBytes, n);
}

PendingRead::~PendingRead() {
  if (!st) return;
  // a slot dropped unread may still be the target of its copy: wait before handing it on
  cudaEventSynchronize(st->read_done[slot]);
  std::lock_guard<std::mutex> g(st->mu);
  st->read_busy[slot] = false;
}

}  // namespace et::cuda
