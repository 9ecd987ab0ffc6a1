#!/usr/bin/env bash
# On a GPU machine: the CUDA tests, the Python compatibility test, `embedtune bench` and the
# reference benchmark (sentence-transformers + PEFT) in one run, so ratios compare like with
# like. Expects binaries, fixtures and baseline_st.py in .device/ (bench/prepare_device.sh).
# Results go to $OUT (or out/device).
set -uo pipefail
cd "$(dirname "$0")/.."
D=.device
OUT=${OUT:-out/device}
mkdir -p "$OUT" "$OUT/gemma"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ldd $D/embedtune | grep "not found" && echo "missing libraries"
export EMBEDTUNE_FIXTURES=$PWD/$D/fixtures EMBEDTUNE_BIN=$PWD/$D/embedtune
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  $D/embedtune_tests --gtest_filter="${TEST_FILTER:-*Cuda*:*PythonCompat*}" >"$OUT/tests.log" 2>&1
  echo "tests exit $?"; grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|rel err|OK$|FAILED$" "$OUT/tests.log" | head -40
fi
if [ "${TOKENIZER_BENCH:-0}" = 1 ]; then  # tokens/s, ours and Hugging Face's, same CPUs (prepare with EXTRAS=1)
  for t in $D/tokenizers/*/; do
    $D/embedtune bench --tokenizer "$t" --texts $D/tokenizers/texts.txt | tee -a "$OUT/tokenizer_bench.jsonl"
  done
  python3 $D/tokenizer_bench_hf.py $D/tokenizers/texts.txt $D/tokenizers/*/ | tee -a "$OUT/tokenizer_bench.jsonl"
fi
if [ "${ATTENTION_BENCH:-0}" = 1 ]; then  # the attention op alone: ours, then PyTorch SDPA's
  for shp in "--pairs 64 --seq-len 512 --heads 12 --head-dim 64" \
    "--pairs 32 --seq-len 512 --heads 16 --kv-heads 8 --head-dim 128 --causal" \
    "--pairs 64 --seq-len 512 --heads 3 --kv-heads 1 --head-dim 256"; do
    $D/embedtune bench --attention $shp | tee -a "$OUT/attention_bench.jsonl"
    python3 $D/attention_torch.py $shp 2>/dev/null | tee -a "$OUT/attention_bench.jsonl"
  done
fi
[ "${SKIP_TRAIN_BENCH:-0}" = 1 ] || $D/embedtune bench --device cuda --steps "${STEPS:-10}" --warmup 3 ${BENCH_ARGS:-} --out "$OUT/embedtune_bench.jsonl" 2>&1 | tail -15
if [ "${TRAIN_DEMO:-0}" = 1 ]; then  # real text end to end on the GPU (random-init bge-small)
  # (prepare with EXTRAS=1)
  $D/embedtune init --preset bge-small --vocab $D/data/vocab.txt --output /tmp/et-bge-small >/dev/null
  $D/embedtune train --model /tmp/et-bge-small --train $D/data/train.jsonl --output /tmp/et-run \
    --device cuda --max_steps 60 --per_device_train_batch_size 64 --learning_rate 2e-4 \
    --logging_steps 20 --save_steps 50 --max_seq_length 256 2>&1 | tail -8
  cp /tmp/et-run/train_log.jsonl "$OUT/train_demo_log.jsonl"
fi
if [ -n "${PROFILE_ARGS:-}" ]; then  # where a step's time goes (GPU time per op, from events)
  EMBEDTUNE_PROFILE=1 $D/embedtune bench --device cuda --steps 3 --warmup 1 $PROFILE_ARGS 2>&1 | grep -vE "^\{" | head -45
fi
if [ -n "${MEMTRACE_ARGS:-}" ]; then  # where the peak memory is reached; ';' separates runs
  IFS=';' read -ra runs <<<"$MEMTRACE_ARGS"
  for r in "${runs[@]}"; do
    echo "memtrace: $r"
    EMBEDTUNE_MEMTRACE=1 $D/embedtune bench --device cuda --steps 2 --warmup 1 $r 2>&1 | grep -vE "^\{" | head -12
  done
fi
if [ "${SKIP_BASELINE:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 python3 $D/baseline_st.py --only "${BASELINE_ONLY:-minilm-l6,bge-base}" --quick --out "$OUT" 2>&1 | grep -vE "Warning|warn" | tail -9
  if [ "${BASELINE_GEMMA:-0}" = 1 ]; then
    PYTHONUNBUFFERED=1 OUT="$OUT/gemma" python3 $D/baseline_gemma.py --quick 2>&1 | grep -vE "Warning|warn" | tail -5
  fi
fi
