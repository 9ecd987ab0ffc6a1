// The `embedtune` executable end to end: encode writes the same embeddings as the library,
// errors exit non-zero with a message naming the input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "fixtures.h"
#include "io/safetensors.h"

namespace et::test {
namespace {

TEST(Cli, EncodePretokenizedMatchesFixture) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary at " << embedtune_bin();
  std::string dir = temp_dir("cli_encode");
  json inputs = read_json_file(root + "/inputs.json");
  std::string rows;
  for (const auto& ids : inputs["anchor"]) rows += json{{"input_ids", ids}}.dump() + "\n";
  write_text_atomic(dir + "/in.jsonl", rows);
  std::string out;
  int rc = run_command(embedtune_bin() + " encode --model " + root + "/model --input " + dir +
                           "/in.jsonl --output " + dir + "/emb.safetensors --batch-size 4",
                       &out);
  ASSERT_EQ(rc, 0) << out;
  TensorFile got = read_safetensors(dir + "/emb.safetensors");
  TensorFile exp = read_safetensors(root + "/expected.safetensors");
  EXPECT_LT(rel_error(got.at("embeddings"), to_f32(exp.at("emb.anchor"))), 2e-5);
  rc = run_command(embedtune_bin() + " encode --model " + root + "/model --input " + dir +
                       "/in.jsonl --output " + dir + "/emb.npy",
                   &out);
  ASSERT_EQ(rc, 0) << out;
  std::string npy = read_text_file(dir + "/emb.npy");
  EXPECT_EQ(npy.substr(1, 5), "NUMPY");
  EXPECT_NE(npy.find("'shape': (6, 64)"), std::string::npos);
}

TEST(Cli, EncodeTextAndInfo) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary at " << embedtune_bin();
  std::string dir = temp_dir("cli_text");
  write_text_atomic(dir + "/in.txt", "w1 w2 w3\nw10 w11\n");
  std::string out;
  ASSERT_EQ(run_command(embedtune_bin() + " encode --model " + root + "/model --input " + dir +
                            "/in.txt --output " + dir + "/e.jsonl --prompt-name query",
                        &out),
            0)
      << out;
  EXPECT_NE(read_text_file(dir + "/e.jsonl").find("\"index\": 1"), std::string::npos);
  out.clear();
  ASSERT_EQ(
      run_command(embedtune_bin() + " info --model " + root + "/model_saved_by_reference", &out), 0)
      << out;
  EXPECT_NE(out.find("architecture:     bert"), std::string::npos) << out;
  EXPECT_NE(out.find("pooling:          mean"), std::string::npos) << out;
}

TEST(Cli, BadInputsExitNonZeroWithContext) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary at " << embedtune_bin();
  std::string dir = temp_dir("cli_bad");
  write_text_atomic(dir + "/bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"oops\"}\n");
  std::string out;
  EXPECT_NE(run_command(embedtune_bin() + " encode --model " + root + "/model --input " + dir +
                            "/bad.jsonl --output " + dir + "/o.npy",
                        &out),
            0);
  EXPECT_NE(out.find("bad.jsonl:2: missing string field 'text'"), std::string::npos) << out;
  out.clear();
  write_text_atomic(dir + "/utf.txt", "fine\nbad \xC3\x28 byte\n");
  EXPECT_NE(run_command(embedtune_bin() + " encode --model " + root + "/model --input " + dir +
                            "/utf.txt --output " + dir + "/o.npy",
                        &out),
            0);
  EXPECT_NE(out.find("utf.txt:2: invalid UTF-8"), std::string::npos) << out;
  out.clear();
  EXPECT_NE(run_command(embedtune_bin() + " encode --model " + root + "/model --input " + dir +
                            "/utf.txt --output " + dir + "/o.csv --prompt-name nope",
                        &out),
            0);
  EXPECT_NE(out.find("no prompt named 'nope'"), std::string::npos) << out;
  out.clear();
  EXPECT_NE(run_command(embedtune_bin() + " encode --help", &out), 1);
  EXPECT_NE(out.find("--prompt-name"), std::string::npos);
}

