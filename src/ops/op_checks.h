// Argument checks shared by the backends for ops whose operands are column ranges of 2-D
// tensors: one definition of what a valid call is, so the CPU and CUDA backends reject the same
// calls with the same message.
#pragma once

#include "core/error.h"
#include "core/tensor.h"

namespace et {

// rope_columns: heads * head_dim columns from src_col of src to dst_col of dst, T rows.
inline void check_rope_columns(const Tensor& src, int64_t src_col, const Tensor& dst,
                               int64_t dst_col, int64_t T, int heads, int head_dim) {
  const int64_t w = int64_t{heads} * head_dim;
  ET_CHECK(head_dim % 2 == 0 && src.dim(0) == T && dst.dim(0) == T && src_col + w <= src.dim(1) &&
               dst_col + w <= dst.dim(1),
           "rope: ", heads, " x ", head_dim, " columns from ", src_col, " of ",
           shape_str(src.shape), " to ", dst_col, " of ", shape_str(dst.shape), " for ", T,
           " positions");
}

// copy_columns: `width` columns from src_col of src to dst_col of dst, same rows.
inline void check_copy_columns(const Tensor& src, int64_t src_col, const Tensor& dst,
                               int64_t dst_col, int64_t width) {
  ET_CHECK(
      dst.dim(0) == src.dim(0) && src_col + width <= src.dim(1) && dst_col + width <= dst.dim(1),
      "copy_columns: ranges do not fit ", shape_str(src.shape), " -> ", shape_str(dst.shape));
}

// glu_packed_*: gate_up (and its gradient) [T, 2F] beside y or dy [T, F].
inline void check_glu_packed(const char* op, const Tensor& gate_up, const Tensor& y) {
  ET_CHECK(gate_up.ndim() == 2 && y.ndim() == 2 && gate_up.dim(0) == y.dim(0) &&
               gate_up.dim(1) == 2 * y.dim(1),
           op, ": ", shape_str(gate_up.shape), " is not [T, 2 x ", y.dim(y.ndim() - 1), "] for ",
           shape_str(y.shape));
}

// diagonal_cross_entropy: logits [R, C] with C >= R, loss [R], dlogits like logits.
inline void check_diagonal_cross_entropy(const Tensor& logits, const Tensor& loss,
                                         const Tensor& dlogits) {
  ET_CHECK(logits.ndim() == 2 && logits.dim(1) >= logits.dim(0), "diagonal_cross_entropy: logits ",
           shape_str(logits.shape), " must be [rows, columns] with at least as many columns");
  ET_CHECK(loss.numel() == logits.dim(0) && dlogits.numel() == logits.numel(),
           "diagonal_cross_entropy: outputs ", shape_str(loss.shape), " and ",
           shape_str(dlogits.shape), " do not match logits ", shape_str(logits.shape));
}

}  // namespace et
