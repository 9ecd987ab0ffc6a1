#include "io/retrieval_data.h"

#include <cstdio>
#include <map>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/dataset.h"
#include "io/files.h"
#include "tokenizer/unicode.h"

namespace et {

namespace {

// {"_id": ..., fields...} per line; ids may be strings or numbers.
std::vector<std::pair<std::string, json>> read_jsonl_ids(const std::string& path) {
  std::istringstream in(read_text_file(path));
  std::vector<std::pair<std::string, json>> out;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    size_t bad = 0;
    ET_CHECK(unicode::is_valid_utf8(line, &bad), path, ":", lineno, ": invalid UTF-8 at byte ",
             bad);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      fail(path, ":", lineno, ": invalid JSON (", e.what(), ")");
    }
    ET_CHECK(j.is_object() && j.contains("_id"), path, ":", lineno, ": missing field '_id'");
    std::string id = j["_id"].is_string() ? j["_id"].get<std::string>() : j["_id"].dump();
    ET_CHECK(j.contains("text") && j["text"].is_string(), path, ":", lineno,
             ": missing string field 'text'");
    out.emplace_back(id, j);
  }
  return out;
}

RetrievalSet read_beir(const std::string& dir, const std::string& split) {
  RetrievalSet r;
  std::unordered_map<std::string, int32_t> doc_index, query_index;
  for (auto& [id, j] : read_jsonl_ids(path_join(dir, "corpus.jsonl"))) {
    std::string title = j.value("title", "");
    std::string text = j["text"].get<std::string>();
    doc_index[id] = static_cast<int32_t>(r.docs.size());
    r.doc_ids.push_back(id);
    if (!title.empty()) text = title.append(" ").append(text);
    r.docs.push_back(std::move(text));
  }
  std::map<std::string, std::string> queries;
  for (auto& [id, j] : read_jsonl_ids(path_join(dir, "queries.jsonl")))
    queries[id] = j["text"].get<std::string>();
  std::string qrels = path_join(path_join(dir, "qrels"), split + ".tsv");
  ET_CHECK(file_exists(qrels), dir, ": no qrels/", split, ".tsv");
  std::vector<size_t> lines;
  auto recs = parse_delimited(read_text_file(qrels), '\t', qrels, &lines);
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto& rec = recs[i];
    if (i == 0 && !rec.empty() && rec[0] == "query-id") continue;  // header
    ET_CHECK(rec.size() >= 2, qrels, ":", lines[i], ": expected query-id, corpus-id[, score]");
    if (rec.size() >= 3 && std::atof(rec[2].c_str()) <= 0) continue;
    auto q = queries.find(rec[0]);
    ET_CHECK(q != queries.end(), qrels, ":", lines[i], ": query '", rec[0],
             "' is not in queries.jsonl");
    auto d = doc_index.find(rec[1]);
    ET_CHECK(d != doc_index.end(), qrels, ":", lines[i], ": document '", rec[1],
             "' is not in corpus.jsonl");
    auto [it, inserted] = query_index.emplace(rec[0], static_cast<int32_t>(r.queries.size()));
    if (inserted) {
      r.query_ids.push_back(rec[0]);
      r.queries.push_back(q->second);
      r.relevant.emplace_back();
    }
    r.relevant[it->second].insert(d->second);
  }
  ET_CHECK(!r.queries.empty(), qrels, ": no relevant (query, document) pairs");
  return r;
}

// "d12" style ids (built with a buffer: GCC 12 warns falsely on short string concatenations)
std::string numbered_id(char prefix, size_t n) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%c%zu", prefix, n);
  return buf;
}

}  // namespace

RetrievalSet retrieval_set_from_pairs(const TextDataset& ds) {
  RetrievalSet r;
  std::unordered_map<std::string, int32_t> doc_index;
  for (size_t i = 0; i < ds.rows.size(); ++i) {
    const std::string& passage = ds.rows[i][1];
    auto [it, inserted] = doc_index.emplace(passage, static_cast<int32_t>(r.docs.size()));
    if (inserted) {
      r.doc_ids.push_back(numbered_id('d', r.docs.size()));
      r.docs.push_back(passage);
    }
    r.query_ids.push_back(numbered_id('q', i));
    r.queries.push_back(ds.rows[i][0]);
    r.relevant.push_back({it->second});
  }
  return r;
}

RetrievalSet read_retrieval_set(const std::string& path, const std::string& split,
                                const std::vector<std::string>& columns) {
  if (dir_exists(path)) return read_beir(path, split);
  return retrieval_set_from_pairs(read_text_dataset(path, columns));
}

}  // namespace et
