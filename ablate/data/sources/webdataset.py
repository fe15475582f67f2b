"""The webdataset source: one sequential pass over an img2dataset tar shard, with every loss counted.

Damage accounting: each corrupt or cut region of a shard is reported exactly once, as an
`unreadable_member` sample. Where the region took part of a neighbouring sample (its image or caption
member), that sample is the one reported, so it is not counted a second time as no_image or no_caption;
where both neighbours came out whole, the region stands alone under the key "@<byte offset>".
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ablate.data.bad_sample import BadSample
from ablate.data.sources.sample import IMAGE_EXTS, RawSample, unreadable
from ablate.errors import DataError

# Errors of reading a stream that may stop mid-way (a cut file, a bad gzip stream, a failing disk).
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member, the webdataset way: the key ends at the first dot of the file name."""
    posix = PurePosixPath(name)
    stem, dot, ext = posix.name.partition(".")
    parent = str(posix.parent)
    key = stem if parent in (".", "") else f"{parent}/{stem}"
    return key, ext.lower() if dot else ""


@dataclass
class _HeaderLog:
    """What tarfile skipped or stopped on while looking for the next member header."""

    garbage_blocks: int = 0  # invalid headers skipped since the last good member
    garbage_at: int = -1  # byte offset of the first of them
    zero_blocks: int = 0  # end-of-archive blocks seen
    truncated_header: bool = False

    def take_garbage(self, where: str) -> tuple[str, str]:
        """(key, detail) of the pending run of corrupt blocks; resets the run."""
        damage = (
            f"@{self.garbage_at}",
            f"{self.garbage_blocks} corrupt 512-byte blocks skipped at byte {self.garbage_at} {where}",
        )
        self.garbage_blocks, self.garbage_at = 0, -1
        return damage


def _logging_tarinfo(log: _HeaderLog) -> type[tarfile.TarInfo]:
    """A TarInfo class whose header parsing records into `log` what tarfile would otherwise skip silently.

    Left alone, stream-mode tarfile ends the archive quietly at the first corrupt header or at a file cut
    inside a header, losing the rest of the shard without a word. With ignore_zeros it skips corrupt blocks
    until the next valid header; this class lets the reader count what was skipped.
    """

    class LoggingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf: tarfile.TarFile) -> LoggingTarInfo:
            # The HeaderError subclasses are tarfile internals (stable since Python 3.2) that typeshed omits.
            try:
                return super().fromtarfile(tf)
            except tarfile.EOFHeaderError:  # type: ignore[attr-defined]
                log.zero_blocks += 1
                raise
            except tarfile.InvalidHeaderError:  # type: ignore[attr-defined]
                if log.garbage_blocks == 0:
                    log.garbage_at = tf.offset
                log.garbage_blocks += 1
                raise
            except tarfile.TruncatedHeaderError:  # type: ignore[attr-defined]
                log.truncated_header = True
                raise

    return LoggingTarInfo


@dataclass
class _Group:
    """The members of one sample, collected while the stream passes over them, and any damage near it."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)
    damage: list[tuple[str, str]] = field(default_factory=list)  # (standalone key, detail)

    @property
    def complete(self) -> bool:
        """Has both an image and a caption member."""
        return "txt" in self.files and any(e in self.files for e in IMAGE_EXTS)

    def to_sample(self, shard: str) -> RawSample:
        """The sample these members make; a caption that is not UTF-8 counts as missing."""
        image = next((self.files[e] for e in IMAGE_EXTS if e in self.files), None)
        caption: str | None = None
        if "txt" in self.files:
            try:
                caption = self.files["txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                err = BadSample("no_caption", f"{self.key}.txt is not UTF-8 ({e.reason} at byte {e.start})")
                return RawSample(self.key, image, None, {}, shard, err)
        meta: dict[str, Any] = {}
        if "json" in self.files:
            # Metadata is optional (img2dataset's url, size, ...): a broken .json does not make the pair bad.
            try:
                loaded = json.loads(self.files["json"])
                meta = loaded if isinstance(loaded, dict) else {"json": loaded}
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        return RawSample(self.key, image, caption, meta, shard)


def _emit(group: _Group, shard: str) -> Iterator[RawSample]:
    """The group's sample; its damage is reported through it if it is incomplete, else standing alone."""
    if group.damage and not group.complete:
        yield unreadable(group.key, shard, "; ".join(d for _, d in group.damage))
        return
    yield group.to_sample(shard)
    for key, detail in group.damage:
        yield unreadable(key, shard, detail)


def _emit_damaged(group: _Group | None, damage: tuple[str, str], shard: str) -> Iterator[RawSample]:
    """The last group with `damage` next to it, or the damage alone."""
    if group is None:
        yield unreadable(damage[0], shard, damage[1])
        return
    group.damage.append(damage)
    yield from _emit(group, shard)


