"""A launch whose arms need files that are missing stops before it creates or submits anything; a dry run
of the same sweep plans, estimates and lists what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablate.errors import AblateError
from ablate.launch.launcher import launch

PAPER_LIKE = [
    "data=webdataset",
    "data.path='/nowhere/{00000..00009}.tar'",
    "tokenizer.image=diffusers",
    "tokenizer.image_path=/nowhere/movq",
    "model.checkpoint=/nowhere/epoch_1.pt",
]


def test_missing_assets_stop_the_launch_before_anything_is_written(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: assets\ngrid:\n  model.init: [pretrained, random]\n")
    results = tmp_path / "results"
    with pytest.raises(AblateError, match=r"data.path=.*names 10 shards but 10 do not exist"):
        launch(sweep, PAPER_LIKE, results, echo=lambda line: None)
    assert not (results / "mlflow.db").exists() and not (results / "sweeps").exists()

    lines: list[str] = []
    assert launch(sweep, PAPER_LIKE, results, dry_run=True, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "prepare[0/10 units]" in text  # planned from the pattern alone
    missing = [line for line in text.splitlines() if line.startswith("missing (a launch stops here)")]
    assert len(missing) == 1 and "do not exist" in missing[0]  # both arms' problem, said once
    assert "prepare: 10 units" in text and "GPU-h" in text
    assert not (results / "mlflow.db").exists()


def test_missing_fid_weights_stop_the_launch_and_say_where_they_come_from(tmp_path: Path) -> None:
    import realdata

    eval_dir = realdata.write_webdataset(tmp_path / "coco", shards=1, per_shard=2, planted=False)[0]
    overrides = [
        *realdata.overrides(tmp_path / "assets"),
        f"data.eval_path={eval_dir}",
        f"evaluate.fid_weights={tmp_path / 'missing.pth'}",
    ]
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: fid\ngrid:\n  model.init: [random]\n")
    with pytest.raises(AblateError, match=r"evaluate.fid_weights.*weights-inception-2015-12-05") as err:
        launch(sweep, overrides, tmp_path / "results", echo=lambda line: None)
    assert "torch-fidelity/releases/download" in str(err.value)
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_the_dry_run_shows_each_arms_run_name_and_the_key_of_its_train_directory(tmp_path: Path) -> None:
    """One key for one thing: the dry run's key is results/cache/train/<key> and the train run's tag; the
    run name beside the label is the one the arm's MLflow run gets."""
    from ablate.arms import resolve_arms
    from ablate.launch.runs import arm_run_names, swept_params
    from ablate.stages.plan import plan_stages
    from ablate.sweep import load_sweep

    sweep = Path(__file__).resolve().parent.parent / "sweeps" / "t2i_init.yaml"
    lines: list[str] = []
    assert (
        launch(sweep, [], tmp_path / "results", dry_run=True, echo=lambda t: lines.extend(t.splitlines()))
        == 0
    )
    header = next(line for line in lines if line.startswith("arm ") and "train key" in line)
    name_at, key_at = header.index("MLflow run"), header.index("train key")
    arms = resolve_arms(load_sweep(sweep))
    names = arm_run_names(swept_params(arms))
    assert names["init=random seed=2"] == "random s2"
    for arm in arms:
        train = next(s for s in plan_stages(arm.config) if s.name == "train")
        row = next(line for line in lines if line.startswith(arm.label + " "))
        assert row[name_at:key_at].rstrip() == names[arm.label]
        assert row[key_at:].split()[0] == train.key
