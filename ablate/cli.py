"""The `ablate` command: launch, status, cancel, plot, report, ui, resend, verify, config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ablate.errors import AblateError


def _results(args: argparse.Namespace) -> Path:
    return Path(args.results or os.environ.get("ABLATE_RESULTS", "results"))


def cmd_launch(args: argparse.Namespace) -> int:
    from ablate.launch.launcher import launch

    return launch(args.sweep, args.overrides, _results(args), dry_run=args.dry_run, wait=args.wait)


def cmd_status(args: argparse.Namespace) -> int:
    from ablate.launch.manifest import Manifest
    from ablate.status import format_status

    print(format_status(Manifest.load(_results(args), args.name)))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from ablate.launch.manifest import Manifest
    from ablate.status import cancel_sweep

    cancelled = cancel_sweep(Manifest.load(_results(args), args.name))
    if cancelled:
        print(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}")
        print("`ablate launch` on the sweep file again resubmits them from their last checkpoints")
    else:
        print(f"sweep {args.name!r} has no queued or running jobs")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ablate.tracking import default_tracking_uri
    from analysis.plot import plot_all

    results = _results(args)
    uri = args.tracking_uri or default_tracking_uri(results)
    out = Path(args.out or results / "figures")
    for path in plot_all(uri, out, sweep=args.sweep):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ablate.tracking import default_tracking_uri
    from analysis.report import write_report

    results = _results(args)
    uri = args.tracking_uri or default_tracking_uri(results)
    print(write_report(uri, results, sweep=args.sweep, ui_url=args.ui_url))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal

    from ablate.schema import TrackingConfig
    from ablate.tracking import default_tracking_uri, redact_uri, start_ui, sweep_links, wait_until_up

    uri = args.tracking_uri or default_tracking_uri(_results(args))
    base = f"http://{args.host}:{args.port}"
    print(
        f"starting the MLflow UI over {redact_uri(uri)} ({args.workers or 'default'} worker(s)) ...",
        flush=True,
    )
    proc = start_ui(uri, host=args.host, port=args.port, workers=args.workers)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so that `finally` stops the server: SIGTERM would end us and orphan it

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        wait_until_up(base, proc, echo=lambda line: print(line, flush=True))
        links = sweep_links(base, TrackingConfig().experiment_prefix)
        print(f"MLflow UI on {base} (Ctrl-C stops it)", flush=True)
        for name, url in links:
            print(f"  sweep {name}: {url}", flush=True)
        if not links:
            print("  no sweep tracked yet: `ablate launch sweeps/demo.yaml` first", flush=True)
        print(
            "  one row per arm (its full label in the column ablate.arm); its Chart view draws the curves against "
            "tokens and each result as a bar per arm. Each sweep's stage runs are in the experiment <sweep>/stages",
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def cmd_resend(args: argparse.Namespace) -> int:
    from ablate.resend import resend
    from ablate.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(_results(args))
    for run_dir in args.run_dirs:
        run_id, n = resend(Path(run_dir), uri)
        print(f"{run_dir}: {n} metric rows -> run {run_id} in {uri}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ablate.verify import run

    return run(_results(args), args.sweep)


def cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from ablate.config.compose import compose_config, to_run_config
    from ablate.config.validate import validate

    cfg = compose_config(args.overrides)
    validate(to_run_config(cfg))
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablate", description=__doc__)
    p.add_argument("--results", help="results root (default: $ABLATE_RESULTS or ./results)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("launch", help="expand a sweep file and run its arms")
    s.add_argument("sweep", help="sweep file, e.g. sweeps/demo.yaml")
    s.add_argument("overrides", nargs="*", help="Hydra overrides applied to every arm, e.g. cluster=debug")
    s.add_argument("--dry-run", action="store_true", help="print the arms and their stages, submit nothing")
    s.add_argument("--wait", action="store_true", help="if the sweep is being launched, wait for that launch")
    s.set_defaults(func=cmd_launch)

    s = sub.add_parser("status", help="state and progress of each arm of a launched sweep")
    s.add_argument("name", help="sweep name (the `name:` in its file)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("cancel", help="cancel a SLURM sweep's queued and running jobs")
    s.add_argument("name", help="sweep name (the `name:` in its file)")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("plot", help="draw the paper's figures from the tracked runs into results/figures/")
    s.add_argument("--sweep", help="only runs of this sweep")
    s.add_argument("--out", help="output directory (default: <results>/figures)")
    s.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the results store)"
    )
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser(
        "report",
        help="one HTML page: the figures, the runs and the paper's findings checked "
        "(results/report-<sweep>.html with --sweep, e.g. make demo's results/report-demo.html; "
        "else results/report.html)",
    )
    s.add_argument("--sweep", help="only runs of this sweep (the page: results/report-<sweep>.html)")
    s.add_argument(
        "--ui-url",
        help="address of the MLflow UI the page links to, e.g. http://127.0.0.1:5001 for `ablate ui --port "
        "5001` (default: ablate ui's default address; the page has a field to change it)",
    )
    s.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the results store)"
    )
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "ui",
        help="serve the MLflow UI on 127.0.0.1 over the tracking store",
        description="Start the MLflow UI over the tracking store, wait until it answers, then print a link "
        "to each sweep's runs table. Ctrl-C stops it.",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1; 0.0.0.0 exposes the store)",
    )
    s.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server worker processes (default: one per 4 cores, 1 to 4; each imports all of MLflow)",
    )
    s.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the results store)"
    )
    s.set_defaults(func=cmd_ui)

    s = sub.add_parser("resend", help="send run directories' logged metrics to a tracking store")
    s.add_argument("run_dirs", nargs="+", help="stage directories, e.g. results/cache/train/<key>")
    s.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the results store)"
    )
    s.set_defaults(func=cmd_resend)

    s = sub.add_parser("verify", help="re-hash cached token shards against the sha256 in their meta.json")
    s.add_argument("sweep", nargs="?", help="only this sweep's stage outputs (default: all of results/cache)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("config", help="print the composed, validated config for some overrides")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_config)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `launch` and `config` overrides anywhere after the command (before, between or
    after its options: `ablate launch sweeps/demo.yaml --dry-run optim.lr=3e-4`), in the order given."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        options = [a for a in extra if a.startswith("-")]
        if options:
            parser.error(f"unrecognized arguments: {' '.join(options)}")
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # MLflow announces every store migration at INFO; our progress lines are what a user should see.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        return int(args.func(args) or 0)
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; `ablate launch` again resumes from the last checkpoints", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
