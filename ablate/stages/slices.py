"""Config fields that decide which stage's key holds them, where a section is split between two stages."""

# evaluate.* fields that change what `train` computes (the text probe runs inside training); the others
# (sampling) are read by `evaluate` only, so changing them re-evaluates without retraining.
PROBE_FIELDS = ("probe_every_tokens", "probe_sequences", "completion_tokens", "prompts")
