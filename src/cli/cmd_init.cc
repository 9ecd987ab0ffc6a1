#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "model/presets.h"

namespace et::cli {

Run add_init(CLI::App& app) {
  struct Opts {
    std::string preset = "tiny-bert", vocab, output;
    uint64_t seed = 42;
  };
  auto o = std::make_shared<Opts>();
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  app.add_option("--preset", o->preset, "Architecture: " + names)->capture_default_str();
  app.add_option("--vocab", o->vocab, "WordPiece vocabulary (vocab.txt, one token per line)")
      ->required();
  app.add_option("--output", o->output, "Folder to write the sentence-transformers model to")
      ->required();
  app.add_option("--seed", o->seed, "Initialisation seed")->capture_default_str();
  return [o]() {
    create_random_model(o->preset, o->vocab, o->output, o->seed);
    std::printf("wrote randomly initialised %s model to %s\n", o->preset.c_str(),
                o->output.c_str());
    return 0;
  };
}

}  // namespace et::cli
