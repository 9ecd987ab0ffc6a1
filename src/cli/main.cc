// embedtune: fine-tune, evaluate and run text embedding models.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"embedtune: fine-tune, evaluate and run text embedding models", "embedtune"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("embedtune ") + EMBEDTUNE_VERSION);
  std::map<CLI::App*, et::cli::Run> runs;
  auto reg = [&](et::cli::Run (*add)(CLI::App&), const char* name, const char* desc) {
    CLI::App* sub = app.add_subcommand(name, desc);
    runs[sub] = add(*sub);
  };
  reg(et::cli::add_encode, "encode", "Embed texts with a model and write the embeddings");
  reg(et::cli::add_info, "info", "Describe a model folder");
  reg(et::cli::add_train, "train", "Fine-tune a model (LoRA or full) on text pairs/triplets");
  reg(et::cli::add_eval, "eval", "Evaluate retrieval (accuracy/precision/recall/MRR/NDCG/MAP@k)");
  reg(et::cli::add_bench, "bench",
      "Benchmark training steps on random-init models of real architectures");
  reg(et::cli::add_init, "init", "Create a randomly initialised model of a preset architecture");
  std::vector<std::string> args;
  try {
    args = et::cli::expand_train_config(std::vector<std::string>(argv, argv + argc));
  } catch (const et::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  try {
    std::vector<std::string> rev(args.rbegin(), args.rend() - 1);  // CLI11 takes them reversed
    app.parse(rev);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runs)
      if (sub->parsed()) return run();
  } catch (const et::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
