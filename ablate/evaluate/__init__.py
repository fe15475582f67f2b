"""Evaluation building blocks: constrained image sampling, caption-match accuracy, sample grids, FID."""

from ablate.evaluate.fid import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_KEY,
    feature_stats,
    fid_from_features,
    frechet_distance,
)
from ablate.evaluate.image_metrics import caption_match_accuracy, caption_matches, sample_grid
from ablate.evaluate.sampling import filter_logits, sample_from_prompts, sample_images

__all__ = [
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_KEY",
    "caption_match_accuracy",
    "caption_matches",
    "feature_stats",
    "fid_from_features",
    "filter_logits",
    "frechet_distance",
    "sample_from_prompts",
    "sample_grid",
    "sample_images",
]
