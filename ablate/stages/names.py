"""Stage names: the values of the `ablate.stage` tag and the directories under results/cache/.

The registry (ablate.stages.registry) holds everything else about a stage; this module has no imports, so
analysis and status can name stages without importing the stages' code (torch).
"""

SYNTH = "synth"
TEXT_TOKENIZER = "text_tokenizer"
IMAGE_TOKENIZER = "image_tokenizer"
PREPARE = "prepare"
PRETRAIN = "pretrain"
HELDOUT_TEXT = "heldout_text"
ALIGN = "align"
TRAIN = "train"
EVAL_SET = "eval_set"
EVALUATE = "evaluate"

ARM_STAGES = (TRAIN, EVALUATE)  # the stages whose metrics an arm's MLflow run shows (its results)
