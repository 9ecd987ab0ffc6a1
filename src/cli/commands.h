// Subcommands of the `embedtune` executable; each registers its options on the CLI11 app and
// returns the function that runs it.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace et::cli {

using Run = std::function<int()>;

Run add_encode(CLI::App& app);
Run add_info(CLI::App& app);
Run add_init(CLI::App& app);

}  // namespace et::cli
