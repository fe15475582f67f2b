"""The paper's facts that code compares against (docs/PAPER.md has the rest, with where each comes from).

Zhang, McKinzie, Gan, Shankar, Toshev: "Pre-trained Language Models Do Not Help Auto-regressive
Text-to-Image Generation" (NeurIPS 2023 ICBINB workshop). The probe prompts themselves are config
(`evaluate.prompts`, set per scale under ablate/config/conf/scale/); these are what the paper printed.
"""

from __future__ import annotations

# Table 1: the two prompts, verbatim, and the paper's completions before text-to-image training and after
# 5B tokens of it (each completion as printed, with its leading space where it has one).
TABLE1_PROMPTS: tuple[str, ...] = (
    "Simply put, the theory of relativity states that",
    "Translate English to French: sea otter => loutre de mer peppermint => menthe poivrée "
    "plush girafe => girafe peluche cheese =>",
)
TABLE1_COMPLETIONS: dict[str, dict[str, str]] = {
    TABLE1_PROMPTS[0]: {
        "before": "the speed of light is the same for all observers, regardless of their location in the "
        "universe.",
        "after": "iles must be able to see the invisible.",
    },
    TABLE1_PROMPTS[1]: {"before": " fromage", "after": " I love cheese"},
}
TABLE1_AFTER_TOKENS = 5_000_000_000  # "after" = after this many text-to-image training tokens

# FID on MS-COCO at the end of training (Sec. 3.1).
FID = {"pretrained": 12.21, "random": 12.27}
