"""Time of `ablate plot` (analysis.plot.plot_all) against the number of runs and of logged steps.

For each (R, S) builds an MLflow SQLite store the way the stages fill it: R train runs (3 in 4
text-to-image, over the t2i_init / lr / batch / paper sweeps with 4 learning rates and 3 batch sizes;
1 in 4 unconditional, freeze sweep, the freeze presets in turn) each logging S optimizer steps of 8
metrics (loss, text_loss, image_loss, perplexity, lr, tokens, tokens_per_s, grad_norm), a held-out text
probe every S/10 steps from step 0 and a completions.jsonl artifact; one evaluate run per train run
(caption match or scene validity, a samples.png); 2 align runs of S steps. Then times plot_all over the
whole store (no --sweep), split into fetching the runs, fetching the metric histories, downloading
artifacts and the rest (frames, figures, files); importing mlflow (2-3 s, once per process) is left out.
Everything runs in this one process; the stores are built through ablate.tracking (MLflowTracker), which
takes much longer than plotting them.

    python bench/plot_time.py                      # R in 10, 50, 200; S in 200, 2000 (builds take ~10 min)
    python bench/plot_time.py --runs 5 20 --steps 100 500
    python bench/plot_time.py --keep DIR           # build stores under DIR and reuse them on later calls
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from ablate import tracking
from ablate.stages import names as stages
from analysis import plot

METRICS = ("loss", "text_loss", "image_loss", "perplexity", "lr", "tokens", "tokens_per_s", "grad_norm")
LRS = (5e-5, 1e-4, 2e-4, 3e-4)
BATCHES = (2048, 4096, 8192)
PRESETS = ("emb_out", "emb_out_norm", "emb_out_norm_half", "emb_out_norm_ffn", "all")
TOKENS_PER_STEP = 4096


def _tracker(uri: str, run_id: str) -> tracking.MLflowTracker:
    return tracking.MLflowTracker(uri, run_id, flush_interval_s=30.0)  # big batches: flushed at close


def _run(uri: str, exp: str, key: str, stage: str, sweeps: list[str], params: dict,
         tags: dict | None = None) -> str:  # fmt: skip
    built = tracking.stage_run_tags(sweep=sweeps[0], stage=stage, key=key, labels=[key], sweeps=sweeps)
    all_tags = {**built, **(tags or {})}
    run_id = tracking.get_or_create_stage_run(uri, exp, key, stage, key, all_tags, params)
    assert run_id is not None
    return run_id


def build(root: Path, runs: int, steps: int) -> str:
    """The store for one case under root (reused if complete); its URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = root / "complete"
    if done.exists():
        return uri
    rng = np.random.default_rng(0)
    exp = tracking.ensure_experiment(uri, "bench")
    probe_every = max(1, steps // 10)
    png = root / "samples.png"
    from matplotlib.image import imsave

    imsave(png, rng.random((192, 320, 3)))
    for r in range(runs):
        uncond = r % 4 == 3
        init = "pretrained" if r % 2 == 0 else "random"
        params = {f"model.p{i}": i for i in range(60)}  # a resolved config has about this many keys
        params.update({"model.init": init, "data.task": "uncond" if uncond else "t2i"})
        params.update({"optim.lr": LRS[r % 4], "train.batch_tokens": BATCHES[r % 3]})
        if uncond:
            params["train.trainable"] = PRESETS[(r // 4) % len(PRESETS)] if init == "pretrained" else "all"
            sweeps = ["freeze", "paper"]
        else:
            sweeps = ["t2i_init", "lr", "batch", "paper"]
        key = f"r{r}"
        run_id = _run(uri, exp, key, stages.TRAIN, sweeps, params, {tracking.TAG_POSITIONAL: "none"})
        tracker = _tracker(uri, run_id)
        if not uncond:
            tracker.log_metrics({"tokens": 0.0, "heldout_text_ppl": 40.0}, step=0)
        noise = rng.standard_normal((steps, 3)) * 0.05
        for step in range(1, steps + 1):
            text, image = 2.0 + 2.0 / step + noise[step - 1, 0], 5.0 + 3.0 / step + noise[step - 1, 1]
            loss = (text + 9 * image) / 10
            values = dict(zip(METRICS, (loss, text, image, math.exp(loss), 3e-4, step * TOKENS_PER_STEP,
                                        1e5, 1.0 + noise[step - 1, 2]), strict=True))  # fmt: skip
            if not uncond and (step % probe_every == 0 or step == steps):
                values["heldout_text_ppl"] = 40.0 + step
            tracker.log_metrics(values, step=step)
        if not uncond:
            records = [
                {"step": s, "tokens": s * TOKENS_PER_STEP,
                 "completions": [{"prompt": f"prompt {k}", "completion": f"text at {s}"} for k in range(2)]}
                for s in (0, *range(probe_every, steps + 1, probe_every))
            ]  # fmt: skip
            path = root / "completions" / run_id / "completions.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(x) + "\n" for x in records))
            tracker.log_artifact(path)
        tracker.close(timeout=600)
        linked = {tracking.TAG_TRAIN_KEY: key}  # the evaluate run names the train run it evaluates
        eval_id = _run(uri, exp, f"{key}-eval", stages.EVALUATE, sweeps, params, linked)
        tracker = _tracker(uri, eval_id)
        metrics = (
            {"scene_valid": 0.5} if uncond else {"caption_match_seen": 0.5, "caption_match_heldout": 0.25}
        )
        tracker.log_metrics(metrics, step=0)
        if not uncond:
            tracker.log_artifact(png)
        tracker.close(timeout=60)
    for a in range(2):
        align_id = _run(uri, exp, f"align{a}", stages.ALIGN, ["contrastive", "paper"], {})
        tracker = _tracker(uri, align_id)
        for step in range(1, steps + 1):
            tracker.log_metrics({"loss": 5.0 / step, "temperature": 14.0 + step / steps}, step=step)
        tracker.close(timeout=600)
    done.write_text("ok")
    return uri


def timed(out: Path, uri: str) -> dict[str, float]:
    """plot_all's time, with the time spent in the tracking reads it calls."""
    spent = {"fetch_runs": 0.0, "fetch_histories": 0.0, "download_artifact": 0.0}
    originals = {name: getattr(tracking, name) for name in spent}

    def wrap(name: str):  # noqa: ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return call

    for name in spent:
        setattr(tracking, name, wrap(name))
    try:
        t0 = time.perf_counter()
        paths = plot.plot_all(uri, out)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(tracking, name, fn)
    return {"total": total, **spent, "files": len(paths)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--keep", type=Path, help="build (and reuse) the stores here, not in a temp dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the figures a case cannot draw are not news here
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        header = f"{'R':>5} {'S':>6} {'points':>10} {'build s':>8} {'plot s':>7} {'runs s':>7} "
        header += f"{'hist s':>7} {'dl s':>6} {'rest s':>7} {'files':>5}"
        print(header, flush=True)
        for steps in args.steps:
            for runs in args.runs:
                root = base / f"R{runs}-S{steps}"
                t0 = time.perf_counter()
                uri = build(root, runs, steps)
                built = time.perf_counter() - t0
                tracking.fetch_runs(uri, sweep="none")  # import mlflow (2-3 s, once per process) untimed
                t = timed(root / "figures", uri)
                rest = t["total"] - t["fetch_runs"] - t["fetch_histories"] - t["download_artifact"]
                points = runs * steps * len(METRICS) + 2 * steps * 2
                print(
                    f"{runs:>5} {steps:>6} {points:>10,} {built:>8.1f} {t['total']:>7.2f} {t['fetch_runs']:>7.2f} "
                    f"{t['fetch_histories']:>7.2f} {t['download_artifact']:>6.2f} {rest:>7.2f} {t['files']:>5}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
