r"""Every stage, in run order. Adding a stage: a module under ablate/stages/ with its `STAGE`, and one line here.

synth ----------> image_tokenizer --> prepare ---------------> train --> evaluate
text_tokenizer --------------------/       \                  /  /
              |--> pretrain (init=pretrained, demo) --------/  /
              |--> heldout_text (init=pretrained, paper) ---/  /
                                              \--> align ------/  (image_init=contrastive)
eval_set (real data with data.eval_path: its captions and FID reference statistics) --> evaluate
"""

from __future__ import annotations

from ablate.errors import AblateError
from ablate.stages import (
    align,
    eval_set,
    evaluate,
    heldout_text,
    image_tokenizer,
    prepare,
    pretrain,
    synth,
    text_tokenizer,
    train,
)
from ablate.stages.stage import Stage

STAGES: tuple[Stage, ...] = (
    synth.STAGE,
    text_tokenizer.STAGE,
    image_tokenizer.STAGE,
    prepare.STAGE,
    eval_set.STAGE,
    pretrain.STAGE,
    heldout_text.STAGE,
    align.STAGE,
    train.STAGE,
    evaluate.STAGE,
)
STAGE_ORDER: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    """The stage called `name`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AblateError(f"unknown stage {name!r}; the stages are {list(STAGE_ORDER)}") from None


def order(name: str) -> int:
    """Position of a stage in run order (for sorting jobs and status lines)."""
    return STAGE_ORDER.index(get(name).name)
