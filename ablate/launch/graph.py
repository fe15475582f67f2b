"""Arms -> the sweep's job graph: each (stage, key) once, however many arms share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablate.arms import ResolvedArm
from ablate.cache import stage_dir
from ablate.config.compose import _container
from ablate.stages import registry
from ablate.stages.plan import StageSpec, plan_stages
from ablate.stages.runner import Job


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
        return sorted(self.nodes.values(), key=lambda n: registry.order(n.job.stage))


def build_graph(arms: list[ResolvedArm], results: Path, threads: int = 1) -> Graph:
    """Plan every arm's stages and merge shared ones; a node is `done` if its output is complete."""
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
                nodes[name].job.labels.append(arm.label)
                continue
            job = Job(
                stage=spec.name,
                key=spec.key,
                out_dir=str(spec.dir(results)),
                inputs={s: str(stage_dir(results, s, k)) for s, k in spec.deps.items()},
                config=container,
                labels=[arm.label],
                threads=threads,
            )
            deps = [f"{s}/{k}" for s, k in spec.deps.items()]
            nodes[name] = Node(job=job, deps=deps, done=spec.done(results))
    return Graph(nodes=nodes, arm_stages=arm_stages)
