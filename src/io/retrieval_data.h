// Retrieval evaluation data: queries, a corpus and which documents are relevant to which query.
//   BEIR folder: corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id", "text"}),
//                qrels/<split>.tsv (query-id, corpus-id, score; a header row; score > 0 relevant)
//   pairs file:  JSONL/CSV/TSV with a query and a passage column (default anchor, positive, or
//                the first two of `columns`); the corpus is every distinct passage, and each
//                query's relevant document is its passage.
#pragma once

#include <set>
#include <string>
#include <vector>

namespace et {

struct RetrievalSet {
  std::vector<std::string> query_ids, queries;
  std::vector<std::string> doc_ids, docs;
  std::vector<std::set<int32_t>> relevant;  // per query, indices into docs
};

struct TextDataset;
// Queries = column 0, corpus = the distinct texts of column 1 (first occurrence order), each
// query's relevant document = its own passage.
RetrievalSet retrieval_set_from_pairs(const TextDataset& ds);

RetrievalSet read_retrieval_set(const std::string& path, const std::string& split = "test",
                                const std::vector<std::string>& columns = {});

}  // namespace et
