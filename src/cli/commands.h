// Subcommands of the `embedtune` executable; each registers its options on the CLI11 app and
// returns the function that runs it.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace et::cli {

using Run = std::function<int()>;

Run add_encode(CLI::App& app);
Run add_info(CLI::App& app);
Run add_init(CLI::App& app);
Run add_train(CLI::App& app);
Run add_bench(CLI::App& app);
Run add_eval(CLI::App& app);

// `embedtune train CONFIG.toml ...`: the file's settings as flags placed before the others.
std::vector<std::string> expand_train_config(const std::vector<std::string>& args);

}  // namespace et::cli
