"""Real-text training with sentence-transformers + PEFT, to compare with `embedtune train` on
the same data, model folder and settings: MultipleNegativesRankingLoss over (anchor, positive)
rows of a .jsonl file, LoRA (r 16, alpha 32, fp32 adapter weights) on the given modules, bf16
base weights under bf16 autocast, SDPA attention, fused AdamW, gradient clipping at 1.0 and a
linear schedule, as `embedtune train` does. sentence-transformers trains with the model's own
dropout (BERT: 0.1 on hidden states and attention probabilities), as `embedtune train` does by
default; --no_model_dropout turns it off (`embedtune train --model_dropout off`), which makes
the two computations identical up to rounding. The loop is a plain one (tokenize, forward,
backward, step), leaner
than SentenceTransformerTrainer, so the reference is not slowed by its bookkeeping; texts are
tokenized in the loop, as the trainer's collator does with its default of no worker processes.

Prints JSON lines like embedtune's train_log.jsonl (step, loss, tokens, elapsed_seconds) every
--logging_steps steps; tokens are real (unpadded) tokens after truncation.
Usage (device): python3 bench/train_st.py MODEL_DIR TRAIN.jsonl --max_steps 200
"""
import argparse, json, random, time

import torch

torch.backends.cuda.matmul.allow_tf32 = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("train")
    ap.add_argument("--max_steps", type=int, default=200)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--max_seq_length", type=int, default=256)
    ap.add_argument("--learning_rate", type=float, default=2e-4)
    ap.add_argument("--logging_steps", type=int, default=20)
    ap.add_argument("--target_modules", default="query,key,value,dense")
    ap.add_argument("--no_model_dropout", action="store_true",
                    help="the model's own dropout off (embedtune: --model_dropout off)")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from peft import LoraConfig, TaskType

    rows = [json.loads(l) for l in open(args.train, encoding="utf-8") if l.strip()]
    pairs = [(r["anchor"], r["positive"]) for r in rows]
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    st = SentenceTransformer(args.model, device="cuda",
                             model_kwargs={"dtype": torch.bfloat16, "attn_implementation": "sdpa"},
                             config_kwargs=no_dropout if args.no_model_dropout else None)
    if args.no_model_dropout:
        for m in st.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    st.max_seq_length = args.max_seq_length
    st.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=16, lora_alpha=32,
                              lora_dropout=0.0, target_modules=args.target_modules.split(",")))
    st.train()
    params = [p for p in st.parameters() if p.requires_grad]
    # fp32 adapter weights, as peft.get_peft_model keeps them (autocast_adapter_dtype): add_adapter
    # leaves them in the base weights' bf16, where AdamW's small updates round away
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: max(0.0, 1.0 - s / args.max_steps))
    loss_fn = MultipleNegativesRankingLoss(st)

    rng = random.Random(42)
    order, at = list(range(len(pairs))), len(pairs)
    t0, tokens, window, n_window = time.time(), 0, None, 0
    for step in range(1, args.max_steps + 1):
        if at >= len(order):  # a new epoch (its last batch may be smaller)
            rng.shuffle(order)
            at = 0
        batch = [pairs[i] for i in order[at:at + args.batch_size]]
        at += args.batch_size
        feats = []
        for col in range(2):
            f = st.tokenize([p[col] for p in batch])
            tokens += int(f["attention_mask"].sum())
            feats.append({k: v.to("cuda", non_blocking=True) if torch.is_tensor(v) else v
                          for k, v in f.items()})
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(feats, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        # summed on the device and read at logging steps only (no wait for the GPU per step)
        window = loss.detach() if window is None else window + loss.detach()
        n_window += 1
        if step % args.logging_steps == 0 or step == args.max_steps:
            torch.cuda.synchronize()
            secs = time.time() - t0
            print(json.dumps({"step": step, "loss": float(window) / n_window, "tokens": tokens,
                              "elapsed_seconds": secs, "tokens_per_second": tokens / secs,
                              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}),
                  flush=True)
            window, n_window = None, 0


if __name__ == "__main__":
    main()
