// Access to the reference fixture tree (EMBEDTUNE_FIXTURES, default ../shared/fixtures beside
// the repository) and comparison helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "io/files.h"
#include "model/bert.h"

namespace et::test {

std::string fixtures_root();
std::string model_fixture(const std::string& arch);  // <root>/models/<arch>
// The families of the BERT encoder that the CPU reference implements.
const std::vector<std::string>& model_archs();  // every model fixture family
// The anchor, positive and negative token-id columns of a model fixture's inputs.json.
std::vector<PackedBatch> fixture_columns(const std::string& model_root);
// A fresh temporary directory under the build tree.
std::string temp_dir(const std::string& name);

// Runs a shell command; returns its exit status and appends stdout+stderr to `out`.
int run_command(const std::string& cmd, std::string* out);
// The embedtune executable under test (EMBEDTUNE_BIN, else build/embedtune in the source tree).
std::string embedtune_bin();

// A host F32 tensor of values uniform in [lo, hi) (random test inputs, never all zeros).
Tensor uniform_tensor(Rng& rng, const Shape& s, float lo = -1, float hi = 1);

// The first n columns of a host F32 matrix [rows, cols], as a new contiguous tensor (a strided
// view's values, Tensor::leading_cols, read from its whole buffer).
Tensor first_cols(const Tensor& t, int64_t n);
// Columns [begin, end) of a host F32 matrix [rows, cols], as a new contiguous tensor.
Tensor col_range(const Tensor& t, int64_t begin, int64_t end);
// [a | b]: two host F32 matrices of one row count side by side (a GLU's packed gate | up).
Tensor side_by_side(const Tensor& a, const Tensor& b);

// ||a - b|| / ||b|| over all elements (both host F32 tensors of equal size).
double rel_error(const Tensor& a, const Tensor& b);
// The same for a row range of `a` against all of `b`.
double rel_error(const float* a, const float* b, int64_t n);

}  // namespace et::test

#define SKIP_WITHOUT_FIXTURES(path)                                                    \
  do {                                                                                 \
    if (!::et::dir_exists(path)) GTEST_SKIP() << "skipped: no fixtures at " << (path); \
  } while (0)
