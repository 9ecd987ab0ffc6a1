// The two products of a LoRA Linear's backward that read its output gradient, in one pass over
// it (Backend::lora_output_grad):
//   dxa = s g B       [n, r] bf16, written (or its transpose [r, n])
//   dB += s g^T xa    [out, r] fp32, accumulated (when db is given)
// g [n, out] and B [out, r] bf16, xa [n, r] bf16 (or its transpose [r, n]). cuBLAS runs them as
// two products that each read all of g, the largest operand by far (out / r times either
// factor); here each block streams its rows of g through shared memory once and feeds both
// tensor-core products from the same tile.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

namespace et::cuda {

struct LoraOutputGradArgs {
  const __nv_bfloat16* g = nullptr;   // [n, out] at row pitch g_ld
  const __nv_bfloat16* b = nullptr;   // [out, r]
  const __nv_bfloat16* xa = nullptr;  // [n, r], or [r, n] when xa_transposed (at row pitch xa_ld)
  __nv_bfloat16* dxa = nullptr;       // [n, r], or [r, n] when dxa_transposed (pitch dxa_ld)
  float* db = nullptr;                // [out, r] fp32, accumulated; null: not trainable
  int64_t n = 0;
  // row pitches (elements) of g (>= out, a multiple of 8), xa and dxa (>= r, or >= n transposed):
  // a group's operands may be strided views (column ranges of its shared buffers)
  int64_t g_ld = 0, xa_ld = 0, dxa_ld = 0;
  int out = 0, r = 0;
  float scale = 1.0f;
  bool xa_transposed = false, dxa_transposed = false;
};

// Whether lora_output_grad runs these operands (ranks 16 and 32; out a multiple of 8; g and B
// 16-byte aligned); the caller runs the two products otherwise.
bool lora_output_grad_supported(const LoraOutputGradArgs& a);
void lora_output_grad(const LoraOutputGradArgs& a);

// The A gradient of a LoRA Linear whose input act(x), or a GLU's act(x) * up, was not kept
// (Backend::lora_act_input_grad):
//   da [r, in] fp32 += dxa^T act(x)  or  dxa^T (act(x) * up)
// x, up [n, in] bf16 at row pitch ld (the halves of a packed [n, 2 in] gate | up: ld = 2 in),
// dxa [n, r] bf16. The input is formed tile by tile in shared memory, rounded to bf16 as the
// materialised input of the other path would be, so the product sees the same operands: this
// saves writing the [n, in] input and reading it back (the FFN backwards recompute it only for
// this product).
struct LoraActGradArgs {
  const __nv_bfloat16* x = nullptr;    // [n, in], row pitch ld
  const __nv_bfloat16* up = nullptr;   // [n, in], row pitch ld; null: no GLU
  const __nv_bfloat16* dxa = nullptr;  // [n, r]
  float* da = nullptr;                 // [r, in] fp32, accumulated
  int64_t n = 0, ld = 0;
  int in = 0, r = 0;
  int act = 0;  // et::Act as int (ops/cuda/activation.cuh)
};

// Whether lora_act_grad runs these operands (ReLU, GELU erf or tanh, SiLU; ranks 16 and 32; in
// and ld multiples of 8; x and up 16-byte aligned); the caller materialises the input and runs
// the product otherwise.
bool lora_act_grad_supported(const LoraActGradArgs& a);
void lora_act_grad(const LoraActGradArgs& a);

}  // namespace et::cuda
