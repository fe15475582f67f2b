"""`ablate resend` rebuilds a stage run from its directory, with the tags the launcher gives it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from ablate import tracking
from ablate.resend import resend


def _evaluate_dir(root: Path) -> Path:
    """An evaluate stage's directory as a job leaves it, naming no run of the store it is sent to."""
    run_dir = root / "cache" / "evaluate" / "e1e1e1e1e1e1"
    run_dir.mkdir(parents=True)
    prov = {
        "stage": "evaluate",
        "key": "e1e1e1e1e1e1",
        "inputs": {"train": str(root / "cache" / "train" / "7a7a7a7a7a7a")},
        "arms": ["init=random"],
        "mlflow_run_id": None,
        "sweep": "mysweep",
        "git_commit": "abc123",
    }
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    config = {"tracking": {"experiment_prefix": "lab/"}, "model": {"init": "random"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "caption_match_seen": 0.25}) + "\n")
    return run_dir


def test_resend_into_a_new_store_uses_the_runs_experiment_prefix_and_launch_tags(
    new_store: Callable[[str], Path], tmp_path: Path
) -> None:
    uri = f"sqlite:///{new_store('resend') / 'mlflow.db'}"
    run_id, rows = resend(_evaluate_dir(tmp_path), uri)
    assert rows == 1
    info = tracking.run_info(uri, run_id)
    assert info["metrics"] == {"caption_match_seen": 0.25}
    expected = tracking.stage_run_tags(
        sweep="mysweep",
        stage="evaluate",
        key="e1e1e1e1e1e1",
        labels=["init=random"],
        sweeps=["mysweep"],
        inputs={"train": "x/7a7a7a7a7a7a"},
        git_commit="abc123",
    )
    assert {k: v for k, v in info["tags"].items() if k in expected} == expected
    assert info["tags"][tracking.TAG_TRAIN_KEY] == "7a7a7a7a7a7a"
    assert info["run_name"] == "evaluate init=random"
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(uri).get_experiment_by_name("lab/mysweep/stages")
    assert experiment is not None and MlflowClient(uri).get_run(run_id).info.experiment_id == (
        experiment.experiment_id
    )
