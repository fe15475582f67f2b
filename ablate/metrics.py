"""Metric names: every key a stage logs (metrics.jsonl, MLflow) that another module reads, spelled once.

Producers (the stages, the training loop, the text probe) and consumers (the arm runs, `ablate status`,
analysis) import these names rather than writing the strings. Like ablate.stages.names, no imports from
ablate, so anything can name a metric without importing the code that logs it (torch).
"""

# --- training: what the loop logs every step (train, pretrain) ----------------------------------------
LOSS = "loss"  # mean loss over every target token (align: its CLIP loss)
TEXT_LOSS = "text_loss"  # over text targets (caption text and structural specials)
IMAGE_LOSS = "image_loss"  # over image-code targets
PERPLEXITY = "perplexity"  # exp(loss)
LR = "lr"
TOKENS_PER_S = "tokens_per_s"
TOKENS = "tokens"  # training tokens seen at the step: the x axis of every curve
# How well the model fits; each gets a final value (FINAL_PREFIX) when the train stage finishes.
LOSSES = (LOSS, TEXT_LOSS, IMAGE_LOSS, PERPLEXITY)
STEP_METRICS = (*LOSSES, LR, TOKENS_PER_S)  # a training step's curves (analysis.frames.training_curves)

# --- the text-ability probe (ablate.evaluate.text_ability), during training ---------------------------
HELDOUT_TEXT_PPL = "heldout_text_ppl"  # perplexity on held-out text

# --- align: per step, with LOSS ------------------------------------------------------------------------
TEMPERATURE = "temperature"  # the CLIP logit scale exp(log_temp)

FINAL_PREFIX = "final_"


def final(metric: str) -> str:
    """The name of a metric's final value (the mean of its last steps, ablate.train.final)."""
    return f"{FINAL_PREFIX}{metric}"


FINAL_LOSS, FINAL_TEXT_LOSS, FINAL_IMAGE_LOSS, FINAL_PERPLEXITY = (final(m) for m in LOSSES)

# --- evaluate: its prompt sets, and what it measures on each set's samples -----------------------------
SEEN = "seen"  # synthetic validation pairs: attribute combinations seen in training
HELDOUT = "heldout"  # synthetic held-out pairs: combinations never seen
EVAL = "eval"  # the reference set of real data (data.eval_path)
UNCOND = "uncond"  # unconditional samples
CHANCE = "chance"  # colour match against shuffled captions: the chance level


def caption_match(prompt_set: str) -> str:
    """Fraction of a set's samples drawing exactly their caption."""
    return f"caption_match_{prompt_set}"


def colour_match(prompt_set: str) -> str:
    """Fraction of a set's samples drawing their caption's colours (CHANCE: against shuffled captions)."""
    return f"colour_match_{prompt_set}"


CAPTION_MATCH_SEEN, CAPTION_MATCH_HELDOUT = caption_match(SEEN), caption_match(HELDOUT)
COLOUR_MATCH_SEEN, COLOUR_MATCH_HELDOUT = colour_match(SEEN), colour_match(HELDOUT)
COLOUR_MATCH_CHANCE = colour_match(CHANCE)
SCENE_VALID = "scene_valid"  # unconditional synthetic samples that read as scenes
FID = "fid"  # real data with evaluate.fid_weights
FID_SAMPLES = "fid_samples"
# What an evaluate run measures, in the order summary.csv lists it.
EVAL_METRICS = (
    CAPTION_MATCH_SEEN,
    CAPTION_MATCH_HELDOUT,
    COLOUR_MATCH_SEEN,
    COLOUR_MATCH_HELDOUT,
    COLOUR_MATCH_CHANCE,
    SCENE_VALID,
    FID,
)
