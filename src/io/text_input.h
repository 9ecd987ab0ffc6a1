// Inputs of `embedtune encode`: plain text (one text per line), JSONL (a text field per row) or
// pre-tokenized ids (JSONL rows with an "input_ids" array). Every row is checked: invalid UTF-8
// or a missing field is an error naming the file and line.
#pragma once

#include <string>
#include <vector>

namespace et {

struct TextInput {
  std::vector<std::string> texts;         // when reading text
  std::vector<std::vector<int32_t>> ids;  // when reading pre-tokenized ids
  bool pretokenized() const { return !ids.empty(); }
  size_t size() const { return pretokenized() ? ids.size() : texts.size(); }
};

// `.jsonl`/`.json` files are JSON lines; anything else is plain text. `field` names the text
// field of JSON rows; rows that carry "input_ids" instead are taken as token ids.
TextInput read_text_input(const std::string& path, const std::string& field = "text");

}  // namespace et
