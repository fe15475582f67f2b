"""The local executor's choice among ready jobs (ablate.launch.executor.by_priority), on real planned
graphs: shared stages first, then an arm's evaluate before another arm's train."""

from __future__ import annotations

from pathlib import Path

from ablate.arms import resolve_arms
from ablate.launch.executor import by_priority
from ablate.launch.graph import Graph, Node, build_graph
from ablate.stages import names
from ablate.sweep import load_sweep

ROOT = Path(__file__).resolve().parent.parent


def graph_of(sweep: str, tmp_path: Path) -> Graph:
    return build_graph(resolve_arms(load_sweep(ROOT / "sweeps" / sweep)), tmp_path)


def simulate(graph: Graph, slots: int) -> list[tuple[int, Node]]:
    """(start time, node) of every job when each takes one time unit on `slots` slots."""
    pending = [n for n in graph.ordered() if not n.done]
    done: set[str] = set()
    starts: list[tuple[int, Node]] = []
    t = 0
    while pending:
        ready = [n for n in pending if all(d in done for d in n.deps)]
        assert ready, "a pending job waits for nothing that can run"
        batch = by_priority(ready, pending)[:slots]
        for n in batch:
            pending.remove(n)
            starts.append((t, n))
        done.update(n.job.name for n in batch)
        t += 1
    return starts


def test_a_stage_other_jobs_wait_for_goes_before_a_job_only_one_waits_for(tmp_path):
    graph = graph_of("demo.yaml", tmp_path)
    pending = [n for n in graph.ordered() if n.job.stage not in (names.SYNTH, names.TEXT_TOKENIZER)]
    ready = [n for n in pending if n.job.stage in (names.IMAGE_TOKENIZER, names.PRETRAIN)]
    assert [n.job.stage for n in by_priority(ready, pending)] == [names.PRETRAIN, names.IMAGE_TOKENIZER]


def test_align_goes_before_another_arms_train_as_its_own_train_waits_for_it(tmp_path):
    graph = graph_of("demo.yaml", tmp_path)
    pending = [n for n in graph.ordered() if n.job.stage in (names.ALIGN, names.TRAIN, names.EVALUATE)]
    ready = [n for n in pending if n.job.stage in (names.ALIGN, names.TRAIN)]
    assert by_priority(ready, pending)[0].job.stage == names.ALIGN


def test_an_arms_evaluate_starts_before_the_next_arms_train(tmp_path):
    graph = graph_of("demo.yaml", tmp_path)
    pending = [n for n in graph.ordered() if n.job.stage in (names.TRAIN, names.EVALUATE)]
    trains = [n for n in pending if n.job.stage == names.TRAIN]
    first_eval = next(n for n in pending if n.job.stage == names.EVALUATE and trains[0].job.name in n.deps)
    pending.remove(trains[0])
    ready = [*trains[1:], first_eval]
    assert by_priority(ready, pending)[0] is first_eval
    assert by_priority(ready, pending)[1:] == trains[1:]  # the rest in graph order


def test_the_paper_grid_finishes_arms_along_the_way_not_all_at_the_end(tmp_path):
    starts = simulate(graph_of("paper.yaml", tmp_path), slots=2)
    evaluate_starts = sorted(t for t, n in starts if n.job.stage == names.EVALUATE)
    train_starts = sorted(t for t, n in starts if n.job.stage == names.TRAIN)
    # Graph order alone would start every train (37 of them) before the first evaluate.
    assert evaluate_starts[0] <= train_starts[2]
    assert evaluate_starts[len(evaluate_starts) // 2] < train_starts[-1]
    # no arm's chain is left for the end: after the last train only its own evaluate remains
    assert evaluate_starts[-1] == train_starts[-1] + 1 and evaluate_starts[-2] <= train_starts[-1]
    # and the shared pretrain stage starts as soon as it can (its text tokenizer done)
    text_tok = next(t for t, n in starts if n.job.stage == names.TEXT_TOKENIZER)
    assert next(t for t, n in starts if n.job.stage == names.PRETRAIN) == text_tok + 1