// `bench --attention` on the CPU backend (the CUDA numbers come from the GPU machine): one JSON
// line with both passes timed and the FLOPs of the causal pairs; bad head counts are refused.
TEST(Cli, AttentionBenchReportsBothPasses) {
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary at " << embedtune_bin();
  std::string out;
  ASSERT_EQ(run_command(embedtune_bin() +
                            " bench --attention --device cpu --pairs 2 --seq-len 40 --heads 4 "
                            "--kv-heads 2 --head-dim 16 --causal --steps 1 --warmup 0",
                        &out),
            0)
      << out;
  const json r = json::parse(out.substr(out.find('{')));
  EXPECT_EQ(r["op"], "attention");
  EXPECT_EQ(r["seqs"], 2);
  EXPECT_EQ(r["kv_heads"], 2);
  EXPECT_TRUE(r["causal"].get<bool>());
  ASSERT_GT(r["forward_ms"].get<double>(), 0.0);
  ASSERT_GT(r["backward_ms"].get<double>(), 0.0);
  // causal: 40 * 41 / 2 scored pairs per sequence and head; 4 x 16 FLOPs each forward
  const double pairs = 40.0 * 41.0 / 2.0 * 2 * 4;
  EXPECT_NEAR(r["forward_tflops"].get<double>() * r["forward_ms"].get<double>() * 1e9,
              4.0 * 16 * pairs, 1e-6 * 4.0 * 16 * pairs);
  out.clear();
  EXPECT_NE(
      run_command(embedtune_bin() + " bench --attention --device cpu --heads 3 --kv-heads 2", &out),
      0);
  EXPECT_NE(out.find("--heads must be a positive multiple of --kv-heads"), std::string::npos)
      << out;
}

// `bench` with --seq-len and --pairs overriding every configuration of a preset: bge-base's two
// fixed configurations become one and run once (one record in --out), on the CPU backend.
TEST(Cli, BenchRunsOverriddenConfigurationsOnce) {
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary at " << embedtune_bin();
  const std::string out_file = temp_dir("cli_bench") + "/bench.jsonl";
  std::string out;
  ASSERT_EQ(run_command(embedtune_bin() +
                            " bench --device cpu --only bge-base --scenario fixed --seq-len 16 "
                            "--pairs 2 --steps 1 --warmup 0 --out " +
                            out_file,
                        &out),
            0)
      << out;
  std::ifstream f(out_file);
  int records = 0;
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    const json r = json::parse(line);
    EXPECT_EQ(r["arch"], "bge-base");
    EXPECT_EQ(r["seq_len"], 16);
    EXPECT_EQ(r["pairs"], 2);
    EXPECT_TRUE(std::isfinite(r["loss"].get<double>())) << line;
    ++records;
  }
  EXPECT_EQ(records, 1) << out;
}

TEST(Cli, TrainFromTomlWithFlagOverrides) {
  std::string root = model_fixture("bert");
  SKIP_WITHOUT_FIXTURES(root);
  if (!file_exists(embedtune_bin())) GTEST_SKIP() << "skipped: no binary at " << embedtune_bin();
  std::string dir = temp_dir("cli_train");
  std::string rows;
  char q[64], c[64];  // (snprintf: string concatenation trips GCC 12's -Wrestrict bug 105329)
  for (int i = 0; i < 12; ++i) {
    std::snprintf(q, sizeof(q), "w%d w%d", i, i + 40);
    std::snprintf(c, sizeof(c), "w%d w9 w%d", i + 80, i + 3);
    rows += json{{"question", q}, {"context", c}}.dump() + "\n";
  }
  write_text_atomic(dir + "/pairs.jsonl", rows);
  write_text_atomic(dir + "/run.toml",
                    "model = \"" + root + "/model\"\ntrain_file = \"" + dir +
                        "/pairs.jsonl\"\noutput_dir = \"" + dir +
                        "/out\"\ncolumns = [\"question\", \"context\"]\n"
                        "learning_rate = 1e-3\nper_device_train_batch_size = 4\nmax_steps = 50\n"
                        "[lora]\nr = 2\nalpha = 4\n");
  std::string out;
  int rc = run_command(
      embedtune_bin() + " train " + dir + "/run.toml --max_steps 3 --logging_steps 1", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("step 3/3"), std::string::npos) << out;  // the flag overrode the file
  json cfg = read_json_file(dir + "/out/adapter/adapter_config.json");
  EXPECT_EQ(cfg["r"], 2);
  EXPECT_TRUE(file_exists(dir + "/out/merged/model.safetensors"));
  EXPECT_NE(read_text_file(dir + "/out/train.log").find("step 3/3"), std::string::npos);
  out.clear();
  write_text_atomic(dir + "/bad.toml", "learning_rate = = 3\n");
  EXPECT_NE(run_command(embedtune_bin() + " train " + dir + "/bad.toml", &out), 0);
  EXPECT_NE(out.find("bad.toml: invalid TOML"), std::string::npos) << out;
  out.clear();
  EXPECT_NE(run_command(embedtune_bin() + " train --model " + root + "/model --train " + dir +
                            "/pairs.jsonl --output " + dir + "/o2",
                        &out),
            0);
  EXPECT_NE(out.find("--columns"), std::string::npos) << out;
}

}  // namespace
}  // namespace et::test
