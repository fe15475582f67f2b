"""Every MLflow tag name ablate writes or reads, and the one function that builds a stage run's tags.

The launcher (at launch), `ablate resend` (rebuilding a run from its directory), the train stage (its
freeze tags) and analysis (selecting runs) all take their tag names from here. No mlflow import.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

TAG_SWEEP = "ablate.sweep"  # the sweep that created the run
TAG_ARM = "ablate.arm"  # the labels of the arms that use the run, ", "-joined; an arm's run: its label
TAG_RUN_KEY = "ablate.run_key"  # the stage's key: the name of its directory results/cache/<stage>/<key>
TAG_STAGE = "ablate.stage"
TAG_GIT_COMMIT = "ablate.git_commit"
TAG_KIND = (
    "ablate.kind"  # KIND_ARM on an arm's run (stage runs have no kind; "sweep": an older ablate's parent run)
)
KIND_ARM = "arm"
TAG_ARM_KEY = "ablate.arm_key"  # on an arm's run: the arm's config hash, its identity within its sweep
TAG_STAGE_KEY_PREFIX = "ablate.key."  # + stage, on an arm's run: the run key of that stage of the arm
TAG_STAGE_RUN_PREFIX = "ablate.run."  # + stage, on an arm's run: the stage run whose metrics it shows
TAG_TRAIN_KEY = "ablate.train_key"  # on an evaluate run: the run key of the train run it evaluates
TAG_TRAINABLE = "ablate.trainable"  # on a train run: its partial-freeze preset
TAG_POSITIONAL = "ablate.positional_params"  # on a train run: the positional-embedding parameters
TAG_PARENT = "mlflow.parentRunId"
# A run's colour in MLflow's charts and table (a CSS colour); without it the UI derives one from the run id,
# which can give two arms near-identical colours. Its colour picker sets this tag too.
TAG_RUN_COLOR = "mlflow.runColor"
# MLflow 3's UI opens an experiment by its kind; a model-training one opens on its runs table (not the
# GenAI traces overview it infers for an experiment without the tag).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# An experiment tag MLflow's UI reads as a saved view of the runs table (columns, charts' x-axis) when the
# link says ?viewStateShareKey=<key>; ablate saves one for each sweep's arms.
TAG_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
ARMS_VIEW = "arms"
TAG_SWEEPS_PREFIX = "ablate.sweeps."  # + sweep name = "true": every sweep that uses the run
MAX_ARM_TAG_LEN = 5000  # MLflow's limit on a tag value is 8,000 characters
MAX_RUN_NAME_LEN = 200
MAX_NAMED_ARMS = 3  # a stage run used by more arms is named by their count (TAG_ARM lists them all)


def sweep_experiment(prefix: str, sweep: str) -> str:
    """The experiment holding a sweep's arms, one run each: what the MLflow UI compares."""
    return prefix + sweep


STAGES_EXPERIMENT_SUFFIX = "/stages"  # sweep names have no "/": no sweep's experiment ends so


def stages_experiment(prefix: str, sweep: str) -> str:
    """The experiment holding the stage runs a sweep created (a stage shared with an earlier sweep stays
    in that sweep's); kept apart from the arms so that their table shows only arms."""
    return prefix + sweep + STAGES_EXPERIMENT_SUFFIX


def sweep_of_experiment(prefix: str, name: str) -> str | None:
    """The sweep whose arms' experiment is `name`; None for a stage-run experiment or any other."""
    if not name.startswith(prefix) or name.endswith(STAGES_EXPERIMENT_SUFFIX):
        return None
    return name[len(prefix) :]


def arm_run_tags(
    *, sweep: str, label: str, arm_key: str, stage_keys: dict[str, str], color: str | None = None
) -> dict[str, str]:
    """An arm run's tags: its sweep, full label (the run's name is a short one), config hash (its identity
    within the sweep; not a run key, which names a stage's directory), the run key of each of its stages
    (ablate.key.<stage>: the train key the dry run shows is ablate.key.train here), the link to their
    stage runs, and its colour in the UI when given."""
    return {
        TAG_SWEEP: sweep,
        TAG_KIND: KIND_ARM,
        TAG_ARM: label[:MAX_ARM_TAG_LEN],
        TAG_ARM_KEY: arm_key,
        **{TAG_STAGE_KEY_PREFIX + stage: key for stage, key in stage_keys.items()},
        **({TAG_RUN_COLOR: color} if color else {}),
    }


def sweep_tag(sweep: str) -> str:
    """The tag marking a run as used by `sweep` (a run shared by several sweeps carries several)."""
    return TAG_SWEEPS_PREFIX + sweep


def stage_run_tags(
    *,
    sweep: str,
    stage: str,
    key: str,
    labels: Iterable[str],
    sweeps: Iterable[str],
    inputs: dict[str, str] | None = None,
    git_commit: str | None = None,
) -> dict[str, Any]:
    """A stage run's tags: sweep, arms, key, stage, every sweep using it, the git commit (when given) and,
    on an evaluate run, the key of the train run it evaluates (from the input directory's name)."""
    tags: dict[str, Any] = {
        TAG_SWEEP: sweep,
        TAG_ARM: ", ".join(labels)[:MAX_ARM_TAG_LEN],
        TAG_RUN_KEY: key,
        TAG_STAGE: stage,
        **{sweep_tag(s): "true" for s in sorted({sweep, *sweeps})},
    }
    train_dir = (inputs or {}).get("train")
    if stage == "evaluate" and train_dir:
        tags[TAG_TRAIN_KEY] = Path(train_dir).name
    if git_commit is not None:
        tags[TAG_GIT_COMMIT] = git_commit
    return tags


def stage_run_name(stage: str, names: Iterable[str]) -> str:
    """The run's display name: the stage and the names (or labels) of the arms that use it, or how many
    arms when they are more than MAX_NAMED_ARMS (`prepare: 4 arms`: their labels are in TAG_ARM)."""
    names = list(names)
    if len(names) > MAX_NAMED_ARMS:
        return f"{stage}: {len(names)} arms"
    return f"{stage} {', '.join(names)}"[:MAX_RUN_NAME_LEN]
