"""The data splits: every split name the stages write and read, spelled once.

No imports from ablate, so any package (data, stages, analysis) can name a split without a cycle.
"""

from typing import Final, Literal, get_args

Split = Literal["train", "val", "heldout"]
SPLITS: tuple[Split, ...] = get_args(Split)  # in the order the stages write them

TRAIN: Final = "train"  # what a run trains on
VAL: Final = "val"  # held out of training; attribute combinations seen in training (synthetic data)
HELDOUT: Final = "heldout"  # held out of training; combinations never seen (synthetic data)
