"""Jobs make their own MLflow runs when they start (ablate.tracking.job_runs), through the real runner and
a real SQLite store: the stage run in the sweep's stages experiment, the arm's run (one per arm, what the
UI compares) in the sweep's experiment, fed by the arm's train and evaluate jobs; a stage recomputed from
nothing makes its arm's run again; a store that cannot be opened does not stop a stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ablate import tracking
from ablate.rundir import RunDir
from ablate.stages import registry
from ablate.stages.runner import Job, run_job
from ablate.stages.stage import Stage
from ablate.tracking.tags import ARMS_VIEW, TAG_SHARED_VIEW_PREFIX

SWEEP, LABEL, NAME = "s", "init=random", "random"


def fake_stage(monkeypatch: pytest.MonkeyPatch, name: str, metrics: dict[int, dict[str, float]]) -> None:
    """A stage `name` that logs params and the given metrics (step -> values), file first as stages do."""

    def run(ctx) -> None:
        ctx.tracker.log_params({"stage.param": name})
        log = RunDir(ctx.out_dir).metrics_log()
        for step, values in metrics.items():
            log.append(step, values)
            ctx.tracker.log_metrics(values, step)

    monkeypatch.setitem(registry._BY_NAME, name, Stage(name, 1, config=lambda cfg: {}, run=run))


def job(uri: str, root: Path, stage: str, fake: str, key: str) -> Job:
    """A job of `fake` tracked as stage `stage` of the arm LABEL of sweep SWEEP (train and evaluate feed the arm)."""
    dirs = {"train": str(root / "train" / "k-train"), "evaluate": str(root / "evaluate" / "k-eval")}
    spec = tracking.JobTracking(
        uri=uri,
        stage=tracking.RunSpec(
            experiment=tracking.stages_experiment("ablate/", SWEEP),
            name=tracking.stage_run_name(stage, [LABEL]),
            tags=tracking.stage_run_tags(sweep=SWEEP, stage=stage, key=key, labels=[LABEL], sweeps=[SWEEP]),
            params={"model.init": "random"},
        ),
        arms=[
            tracking.ArmRunSpec(
                experiment=tracking.sweep_experiment("ablate/", SWEEP),
                name=NAME,
                tags=tracking.arm_run_tags(
                    sweep=SWEEP,
                    label=LABEL,
                    arm_key="armkey",
                    stage_keys={"train": "k-train", "evaluate": "k-eval"},
                ),
                params={"model.init": "random"},
                dirs=list(dirs.values()),
                view=tracking.arms_view(["model.init"], ["final_loss"]),
                label=LABEL,
            )
        ],
        flush_interval_s=0.05,
    )
    return Job(
        stage=fake,
        key=key,
        out_dir=dirs[stage],
        inputs={},
        config={},
        labels=[LABEL],
        tracking=spec.to_dict(),
    )


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    h = tracking.fetch_histories(uri, [run_id], [key])
    return list(zip(h["step"].tolist(), h["value"].tolist(), strict=True))


def test_train_and_evaluate_jobs_make_their_stage_runs_and_fill_their_arms_run(
    monkeypatch, new_store, tmp_path
):
    uri = f"sqlite:///{new_store('jobruns') / 'mlflow.db'}"
    final = 2.123456789  # logged at the last step, as the train stage logs its final values
    fake_stage(monkeypatch, "fake_train", {1: {"loss": 3.0}, 2: {"loss": 2.0}, 3: {"final_loss": final}})
    fake_stage(monkeypatch, "fake_eval", {0: {"caption_match_seen": 0.2512345}})
    train = job(uri, tmp_path, "train", "fake_train", "k-train")
    assert run_job(train) == "done"
    prov = RunDir(train.out_dir).read_provenance()
    assert prov is not None and "uri" not in prov["tracking"]  # a URI may hold a password
    stage_id, arm_id = prov["mlflow_run_id"], prov["mlflow_arm_runs"][LABEL]

    stages = tracking.fetch_runs(uri, sweep=SWEEP).set_index("run_id")
    assert list(stages.index) == [stage_id] and stages.loc[stage_id, "experiment"] == "ablate/s/stages"
    assert (
        stages.loc[stage_id, "status"] == "FINISHED"
        and stages.loc[stage_id, "params.stage.param"] == "fake_train"
    )
    arms = tracking.fetch_runs(uri, sweep=SWEEP, arms=True).set_index("run_id")
    assert list(arms.index) == [arm_id] and arms.loc[arm_id, "experiment"] == "ablate/s"
    assert arms.loc[arm_id, "run_name"] == NAME and arms.loc[arm_id, "params.model.init"] == "random"
    assert arms.loc[arm_id, f"tags.{tracking.TAG_ARM}"] == LABEL  # the full label, which status knows it by
    assert "params.stage.param" not in arms  # an arm run has the arm's params, not each stage's
    assert arms.loc[arm_id, f"tags.{tracking.TAG_STAGE_RUN_PREFIX}train"] == stage_id
    assert history(uri, arm_id, "loss") == [(1, 3.0), (2, 2.0)] == history(uri, stage_id, "loss")
    # A single value: on the stage run as logged; on the arm's run rounded and at step 0, which MLflow's
    # charts draw as a bar per run (at step 3 it would be a lone point on the tokens axis).
    assert history(uri, stage_id, "final_loss") == [(3, final)]
    assert history(uri, arm_id, "final_loss") == [(0, 2.123)]
    experiment = tracking.Store.open(uri).client.get_experiment_by_name("ablate/s")
    view = json.loads(experiment.tags[TAG_SHARED_VIEW_PREFIX + ARMS_VIEW])
    assert "metrics.`final_loss`" in view["selectedColumns"] and view["runsHiddenMode"] == "SHOW_ALL"

    evaluate = job(uri, tmp_path, "evaluate", "fake_eval", "k-eval")
    assert run_job(evaluate) == "done"
    assert RunDir(evaluate.out_dir).read_provenance()["mlflow_arm_runs"] == {
        LABEL: arm_id
    }  # the same arm run
    assert history(uri, arm_id, "caption_match_seen") == [(0, 0.2512)]
    info = tracking.run_info(uri, arm_id)
    train_info = tracking.run_info(uri, stage_id)
    # The arm's run spans its jobs: it started with its train job and ended with its evaluate job.
    assert (
        info["status"] == "FINISHED"
        and train_info["start_time"] <= info["start_time"] <= train_info["end_time"]
    )
    assert (
        info["end_time"]
        >= tracking.run_info(uri, RunDir(evaluate.out_dir).read_provenance()["mlflow_run_id"])["start_time"]
    )

    # The train stage recomputed from nothing (its directory deleted): a new stage run, and the arm's run
    # made again with the new values, the evaluate stage's metrics sent to it from its directory.
    import shutil

    shutil.rmtree(train.out_dir)
    fake_stage(monkeypatch, "fake_train", {1: {"loss": 9.0}, 2: {"loss": 8.0}})
    assert run_job(train) == "done"
    prov = RunDir(train.out_dir).read_provenance()
    assert prov["mlflow_run_id"] != stage_id and prov["mlflow_arm_runs"][LABEL] != arm_id
    new_arm = prov["mlflow_arm_runs"][LABEL]
    assert list(tracking.fetch_runs(uri, sweep=SWEEP, arms=True)["run_id"]) == [new_arm]  # the old one: trash
    assert history(uri, new_arm, "loss") == [(1, 9.0), (2, 8.0)]
    assert history(uri, new_arm, "caption_match_seen") == [(0, 0.2512)]  # back-filled as shown live
    # Sent again from the directories (a relaunch, `ablate resend`): nothing is missing, nothing is added.
    assert (
        tracking.backfill(uri, new_arm, train.out_dir)
        == 0
        == tracking.backfill(uri, new_arm, evaluate.out_dir)
    )


def test_a_store_that_cannot_be_opened_does_not_stop_the_stage(monkeypatch, tmp_path, capsys):
    fake_stage(monkeypatch, "fake_train", {1: {"loss": 3.0}})
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store's folder should be")
    j = job(f"sqlite:///{blocked / 'mlflow.db'}", tmp_path, "train", "fake_train", "k-train")
    assert run_job(j) == "done"
    rd = RunDir(j.out_dir)
    assert rd.is_complete() and rd.metrics_log().rows() == [{"step": 1, "loss": 3.0}]
    assert "mlflow_run_id" not in (rd.read_provenance() or {})
    assert f"ablate resend {j.out_dir}" in capsys.readouterr().out


def test_an_arm_runs_params_are_its_own_keys_and_what_differs_between_arms(tmp_path):
    from ablate.arms import resolve_arms
    from ablate.launch.runs import swept_params
    from ablate.sweep import load_sweep

    sweep = tmp_path / "p.yaml"
    sweep.write_text("name: p\nbase: [optim.lr=3e-4]\nseeds: 2\ngrid:\n  model.init: [pretrained, random]\n")
    params = swept_params(resolve_arms(load_sweep(sweep, ["train.total_tokens=100000"])))
    assert params["init=pretrained seed=1"] == {"model.init": "pretrained", "train.seed": 1}
    assert {p["model.init"] for p in params.values()} == {"pretrained", "random"} and len(params) == 4
    # The base and the command line set every arm alike: not among an arm's params (its stage runs have them).
    assert not any("optim.lr" in p or "train.total_tokens" in p for p in params.values())


def test_arm_runs_get_short_names_from_their_swept_values(tmp_path):
    from ablate.arms import resolve_arms
    from ablate.launch.runs import arm_run_names, swept_params
    from ablate.sweep import load_sweep

    def names(text: str) -> dict[str, str]:
        (tmp_path / "n.yaml").write_text(text)
        return arm_run_names(swept_params(resolve_arms(load_sweep(tmp_path / "n.yaml"))))

    demo = names((Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml").read_text())
    assert demo == {
        "task=t2i init=pretrained": "pretrained s0",
        "task=t2i init=random": "random s0",
        "task=t2i init=pretrained seed=1": "pretrained s1",
        "task=t2i init=random seed=1": "random s1",
        "task=t2i init=pretrained image_init=contrastive": "pretrained +contrastive s0",
        "task=uncond init=pretrained trainable=emb_out": "uncond pretrained emb_out s0",
    }
    seeded = names("name: n\nseeds: 3\ngrid:\n  model.init: [pretrained, random]\n")
    assert seeded["init=random seed=2"] == "random s2" and len(set(seeded.values())) == 6
    grid = names(
        "name: n\ngrid:\n  model.init: [random]\n  optim.lr: [3.0e-4, 0.05]\n  train.batch_tokens: [1152, 2000000]\n"
        "base: [train.total_tokens=4000000]\n"
    )
    assert sorted(grid.values()) == [
        "random lr=0.05 batch=1152", "random lr=0.05 batch=2M", "random lr=3e-4 batch=1152", "random lr=3e-4 batch=2M",
    ]  # fmt: skip


def test_a_varied_freeze_setting_is_named_on_every_arm_but_a_t2i_one(tmp_path):
    """The fully trainable arm of a freeze sweep says `all` (not `pretrained s0` beside `pretrained emb_out
    s0`); text-to-image arms beside unconditional ones keep the common rule (all fully trainable)."""
    from ablate.arms import resolve_arms
    from ablate.launch.runs import arm_run_names, swept_params
    from ablate.sweep import load_sweep

    def names(text: str) -> dict[str, str]:
        (tmp_path / "n.yaml").write_text(text)
        return arm_run_names(swept_params(resolve_arms(load_sweep(tmp_path / "n.yaml"))))

    freeze = names(
        "name: n\nbase: [data.task=uncond]\nseeds: 2\ngrid:\n  model.init: [pretrained]\n"
        "  train.trainable: [emb_out, emb_out_norm, all]\narms:\n  - {model.init: random, train.trainable: all}\n"
    )
    assert freeze["init=pretrained trainable=all seed=0"] == "pretrained all s0"
    assert freeze["init=pretrained trainable=emb_out seed=1"] == "pretrained emb_out s1"
    assert freeze["init=random trainable=all seed=1"] == "random all s1" and len(set(freeze.values())) == 8
    both = names(
        "name: n\narms:\n  - {data.task: t2i, model.init: pretrained}\n  - {data.task: t2i, model.init: random}\n"
        "  - {data.task: t2i, model.init: pretrained, model.image_init: contrastive}\n"
        "  - {data.task: uncond, model.init: pretrained, train.trainable: emb_out}\n"
        "  - {data.task: uncond, model.init: pretrained, train.trainable: all}\n"
    )
    assert sorted(both.values()) == [
        "pretrained", "pretrained +contrastive", "random", "uncond pretrained all", "uncond pretrained emb_out",
    ]  # fmt: skip


def test_arms_whose_short_names_would_collide_keep_their_labels():
    from ablate.launch.runs import arm_run_names

    params = {
        "a": {"model.init": "random", "x.k": 1},
        "b": {"model.init": "random", "y.k": 1},  # "random k=1" both
        "c": {"model.init": "pretrained", "x.k": 1},
        "base": {},  # nothing swept: no words
    }
    assert arm_run_names(params) == {"a": "a", "b": "b", "c": "pretrained", "base": "base"}


def test_a_launch_names_the_runs_and_fills_an_arm_run_whose_stages_are_done(new_store, tmp_path):
    """attach_tracking (jobs to run) and sync_done (stages done, e.g. by another sweep) use the short names;
    the filled arm run holds its final value at step 0, rounded, as one a job fills."""
    from ablate.arms import resolve_arms
    from ablate.launch.graph import build_graph
    from ablate.launch.runs import attach_tracking, sync_done
    from ablate.schema import TrackingConfig
    from ablate.sweep import load_sweep

    uri = f"sqlite:///{new_store('launchruns') / 'mlflow.db'}"
    (tmp_path / "n.yaml").write_text("name: n\ngrid:\n  model.init: [pretrained, random]\n")
    arms = resolve_arms(load_sweep(tmp_path / "n.yaml"))
    graph = build_graph(arms, tmp_path / "results")
    attach_tracking(graph, arms, "n", uri, TrackingConfig())
    specs = {n.job.stage: n.job.tracking for n in graph.nodes.values() if n.job.unit is None}
    assert specs["synth"]["stage"]["name"] == "synth pretrained, random"  # shared by both arms
    assert tracking.stage_run_name("synth", ["a", "b", "c", "d"]) == "synth: 4 arms"  # labels: in a tag
    trains = sorted(n.job.tracking["stage"]["name"] for n in graph.nodes.values() if n.job.stage == "train")
    assert trains == ["train pretrained", "train random"]
    [train_arm] = specs["train"]["arms"]
    assert train_arm["name"] in ("pretrained", "random") and train_arm["label"].startswith("init=")

    for node in graph.nodes.values():
        node.done = True
        if node.job.stage == "train":
            Path(node.job.out_dir).mkdir(parents=True)
            log = RunDir(node.job.out_dir).metrics_log()
            log.append(1, {"loss": 3.0})
            log.append(1, {"final_loss": 3.14159})
    said: list[str] = []
    sync_done(graph, arms, "n", tracking.Store.open(uri), TrackingConfig(), said.append)
    runs = tracking.fetch_runs(uri, sweep="n", arms=True).set_index("run_name")
    assert sorted(runs.index) == ["pretrained", "random"]
    assert runs.loc["random", f"tags.{tracking.TAG_ARM}"] == "init=random"
    assert history(uri, runs.loc["random", "run_id"], "final_loss") == [(0, 3.142)]
    assert any(line.startswith("arm run 'random' (init=random): filled") for line in said), said
