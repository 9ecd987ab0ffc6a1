// Access to the reference fixture tree (EMBEDTUNE_FIXTURES, default ../shared/fixtures beside
// the repository) and comparison helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/files.h"

namespace et::test {

std::string fixtures_root();
std::string model_fixture(const std::string& arch);  // <root>/models/<arch>
// The families of the BERT encoder that the CPU reference implements.
const std::vector<std::string>& bert_family_archs();
// A fresh temporary directory under the build tree.
std::string temp_dir(const std::string& name);

// ||a - b|| / ||b|| over all elements (both host F32 tensors of equal size).
double rel_error(const Tensor& a, const Tensor& b);
// The same for a row range of `a` against all of `b`.
double rel_error(const float* a, const float* b, int64_t n);

}  // namespace et::test

#define SKIP_WITHOUT_FIXTURES(path)                                                    \
  do {                                                                                 \
    if (!::et::dir_exists(path)) GTEST_SKIP() << "skipped: no fixtures at " << (path); \
  } while (0)
