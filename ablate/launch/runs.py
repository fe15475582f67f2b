"""The tracking side of a launch: each job's JobTracking (built here, no store call: the job finds or
creates its runs when it starts), and the runs of stages already done (tagged, and their arms' runs
filled), which touches the store only if it exists."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ablate.arms import ResolvedArm
from ablate.config.compose import flatten
from ablate.launch.graph import Graph, Node
from ablate.rundir import git_commit
from ablate.schema import EXECUTION_SECTIONS, TrackingConfig
from ablate.stages import registry
from ablate.stages.names import ARM_STAGES, TRAIN
from ablate.sweep import SEED_KEY
from ablate.tracking.done_runs import sync_done_runs
from ablate.tracking.job_runs import ArmRunSpec, JobTracking, RunSpec
from ablate.tracking.results import ARM_RESULT_METRICS
from ablate.tracking.store import Store
from ablate.tracking.tags import (
    MAX_RUN_NAME_LEN,
    arm_run_tags,
    stage_run_name,
    stage_run_tags,
    stages_experiment,
    sweep_experiment,
)
from ablate.tracking.ui import arms_view

# An arm run's name shows the arm's swept values as words, in this order (other keys after them as
# `<last part of the key>=<value>`, the seed last); a value that most of the sweep's arms share is left
# out, except for these two (the paper's comparison, and which seed it is).
NAME_ORDER = (
    "data.task",
    "model.init",
    "model.image_init",
    "train.trainable",
    "optim.lr",
    "train.batch_tokens",
)
ALWAYS_NAMED = ("model.init", SEED_KEY)
# Named on every arm not known to be text-to-image wherever the sweep varies it: left out as the common
# value, a freeze sweep's fully trainable arm would read `pretrained s0` beside `pretrained emb_out s0`.
# A t2i arm keeps the common rule: the sweeps' t2i arms are all fully trainable, and `all` on each would
# say nothing.
NAMED_WHEN_VARIED = "train.trainable"
SHORT_KEYS = {"optim.lr": "lr", "train.batch_tokens": "batch"}
# The arms' colours in MLflow's charts, in sweep order (matplotlib's tab10, as analysis' figures use).
RUN_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


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


def _number(value: Any) -> str:
    """A number as a run name shows it: 3e-4, 1.67e-4, 0.05, 1152, 500K, 2M (other values as they are)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        for unit, size in (("M", 10**6), ("K", 10**3)):
            if value and value % size == 0:
                return f"{value // size}{unit}"
        return str(value)
    if value != 0 and not 1e-2 <= abs(value) < 1e5:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.4g}"


def _word(key: str, value: Any) -> str:
    if key == "model.image_init":
        return f"+{value}"  # image-code embeddings on top of the language model's
    if key == SEED_KEY:
        return f"s{value}"
    if key in ("data.task", "model.init", "train.trainable"):  # their values say what they are
        return str(value)
    return f"{SHORT_KEYS.get(key, key.rsplit('.', 1)[-1])}={_number(value)}"


