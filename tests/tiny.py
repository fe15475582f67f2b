"""The overrides that make a launch tiny (small synthetic data, a quick VQ-VAE and BPE, cluster=local), which
the end-to-end tests of real launches share; each adds its own training budget."""

TINY_DATA = [
    "cluster=local",
    "cluster.poll_s=5",
    "data.n_train=256",
    "data.n_val=64",
    "data.n_heldout=64",
    "tokenizer.vq_steps=40",
    "tokenizer.vq_hidden=32",
    "tokenizer.text_vocab_size=512",
]
