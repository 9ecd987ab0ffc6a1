#!/usr/bin/env bash
# On a GPU machine: `embedtune train` and sentence-transformers + PEFT (bench/train_st.py) on the
# same real text, model folders and settings, one after the other in one call: LoRA r 16 on
# query/key/value/dense, MNRL, batch 128, max 256 tokens, lr 2e-4, 200 steps, tokenization
# included. Both run twice, with the model's own dropout (their default) and without (the same
# computation up to rounding, for comparing loss curves step by step). Prints tokens/s over
# steps 40-200 and the loss curves, and appends every logged record, tagged with its run, to
# $OUT/train_vs_st.jsonl.
# Expects .device/ from `EXTRAS=1 bash bench/prepare_device.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.device
OUT=${OUT:-out/device}
L=$(mktemp -d)
mkdir -p "$OUT"
for p in ${PRESETS:-minilm-l6 bge-base}; do
  $D/embedtune init --preset $p --vocab $D/data/vocab.txt --output $L/model-$p >/dev/null
  for v in dropout nodropout; do
    md=on; [ $v = nodropout ] && md=off
    $D/embedtune train --model $L/model-$p --train $D/data/train.jsonl --output $L/run-$v-$p \
      --device cuda --max_steps ${STEPS:-200} --per_device_train_batch_size 128 \
      --learning_rate 2e-4 --logging_steps 20 --max_seq_length 256 --model_dropout $md \
      --lora_target_modules query key value dense --quiet || exit 1
    cp $L/run-$v-$p/train_log.jsonl $L/et-$v-$p.jsonl
  done
  for v in dropout nodropout; do
    a=""; [ $v = nodropout ] && a="--no_model_dropout"
    python3 $D/train_st.py $L/model-$p $D/data/train.jsonl --max_steps ${STEPS:-200} \
      --batch_size 128 --max_seq_length 256 --learning_rate 2e-4 $a \
      >$L/st-$v-$p.jsonl 2>$L/st-$v-$p.err || tail -5 $L/st-$v-$p.err
  done
done
python3 - "$OUT/train_vs_st.jsonl" $L/*.jsonl <<'PY'
import json, os, sys
out = open(sys.argv[1], "a")
for f in sys.argv[2:]:
    r = [json.loads(l) for l in open(f) if '"tokens"' in l]
    run = os.path.basename(f)[: -len(".jsonl")]  # et-dropout-<preset>, st-nodropout-<preset>, ...
    for x in r:
        out.write(json.dumps(dict(x, run=run)) + "\n")
    a = [x for x in r if x["step"] >= 40]
    if len(a) < 2:
        print(f, "too few steps"); continue
    x0, x1 = a[0], a[-1]
    dt = x1["elapsed_seconds"] - x0["elapsed_seconds"]
    print("%s: steps %d-%d %.0f tokens/s, %.2f ms a step; loss %s" % (
        f.split("/")[-1], x0["step"], x1["step"], (x1["tokens"] - x0["tokens"]) / dt,
        1000 * dt / (x1["step"] - x0["step"]), " ".join("%d:%.3f" % (x["step"], x["loss"]) for x in r)))
PY
