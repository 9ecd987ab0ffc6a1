"""Checks that folders written by embedtune load in the reference Python stack and give
embedtune's embeddings: the merged model through SentenceTransformer, the adapter through
sentence-transformers' load_adapter and through peft's PeftModel.

usage: check_st_compat.py BASE_MODEL ADAPTER_DIR MERGED_DIR TEXTS_TXT EMB_ADAPTER_NPY EMB_MERGED_NPY
Exit status 0 when every check passes; prints one line per check.
"""
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
    base, adapter, merged, texts_file, emb_adapter, emb_merged = sys.argv[1:7]
    texts = [t for t in open(texts_file, encoding="utf-8").read().split("\n") if t]
    ours_adapter, ours_merged = np.load(emb_adapter), np.load(emb_merged)
    ok = True

    st = SentenceTransformer(merged, device="cpu")
    e = st.encode(texts, convert_to_numpy=True, batch_size=4)
    err = rel(ours_merged, e)
    print(f"merged folder via SentenceTransformer: rel err {err:.2e}")
    ok &= err < 1e-4

    st = SentenceTransformer(base, device="cpu")
    st.load_adapter(adapter)
    e = st.encode(texts, convert_to_numpy=True, batch_size=4)
    err = rel(ours_adapter, e)
    print(f"adapter via SentenceTransformer.load_adapter: rel err {err:.2e}")
    ok &= err < 1e-4

    from peft import PeftModel
    from transformers import AutoModel
    hf = AutoModel.from_pretrained(base)
    pm = PeftModel.from_pretrained(hf, adapter)
    n_lora = sum(1 for n, _ in pm.named_parameters() if "lora_" in n)
    merged_hf = pm.merge_and_unload()
    ref = AutoModel.from_pretrained(merged)
    worst = 0.0
    for (n, p), (_, q) in zip(merged_hf.state_dict().items(), ref.state_dict().items()):
        worst = max(worst, rel(p.detach().numpy(), q.detach().numpy()))
    print(f"adapter via peft PeftModel ({n_lora} LoRA tensors), merge_and_unload vs merged folder: worst rel err {worst:.2e}")
    ok &= n_lora > 0 and worst < 1e-5
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
