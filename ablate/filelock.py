"""Exclusive locks held on a file with flock(2): one launcher per sweep, one job per stage directory.

The kernel drops a flock when the last descriptor of the open file goes, so a process killed by SIGKILL
never leaves a stale lock; nothing has to be cleaned up. The holder writes who it is (pid, host, since)
into the file, for the message another process gives when it finds the lock taken.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any


class FileLock:
    """An exclusive flock on `path` (created if missing); `acquire` once, `release` (or leave a `with`)."""

    def __init__(self, path: str | os.PathLike[str], what: str = "") -> None:
        self.path = Path(path)
        self.what = what  # written beside pid and host: what the holder is doing
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """Who holds (or last held) the lock: {"pid", "host", "since", "what"}; {} if unknown."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def describe_holder(self) -> str:
        """'pid 123 on host h since 17:02:11 (2 min ago)' for messages."""
        h = self.holder()
        if not h:
            return "another process (it has not written who it is yet)"
        since = float(h.get("since", time.time()))
        ago = max(0.0, time.time() - since)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        return f"pid {h.get('pid')} on host {h.get('host')} since {when} ({ago / 60:.0f} min ago)"

    def try_acquire(self) -> bool:
        """Take the lock if free; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_holder(fd)
        return True

    def acquire(self, wait: bool, on_wait: Callable[[str], None] | None = None, poll_s: float = 1.0) -> bool:
        """Take the lock; if it is held: False at once (wait=False), or wait for it, calling `on_wait` once
        with the holder's description."""
        if self.try_acquire():
            return True
        if not wait:
            return False
        if on_wait is not None:
            on_wait(self.describe_holder())
        while not self.try_acquire():
            time.sleep(poll_s)
        return True

    def _write_holder(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": self.what}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the message is poorer
            pass

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
