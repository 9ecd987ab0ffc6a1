#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"

namespace et::cli {

Run add_info(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  app.add_option("--model", *model, "Model folder (sentence-transformers or transformers)")
      ->required();
  return [model]() {
    auto be = make_cpu_backend();
    auto m = load_sentence_model(*model, *be);
    const ModelConfig& c = m->cfg;
    std::printf("model:            %s\n", m->dir.c_str());
    std::printf("architecture:     %s (model_type %s)\n", family_name(c.family),
                c.model_type.c_str());
    std::printf("layers:           %d, hidden %d, heads %d (head dim %d), intermediate %d\n",
                c.layers, c.hidden, c.heads, c.head_dim, c.intermediate);
    std::printf("vocabulary:       %d tokens (tokenizer: %d)\n", c.vocab,
                m->tokenizer.vocab_size());
    std::printf("parameters:       %lld\n", static_cast<long long>(m->num_parameters()));
    std::printf("max_seq_length:   %d%s\n", m->max_seq_length,
                m->do_lower_case ? " (lowercased input)" : "");
    std::string pool;
    for (PoolMode p : m->pooling.modes)
      pool += std::string(pool.empty() ? "" : "+") + pool_mode_name(p);
    std::printf("pooling:          %s%s\n", pool.c_str(),
                m->pooling.include_prompt ? "" : " (prompt excluded)");
    for (const DenseModule& d : m->dense)
      std::printf("dense:            %s %lld -> %lld\n", d.path.c_str(),
                  static_cast<long long>(d.linear.in), static_cast<long long>(d.linear.out));
    std::printf("normalize:        %s\n", m->normalize ? "yes" : "no");
    std::printf("embedding dim:    %d\n", m->embedding_dim());
    std::printf("similarity:       %s\n", m->similarity_fn_name.c_str());
    if (m->prompts.empty()) std::printf("prompts:          none\n");
    for (const auto& [name, text] : m->prompts)
      std::printf("prompt:           %s = \"%s\"%s\n", name.c_str(), text.c_str(),
                  name == m->default_prompt_name ? " (default)" : "");
    if (!m->has_st_config) std::printf("note:             no modules.json; using mean pooling\n");
    return 0;
  };
}

}  // namespace et::cli
