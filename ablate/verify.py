"""`ablate verify [SWEEP]`: re-hash cached stage outputs against the sha256 they recorded when written.

What records a sha256 of its own bytes is every token shard (`meta.json` of a shard directory: prepare's
splits and units, pretrain's corpus, heldout_text); those are checked, file by file. Nothing else in a
stage directory records a hash of itself (checkpoints, model.pt, tokenizers, npz statistics): for those
only the completion marker's presence is reported, which says the stage finished, not that its bytes are
intact.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ablate.cache import stage_dir
from ablate.data.shards import META_NAME
from ablate.errors import AblateError
from ablate.rundir import RunDir

READ_BLOCK = 1 << 20


@dataclass
class FileCheck:
    """One shard file: where, what meta.json records, and what was found ('' when it matches)."""

    path: Path
    meta: Path
    problem: str = ""
    stage_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problem


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(functools.partial(fh.read, READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def stage_dirs(results: Path, sweep: str | None = None) -> list[Path]:
    """Every stage directory under results/cache/, or (sweep) those of the sweep's manifest."""
    if sweep is None:
        cache = Path(results) / "cache"
        return sorted(p for p in cache.glob("*/*") if p.is_dir())
    from ablate.launch.manifest import Manifest

    manifest = Manifest.load(results, sweep)  # AblateError naming the sweep if it was never launched
    dirs = {
        Path(job.get("dir") or stage_dir(results, job["stage"], job["key"]))
        for job in manifest.data.get("jobs", {}).values()
    }
    return sorted(d for d in dirs if d.is_dir())


def shard_metas(directory: Path) -> list[Path]:
    """The meta.json of every shard directory at or below `directory`."""
    return sorted(p for p in Path(directory).rglob(META_NAME) if p.is_file())


def check_meta(meta_path: Path, seen: set[Path]) -> Iterator[FileCheck]:
    """Each shard file meta.json names, checked against its recorded size and sha256 (a file already in
    `seen`, named by another meta.json, e.g. a unit's shard in its stage's combined one, is skipped)."""
    try:
        meta = json.loads(meta_path.read_text())
        shards = list(meta["shards"])
        row_bytes = int(meta["seq_len"]) * {"uint16": 2, "int32": 4}[meta["dtype"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        yield FileCheck(meta_path, meta_path, f"unreadable meta.json ({type(e).__name__}: {e})")
        return
    for s in shards:
        path = (meta_path.parent / str(s.get("file", ""))).resolve()
        if path in seen:
            continue
        seen.add(path)
        check = FileCheck(path, meta_path)
        expected = int(s.get("count", 0)) * row_bytes
        if not path.is_file():
            check.problem = "missing"
        elif path.stat().st_size != expected:
            check.problem = f"size {path.stat().st_size} B, recorded {expected} B (truncated or rewritten)"
        elif "sha256" not in s:
            check.problem = "no sha256 recorded"
        else:
            found = sha256_of(path)
            if found != s["sha256"]:
                check.problem = f"sha256 {found[:16]}... differs from the recorded {str(s['sha256'])[:16]}..."
        yield check


def verify(
    results: Path, sweep: str | None = None, echo: Callable[[str], None] = print
) -> tuple[list[FileCheck], int]:
    """Check every shard of the cached outputs (of `sweep`, or all); echo one line per file and per stage
    directory; returns the checks and the number of stage directories seen."""
    dirs = stage_dirs(results, sweep)
    if not dirs:
        where = f"sweep {sweep!r}'s stages" if sweep else str(Path(results) / "cache")
        raise AblateError(f"no cached stage outputs found in {where}: nothing to verify")
    checks: list[FileCheck] = []
    seen: set[Path] = set()
    for d in dirs:
        metas = shard_metas(d)
        complete = (
            "complete"
            if RunDir(d).is_complete()
            else "NOT complete (no marker: rewritten by the next launch)"
        )
        echo(f"{d}: {complete}; {len(metas)} shard director{'y' if len(metas) == 1 else 'ies'}")
        for meta in metas:
            for check in check_meta(meta, seen):
                check.stage_dir = d
                checks.append(check)
                echo(
                    f"  {'ok ' if check.ok else 'BAD'} {check.path}"
                    + (f": {check.problem}" if check.problem else "")
                )
    return checks, len(dirs)


def run(results: Path, sweep: str | None = None, echo: Callable[[str], None] = print) -> int:
    """`ablate verify`: 0 if every recorded sha256 matches, 1 (naming the files and the fix) otherwise."""
    checks, n_dirs = verify(results, sweep, echo)
    bad = [c for c in checks if not c.ok]
    echo(f"{len(checks)} shard file(s) in {n_dirs} stage director(ies) checked: {len(bad)} bad")
    if bad:
        stages = sorted({str(c.stage_dir) for c in bad})
        echo(
            "reading stops at wrong sizes, out-of-vocabulary ids and constant files, but other changed bytes "
            "would be read as data: delete these stage directories and launch again to rebuild them:\n  "
            + "\n  ".join(stages)
        )
        return 1
    return 0
