#!/usr/bin/env bash
# Gathers what bench/device_run.sh needs into .device/ (git-ignored; carried to the GPU
# machine): the binaries, the model/loss fixtures and the reference benchmark script.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX=${EMBEDTUNE_FIXTURES:-../shared/fixtures}
rm -rf .device && mkdir -p .device/fixtures
cp build/embedtune build/embedtune_tests .device/
cp -r "$FIX/models" "$FIX/losses" "$FIX/ir_metrics" .device/fixtures/
cp ../shared/tools/baseline_st.py .device/
mkdir -p .device/data
cp ../shared/data/tokenizers/vocab.txt ../shared/data/legal-rag/train.jsonl .device/data/
du -sh .device
