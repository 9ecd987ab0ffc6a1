// Subcommands of the `embedtune` executable; each registers its options on the CLI11 app and
// returns the function that runs it.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace et::cli {

using Run = std::function<int()>;

Run add_encode(CLI::App& app);
Run add_info(CLI::App& app);
Run add_init(CLI::App& app);
Run add_train(CLI::App& app);
Run add_bench(CLI::App& app);
Run add_eval(CLI::App& app);

// A boolean option written `on` or `off` (also `true`/`false`: TOML booleans), its default
// shown in --help.
CLI::Option* add_on_off_option(CLI::App& app, const std::string& name, bool& value,
                               const std::string& help);

// `embedtune train CONFIG.toml ...`: the file's settings as flags placed before the others.
std::vector<std::string> expand_train_config(const std::vector<std::string>& args);

}  // namespace et::cli
