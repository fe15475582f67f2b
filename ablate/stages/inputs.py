"""Reading the outputs of earlier stages: the one place that knows what a stage's directory holds for
the stages after it, so that no stage module imports another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.atomic import read_json
from ablate.errors import DataError
from ablate.schema import RunConfig
from ablate.splits import HELDOUT
from ablate.stages import names
from ablate.tokenize.diffusers_vq import KIND as DIFFUSERS
from ablate.tokenize.diffusers_vq import load_diffusers_tokenizer
from ablate.tokenize.text import TextTokenizer

if TYPE_CHECKING:  # torch and the code that needs it load when the stage runs (ablate.stages.common)
    from ablate.stages.context import StageContext
    from ablate.tokenize.image import ImageTokenizer

# eval_set's outputs
CAPTIONS = "captions.jsonl"
FID_REFERENCE = "fid_reference.npz"
# The held-out text shards: heldout_text's <dir>/heldout, the demo pretrain stage's <dir>/data/heldout.
PRETRAIN_DATA = "data"


def load_split(synth_dir: Path, split: str) -> tuple[np.ndarray, list[str], list[dict]]:
    """`synth`: images (N, H, W, 3) uint8 (memory-mapped), captions and scene dicts of one split."""
    synth_dir = Path(synth_dir)
    images = np.load(synth_dir / f"{split}_images.npy", mmap_mode="r")
    captions = json.loads((synth_dir / f"{split}_captions.json").read_text())
    scenes = json.loads((synth_dir / f"{split}_scenes.json").read_text())
    return images, captions, scenes


def open_text_tokenizer(tok_dir: Path) -> TextTokenizer:
    """The text tokenizer a `text_tokenizer` output refers to."""
    ref = read_json(Path(tok_dir) / "refs.json", {})
    return TextTokenizer.from_file(ref.get("text_path") or Path(tok_dir) / "tokenizer.json")


def load_corpus(tok_dir: Path, split: str) -> list[str]:
    """`text_tokenizer`: pretraining documents of a split ("train" or "heldout")."""
    return json.loads((Path(tok_dir) / f"corpus_{split}.json").read_text())


def open_image_tokenizer(tok_dir: Path) -> ImageTokenizer:
    """The image tokenizer an `image_tokenizer` output refers to."""
    from ablate.tokenize.image import load_image_tokenizer

    ref = read_json(Path(tok_dir) / "refs.json", {})
    if ref.get("kind") == DIFFUSERS:
        tok = load_diffusers_tokenizer(ref["image_path"], int(ref["image_size"]))
        # The stage's key hashes the path, not the weights: weights replaced in place would otherwise be
        # used with the codes (and models) made from the old ones.
        if tok.fingerprint != ref["fingerprint"]:
            raise DataError(
                f"the VQModel at {ref['image_path']} changed since {tok_dir} was made (fingerprint "
                f"{ref['fingerprint']}, now {tok.fingerprint}); put the new weights in a new directory "
                f"(tokenizer.image_path is part of the key) or delete {tok_dir} and what was made from it"
            )
        return tok
    return load_image_tokenizer(ref.get("image_path") or Path(tok_dir) / "vqvae")


def has_eval_set(cfg: RunConfig) -> bool:
    """Whether an arm has an `eval_set` stage: real data with a reference set."""
    return cfg.data.source != "synthetic" and bool(cfg.data.eval_path)


def read_captions(stage_dir: Path) -> list[str]:
    """`eval_set`: the reference set's captions, in order."""
    lines = (Path(stage_dir) / CAPTIONS).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["caption"] for line in lines if line]


def read_reference(stage_dir: Path) -> dict[str, np.ndarray] | None:
    """`eval_set`: mu, sigma, n and weights_sha256 of the reference images' features; None without FID."""
    path = Path(stage_dir) / FID_REFERENCE
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def pretrained_checkpoint(ctx: StageContext) -> Path:
    """model.checkpoint if given (paper scale), else the demo `pretrain` stage's output."""
    if ctx.cfg.model.checkpoint:
        return Path(ctx.cfg.model.checkpoint)
    return ctx.inputs[names.PRETRAIN] / "model.pt"


def heldout_shards(ctx: StageContext) -> Path | None:
    """The held-out text shards the probe reads: the `heldout_text` stage's (a given checkpoint) or the
    demo `pretrain` stage's corpus split; None if the arm has neither."""
    if names.HELDOUT_TEXT in ctx.inputs:
        return ctx.inputs[names.HELDOUT_TEXT] / HELDOUT
    if names.PRETRAIN in ctx.inputs:
        return ctx.inputs[names.PRETRAIN] / PRETRAIN_DATA / HELDOUT
    return None
