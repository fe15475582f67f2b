"""The overrides of each scale the tests run or plan at: `tiny(...)`, the one builder of tiny run configs
(small synthetic data, a quick VQ-VAE and BPE, a 2-layer model, cluster=local), which the tests of real
launches share, each adding its own budget; and PAPER_SCALE, to plan paper-scale arms without their
assets."""

from __future__ import annotations

STEP_TOKENS = 2304
"""One step at `train.batch_tokens=2304`: 8 sequences of the demo's 288 tokens."""

CLUSTER = {"cluster": "local", "cluster.poll_s": "5"}
DATA = {
    "data.n_train": "256",
    "data.n_val": "64",
    "data.n_heldout": "64",
    "tokenizer.vq_steps": "40",
    "tokenizer.vq_hidden": "32",
    "tokenizer.text_vocab_size": "512",
}
"""Synthetic data and its tokenizers (real-data tests leave these out: `tiny(data=False)`)."""
RUN = {
    "model.hidden_dim": "32",
    "model.n_layers": "2",
    "optim.warmup_tokens": str(STEP_TOKENS),
    "evaluate.n_samples": "8",
}


def tiny(*overrides: str, data: bool = True) -> list[str]:
    """The tiny launch's overrides, then the test's own `key=value`s: a key given again replaces the
    default where it stands, so each key appears once (the order of Hydra group choices is kept)."""
    merged = {**CLUSTER, **(DATA if data else {}), **RUN}
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise ValueError(f"tiny(): {o!r} is not key=value")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


PAPER_SCALE = [
    "scale=paper",
    "model.checkpoint=/ckpt/open_lm_1b/epoch_1.pt",
    "tokenizer.text_path=/ckpt/gpt-neox/tokenizer.json",
    "tokenizer.image_path=/ckpt/movqgan",
]
"""scale=paper with placeholder asset paths: enough to compose, validate and plan (nothing is read)."""
