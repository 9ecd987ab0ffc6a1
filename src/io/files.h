// File helpers: whole-file reads with clear errors, atomic writes (temp file + fsync + rename),
// and a read-only memory map.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace et {

using json = nlohmann::json;

std::string read_text_file(const std::string& path);
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);
void make_dirs(const std::string& path);

// Writes `bytes` to `path` atomically: readers see the old file or the whole new one.
void write_file_atomic(const std::string& path, const void* bytes, size_t size);
void write_text_atomic(const std::string& path, const std::string& text);
// Replaces directory `dst` by the fully written directory `tmp` (rename; old one removed).
void replace_dir_atomic(const std::string& tmp, const std::string& dst);

// Parses a JSON file; syntax errors name the file and position.
json read_json_file(const std::string& path);
void write_json_atomic(const std::string& path, const json& j);

// Read-only mapping of a whole file.
struct MappedFile {
  std::string path;
  const unsigned char* data = nullptr;
  size_t size = 0;
  ~MappedFile();
};
std::shared_ptr<MappedFile> map_file(const std::string& path);

}  // namespace et
