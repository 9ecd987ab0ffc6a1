#include "io/dataset.h"

#include <cstdlib>
#include <sstream>

#include "core/error.h"
#include "io/files.h"
#include "tokenizer/unicode.h"

namespace et {

static bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::vector<std::vector<std::string>> parse_delimited(const std::string& text, char delim,
                                                      const std::string& path,
                                                      std::vector<size_t>* lines) {
  std::vector<std::vector<std::string>> out;
  std::vector<std::string> rec;
  std::string field;
  size_t line = 1, rec_line = 1;
  bool quoted = false, field_started = false, was_quoted = false;
  auto end_field = [&]() {
    rec.push_back(field);
    field.clear();
    field_started = was_quoted = false;
  };
  auto end_record = [&]() {
    end_field();
    if (!(rec.size() == 1 && rec[0].empty())) {  // skip blank lines
      out.push_back(rec);
      if (lines) lines->push_back(rec_line);
    }
    rec.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field.push_back('"');
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field.push_back(c);
      }
      continue;
    }
    if (c == '"' && !field_started) {
      quoted = field_started = was_quoted = true;
    } else if (c == delim) {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_record();
      ++line;
      rec_line = line;
    } else {
      ET_CHECK(!was_quoted, path, ":", line, ": unexpected character after a closing quote");
      field.push_back(c);
      field_started = true;
    }
  }
  ET_CHECK(!quoted, path, ":", rec_line, ": unterminated quoted field");
  if (field_started || !rec.empty()) end_record();
  return out;
}

static std::vector<std::string> default_columns(const std::vector<std::string>& available) {
  std::vector<std::string> cols;
  for (const char* c : {"anchor", "positive"})
    for (const auto& a : available)
      if (a == c) cols.push_back(a);
  for (const auto& a : available)
    if (a.rfind("negative", 0) == 0) cols.push_back(a);
  return cols;
}

static void check_columns(const std::string& path, const std::vector<std::string>& wanted,
                          const std::vector<std::string>& available) {
  std::string have;
  for (const auto& a : available) have += (have.empty() ? "" : ", ") + a;
  for (const auto& w : wanted) {
    bool found = false;
    for (const auto& a : available) found |= a == w;
    ET_CHECK(found, path, ": no column '", w, "' (columns: ", have, ")");
  }
  ET_CHECK(wanted.size() >= 2, path, ": need at least two text columns (anchor, positive); found ",
           have.empty() ? "none" : have, " (use --columns to name them)");
}

TextDataset read_text_dataset(const std::string& path, const std::vector<std::string>& columns) {
  std::string text = read_text_file(path);
  TextDataset ds;
  ds.path = path;
  if (ends_with(path, ".csv") || ends_with(path, ".tsv")) {
    std::vector<size_t> lines;
    auto recs = parse_delimited(text, ends_with(path, ".tsv") ? '\t' : ',', path, &lines);
    ET_CHECK(!recs.empty(), path, ": empty file (expected a header row)");
    const auto& header = recs[0];
    ds.columns = columns.empty() ? default_columns(header) : columns;
    check_columns(path, ds.columns, header);
    std::vector<size_t> idx;
    for (const auto& c : ds.columns)
      for (size_t i = 0; i < header.size(); ++i)
        if (header[i] == c) {
          idx.push_back(i);
          break;
        }
    int label_idx = -1;
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == "label" || header[i] == "score") {
        label_idx = static_cast<int>(i);
        ds.label_column = header[i];
      }
    for (size_t r = 1; r < recs.size(); ++r) {
      ET_CHECK(recs[r].size() == header.size(), path, ":", lines[r], ": ", recs[r].size(),
               " fields, but the header has ", header.size());
      if (label_idx >= 0) {
        char* end = nullptr;
        const std::string& v = recs[r][label_idx];
        double x = std::strtod(v.c_str(), &end);
        ET_CHECK(!v.empty() && end && *end == 0, path, ":", lines[r], ": column '", ds.label_column,
                 "' must be a number, got '", v, "'");
        ds.labels.push_back(x);
      }
      std::vector<std::string> row;
      for (size_t i : idx) row.push_back(recs[r][i]);
      ds.rows.push_back(std::move(row));
      ds.lines.push_back(lines[r]);
    }
  } else {
    std::istringstream in(text);
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::parse_error& e) {
        fail(path, ":", lineno, ": invalid JSON (", e.what(), ")");
      }
      ET_CHECK(j.is_object(), path, ":", lineno, ": expected a JSON object per line");
      if (ds.columns.empty()) {
        std::vector<std::string> keys;
        for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
        ds.columns = columns.empty() ? default_columns(keys) : columns;  // types checked per row
        check_columns(path, ds.columns, keys);
      }
      if (ds.rows.empty()) {
        for (const char* l : {"label", "score"})
          if (j.contains(l)) ds.label_column = l;
      }
      if (!ds.label_column.empty()) {
        ET_CHECK(j.contains(ds.label_column) && j[ds.label_column].is_number(), path, ":", lineno,
                 ": column '", ds.label_column, "' must be a number");
        ds.labels.push_back(j[ds.label_column].get<double>());
      }
      std::vector<std::string> row;
      for (const auto& c : ds.columns) {
        ET_CHECK(j.contains(c), path, ":", lineno, ": missing column '", c, "'");
        ET_CHECK(j[c].is_string(), path, ":", lineno, ": column '", c, "' must be a string");
        row.push_back(j[c].get<std::string>());
      }
      ds.rows.push_back(std::move(row));
      ds.lines.push_back(lineno);
    }
  }
  for (size_t r = 0; r < ds.rows.size(); ++r)
    for (size_t c = 0; c < ds.columns.size(); ++c) {
      size_t bad = 0;
      ET_CHECK(unicode::is_valid_utf8(ds.rows[r][c], &bad), path, ":", ds.lines[r], ": column '",
               ds.columns[c], "' is not valid UTF-8 (byte ", bad, ")");
    }
  ET_CHECK(!ds.rows.empty(), path, ": no rows");
  return ds;
}

}  // namespace et
