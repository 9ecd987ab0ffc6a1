#include "ops/cuda/host_staging.h"

#include <cstring>

#include "ops/cuda/cuda_common.h"

namespace et::cuda {

HostStaging::~HostStaging() {
  for (cudaEvent_t e : done) cudaEventDestroy(e);
  if (pinned) cudaFreeHost(pinned);
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

}  // namespace et::cuda
