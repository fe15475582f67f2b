"""ablate.atomic: old content survives a failed write, no temporary file stays, concurrent writers race safely."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from ablate.atomic import (
    TMP_SUFFIX,
    AtomicFile,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from ablate.train.checkpoint import load_checkpoint, save_checkpoint


def _leftovers(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{TMP_SUFFIX}"))


def test_writes_round_trip_and_create_parents(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": Path("x")})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "t.txt").read_bytes() == "héllo\n".encode()
    assert read_json(tmp_path / "j.json") == {"a": "x", "b": 1}
    assert read_json(tmp_path / "missing.json", {"default": True}) == {"default": True}
    assert not _leftovers(tmp_path) and not _leftovers(tmp_path / "a")


def test_permissions_follow_umask_or_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "plain", "x")
        atomic_write_text(tmp_path / "secret", "x", mode=0o600)
        with atomic_path(tmp_path / "via_path") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "via_path").stat().st_mode) == 0o644


def test_temporary_path_is_beside_the_target(tmp_path):
    target = tmp_path / "out.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.pt.") and tmp.exists()
        assert not target.exists()
        torch.save({"x": 1}, tmp)
    assert torch.load(target, weights_only=True) == {"x": 1} and not tmp.exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_atomic_path_keeps_old_content(tmp_path, error):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_text("new but cut sh")
            raise error("killed mid-write")
    assert target.read_text() == "old"
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_atomic_open_keeps_old_content(tmp_path, error):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_open(target) as f:
            f.write(b"new, half")
            raise error("killed mid-write")
    assert target.read_bytes() == b"old"
    assert not _leftovers(tmp_path)


def test_failure_without_old_content_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_commit_and_abort(tmp_path):
    target = tmp_path / "shard.bin"
    f = AtomicFile(target)
    f.write(b"abc")
    assert not target.exists() and f.tmp.exists()
    f.commit()
    f.commit()  # idempotent
    f.abort()  # after commit: nothing to drop
    assert target.read_bytes() == b"abc" and not _leftovers(tmp_path)

    g = AtomicFile(target)
    g.write(b"replacement")
    g.abort()
    g.abort()
    assert target.read_bytes() == b"abc" and not _leftovers(tmp_path)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_checkpoint_failing_mid_save_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(RuntimeError, match="cannot pickle"):
        # torch.save has written part of the archive when pickling the second entry fails.
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(1000), "bad": _Unpicklable()})
    assert load_checkpoint(path) == {"step": 1}
    assert not _leftovers(path.parent)


def _writer(path: str, tag: int, rounds: int, size: int) -> None:
    payload = bytes([tag]) * size
    for _ in range(rounds):
        atomic_write_bytes(path, payload)


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    target = tmp_path / "shared.bin"
    size, rounds, writers = 256 << 10, 15, 4
    atomic_write_bytes(target, bytes([255]) * size)
    torn: list[bytes] = []
    stop = threading.Event()

    def read_while_writing() -> None:
        # Every read must see one writer's whole payload: a single byte value, full length.
        while not stop.is_set():
            data = target.read_bytes()
            if len(data) != size or len(set(data)) != 1:
                torn.append(data[:16])

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(target), t, rounds, size)) for t in range(writers)]
    for p in procs:
        p.start()
    # The reader starts after the forks: forking while a thread runs could copy a held lock.
    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        stop.set()
        reader.join()
    assert [p.exitcode for p in procs] == [0] * writers
    assert not torn
    data = target.read_bytes()
    assert len(data) == size and len(set(data)) == 1 and data[0] in range(writers)
    assert not _leftovers(tmp_path)


def test_json_is_written_sorted_and_indented(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "x.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True)
