#!/usr/bin/env bash
# The quick start on the bundled example: create a small model, describe it and embed texts.
# Usage: bash examples/quickstart.sh [path/to/embedtune]
set -euo pipefail
cd "$(dirname "$0")/.."
ET=${1:-build/embedtune}
OUT=${OUT:-out/quickstart}
mkdir -p "$OUT"
"$ET" init --preset tiny-bert --vocab examples/data/vocab.txt --output "$OUT/model" --seed 1
"$ET" info --model "$OUT/model"
"$ET" encode --model "$OUT/model" --input examples/data/texts.txt --output "$OUT/embeddings.npy"
echo "quick start done: $OUT"
