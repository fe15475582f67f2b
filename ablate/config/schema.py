"""The run schema under its older name: ablate.schema is its home (the ground floor, importing nothing of
ablate), so that data/, model/ and train/ can read it without importing ablate.config, which validates
with their maths. Modules above config may keep importing it from here."""

from ablate.schema import *  # noqa: F403