def arm_run_names(params: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Arm label -> its run's name, from swept_params: short words for the arm's swept values
    (`pretrained`, `pretrained +contrastive s1`, `uncond pretrained emb_out`, `pretrained all s0` beside
    it in a freeze sweep, `random lr=3e-4`). Arms whose names would be the same (or empty) are named by
    their labels; the label is a tag of the run."""
    keys = set().union(*(p.keys() for p in params.values())) if params else set()
    shared: dict[str, str] = {}  # key -> the value (repr) most arms have, where one is the most common
    varied: set[str] = set()  # keys with more than one value among the arms
    for key in keys:
        (top, n), *others = Counter(repr(p[key]) for p in params.values() if key in p).most_common()
        if not others or n > others[0][1]:
            shared[key] = top
        if others:
            varied.add(key)

    def named(p: dict[str, Any], key: str) -> bool:
        if key in ALWAYS_NAMED or repr(p[key]) != shared.get(key):
            return True
        return key == NAMED_WHEN_VARIED and key in varied and p.get("data.task") != "t2i"

    def order(key: str) -> tuple[bool, int, str]:
        return key == SEED_KEY, NAME_ORDER.index(key) if key in NAME_ORDER else len(NAME_ORDER), key

    names = {
        label: " ".join(_word(k, p[k]) for k in sorted(p, key=order) if named(p, k))[:MAX_RUN_NAME_LEN]
        for label, p in params.items()
    }
    count = Counter(names.values())
    return {label: name if name and count[name] == 1 else label for label, name in names.items()}


def _stage_spec(
    node: Node,
    sweep: str,
    sweeps_of: dict[str, tuple[str, ...]],
    prefix: str,
    commit: str | None,
    names: dict[str, str],
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
        name=stage_run_name(job.stage, [names.get(label, label) for label in job.labels]),
        tags={k: str(v) for k, v in tags.items()},
        params=params,
    )


def arm_specs(graph: Graph, arms: list[ResolvedArm], sweep: str, prefix: str) -> dict[str, ArmRunSpec]:
    """Arm label -> the spec of its run in the sweep's experiment: named by arm_run_names, coloured in
    sweep order."""
    params = swept_params(arms)
    names = arm_run_names(params)
    view = arms_view(sorted(set().union(*(p.keys() for p in params.values()))), list(ARM_RESULT_METRICS))
    out = {}
    for i, arm in enumerate(arms):
        stages = graph.arm_stages[arm.label]
        keys = {stage: graph.nodes[name].job.key for stage, name in stages.items()}
        color = RUN_COLORS[i % len(RUN_COLORS)]
        out[arm.label] = ArmRunSpec(
            experiment=sweep_experiment(prefix, sweep),
            name=names[arm.label],
            tags=arm_run_tags(sweep=sweep, label=arm.label, arm_key=arm.key, stage_keys=keys, color=color),
            params=params[arm.label],
            dirs=[graph.nodes[stages[s]].job.out_dir for s in ARM_STAGES if s in stages],
            view=view,
            label=arm.label,
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
    run_names = {label: spec.name for label, spec in by_label.items()}
    for node in graph.nodes.values():
        job = node.job
        job.sweep = sweep
        if node.done or job.unit is not None:
            continue
        feeds = [by_label[label] for label in job.labels] if job.stage in ARM_STAGES else []
        job.tracking = JobTracking(
            uri=uri,
            stage=_stage_spec(node, sweep, sweeps_of, settings.experiment_prefix, commit, run_names),
            arms=feeds,
            flush_interval_s=settings.flush_interval_s,
            close_timeout_s=settings.close_timeout_s,
        ).to_dict()


def sync_done(
    graph: Graph,
    arms: list[ResolvedArm],
    sweep: str,
    store: Store,
    settings: TrackingConfig,
    echo: Callable[[str], None],
) -> None:
    """For stages already done (another sweep's, or this one's before a relaunch): tag their runs as used
    by this sweep, and give every arm whose result stages are all done its filled arm run
    (tracking.sync_done_runs: only where the store exists)."""
    done = [n for n in graph.nodes.values() if n.done and n.job.unit is None]
    if not done:
        return
    sweeps_of = {a.label: a.sweeps or (sweep,) for a in arms}
    prefix = settings.experiment_prefix
    specs = arm_specs(graph, arms, sweep, prefix)
    run_names = {label: spec.name for label, spec in specs.items()}

    def done_spec(node: Node) -> RunSpec:
        return _stage_spec(node, sweep, sweeps_of, prefix, None, run_names)

    finished = []  # arms whose result stages are all done; the others' jobs fill their runs
    for arm in arms:
        names = [graph.arm_stages[arm.label][s] for s in ARM_STAGES if s in graph.arm_stages[arm.label]]
        if names and all(graph.nodes[n].done for n in names):
            train = graph.arm_stages[arm.label].get(TRAIN)
            finished.append((specs[arm.label], done_spec(graph.nodes[train]) if train else None))
    sync_done_runs(store, sweep, [done_spec(n) for n in done], finished, echo)
