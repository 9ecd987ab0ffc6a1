// SentencePiece model files (tokenizer.model, sentencepiece.bpe.model): a serialized
// sentencepiece.ModelProto (src/sentencepiece_model.proto in google/sentencepiece), read with
// a minimal protobuf wire-format parser and converted to the tokenizer.json that transformers'
// convert_slow_tokenizer would produce:
//  - BPE models (Gemma): normalizer Replace(" " -> "▁"), pre-tokenizer Split(" ",
//    MergedWithPrevious), BPE with byte_fallback and fuse_unk, merges recovered from the
//    vocabulary as SentencePieceExtractor does (every split of a piece into two pieces,
//    ordered by the merged piece's score, highest first; ties by the pieces' ids).
//  - Unigram models (XLM-R, BGE-M3 style): Precompiled normalizer from the model's charsmap,
//    WhitespaceSplit + Metaspace(prepend always), Unigram with the model's scores; a
//    `sentencepiece.bpe.model` (or a tokenizer_config.json naming XLMRobertaTokenizer) gets
//    XLMRobertaConverter's fairseq order: <s> <pad> </s> <unk>, pieces[3:], <mask>.
//  Control and unknown pieces become special added tokens, user-defined pieces added tokens.
//  The post-processor adds the BOS piece (and, for Unigram, EOS) when the model has them,
//  unless tokenizer_config.json next to the file says add_bos_token/add_eos_token otherwise.
#pragma once

#include <string>

#include "io/files.h"

namespace et {

json sentencepiece_to_tokenizer_json(const std::string& model_path);

}  // namespace et
