"""The sweep manifest (results/sweeps/<name>/manifest.json): arm -> stage -> job, written atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.arms import ResolvedArm
from ablate.atomic import atomic_write_json, read_json
from ablate.errors import AblateError
from ablate.launch.graph import Graph
from ablate.sweep import Sweep


def manifest_path(results: Path, sweep_name: str) -> Path:
    return Path(results) / "sweeps" / sweep_name / "manifest.json"


def launch_lock_path(results: Path, sweep_name: str) -> Path:
    """The file the launcher of a sweep holds a flock on while it runs (ablate.filelock)."""
    return Path(results) / "sweeps" / sweep_name / "launch.lock"


@dataclass
class Manifest:
    """In-memory manifest, saved after every change."""

    path: Path
    data: dict[str, Any]
    as_written: dict[str, str] = field(default_factory=dict, repr=False)
    """Job -> its `dir` as the launch wrote it, where load re-rooted it (see _rebase_dirs)."""

    @classmethod
    def create(
        cls,
        results: Path,
        sweep: Sweep,
        arms: list[ResolvedArm],
        graph: Graph,
        *,
        cluster: str,
        tracking_uri: str,
        previous: Manifest | None = None,
    ) -> Manifest:
        """A new manifest for this launch; a relaunch's `previous` manifest lends its jobs' SLURM history."""
        jobs = {
            name: {
                "stage": n.job.stage,
                "key": n.job.key,
                "dir": n.job.out_dir,
                "labels": n.job.labels,
                "job_id": None,
                "state": "done" if n.done else "pending",
                "submitted_at": None,
                "detail": "",
            }
            for name, n in graph.nodes.items()
        }
        old_jobs = previous.data.get("jobs", {}) if previous is not None else {}
        for name, job in jobs.items():
            before = old_jobs.get(name, {})
            job["attempts"] = list(before.get("attempts", []))
            if before.get("job_id"):
                # The job that produced a done stage; or, until this launch decides (still queued or
                # running, or resubmitted), the last job of a stage not done.
                keep = (
                    ("job_id", "submitted_at")
                    if job["state"] == "done"
                    else ("job_id", "submitted_at", "state", "detail")
                )
                for k in keep:
                    job[k] = before.get(k, job[k])
        data = {
            "name": sweep.name,
            "file": str(sweep.path),
            "created_at": time.time(),
            "cluster": cluster,
            "tracking_uri": tracking_uri,
            "job_folder": str(Path(results) / "jobs" / sweep.name),
            "arms": [
                {
                    "label": a.label,
                    "run_key": a.key,
                    "overrides": a.overrides,
                    "stages": graph.arm_stages[a.label],
                }
                for a in arms
            ],
            "jobs": jobs,
        }
        m = cls(manifest_path(results, sweep.name), data)
        if previous is not None:
            data["created_at"] = previous.data.get("created_at", data["created_at"])
            data["launches"] = [*previous.data.get("launches", []), time.time()]
        m.save()
        return m

    @classmethod
    def load(cls, results: Path, sweep_name: str) -> Manifest:
        path = manifest_path(results, sweep_name)
        data = read_json(path)
        if data is None:
            known = sorted(p.parent.name for p in (Path(results) / "sweeps").glob("*/manifest.json"))
            raise AblateError(
                f"no sweep named {sweep_name!r} under {Path(results).resolve()}"
                + (
                    f"; known sweeps: {', '.join(known)}"
                    if known
                    else "; launch one with `ablate launch sweeps/demo.yaml`"
                )
            )
        return cls(path, data)._rebase_dirs()

    @classmethod
    def load_if_exists(cls, results: Path, sweep_name: str) -> Manifest | None:
        """The sweep's manifest, or None before its first launch."""
        data = read_json(manifest_path(results, sweep_name))
        return None if data is None else cls(manifest_path(results, sweep_name), data)._rebase_dirs()

    def _rebase_dirs(self) -> Manifest:
        """Point the jobs' `dir`s at this manifest's results folder.

        A launch writes each stage directory as it named it, relative to its working directory when
        `--results` was relative ("results/cache/train/<key>"); read from elsewhere (`ablate --results
        ../exp/results status`), those paths would name nothing and status would show no progress. A job
        folder of <results>/jobs/<sweep> tells which results folder the launch named, so each dir below
        it is re-rooted on the one this manifest lies in. save() writes them back as they were written.
        """
        given = Path(str(self.data.get("job_folder") or "")).parent.parent
        here = self.path.parent.parent.parent
        if not self.data.get("job_folder") or given == here:
            return self
        for name, job in self.data.get("jobs", {}).items():
            written = job.get("dir")
            if not isinstance(written, str) or Path(written).is_absolute():
                continue
            try:
                rel = Path(written).relative_to(given)
            except ValueError:
                continue
            self.as_written[name] = written
            job["dir"] = str(here / rel)
        return self

    def record_many(self, events: list[tuple[str, str, str]]) -> None:
        """Record (job name, event, detail) for several jobs, then save once (one atomic write)."""
        for name, event, detail in events:
            self.record(name, event, detail, save=False)
        self.save()

    def record(self, job_name: str, event: str, detail: str = "", save: bool = True) -> None:
        job = self.data["jobs"][job_name]
        job["state"] = {
            "submitted": "submitted",
            "done": "done",
            "skipped": "done",
            "failed": "failed",
            "cancelled": "cancelled",
        }[event]
        if event == "submitted":
            job["job_id"], job["submitted_at"] = detail, time.time()
            job.setdefault("attempts", []).append({"job_id": detail, "submitted_at": job["submitted_at"]})
        else:
            job["detail"] = detail
        if save:
            self.save()

    def save(self) -> None:
        self.data["updated_at"] = time.time()
        data = self.data
        if self.as_written:  # the dirs as the launch wrote them, not as this process re-rooted them
            jobs = {n: {**j, "dir": self.as_written.get(n, j.get("dir"))} for n, j in data["jobs"].items()}
            data = {**data, "jobs": jobs}
        atomic_write_json(self.path, data)
