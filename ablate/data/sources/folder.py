"""The folder source: a directory of images with captions in captions.jsonl or same-stem .txt files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from ablate.data.bad_sample import BadSample
from ablate.data.sources.sample import IMAGE_EXTS, RawSample, unreadable
from ablate.errors import ConfigError, DataError

CAPTIONS_FILE = "captions.jsonl"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS


def list_images(directory: str | Path) -> list[Path]:
    """Every image under `directory` (recursively), sorted by relative path."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} is not a directory")
    return sorted((p for p in root.rglob("*") if _is_image(p)), key=lambda p: p.relative_to(root).as_posix())


def folder_units(directory: str | Path, per_unit: int) -> list[list[Path]]:
    """The folder's images in fixed groups of `per_unit` (the last may be shorter): units of work to shard."""
    if per_unit < 1:
        raise ConfigError("per_unit", per_unit, "an integer >= 1")
    files = list_images(directory)
    return [files[i : i + per_unit] for i in range(0, len(files), per_unit)]


def _read_captions_jsonl(path: Path, wanted: set[str]) -> dict[str, str]:
    """Captions of the `wanted` relative paths from captions.jsonl, read line by line (O(wanted) memory)."""
    out: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                file, cap = row["file"], row["caption"]
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise DataError(
                    f'{path}:{lineno}: expected a JSON object {{"file": ..., "caption": ...}}, got {line.strip()[:80]!r} ({e})'
                ) from e
            rel = PurePosixPath(str(file)).as_posix()
            if rel in wanted:
                out[rel] = str(cap) if cap is not None else ""
    return out


def _folder_sample(root: Path, img: Path, captions: dict[str, str], shard: str) -> RawSample:
    rel = img.relative_to(root).as_posix()
    key = rel.rsplit(".", 1)[0]
    try:
        data = img.read_bytes()
    except OSError as e:
        return unreadable(key, shard, f"{rel}: {e}")
    caption = captions.get(rel)
    if caption is None:
        txt = img.with_suffix(".txt")
        if txt.is_file():
            try:
                caption = txt.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                return RawSample(key, data, None, {}, shard, BadSample("no_caption", f"{txt.name}: {e}"))
    return RawSample(key, data, caption, {"file": rel}, shard)


def iter_folder(directory: str | Path, files: Iterable[Path] | None = None) -> Iterator[RawSample]:
    """The samples of an image folder (or of one unit of it from `folder_units`), in sorted path order.

    The caption of image `a/b.jpg` is its entry in `directory/captions.jsonl` ({"file": "a/b.jpg",
    "caption": ...}) or else the text of `a/b.txt`; neither gives a sample without caption. The key is the
    relative path without its extension.
    """
    root = Path(directory)
    images = list_images(root) if files is None else [Path(p) for p in files]
    index = root / CAPTIONS_FILE
    captions: dict[str, str] = {}
    if index.is_file():
        captions = _read_captions_jsonl(index, {p.relative_to(root).as_posix() for p in images})
    for img in images:
        yield _folder_sample(root, img, captions, str(root))
