"""Hugging Face `tokenizers` batch-encode throughput on the same texts and tokenizer files as
`embedtune bench --tokenizer` (run both on the same machine). Prints one JSON line per
tokenizer: tokens/s on one thread (RAYON_NUM_THREADS=1 in a child process) and on all cores.

usage: python3 tokenizer_bench_hf.py TEXTS.txt TOKENIZER_DIR...
"""
import json
import os
import subprocess
import sys
import time


def measure(path, texts, repeats=3):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    best, tokens = 1e30, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc = tok.encode_batch(texts, add_special_tokens=True)
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(e.ids) for e in enc)
    return best, tokens


def main():
    texts_path, dirs = sys.argv[1], sys.argv[2:]
    texts = [line.rstrip("\n") for line in open(texts_path, encoding="utf-8")]
    if os.environ.get("HF_BENCH_CHILD"):
        s, tokens = measure(dirs[0], texts)
        print(json.dumps({"s": s, "tokens": tokens}))
        return
    for d in dirs:
        env = dict(os.environ, RAYON_NUM_THREADS="1", HF_BENCH_CHILD="1")
        one = json.loads(subprocess.check_output([sys.executable, __file__, texts_path, d], env=env))
        s, tokens = measure(d, texts)
        print(json.dumps({"tokenizer": d, "impl": "hf-tokenizers", "texts": len(texts),
                          "tokens": tokens, "tokens_per_s_1thread": one["tokens"] / one["s"],
                          "tokens_per_s": tokens / s, "threads": os.cpu_count()}))


if __name__ == "__main__":
    main()
