"""What exactly-once delivery costs a resumed job: the tracker reading every (key, step) of its run.

For each S builds one train run of S steps x 8 metrics in a fresh MLflow SQLite store (log_batch, 1000
values a call; not timed), writes the same rows to a metrics.jsonl, then times, in this process:
  - `logged_steps` (one SQL query: what MLflowTracker's start-up reads now);
  - the client's `get_metric_history` per key (what a server store over HTTP falls back to);
  - a whole resumed tracker start: MLflowTracker(..., run_dir=...) with nothing missing, then close().
Importing mlflow (2-3 s, once per process) and creating the store are left out.

    python bench/tracker_resume.py                  # S in 1000, 10000, 100000
    python bench/tracker_resume.py --steps 500 5000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from ablate import tracking
from ablate.tracking.read import logged_steps

METRICS = ("loss", "text_loss", "image_loss", "perplexity", "lr", "tokens", "tokens_per_s", "grad_norm")


def build(root: Path, steps: int) -> tuple[tracking.Store, str, Path]:
    from mlflow.entities import Metric

    store = tracking.Store.open(f"sqlite:///{root / 'mlflow.db'}")
    experiment = tracking.ensure_experiment(store, "bench")
    run_id = tracking.get_or_create_stage_run(store, experiment, "k", "train", "train", {}, {})
    assert run_id is not None
    client = store.client
    batch: list[Metric] = []
    run_dir = root / "train"
    run_dir.mkdir()
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            row = {k: step + i / 10 for i, k in enumerate(METRICS)}
            f.write(json.dumps({"step": step, **row}) + "\n")
            batch.extend(Metric(k, v, 0, step) for k, v in row.items())
            if len(batch) >= 1000:
                client.log_batch(run_id, metrics=batch)
                batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
    return store, run_id, run_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 10000, 100000])
    args = p.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    print(f"{'steps':>8} {'values':>9} {'logged_steps':>13} {'history/key':>12} {'tracker start+close':>20}")
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as tmp:
            store, run_id, run_dir = build(Path(tmp), steps)
            t0 = time.perf_counter()
            got = logged_steps(store, run_id)
            t_sql = time.perf_counter() - t0
            assert all(len(v) == steps for v in got.values()) and len(got) == len(METRICS)
            client = store.client
            t0 = time.perf_counter()
            for key in METRICS:
                client.get_metric_history(run_id, key)
            t_hist = time.perf_counter() - t0
            t0 = time.perf_counter()
            tracker = tracking.MLflowTracker(store, run_id, run_dir=run_dir, mark_running=False)
            tracker.close(timeout=600)
            t_tracker = time.perf_counter() - t0
            assert tracker.backfilled_rows == 0
            print(
                f"{steps:>8} {steps * len(METRICS):>9} {t_sql:>12.2f}s {t_hist:>11.2f}s {t_tracker:>19.2f}s"
            )


if __name__ == "__main__":
    main()
