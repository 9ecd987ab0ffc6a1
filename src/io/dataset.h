// Training data: rows of texts in named columns, from JSONL, CSV or TSV (with a header row).
// Columns default to anchor, positive and every column whose name starts with "negative";
// a column named "label" or "score" is read as numbers into `labels`;
// `columns` picks others in order (first = anchor, second = positive, rest = negatives).
// Every row is validated (UTF-8, presence and type of each column); errors name file and line.
#pragma once

#include <string>
#include <vector>

namespace et {

struct TextDataset {
  std::string path;
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;  // rows[i][c]
  std::vector<size_t> lines;                   // source line of each row (for messages)
  // A numeric "label" or "score" column, when present (for losses that take labels).
  std::string label_column;
  std::vector<double> labels;
};

TextDataset read_text_dataset(const std::string& path,
                              const std::vector<std::string>& columns = {});

// Splits CSV/TSV text into records (RFC 4180 quoting: "..." with "" for a quote, newlines
// allowed inside quotes). `lines` receives the starting line of each record.
std::vector<std::vector<std::string>> parse_delimited(const std::string& text, char delim,
                                                      const std::string& path,
                                                      std::vector<size_t>* lines);

}  // namespace et
