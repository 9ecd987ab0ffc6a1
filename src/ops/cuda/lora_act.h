// A LoRA Linear's rank-r term added inside the pass of the activation beside it, instead of by a
// rank-r product of its own (Backend::lora_act_forward, lora_act_backward, lora_glu_backward):
//   forward:       pre += s xa B^T (rounded to bf16), then y = act(pre)   xa [n, r], B [f, r]
//   backward:      dx = (dy + dxa A) act'(x)                               dxa [n, r], A [r, f]
//   GLU backward:  d = dy + dxa A;  dg = d u act'(g),  du = d act(g)
// over [n, f] bf16 tensors (dx may be dy; g, u, dg, du, and pre and y, at row pitch ld: the
// halves of a packed [n, 2f] gate | up have ld = 2f; dy is contiguous). As a product of its own,
// the rank-r term writes the [n, f] tensor once more and the base product's epilogue reads it
// back; here each 64 x 128 tile the activation's pass holds in shared memory gets its term from
// one tensor-core product over the tile's rows of xa and columns of B (or A).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

namespace et::cuda {

enum class LoraActMode : int { Forward = 0, Backward = 1, GluBackward = 2 };

struct LoraActArgs {
  __nv_bfloat16* pre = nullptr;       // forward: pre, read and rewritten; backward: x (or g)
  const __nv_bfloat16* up = nullptr;  // GLU backward: u
  __nv_bfloat16* y = nullptr;         // forward: act(pre); backward: dx (may be dy), or dg
  __nv_bfloat16* y2 = nullptr;        // GLU backward: du
  const __nv_bfloat16* dy = nullptr;  // backward: [n, f], contiguous
  const __nv_bfloat16* xr = nullptr;  // [n, r]: xa (forward) or dxa (backward)
  const __nv_bfloat16* w = nullptr;   // B [f, r] (forward) or A [r, f] (backward)
  int64_t n = 0, ld = 0;              // ld: row pitch of pre, up, y and y2 (>= f)
  int64_t ldy = 0;  // forward: y's own row pitch (a Linear's input with spare columns); 0: ld
  int f = 0, r = 0;
  float scale = 1.0f;  // s (forward); backward takes dxa with s in it already
  int act = 0;         // et::Act as int (ops/cuda/activation.cuh)
  LoraActMode mode = LoraActMode::Forward;
};

// Whether the kernel is built for this activation and rank (ReLU, GELU erf or tanh, SiLU; ranks
// 16 and 32): Backend::fuses_lora_act.
bool lora_act_takes(int act, int r);
// Whether lora_act runs these operands (ReLU, GELU erf or tanh, SiLU; ranks 16 and 32; f and ld
// multiples of 8; every operand 16-byte aligned); the caller runs the product and the
// activation's own pass otherwise.
bool lora_act_supported(const LoraActArgs& a);
void lora_act(const LoraActArgs& a);

}  // namespace et::cuda
