// Runs only where Python with sentence-transformers and peft is installed (the GPU machine):
// the adapter and merged folder that `embedtune train` writes must load there and give
// embedtune's embeddings.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "fixtures.h"

namespace et::test {
namespace {

class PythonCompat : public ::testing::TestWithParam<std::string> {};

TEST_P(PythonCompat, AdapterAndMergedLoadInSentenceTransformers) {
  std::string root = model_fixture(GetParam());
  SKIP_WITHOUT_FIXTURES(root);
  // Whether the packages are installed, without importing them (an import of torch and
  // sentence-transformers takes seconds; the check script below imports them once).
  std::string probe;
  if (run_command("python3 -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) "
                  "for m in (\"sentence_transformers\", \"peft\")))'",
                  &probe) != 0)
    GTEST_SKIP() << "skipped: no Python with sentence-transformers and peft";
  const std::string bin = embedtune_bin();
  std::string dir = temp_dir("pycompat_" + GetParam());
  // BERT: every Linear as the reference benchmark; the rotary families: their defaults
  const std::string targets =
      GetParam() == "bert" ? " --lora_target_modules query,key,value,dense" : "";
  std::string rows, texts;
  char q[64], c[64];
  for (int i = 0; i < 16; ++i) {
    std::snprintf(q, sizeof(q), "w%d w%d w%d", i, i + 40, i * 3);
    std::snprintf(c, sizeof(c), "w%d w9 w%d w%d", i + 80, i + 3, i * 5);
    rows += json{{"anchor", q}, {"positive", c}}.dump() + "\n";
    texts += std::string(q) + "\n" + c + "\n";
  }
  write_text_atomic(dir + "/pairs.jsonl", rows);
  write_text_atomic(dir + "/texts.txt", texts);
  std::string out;
  ASSERT_EQ(
      run_command(bin + " train --model " + root + "/model --train " + dir +
                      "/pairs.jsonl --output " + dir +
                      "/out --max_steps 4 --learning_rate 5e-3 --per_device_train_batch_size 4" +
                      targets + " --quiet",
                  &out),
      0)
      << out;
  ASSERT_EQ(run_command(bin + " encode --model " + root + "/model --adapter " + dir +
                            "/out/adapter --input " + dir + "/texts.txt --output " + dir +
                            "/emb_adapter.npy",
                        &out),
            0)
      << out;
  ASSERT_EQ(run_command(bin + " encode --model " + dir + "/out/merged --input " + dir +
                            "/texts.txt --output " + dir + "/emb_merged.npy",
                        &out),
            0)
      << out;
  out.clear();
  std::string script = "tests/python/check_st_compat.py";  // relative to the repository root
  if (!file_exists(script)) script = std::string(EMBEDTUNE_SOURCE_DIR) + "/" + script;
  int rc = run_command("python3 " + script + " " + root + "/model " + dir + "/out/adapter " + dir +
                           "/out/merged " + dir + "/texts.txt " + dir + "/emb_adapter.npy " + dir +
                           "/emb_merged.npy",
                       &out);
  std::printf("%s", out.c_str());
  EXPECT_EQ(rc, 0) << out;
}

INSTANTIATE_TEST_SUITE_P(Models, PythonCompat,
                         ::testing::Values("bert", "modernbert", "qwen3", "gemma3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace et::test
