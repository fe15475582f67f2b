"""Atomic file writes: a reader sees a file's old content or its new content, never a part of either.

Every writer here fills a temporary file in the target's own directory (so the rename never crosses a
file system), fsyncs it, renames it over the target with ``os.replace``, then fsyncs the directory so
the rename itself survives a power cut. Any exception, KeyboardInterrupt and SystemExit included,
removes the temporary file and leaves the target as it was. Concurrent writers to one name each use
their own temporary file: the last rename wins and the result is one writer's whole file.

- ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json``: the content is in memory.
- ``atomic_path``: a context manager yielding the temporary path, for writers that open a path
  themselves (``torch.save``, ``np.save``, matplotlib's ``savefig``, a tokenizer's ``save``).
- ``atomic_open``: a context manager yielding a binary file object.
- ``AtomicFile``: the same file object held open across calls, renamed by ``commit()`` or dropped by
  ``abort()`` (a shard streamed in batches).

A write that fails for want of space (ENOSPC, EDQUOT) or on a read-only file system (EROFS) raises
``StorageError`` (an OSError too) naming the path, the bytes it needed where known and the space free;
``as_storage_error`` finds such a failure in any exception (SQLite's "database or disk is full" too).

Temporary files are named ``.<name>.<random>.tmp``: hidden, and recognisable as leftovers of a writer
killed by SIGKILL (the one case no cleanup can run).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from ablate.errors import StorageError

TMP_SUFFIX = ".tmp"
# Like open(): the process umask decides the final permissions (tempfile.mkstemp would force 0600).
DEFAULT_MODE = 0o666

PathLike = str | os.PathLike[str]

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_ERRNOS = NO_SPACE | {errno.EROFS}
# How SQLite (through sqlite3, SQLAlchemy and MLflow) words the same failures.
_SQLITE_MESSAGES = {"database or disk is full": errno.ENOSPC, "readonly database": errno.EROFS}
_RESUME_HINT = (
    "; free some space (or make it writable) and launch again: finished stages are kept and the others "
    "resume from their last checkpoint"
)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # not reached


def _free(path: Path) -> str:
    for p in (path, *path.parents):  # the nearest existing directory
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return f"{_size(st.f_bavail * st.f_frsize)} free"
    return "free space unknown"


def storage_message(err: int, path: PathLike | None, needed: int | None = None) -> str:
    """One line: what failed where, with the space needed and free where the error is a full disk."""
    where = Path(path) if path is not None else None
    if err == errno.EROFS:
        return f"read-only file system: cannot write {where or 'a file'}{_RESUME_HINT}"
    what = "disk quota exceeded" if err == errno.EDQUOT else "no space left on device"
    detail = [] if needed is None else [f"{_size(needed)} needed"]
    if where is not None:
        detail.append(f"{_free(where.parent)} on its file system")
    return (
        f"{what}: cannot write {where or 'a file'}"
        + (f" ({', '.join(detail)})" if detail else "")
        + (_RESUME_HINT)
    )


def as_storage_error(
    exc: BaseException, path: PathLike | None = None, needed: int | None = None
) -> StorageError | None:
    """The StorageError behind `exc` (itself, its causes and contexts), or None if it is no disk failure.

    `path` names the file being written where the error does not (SQLite's messages name none).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):
            return e
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return StorageError(storage_message(e.errno, e.filename or path, needed), e.errno)
        text = str(e)
        for marker, err in _SQLITE_MESSAGES.items():
            if marker in text:
                return StorageError(storage_message(err, path, needed), err)
        e = e.__cause__ or e.__context__
    return None


def _reraise_storage(exc: BaseException, path: Path, needed: int | None) -> None:
    """Raise a disk failure of writing `path` as StorageError; return for anything else."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in DISK_ERRNOS:
        # Named for the target, not the temporary file the error names.
        raise StorageError(storage_message(exc.errno, path, needed), exc.errno) from exc


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path``; returns its descriptor and path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; skipped where directories cannot be opened or synced."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and all of Windows) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the original error matters more than a failed cleanup
        pass


@contextmanager
def atomic_path(path: PathLike, *, mode: int = DEFAULT_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is fsynced and renamed over ``path``.

    The writer may open, truncate or replace the temporary file as it likes; it must write only there.
    """
    target = Path(path)
    try:
        fd, tmp = _create_temp(target, mode)
    except OSError as exc:
        _reraise_storage(exc, target, None)
        raise
    os.close(fd)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        _unlink_quietly(tmp)
        _reraise_storage(exc, target, None)
        raise
    _fsync_dir(target.parent)


class AtomicFile:
    """A binary file written under a temporary name, renamed over ``path`` by ``commit()``.

    ``abort()`` (or leaving a ``with`` block by an exception) deletes the temporary file instead. Both
    are idempotent, and ``abort()`` after ``commit()`` does nothing.
    """

    def __init__(self, path: PathLike, *, mode: int = DEFAULT_MODE) -> None:
        self.path = Path(path)
        fd, self.tmp = _create_temp(self.path, mode)
        try:
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            _unlink_quietly(self.tmp)
            raise
        self.closed = False

    def write(self, data: bytes) -> int:
        """Append ``data`` to the temporary file."""
        return self.file.write(data)

    def commit(self) -> None:
        """Flush and fsync the temporary file, rename it over ``path``, fsync the directory."""
        if self.closed:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Close and delete the temporary file; ``path`` keeps whatever it held."""
        if self.closed:
            return
        self.closed = True
        try:
            self.file.close()
        except OSError:  # e.g. a full disk failing the final flush: the file is being dropped anyway
            pass
        _unlink_quietly(self.tmp)

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_open(path: PathLike, *, mode: int = DEFAULT_MODE) -> AtomicFile:
    """``with atomic_open(path) as f: f.write(...)``: a binary file renamed over ``path`` on a clean exit."""
    return AtomicFile(path, mode=mode)


def atomic_write_bytes(path: PathLike, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Write ``data`` to ``path`` atomically (creating parent directories)."""
    try:
        with atomic_open(path, mode=mode) as f:
            f.write(data)
    except OSError as exc:
        _reraise_storage(exc, Path(path), len(data))
        raise


def atomic_write_text(path: PathLike, text: str, *, mode: int = DEFAULT_MODE) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: PathLike, obj: Any, *, mode: int = DEFAULT_MODE) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys, str() for anything else) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str), mode=mode)


def read_json(path: PathLike, default: Any = None) -> Any:
    """Read a JSON file, or ``default`` if it does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
