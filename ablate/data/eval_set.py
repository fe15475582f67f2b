"""The evaluation reference set (data.eval_path, e.g. MS-COCO): its first n usable samples, in file order.

Read and preprocessed exactly as the training data is (ablate.data.preprocess: RGB, shorter side resized
to data.image_size with bicubic filtering, centre-cropped), so the reference images are what a generated
image is compared with at the same size; samples a training shard would skip are skipped here too.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ablate.data.bad_sample import BadSample
from ablate.data.preprocess import prepare_sample
from ablate.data.sources import RawSample, expand_shards, iter_folder, iter_webdataset
from ablate.schema import DataConfig


def eval_samples(d: DataConfig, n: int) -> Iterator[tuple[str, str, np.ndarray]]:
    """(key, caption, image (H, W, 3) uint8) of the first n usable samples of d.eval_path."""
    path = str(d.eval_path)
    raw: Iterator[RawSample]
    if d.source == "webdataset":
        raw = (s for shard in expand_shards(path, key="data.eval_path") for s in iter_webdataset(shard))
    else:
        raw = iter_folder(path)
    kept = 0
    for sample in raw:
        if kept >= n:
            return
        try:
            image, caption = prepare_sample(sample, d.image_size, d.min_image_side)
        except BadSample:
            continue
        kept += 1
        yield sample.key, caption, image


def eval_set_config(d: DataConfig, n: int) -> dict:
    """What eval_samples reads: part of every key that depends on the reference set."""
    return {
        "path": d.eval_path,
        "source": d.source,
        "image_size": d.image_size,
        "min_image_side": d.min_image_side,
        "n": n,
    }
