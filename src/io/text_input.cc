#include "io/text_input.h"

#include <sstream>

#include "core/error.h"
#include "io/files.h"
#include "tokenizer/unicode.h"

namespace et {

static bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

TextInput read_text_input(const std::string& path, const std::string& field) {
  std::string data = read_text_file(path);
  TextInput in;
  bool jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json");
  std::istringstream ss(data);
  std::string line;
  size_t lineno = 0;
  while (std::getline(ss, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t bad = 0;
    ET_CHECK(unicode::is_valid_utf8(line, &bad), path, ":", lineno, ": invalid UTF-8 at byte ", bad,
             " of the line");
    if (!jsonl) {
      in.texts.push_back(line);
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    json row;
    try {
      row = json::parse(line);
    } catch (const json::parse_error& e) {
      fail(path, ":", lineno, ": invalid JSON (", e.what(), ")");
    }
    ET_CHECK(row.is_object(), path, ":", lineno, ": expected a JSON object per line");
    if (row.contains("input_ids")) {
      ET_CHECK(in.texts.empty(), path, ":", lineno, ": mixes input_ids rows with text rows");
      ET_CHECK(row["input_ids"].is_array() && !row["input_ids"].empty(), path, ":", lineno,
               ": input_ids must be a non-empty array of integers");
      std::vector<int32_t> ids;
      for (const auto& v : row["input_ids"]) {
        ET_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, path, ":", lineno,
                 ": input_ids must hold non-negative integers");
        ids.push_back(v.get<int32_t>());
      }
      in.ids.push_back(std::move(ids));
    } else {
      ET_CHECK(in.ids.empty(), path, ":", lineno, ": mixes text rows with input_ids rows");
      ET_CHECK(row.contains(field) && row[field].is_string(), path, ":", lineno,
               ": missing string field '", field, "'");
      in.texts.push_back(row[field].get<std::string>());
    }
  }
  ET_CHECK(in.size() > 0, path, ": no input rows");
  return in;
}

}  // namespace et