def _end_damage(log: _HeaderLog, offset: int) -> tuple[str, str] | None:
    """What was wrong with how the shard ended, if anything."""
    if log.garbage_blocks:
        return log.take_garbage("at the end of the shard")
    if log.truncated_header:
        return f"@{offset}", f"shard cut inside a header at byte {offset}"
    if log.zero_blocks == 0:
        return f"@{offset}", f"shard ends at byte {offset} without end-of-archive blocks (cut short?)"
    return None


def iter_webdataset(shard: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one img2dataset shard in archive order, without seeking or loading it whole.

    A sample is a run of consecutive members sharing a key (KEY.jpg|jpeg|png|webp, KEY.txt, KEY.json).
    Damage comes out as `unreadable_member` samples (see the module docstring): a run of corrupt header
    blocks, after which reading resumes at the next valid header, and, last, a shard cut short (inside a
    member's data, inside a header, or before the end-of-archive blocks), after which nothing more can be
    read. Raises DataError only if the file is not a tar archive at all (empty, or no valid header).
    """
    path = Path(shard)
    log = _HeaderLog()
    try:
        # ignore_zeros: skip past a corrupt header to the next good one instead of ending quietly there.
        tf = tarfile.open(path, mode="r|*", ignore_zeros=True, tarinfo=_logging_tarinfo(log))
    except _READ_ERRORS as e:
        raise DataError(f"shard {path} cannot be read as a tar archive ({e}); re-create or remove it") from e
    with tf:
        yield from _iter_members(tf, str(path), log)


def _iter_members(tf: tarfile.TarFile, shard: str, log: _HeaderLog) -> Iterator[RawSample]:
    group: _Group | None = None
    # Opening reads the first header; if there was none, asking for the next one would seek backwards.
    # (`members` is an instance attribute typeshed omits.)
    has_members = bool(tf.members)  # type: ignore[attr-defined]
    while has_members:
        try:
            member = tf.next()
        except _READ_ERRORS as e:
            yield from _emit_damaged(group, (f"@{tf.offset}", f"stopped at byte {tf.offset}: {e}"), shard)
            return
        # Stream-mode tarfile keeps every header it has read; drop them so memory stays flat in shard size.
        tf.members.clear()  # type: ignore[attr-defined]
        if member is None:
            break
        key, ext = split_member_name(member.name)
        if log.garbage_blocks:
            damage = log.take_garbage(f"before {member.name}")
            if group is not None and group.key == key:
                group.damage.append(damage)  # the corrupt blocks were inside this sample
            elif group is not None and not group.complete:
                yield from _emit_damaged(group, damage, shard)  # they held the rest of the previous sample
                group = None
            else:
                if group is not None:
                    yield from _emit(group, shard)
                group = _Group(key, damage=[damage])  # they held the start of this one, or a whole sample
        if not member.isfile():
            continue
        if group is not None and group.key != key:
            yield from _emit(group, shard)
            group = None
        if group is None:
            group = _Group(key)
        try:
            f = tf.extractfile(member)
            data = f.read() if f is not None else b""
        except _READ_ERRORS as e:
            detail = f"member {member.name} at byte {member.offset} cut short: {e}"
            yield from _emit_damaged(group, (f"@{member.offset}", detail), shard)
            return
        group.files.setdefault(ext, data)
    if group is None and log.garbage_at == 0:
        # Not a single valid header from the first byte on: not a tar archive, rather than one bad member.
        raise DataError(
            f"shard {shard} cannot be read as a tar archive (no valid header); re-create or remove it"
        )
    end = _end_damage(log, tf.offset)
    if end is not None:
        yield from _emit_damaged(group, end, shard)
    elif group is not None:
        yield from _emit(group, shard)


def sample_keys(shard: str | Path) -> list[str]:
    """The keys of a shard's samples that have an image and a caption member, in archive order, read from
    the tar headers alone (seeking past every member's data, so a shard costs milliseconds, not a decode).

    What a launch counts the splits by before any job runs: an upper bound of what `prepare` keeps, as a
    member may still be undecodable or too small. DataError if the shard cannot be read as a tar archive.
    """
    path = Path(shard)
    exts: dict[str, set[str]] = {}
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:
                if member.isfile():
                    key, ext = split_member_name(member.name)
                    exts.setdefault(key, set()).add(ext)
    except _READ_ERRORS as e:
        raise DataError(f"shard {path} cannot be listed as a tar archive ({e})") from e
    return [k for k, found in exts.items() if "txt" in found and not found.isdisjoint(IMAGE_EXTS)]
