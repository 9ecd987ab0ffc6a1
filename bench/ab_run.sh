#!/usr/bin/env bash
# On a GPU machine: `embedtune bench` with two binaries in one run, rounds alternating old and
# new so that the machine's drift (clocks, temperature) touches both alike. A change is judged
# by these same-run ratios, never by numbers from different runs.
#   .device/embedtune           the new binary (bench/prepare_device.sh)
#   .device/old/embedtune.gz    the old one (stripped, gzipped: the carry limit is 64 MiB)
#   PRESETS  ';'-separated argument sets of `embedtune bench`, e.g.
#            "--only minilm-l6 --scenario real;--only bge-base --scenario fixed --seq-len 512 --pairs 64"
#   ROUNDS (2), STEPS (10), WARMUP (3); ENV_OLD / ENV_NEW: environment assignments for one side only.
# Each run's output stays in a scratch folder; $OUT gets two files (the device tool brings
# back only a few): ab.jsonl (every record, with its side and round) and ab_summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.device
OUT=${OUT:-out/device}
RAW=$(mktemp -d)
mkdir -p "$OUT"
gunzip -c $D/old/embedtune.gz >"$RAW/embedtune_old" && chmod +x "$RAW/embedtune_old"
IFS=';' read -ra sets <<<"${PRESETS:?PRESETS: the bench argument sets to compare}"
for r in $(seq 1 "${ROUNDS:-2}"); do
  for side in old new; do
    exe=$D/embedtune envs=${ENV_NEW:-}
    [ $side = old ] && exe=$RAW/embedtune_old envs=${ENV_OLD:-}
    for i in "${!sets[@]}"; do
      env $envs $exe bench --device cuda --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" ${sets[$i]} \
        --out "$RAW/ab_${side}_${r}_${i}.jsonl" >/dev/null 2>"$RAW/ab_${side}_${r}_${i}.err" ||
        tail -3 "$RAW/ab_${side}_${r}_${i}.err"
    done
  done
done
python3 - "$RAW" "$OUT" <<'PY' | tee "$OUT/ab_summary.txt"
import glob, json, os, sys
rows = {}
records = open(os.path.join(sys.argv[2], "ab.jsonl"), "a")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "ab_*.jsonl"))):
    side, rnd = os.path.basename(f).split("_")[1:3]
    for line in open(f):
        r = json.loads(line)
        records.write(json.dumps(dict(r, side=side, round=int(rnd))) + "\n")
        key = f'{r["arch"]} {r["scenario"]} {r["seq_len"]}x{r["pairs"]}'
        cell = "ERR" if "error" in r else f'{r["step_s"] * 1e3:.1f} ms {r["peak_mem_gib"]:.2f} GiB'
        rows.setdefault(key, {}).setdefault(side, []).append(cell)
for key, sides in rows.items():
    print(f'{key:32s} old: {" / ".join(sides.get("old", []))}   new: {" / ".join(sides.get("new", []))}')
PY
