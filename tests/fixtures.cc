#include "fixtures.h"

#include <unistd.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace et::test {

std::string fixtures_root() {
  if (const char* env = std::getenv("EMBEDTUNE_FIXTURES")) return env;
  return std::string(EMBEDTUNE_SOURCE_DIR) + "/../shared/fixtures";
}

std::string model_fixture(const std::string& arch) {
  return fixtures_root() + "/models/" + arch;
}

const std::vector<std::string>& model_archs() {
  static const std::vector<std::string> archs = {"bert",       "xlm-roberta", "distilbert", "mpnet",
                                                 "modernbert", "qwen3",       "gemma3"};
  return archs;
}

std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("embedtune_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

int run_command(const std::string& cmd, std::string* out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// EMBEDTUNE_BIN, else the `embedtune` beside this test binary (both are built into one folder
// and copied together to other machines), else the source tree's build/.
std::string embedtune_bin() {
  if (const char* b = std::getenv("EMBEDTUNE_BIN")) return b;
  std::error_code ec;
  const auto beside =
      std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() / "embedtune";
  if (!ec && std::filesystem::exists(beside, ec)) return beside.string();
  return std::string(EMBEDTUNE_SOURCE_DIR) + "/build/embedtune";
}

std::vector<PackedBatch> fixture_columns(const std::string& root) {
  json inputs = read_json_file(root + "/inputs.json");
  std::vector<PackedBatch> cols;
  for (const char* c : {"anchor", "positive", "negative"}) {
    PackedBatch b;
    for (const auto& ids : inputs.at(c)) b.add(ids.get<std::vector<int32_t>>());
    cols.push_back(b);
  }
  return cols;
}

Tensor uniform_tensor(Rng& rng, const Shape& s, float lo, float hi) {
  Tensor t = cpu_empty(s);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.f32()[i] = static_cast<float>(lo + (hi - lo) * rng.uniform());
  return t;
}

Tensor first_cols(const Tensor& t, int64_t n) {
  return col_range(t, 0, n);
}

Tensor col_range(const Tensor& t, int64_t begin, int64_t end) {
  const int64_t n = end - begin;
  Tensor o = cpu_empty({t.dim(0), n});
  for (int64_t i = 0; i < t.dim(0); ++i)
    for (int64_t j = 0; j < n; ++j) o.f32()[i * n + j] = t.f32()[i * t.dim(1) + begin + j];
  return o;
}

Tensor side_by_side(const Tensor& a, const Tensor& b) {
  const int64_t rows = a.dim(0), ca = a.dim(1), cb = b.dim(1);
  Tensor o = cpu_empty({rows, ca + cb});
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < ca; ++j) o.f32()[i * (ca + cb) + j] = a.f32()[i * ca + j];
    for (int64_t j = 0; j < cb; ++j) o.f32()[i * (ca + cb) + ca + j] = b.f32()[i * cb + j];
  }
  return o;
}

double rel_error(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (std::isnan(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double rel_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  if (a.numel() != b.numel()) return INFINITY;
  return rel_error(a.f32(), b.f32(), a.numel());
}

}  // namespace et::test
