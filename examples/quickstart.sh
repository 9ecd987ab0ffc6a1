#!/usr/bin/env bash
# The quick start on the bundled example: create a small model, fine-tune it with LoRA on the
# bundled question/passage pairs, and embed texts with the result.
# Usage: bash examples/quickstart.sh [path/to/embedtune]
set -euo pipefail
cd "$(dirname "$0")/.."
ET=${1:-build/embedtune}
OUT=${OUT:-out/quickstart}
mkdir -p "$OUT"
"$ET" init --preset tiny-bert --vocab examples/data/vocab.txt --output "$OUT/model" --seed 1
"$ET" info --model "$OUT/model"
"$ET" train --model "$OUT/model" --train examples/data/pairs.jsonl --output "$OUT/run" \
  --num_train_epochs 3 --per_device_train_batch_size 8 --learning_rate 1e-3 --logging_steps 4
"$ET" encode --model "$OUT/run/merged" --input examples/data/texts.txt --output "$OUT/embeddings.npy"
echo "quick start done: $OUT"
