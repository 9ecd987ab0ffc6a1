#!/usr/bin/env bash
# Gathers what bench/device_run.sh needs into .device/ (git-ignored; carried to the GPU
# machine, 64 MiB at most): the stripped binaries, the model/loss fixtures and the reference
# benchmark scripts; with EXTRAS=1 also the texts and tokenizers of TRAIN_DEMO=1,
# TOKENIZER_BENCH=1 and bench/train_vs_st.sh (with the sentence-transformers training script).
# The tokenizers take about 20 MiB: remove .device/tokenizers when they are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX=${EMBEDTUNE_FIXTURES:-../shared/fixtures}
rm -rf .device && mkdir -p .device/fixtures
cp build/embedtune build/embedtune_tests .device/
strip .device/embedtune .device/embedtune_tests
cp -r "$FIX/models" "$FIX/losses" "$FIX/ir_metrics" .device/fixtures/
cp ../shared/tools/baseline_st.py bench/baseline_gemma.py bench/attention_torch.py .device/
if [ "${EXTRAS:-0}" != 1 ]; then
  du -sh .device
  exit 0
fi
mkdir -p .device/data
cp ../shared/data/tokenizers/vocab.txt ../shared/data/legal-rag/train.jsonl .device/data/
# tokenizer throughput (embedtune bench --tokenizer vs Hugging Face tokenizers)
mkdir -p .device/tokenizers
for t in bert-uncased-wordpiece gpt2-bytelevel-bpe qwen3-style-bpe xlmr-style-unigram gemma-style-spm-bpe; do
  mkdir -p .device/tokenizers/$t && cp "$FIX/tokenizers/$t/tokenizer.json" .device/tokenizers/$t/
done
python3 - <<'PY'
import json
lines = [l.strip() for f in ("botchan.txt", "wagahaiwa_nekodearu.txt")
         for l in open("../shared/data/tokenizers/" + f, encoding="utf-8") if l.strip()]
for row in open("../shared/data/legal-rag/train.jsonl", encoding="utf-8"):
    lines += [v.replace("\n", " ") for v in json.loads(row).values() if isinstance(v, str)]
open(".device/tokenizers/texts.txt", "w", encoding="utf-8").write("\n".join(lines) + "\n")
PY
cp bench/tokenizer_bench_hf.py bench/train_st.py .device/
du -sh .device
