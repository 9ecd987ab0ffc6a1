"""Reference for `embedtune bench --attention`: PyTorch's scaled_dot_product_attention (bf16,
FlashAttention-2 backend where it applies) on the same shapes, timed with CUDA events.

  python3 bench/attention_torch.py --pairs 64 --seq-len 512 --heads 12 --head-dim 64 [--causal]
Prints one JSON line with forward_ms, backward_ms and the matrix FLOP/s (same FLOP counts as
embedtune: 4 d per scored query-key pair forward, 10 d backward)."""
import argparse
import json

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--seqs", "--pairs", dest="seqs", type=int, default=64)
ap.add_argument("--seq-len", type=int, default=512)
ap.add_argument("--heads", type=int, default=12)
ap.add_argument("--kv-heads", type=int, default=0)
ap.add_argument("--head-dim", type=int, default=64)
ap.add_argument("--causal", action="store_true")
ap.add_argument("--dropout", type=float, default=0.0)
ap.add_argument("--iters", type=int, default=20)
args = ap.parse_args()
kvh = args.kv_heads or args.heads
dev = torch.device("cuda")
shape = (args.seqs, args.heads, args.seq_len, args.head_dim)
q = torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn((args.seqs, kvh, args.seq_len, args.head_dim), device=dev, dtype=torch.bfloat16,
                requires_grad=True)
v = torch.randn_like(k, requires_grad=True)
g = torch.randn(shape, device=dev, dtype=torch.bfloat16)


def attn():
    return F.scaled_dot_product_attention(q, k, v, is_causal=args.causal, dropout_p=args.dropout,
                                          enable_gqa=kvh != args.heads)


def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(args.iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


fwd = median_ms(lambda: attn())
out = attn()
both = median_ms(lambda: torch.autograd.grad(attn(), (q, k, v), g))
bwd = both - fwd
L = args.seq_len
pairs = (L * (L + 1) / 2 if args.causal else L * L) * args.seqs * args.heads
print(json.dumps({"op": "attention", "impl": "torch.sdpa", "seqs": args.seqs, "seq_len": L,
                  "heads": args.heads, "kv_heads": kvh, "head_dim": args.head_dim,
                  "causal": args.causal, "dropout": args.dropout, "forward_ms": fwd, "backward_ms": bwd,
                  "forward_tflops": 4 * args.head_dim * pairs / fwd / 1e9,
                  "backward_tflops": 10 * args.head_dim * pairs / bwd / 1e9}))
