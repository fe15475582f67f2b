"""Arms -> the sweep's job graph: each (stage, key) once, however many arms share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.arms import ResolvedArm
from ablate.cache import stage_dir
from ablate.config.compose import _container
from ablate.rundir import RunDir
from ablate.stages import registry
from ablate.stages.job import Job
from ablate.stages.plan import StageSpec, plan_stages


@dataclass
class Node:
    """One job of the graph and the names of the jobs it waits for."""

    job: Job
    deps: list[str] = field(default_factory=list)
    done: bool = False


@dataclass
class Graph:
    """Jobs in dependency order, and each arm's stages (arm label -> stage -> job name)."""

    nodes: dict[str, Node]
    arm_stages: dict[str, dict[str, str]]

    def ordered(self) -> list[Node]:
        """Run order: by stage, a stage's units before the stage's own node."""
        return sorted(self.nodes.values(), key=lambda n: (registry.order(n.job.stage), n.job.unit is None))


def build_graph(arms: list[ResolvedArm], results: Path, threads: int = 1) -> Graph:
    """Plan every arm's stages and merge shared ones; a node is `done` if its output is complete.

    A stage split into units (Stage.units) is one node per unit, each writing units/<unit>/ of the
    stage's directory, then the stage's own node, which waits for all of them and assembles their outputs.
    """
    nodes: dict[str, Node] = {}
    arm_stages: dict[str, dict[str, str]] = {}
    for arm in arms:
        container = _container(arm.cfg)
        specs: list[StageSpec] = plan_stages(arm.config)
        arm_stages[arm.label] = {}
        for spec in specs:
            name = f"{spec.name}/{spec.key}"
            arm_stages[arm.label][spec.name] = name
            if name in nodes:
                for shared in [name, *(f"{name}/{u}" for u in spec.units)]:
                    nodes[shared].job.labels.append(arm.label)
                continue
            deps = [f"{s}/{k}" for s, k in spec.deps.items()]
            inputs = {s: str(stage_dir(results, s, k)) for s, k in spec.deps.items()}
            stage_done = spec.done(results)
            out = RunDir(spec.dir(results))
            for unit in spec.units:
                job = Job(
                    stage=spec.name,
                    key=spec.key,
                    out_dir=str(out.unit(unit).path),
                    inputs=inputs,
                    config=container,
                    labels=[arm.label],
                    threads=threads,
                    unit=unit,
                )
                done = stage_done or out.unit(unit).is_complete()
                nodes[job.name] = Node(job=job, deps=deps, done=done)
            job = Job(
                stage=spec.name,
                key=spec.key,
                out_dir=str(out.path),
                inputs=inputs,
                config=container,
                labels=[arm.label],
                threads=threads,
            )
            nodes[name] = Node(job=job, deps=[*deps, *(f"{name}/{u}" for u in spec.units)], done=stage_done)
    return Graph(nodes=nodes, arm_stages=arm_stages)
