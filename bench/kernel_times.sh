#!/usr/bin/env bash
# On a GPU machine: where one training step's GPU time goes, kernel by kernel, from Nsight
# Compute's per-kernel duration (gpu__time_duration, clocks left alone). Unlike
# EMBEDTUNE_PROFILE=1 (events around each op, with a synchronisation on each side) this sees
# every kernel, cuBLASLt's included, at its own time; ncu serialises kernels, so the sum is the
# GPU's busy time without overlap, to be set against the step time of a plain run. Caches are
# left warm between kernels (--cache-control none), as in a real step.
#   PRESETS  ';'-separated argument sets of `embedtune bench` (one step of each is profiled)
#   OUT      where kernel_times.txt goes (one table per set)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
RAW=$(mktemp -d)
mkdir -p "$OUT"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
IFS=';' read -ra sets <<<"${PRESETS:?PRESETS: the bench argument sets to profile}"
for i in "${!sets[@]}"; do
  # The bench opens ncu's capture for its timed steps only (Backend::profiler_capture), so
  # set-up and warm-up kernels (allocations, cuBLASLt's timed candidates) are not counted.
  .device/embedtune bench --device cuda --steps 3 --warmup 2 ${sets[$i]} --out "$RAW/plain_$i.jsonl" \
    >/dev/null 2>"$RAW/plain_$i.err" || tail -3 "$RAW/plain_$i.err"
  "$NCU" --clock-control none --cache-control none --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw \
    .device/embedtune bench --device cuda --steps 1 --warmup 2 ${sets[$i]} \
    >"$RAW/ncu_$i.csv" 2>"$RAW/ncu_$i.err" || tail -5 "$RAW/ncu_$i.err"
done
python3 - "$RAW" "${#sets[@]}" "$PRESETS" <<'PY' | tee "$OUT/kernel_times.txt"
import csv, json, re, sys
raw, n, sets = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(";")
def short(name):
    name = name.replace("<unnamed>::", "").replace("(anonymous namespace)::", "")
    name = re.sub(r"\(.*", "", name)          # drop the argument list
    name = re.sub(r"<.*", "", name)           # and template arguments
    return name.split("::")[-1][:60]
def family(k):
    return "cuBLASLt (nvjet, splitK)" if k.startswith(("nvjet", "splitK", "sm90_", "cutlass")) else k
for i in range(n):
    print(f"## {sets[i]}")
    try:
        plain = [json.loads(l) for l in open(f"{raw}/plain_{i}.jsonl")][0]
        print(f"plain run: step {plain['step_s'] * 1e3:.2f} ms")
    except Exception as e:
        print(f"plain run: none ({e})")
    rows = []
    with open(f"{raw}/ncu_{i}.csv") as f:
        lines = [l for l in f if l.startswith('"')]
    reader = csv.DictReader(lines)
    for r in reader:
        t = r.get("gpu__time_duration.sum", "").replace(",", "")  # ncu writes 12,345
        if not t.replace(".", "").isdigit():
            continue  # the units row ("ns")
        rows.append((r["Kernel Name"], float(t)))
    step = rows
    total = sum(t for _, t in step)
    print(f"kernels in the profiled step: {len(step)}, GPU busy {total / 1e6:.2f} ms")
    agg = {}
    for name, t in step:
        k = short(name)
        c, s = agg.get(k, (0, 0.0))
        agg[k] = (c + 1, s + t)
    fam = {}
    for k, (c, s) in agg.items():
        c0, s0 = fam.get(family(k), (0, 0.0))
        fam[family(k)] = (c0 + c, s0 + s)
    for title, table, top in (("by kernel, cuBLASLt together", fam, 30), ("by kernel", agg, 25)):
        print(f"{title:60s} {'calls':>6s} {'ms':>8s} {'share':>6s}")
        for k, (c, s) in sorted(table.items(), key=lambda kv: -kv[1][1])[:top]:
            print(f"{k:60s} {c:6d} {s / 1e6:8.3f} {100 * s / total:5.1f}%")
    print()
PY
