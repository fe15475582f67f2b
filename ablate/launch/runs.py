"""The tracking side of a launch: each job's JobTracking (built here, no store call: the job finds or
creates its runs when it starts), and the runs of stages already done (tagged, and their arms' runs
filled), which touches the store only if it exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ablate.arms import ResolvedArm
from ablate.config.compose import flatten
from ablate.config.schema import EXECUTION_SECTIONS, TrackingConfig
from ablate.launch.graph import Graph, Node
from ablate.rundir import git_commit
from ablate.stages import registry
from ablate.stages.names import ARM_STAGES, TRAIN
from ablate.tracking.job_runs import ArmRunSpec, JobTracking, RunSpec
from ablate.tracking.tags import (
    arm_run_tags,
    stage_run_name,
    stage_run_tags,
    stages_experiment,
    sweep_experiment,
)
from ablate.tracking.ui import arms_view
from ablate.train.final import FINAL_METRICS

# The result columns of a sweep's arms table in the MLflow UI: the train stage's final values and last
# held-out text probe, the evaluate stage's image metrics (FID on real data). A demo test checks that an
# arm's run holds them.
ARM_RESULT_METRICS = (
    *(f"final_{m}" for m in FINAL_METRICS),
    "heldout_text_ppl",
    "caption_match_seen",
    "colour_match_seen",
    "scene_valid",
    "fid",
)


def swept_params(arms: list[ResolvedArm]) -> dict[str, dict[str, Any]]:
    """Arm label -> its params as an arm run shows them: the arm's own keys (its grid point or `arms`
    entry; a group choice such as scale=demo as given) and the config keys whose values differ between
    the sweep's arms (a seed, a key an included file sets), with their resolved values."""
    flat = {a.label: flatten({k: v for k, v in a.cfg.items() if k not in EXECUTION_SECTIONS}) for a in arms}
    keys = set().union(*(f.keys() for f in flat.values())) if flat else set()
    varying = {k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1}
    out = {}
    for arm in arms:
        own = {
            k.lstrip("+~"): v for k, v in arm.assignments.items() if k.split(".")[0] not in EXECUTION_SECTIONS
        }
        params: dict[str, Any] = {k: flat[arm.label].get(k.lstrip("+~"), v) for k, v in own.items()}
        params.update({k: flat[arm.label].get(k) for k in sorted(varying)})
        out[arm.label] = params
    return out


def _stage_spec(
    node: Node, sweep: str, sweeps_of: dict[str, tuple[str, ...]], prefix: str, commit: str | None
) -> RunSpec:
    job = node.job
    params: dict[str, Any] = {}
    if commit is not None:  # a job to run logs the params; a done stage's run has them
        stage = registry.get(job.stage)
        params = {k: v for k, v in flatten(job.config).items() if stage.logs_param(k)}
    tags = stage_run_tags(
        sweep=sweep,
        stage=job.stage,
        key=job.key,
        labels=job.labels,
        sweeps=[s for label in job.labels for s in sweeps_of.get(label, ())],
        inputs=job.inputs,
        git_commit=commit,
    )
    return RunSpec(
        experiment=stages_experiment(prefix, sweep),
        name=stage_run_name(job.stage, job.labels),
        tags={k: str(v) for k, v in tags.items()},
        params=params,
    )


def arm_specs(graph: Graph, arms: list[ResolvedArm], sweep: str, prefix: str) -> dict[str, ArmRunSpec]:
    """Arm label -> the spec of its run in the sweep's experiment."""
    params = swept_params(arms)
    view = arms_view(sorted(set().union(*(p.keys() for p in params.values()))), list(ARM_RESULT_METRICS))
    out = {}
    for arm in arms:
        stages = graph.arm_stages[arm.label]
        keys = {stage: graph.nodes[name].job.key for stage, name in stages.items()}
        out[arm.label] = ArmRunSpec(
            experiment=sweep_experiment(prefix, sweep),
            name=arm.label,
            tags=arm_run_tags(sweep=sweep, label=arm.label, arm_key=arm.key, stage_keys=keys),
            params=params[arm.label],
            dirs=[graph.nodes[stages[s]].job.out_dir for s in ARM_STAGES if s in stages],
            view=view,
        )
    return out


def attach_tracking(
    graph: Graph, arms: list[ResolvedArm], sweep: str, uri: str, settings: TrackingConfig
) -> None:
    """Give every job still to run (units of work excepted: their stage's run sums them up) its
    JobTracking; no store call."""
    commit = git_commit()
    sweeps_of = {a.label: a.sweeps or (sweep,) for a in arms}
    by_label = arm_specs(graph, arms, sweep, settings.experiment_prefix)
    for node in graph.nodes.values():
        job = node.job
        job.sweep = sweep
        if node.done or job.unit is not None:
            continue
        feeds = [by_label[label] for label in job.labels] if job.stage in ARM_STAGES else []
        job.tracking = JobTracking(
            uri=uri,
            stage=_stage_spec(node, sweep, sweeps_of, settings.experiment_prefix, commit),
            arms=feeds,
            flush_interval_s=settings.flush_interval_s,
            close_timeout_s=settings.close_timeout_s,
        ).to_dict()


def sync_done(
    graph: Graph,
    arms: list[ResolvedArm],
    sweep: str,
    uri: str,
    settings: TrackingConfig,
    echo: Callable[[str], None],
) -> None:
    """For stages already done (another sweep's, or this one's before a relaunch): tag their runs as used
    by this sweep, and give every arm whose result stages are all done its filled arm run. Only where
    the store exists: a new store has no such runs (and creating one costs seconds)."""
    from ablate import tracking
    from ablate.tracking.store import _store_missing

    done = [n for n in graph.nodes.values() if n.done and n.job.unit is None]
    if not done or _store_missing(uri):
        return
    sweeps_of = {a.label: a.sweeps or (sweep,) for a in arms}
    tagged = tracking.sweep_stage_keys(uri, sweep)
    prefix = settings.experiment_prefix

    def done_run(node: Node) -> str | None:
        return tracking.stage_run(uri, _stage_spec(node, sweep, sweeps_of, prefix, None), create=False)

    for node in done:
        if (node.job.stage, node.job.key) not in tagged:
            done_run(node)
    existing = tracking.sweep_arm_runs(uri, sweep_experiment(prefix, sweep), sweep)
    specs = arm_specs(graph, arms, sweep, prefix)
    for arm in arms:
        names = [graph.arm_stages[arm.label][s] for s in ARM_STAGES if s in graph.arm_stages[arm.label]]
        if not names or not all(graph.nodes[n].done for n in names):
            continue  # its jobs fill it
        if existing.get(arm.key, ("", ""))[1] == "FINISHED":
            continue
        spec = specs[arm.label]
        train = graph.arm_stages[arm.label].get(TRAIN)
        run_id = tracking.arm_run(uri, spec, TRAIN, done_run(graph.nodes[train]) if train else None)
        rows = sum(tracking.backfill(uri, run_id, d) for d in spec.dirs)
        tracking.set_run_status(uri, run_id, "FINISHED")
        echo(f"arm run {arm.label!r}: filled from its finished stages ({rows} metric rows)")
