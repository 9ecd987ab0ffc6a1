"""baseline_st.py (the sentence-transformers + PEFT reference benchmark) extended with
EmbeddingGemma-300M, which it does not list: same training step, same length scenarios.
Run beside baseline_st.py: python3 baseline_gemma.py [--quick] (other flags as baseline_st.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baseline_st  # noqa: E402

baseline_st.ARCHS["embeddinggemma-300m"] = (
    "Gemma3TextConfig",
    dict(vocab_size=262144, hidden_size=768, num_hidden_layers=24, num_attention_heads=3,
         num_key_value_heads=1, head_dim=256, intermediate_size=1152,
         max_position_embeddings=2048, sliding_window=512, query_pre_attn_scalar=256,
         hidden_activation="gelu_pytorch_tanh", use_bidirectional_attention=True,
         layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                      for i in range(24)]),
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
baseline_st.CONFIGS = [
    ("embeddinggemma-300m", "fixed", 512, 64),
    ("embeddinggemma-300m", "fixed", 1024, 32),
    ("embeddinggemma-300m", "real", 1024, 64),
]

if __name__ == "__main__":
    baseline_st.main()
