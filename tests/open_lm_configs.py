"""open_lm's 1B architecture as its released checkpoint describes it: open_lm/model_configs/open_lm_1b.json
with the keys open_lm_1b_old.json adds. Shared by the model tests and the config.json tests."""

OPEN_LM_1B = {
    "hidden_dim": 2048,
    "n_layers": 24,
    "n_heads": 16,
    "seq_len": 2048,
    "vocab_size": 50432,
    "post_embed_norm": False,
    "weight_tying": False,
    "model_norm": "default_layer_norm",
    "ffn_type": "swiglu",
    "qk_norm": False,
    "positional_embedding_type": "head_rotary",
}
