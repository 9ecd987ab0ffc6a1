// Tensor views: row ranges, strided column views (Tensor::pitch) and the CPU matrix product on
// them, against the same product of contiguous copies.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"
#include "fixtures.h"
#include "ops/cpu/cpu_backend.h"

namespace et::test {
namespace {

TEST(Tensor, StridedViewsKeepTheirPitchAndRefuseContiguousUse) {
  Rng rng(7);
  Tensor full = uniform_tensor(rng, {5, 16});
  const Tensor v = full.leading_cols(13);
  EXPECT_EQ(v.shape, (Shape{5, 13}));
  EXPECT_EQ(v.pitch, 16);
  EXPECT_EQ(v.row_pitch(), 16);
  EXPECT_EQ(full.leading_cols(16).pitch, 0);  // all columns: contiguous again
  // rows of a strided view start a pitch apart, not a row of the view apart
  const Tensor r = v.rows(2, 4);
  EXPECT_EQ(r.shape, (Shape{2, 13}));
  EXPECT_EQ(static_cast<const float*>(r.data), full.f32() + 2 * 16);
  EXPECT_EQ(static_cast<const float*>(full.rows(3, 5).data), full.f32() + 3 * 16);
  // element-wise access, copies and reshapes would read the gaps: refused with the shape
  EXPECT_THROW(v.f32(), Error);
  EXPECT_THROW(v.reshape({65}), Error);
  EXPECT_THROW(cpu_clone(v), Error);
  EXPECT_THROW(full.leading_cols(17), Error);
  // a column range starts at its first column and keeps the pitch
  const Tensor c = full.column_view(13, 16);
  EXPECT_EQ(c.shape, (Shape{5, 3}));
  EXPECT_EQ(c.pitch, 16);
  EXPECT_EQ(static_cast<const float*>(c.rows(1, 2).data), full.f32() + 16 + 13);
  EXPECT_EQ(full.column_view(0, 16).pitch, 0);
  EXPECT_THROW(full.column_view(4, 17), Error);
  EXPECT_THROW(full.column_view(5, 4), Error);
  // and back: the rows in full from the view's first element
  const Tensor whole = c.pitch_rows();
  EXPECT_EQ(whole.shape, (Shape{5, 16}));
  EXPECT_EQ(whole.pitch, 0);
  EXPECT_EQ(static_cast<const float*>(whole.data), full.f32() + 13);
  auto be = make_cpu_backend();
  Tensor dst = cpu_empty({5, 13});
  EXPECT_THROW(be->copy(dst, v), Error);
}

// C = alpha op(A) op(B) + beta C with strided A, B and C (each transposed or not), against the
// product of contiguous copies; C's gap columns must stay as they were.
TEST(Tensor, CpuMatmulTakesStridedOperands) {
  Rng rng(11);
  auto be = make_cpu_backend();
  const int64_t m = 7, n = 9, k = 13, gap = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(std::string(ta ? "A^T" : "A") + (tb ? " B^T" : " B"));
      const Shape as = ta ? Shape{k, m} : Shape{m, k}, bs = tb ? Shape{n, k} : Shape{k, n};
      Tensor a_full = uniform_tensor(rng, {as[0], as[1] + gap});
      Tensor b_full = uniform_tensor(rng, {bs[0], bs[1] + gap});
      Tensor c_full = uniform_tensor(rng, {m, n + gap}), c_before = cpu_clone(c_full);
      Tensor ref = first_cols(c_full, n);
      be->matmul(first_cols(a_full, as[1]), ta, first_cols(b_full, bs[1]), tb, ref, 0.5f, 0.25f);
      Tensor c = c_full.leading_cols(n);
      be->matmul(a_full.leading_cols(as[1]), ta, b_full.leading_cols(bs[1]), tb, c, 0.5f, 0.25f);
      EXPECT_LT(rel_error(first_cols(c_full, n), ref), 1e-6);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = n; j < n + gap; ++j)
          EXPECT_EQ(c_full.f32()[i * (n + gap) + j], c_before.f32()[i * (n + gap) + j]);
    }
}

}  // namespace
}  // namespace et::test
