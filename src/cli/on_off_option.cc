#include <CLI/CLI.hpp>

#include <map>

#include "cli/commands.h"

namespace et::cli {

CLI::Option* add_on_off_option(CLI::App& app, const std::string& name, bool& value,
                               const std::string& help) {
  return app.add_option(name, value, help)
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, bool>{
              {"on", true}, {"off", false}, {"true", true}, {"false", false}},
          CLI::ignore_case))
      ->capture_default_str();
}

}  // namespace et::cli
