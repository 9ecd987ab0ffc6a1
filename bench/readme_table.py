#!/usr/bin/env python3
"""The README's performance table from one device call's records.

    python3 bench/readme_table.py OUT_DIR
    python3 bench/readme_table.py bench/results/2026-11-23-h100-s10-final-

OUT_DIR is bench/device_run.sh's output folder (embedtune_bench.jsonl, baseline_lora.jsonl and
gemma/baseline_lora.jsonl); a path prefix instead names the three files kept in bench/results
(PREFIXembedtune_bench.jsonl, PREFIXbaseline_lora.jsonl, PREFIXbaseline_gemma.jsonl).
Prints the markdown rows (speed-up = real tokens/s ratio; peak memory and its ratio), then
BGE-base at 512 tokens' model FLOP rate against the cuBLAS peaks the reference measured.
"""
import json
import math
import os
import sys

NAMES = {
    "minilm-l6": "MiniLM-L6",
    "bge-base": "BGE-base",
    "modernbert-base": "ModernBERT-base",
    "qwen3-0.6b": "Qwen3-0.6B",
    "embeddinggemma-300m": "EmbeddingGemma-300M",
}


def records(path):
    """(arch, scenario, seq_len, pairs) -> record, and the cuBLAS peaks if the file has them."""
    rows, peaks = {}, {}
    if not os.path.exists(path):
        return rows, peaks
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a JSON record ({e})")
            if "peak" in r:
                peaks = r["peak"]
            elif "arch" in r and "error" not in r:
                rows[(r["arch"], r["scenario"], r["seq_len"], r["pairs"])] = r
    return rows, peaks


def files(where):
    if os.path.isdir(where):
        return (os.path.join(where, "embedtune_bench.jsonl"),
                [os.path.join(where, "baseline_lora.jsonl"),
                 os.path.join(where, "gemma", "baseline_lora.jsonl")])
    return (where + "embedtune_bench.jsonl",
            [where + "baseline_lora.jsonl", where + "baseline_gemma.jsonl"])


def multiply_adds(shape):
    """m * n * k of a peak's key "MxNxK"; 0 for other keys (such as copy_TBps_rw)."""
    dims = shape.split("x")
    return math.prod(int(d) for d in dims) if len(dims) == 3 and all(d.isdigit() for d in dims) else 0


def thousands(tokens_per_s):
    k = tokens_per_s / 1e3
    return f"{k:,.0f}k" if k >= 100 else f"{k:.1f}k"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    ours_path, ref_paths = files(sys.argv[1])
    if not os.path.exists(ours_path):
        sys.exit(f"{ours_path}: not found (expected a device_run.sh output folder or a prefix)")
    ours, _ = records(ours_path)
    if not ours:
        sys.exit(f"{ours_path}: no embedtune bench records")
    ref, peaks = {}, {}
    for p in ref_paths:
        rows, pk = records(p)
        ref.update(rows)
        peaks = peaks or pk
    for key, o in ours.items():
        arch, scenario, seq_len, pairs = key
        b = ref.get(key)
        if b is None:
            print(f"(no reference record for {arch} {scenario} {seq_len} x {pairs})", file=sys.stderr)
            continue
        label = f"{NAMES.get(arch, arch)}, {'real mix' if scenario == 'real' else scenario}"
        speed = o["real_tokens_per_s"] / b["real_tokens_per_s"]
        print(f"| {label} | {seq_len} x {pairs} | {o['step_s'] * 1e3:.1f} ms, "
              f"{thousands(o['real_tokens_per_s'])} | {b['step_s'] * 1e3:.1f} ms, "
              f"{thousands(b['real_tokens_per_s'])} | {speed:.2f}x | {o['peak_mem_gib']:.2f} / "
              f"{b['peak_mem_gib']:.2f} ({o['peak_mem_gib'] / b['peak_mem_gib']:.3f}) |")
    bge = ours.get(("bge-base", "fixed", 512, 64))
    # the large product shapes only (at least 1e11 multiply-adds; the MiniLM-sized one is not)
    large = {k: v for k, v in peaks.items() if multiply_adds(k) >= 1e11}
    if bge and large:
        lo, hi = min(large.values()), max(large.values())
        print(f"\nBGE-base 512 x 64: {bge['model_tflops']:.0f} TFLOP/s of model FLOPs, "
              f"{100 * bge['model_tflops'] / hi:.0f}-{100 * bge['model_tflops'] / lo:.0f}% of the "
              f"reference's cuBLAS bf16 peaks on its large shapes ({lo:.0f}-{hi:.0f} TFLOP/s: "
              f"{large})")


if __name__ == "__main__":
    main()
