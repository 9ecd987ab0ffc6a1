// Errors: one exception type carrying a message with context (file, field, row).
// Every failure that a user can cause ends in an `Error` whose text says what was expected.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace et {

struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// Throws et::Error with the arguments streamed together.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(detail::concat(args...));
}

}  // namespace et

// ET_CHECK(cond, "message parts", value, ...): a precondition a user can violate.
#define ET_CHECK(cond, ...)               \
  do {                                    \
    if (!(cond)) ::et::fail(__VA_ARGS__); \
  } while (0)
