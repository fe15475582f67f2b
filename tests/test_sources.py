"""Real-data readers and preprocessing, on real tar shards and folders written in tmp_path (no mocks)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ablate.data import synthetic
from ablate.data.bad_sample import REASONS, BadSample
from ablate.data.preprocess import (
    MIN_SAMPLES_FOR_CHECK,
    SkipCounter,
    load_image,
    prepare_sample,
)
from ablate.data.sources import (
    expand_shards,
    folder_units,
    iter_folder,
    iter_webdataset,
    split_of,
)
from ablate.errors import ConfigError, DataError

SIZE = 32
MIN_SIDE = 24


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """Image bytes of an array, optionally converted to a Pillow mode first."""
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """An uncompressed tar with the members in the given order (img2dataset writes a sample's files together)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def good_members(n: int, seed: int, first: int = 0) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """img2dataset-layout members of n synthetic scenes (even keys PNG, odd JPEG), and key -> caption."""
    images, captions, _ = synthetic.generate(n, seed, "train", 48)
    members: list[tuple[str, bytes]] = []
    expected: dict[str, str] = {}
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        key = f"{first + i:09d}"
        ext, fmt = ("png", "PNG") if i % 2 == 0 else ("jpg", "JPEG")
        members += [
            (f"{key}.{ext}", encode(img, fmt)),
            (f"{key}.txt", cap.encode()),
            (f"{key}.json", json.dumps({"key": key, "width": 48}).encode()),
        ]
        expected[key] = cap
    return members, expected


def run_through(samples: list[Any], counter: SkipCounter) -> list[tuple[str, np.ndarray, str]]:
    """What a stage does: prepare each sample, count the bad ones, keep the rest."""
    kept = []
    for raw in samples:
        try:
            img, cap = prepare_sample(raw, SIZE, MIN_SIDE)
        except BadSample as e:
            counter.skip(e.reason)
            continue
        counter.keep()
        kept.append((raw.key, img, cap))
    return kept


# --- webdataset shards ---


def test_shard_samples_are_grouped_by_key_with_captions(tmp_path: Path) -> None:
    members, expected = good_members(6, seed=1)
    shard = write_tar(tmp_path / "00000.tar", members)
    samples = list(iter_webdataset(shard))
    assert [s.key for s in samples] == list(expected)
    assert {s.key: s.caption for s in samples} == expected
    assert all(s.error is None and s.shard == str(shard) for s in samples)
    assert samples[0].meta == {"key": samples[0].key, "width": 48}
    images, _, _ = synthetic.generate(6, 1, "train", 48)
    png = np.asarray(Image.open(io.BytesIO(samples[0].image or b"")))
    np.testing.assert_array_equal(png, images[0])  # the bytes are the member, untouched
    kept = run_through(samples, SkipCounter())
    assert len(kept) == 6 and all(
        img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8 for _, img, _ in kept
    )


def test_every_bad_kind_is_counted_under_its_reason(tmp_path: Path) -> None:
    images, _, _ = synthetic.generate(2, 3, "train", 48)
    good, _ = good_members(4, seed=2)
    jpeg = encode(images[0], "JPEG")
    tiny = encode(images[1][:16, :16])
    bad = [
        ("b01.jpg", jpeg[: len(jpeg) // 2]),  # truncated JPEG
        ("b01.txt", b"a truncated picture"),
        ("b02.png", b"this is not an image at all"),
        ("b02.txt", b"garbage"),
        ("b03.png", encode(images[0])),  # no caption member
        ("b04.png", encode(images[0])),
        ("b04.txt", b"  \n\t"),  # empty after strip
        ("b05.txt", b"a caption without a picture"),
        ("b06.png", tiny),
        ("b06.txt", b"a small picture"),
        ("b07.png", encode(images[1])),
        ("b07.txt", b"\xff\xfe not utf-8"),
    ]
    shard = write_tar(tmp_path / "00001.tar", good[:6] + bad + good[6:])
    counter = SkipCounter()
    kept = run_through(list(iter_webdataset(shard)), counter)
    assert [k for k, _, _ in kept] == [f"{i:09d}" for i in range(4)]
    assert counter.skipped == {
        "undecodable": 2,
        "too_small": 1,
        "no_image": 1,
        "no_caption": 3,
        "unreadable_member": 0,
    }
    assert counter.as_metrics() == {
        **{f"skipped_{r}": n for r, n in counter.skipped.items()},
        "samples_seen": 11,
        "samples_kept": 4,
    }


def member_offsets(shard: Path) -> dict[str, tuple[int, int]]:
    """name -> (header offset, data offset) of each member."""
    with tarfile.open(shard) as tf:
        return {m.name: (m.offset, m.offset_data) for m in tf.getmembers()}


def test_truncated_shard_keeps_what_came_before_and_stops_with_one_count(tmp_path: Path) -> None:
    members, expected = good_members(5, seed=4)
    full = write_tar(tmp_path / "full.tar", members)
    raw = full.read_bytes()
    offsets = member_offsets(full)
    keys = list(expected)
    cases = {
        "in_data": offsets[f"{keys[3]}.jpg"][1] + 100,  # inside the 4th image's bytes
        "in_header": offsets[f"{keys[3]}.jpg"][0] + 200,  # inside its header block
        "at_boundary": offsets[f"{keys[3]}.jpg"][0],  # a whole sample's worth missing, cut between members
    }
    for name, cut in cases.items():
        shard = tmp_path / f"{name}.tar"
        shard.write_bytes(raw[:cut])
        samples = list(iter_webdataset(shard))
        counter = SkipCounter()
        kept = run_through(samples, counter)
        assert [k for k, _, _ in kept] == keys[:3], name
        assert counter.skipped["unreadable_member"] == 1 and counter.bad == 1, name
        assert "byte" in str(samples[-1].error), name


def test_corrupt_header_mid_shard_is_counted_and_reading_resumes(tmp_path: Path) -> None:
    members, expected = good_members(6, seed=5)
    shard = write_tar(tmp_path / "00002.tar", members)
    keys = list(expected)
    raw = bytearray(shard.read_bytes())
    hdr = member_offsets(shard)[f"{keys[2]}.png"][0]
    raw[hdr : hdr + 512] = b"\xa5" * 512  # the 3rd sample's image header: tarfile alone would end here
    shard.write_bytes(bytes(raw))
    counter = SkipCounter()
    kept = run_through(list(iter_webdataset(shard)), counter)
    assert [k for k, _, _ in kept] == keys[:2] + keys[3:]
    assert counter.skipped["unreadable_member"] == 1 and counter.bad == 1  # not also no_image


def test_shard_is_read_as_a_stream_from_a_pipe(tmp_path: Path) -> None:
    """A FIFO cannot seek: reading one proves no random access and no second pass."""
    members, expected = good_members(4, seed=9)
    data = write_tar(tmp_path / "src.tar", members).read_bytes()
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        assert [(s.key, s.caption, s.error) for s in iter_webdataset(fifo)] == [
            (k, c, None) for k, c in expected.items()
        ]
    finally:
        writer.join(timeout=10)


def test_an_empty_archive_has_no_samples(tmp_path: Path) -> None:
    assert list(iter_webdataset(write_tar(tmp_path / "00000.tar", []))) == []


def test_a_file_that_is_not_a_tar_is_a_data_error(tmp_path: Path) -> None:
    for name, data in {"empty.tar": b"", "junk.tar": b"hello" * 1000}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=name):
            list(iter_webdataset(tmp_path / name))


# --- preprocessing ---


def test_every_mode_becomes_square_rgb_uint8() -> None:
    images, _, _ = synthetic.generate(1, 6, "train", 48)
    img = images[0]
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # a transparent corner
    sixteen = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28).astype(np.uint16)
    cases = {
        "grayscale": encode(img, "PNG", "L"),
        "cmyk_jpeg": encode(img, "JPEG", "CMYK"),
        "rgba_png": encode(rgba),
        "palette": encode(img, "PNG", "P"),
        "bilevel": encode(img, "PNG", "1"),
        "gray16": encode(sixteen),
    }
    out = {name: load_image(data, SIZE, MIN_SIDE) for name, data in cases.items()}
    for name, arr in out.items():
        assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.uint8, name
    gray = out["grayscale"].astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert out["gray16"][..., 0].max() > 200 and out["gray16"][..., 0].min() < 10  # scaled, not clipped white
    direct = load_image(encode(img), SIZE, MIN_SIDE).astype(int)
    assert np.abs(out["cmyk_jpeg"].astype(int) - direct).mean() < 8
    assert (out["rgba_png"][:3, :3] > 240).all()  # transparency composited on white


def test_resize_and_center_crop_keep_the_centre() -> None:
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    wide = np.zeros((64, 96, 3), np.uint8)  # shorter side 64: the centre square is columns 16..80
    wide[:, :12] = wide[:, 84:] = red
    wide[:, 12:48] = green
    wide[:, 48:84] = blue
    out = load_image(encode(wide), SIZE, MIN_SIDE).astype(int)
    assert out[..., 0].max() < 40  # the red borders are gone
    assert (out[:, :14, 1] > 220).all() and (out[:, 18:, 2] > 220).all()  # left half green, right half blue
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    out_t = load_image(encode(tall), SIZE, MIN_SIDE).astype(int)
    assert out_t[..., 0].max() < 40 and (out_t[:14, :, 1] > 220).all() and (out_t[18:, :, 2] > 220).all()


def test_exif_orientation_is_applied() -> None:
    """A camera's sideways pixels plus 'rotate 90 clockwise' come out upright."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (255, 0, 0)
    img[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, exif=exif)
    out = load_image(buf.getvalue(), SIZE, MIN_SIDE).astype(int)
    assert (out[:12, :, 0] > 200).all() and (out[20:, :, 2] > 200).all()  # left (red) is now the top


def test_too_small_and_undecodable_reasons() -> None:
    img = synthetic.generate(1, 7, "train", 48)[0][0]
    with pytest.raises(BadSample) as e:
        load_image(encode(img[: MIN_SIDE - 1, :40]), SIZE, MIN_SIDE)
    assert e.value.reason == "too_small" and "23" in e.value.detail
    load_image(encode(img[:MIN_SIDE, :40]), SIZE, MIN_SIDE)  # exactly min_side is fine (and upscaled)
    jpeg = encode(img, "JPEG")
    with pytest.raises(BadSample) as e:
        load_image(jpeg[:-200], SIZE, MIN_SIDE)
    assert e.value.reason == "undecodable"
    with pytest.raises(ValueError, match="unknown"):
        BadSample("blurry", "")  # type: ignore[arg-type]
    assert REASONS == ("undecodable", "too_small", "no_image", "no_caption", "unreadable_member")


# --- SkipCounter ---


def test_skip_counter_fails_past_the_limit_naming_shard_key_and_reason() -> None:
    counter = SkipCounter()
    for _ in range(9):
        counter.skip("undecodable")
        counter.check(0.05, "s.tar", "k", "undecodable")  # under MIN_SAMPLES_FOR_CHECK: never fails
    for _ in range(MIN_SAMPLES_FOR_CHECK - 10):
        counter.keep()
    counter.check(0.1, "s.tar", "k", "undecodable")  # 9 of 99 bad
    counter.skip("too_small")
    assert counter.seen == MIN_SAMPLES_FOR_CHECK and counter.fraction == pytest.approx(0.1)
    counter.check(0.1, "s.tar", "k", "too_small")  # exactly at the limit is allowed
    counter.skip("no_caption")
    with pytest.raises(DataError) as e:
        counter.check(0.1, "/data/00042.tar", "000420017", "no_caption")
    msg = str(e.value)
    assert (
        "/data/00042.tar" in msg and "000420017" in msg and "no_caption" in msg and "max_bad_fraction" in msg
    )
    other = SkipCounter()
    other.keep()
    other.skip("no_image")
    counter.merge(other)
    assert counter.as_metrics()["skipped_no_image"] == 1 and counter.seen == MIN_SAMPLES_FOR_CHECK + 3


# --- splits ---


def test_split_of_is_a_stable_hash_of_the_key(tmp_path: Path) -> None:
    shards = []
    for s in range(3):
        members, _ = good_members(4, seed=10 + s, first=100 * s)
        shards.append(write_tar(tmp_path / f"{s:05d}.tar", members))

    def splits(order: list[Path]) -> dict[str, str]:
        return {x.key: split_of(x.key, 0.3, 0.3) for sh in order for x in iter_webdataset(sh)}

    all_three = splits(shards)
    assert splits(shards[::-1]) == all_three
    assert splits(shards[1:2]) == {k: v for k, v in all_three.items() if k.startswith("0000001")}
    assert split_of("000000001", 0.3, 0.3) == all_three["000000001"]


def test_split_fractions_match_over_many_keys() -> None:
    keys = [f"{i:09d}" for i in range(20_000)]
    for val, held in [(0.002, 0.002), (0.05, 0.1)]:
        n: Counter[str] = Counter(split_of(k, val, held) for k in keys)
        for split, p in (("val", val), ("heldout", held)):
            sd = (len(keys) * p * (1 - p)) ** 0.5
            assert abs(n[split] - len(keys) * p) < 5 * sd + 1, (split, p, n)
    # growing val only takes from train: nothing moves between val and heldout
    before = {k: split_of(k, 0.05, 0.1) for k in keys}
    after = {k: split_of(k, 0.08, 0.1) for k in keys}
    assert all(after[k] == "heldout" for k in keys if before[k] == "heldout")
    assert all(after[k] == "val" for k in keys if before[k] == "val")
    with pytest.raises(ConfigError):
        split_of("k", 0.6, 0.5)


# --- shard lists ---


def test_expand_shards_forms(tmp_path: Path) -> None:
    for i in (2, 0, 1, 10):
        write_tar(tmp_path / f"{i:05d}.tar", [])
    (tmp_path / "notes.txt").write_text("not a shard")
    names = [p.name for p in expand_shards(tmp_path)]
    assert names == ["00000.tar", "00001.tar", "00002.tar", "00010.tar"]
    assert [p.name for p in expand_shards(f"{tmp_path}/{{00000..00002}}.tar")] == names[:3]
    assert [p.name for p in expand_shards(f"{tmp_path}/{{00010,00001}}.tar")] == ["00010.tar", "00001.tar"]
    multi = expand_shards(f"{tmp_path}/000{{0,1}}{{0..0}}.tar")  # several groups multiply, as in the shell
    assert [p.name for p in multi] == ["00000.tar", "00010.tar"]
    assert expand_shards(tmp_path / "00002.tar") == [tmp_path / "00002.tar"]


def test_expand_shards_errors_say_what_was_given(tmp_path: Path) -> None:
    write_tar(tmp_path / "00000.tar", [])
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases: list[tuple[str, type[Exception], str]] = [
        (f"{tmp_path}/nowhere", DataError, "nothing exists"),
        (f"{tmp_path}/empty", DataError, "without .tar"),
        (f"{tmp_path}/{{00000..00003}}.tar", DataError, "3 do not exist"),
        (f"{tmp_path}/{{00003..00000}}.tar", ConfigError, "backwards"),
        (f"{tmp_path}/{{00000}}.tar", ConfigError, "neither a range"),
        (f"{tmp_path}/{{0{{1,2}}}}.tar", ConfigError, "braces"),
        (f"{tmp_path}/notes.txt", ConfigError, "not a .tar"),
    ]
    for given, err, why in cases:
        with pytest.raises(err) as e:
            expand_shards(given, key="data.eval_path")
        assert given in str(e.value) and why in str(e.value) and "data.eval_path" in str(e.value), given


# --- folders ---


def make_folder(root: Path, captions: str) -> dict[str, str]:
    """Five images (one in a subfolder) captioned via captions.jsonl or .txt files; key -> caption."""
    images, caps, _ = synthetic.generate(5, 8, "train", 48)
    names = ["a.png", "b.jpg", "c.webp", "sub/d.png", "e.jpeg"]
    fmts = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
    rows = []
    for name, img, cap in zip(names, images, caps, strict=True):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(img, fmts[name.rsplit(".", 1)[1]]))
        if captions == "txt":
            path.with_suffix(".txt").write_text(cap + "\n")
        else:
            rows.append(json.dumps({"file": name, "caption": cap}))
    if rows:
        (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return {n.rsplit(".", 1)[0]: c for n, c in zip(names, caps, strict=True)}


@pytest.mark.parametrize("captions", ["jsonl", "txt"])
def test_iter_folder_reads_images_with_captions(tmp_path: Path, captions: str) -> None:
    expected = make_folder(tmp_path, captions)
    (tmp_path / "lonely.png").write_bytes(encode(np.zeros((40, 40, 3), np.uint8)))  # no caption anywhere
    samples = list(iter_folder(tmp_path))
    assert [s.key for s in samples] == ["a", "b", "c", "e", "lonely", "sub/d"]
    counter = SkipCounter()
    kept = run_through(samples, counter)
    assert {k: c for k, _, c in kept} == expected
    assert counter.skipped["no_caption"] == 1 and counter.bad == 1
    units = folder_units(tmp_path, 4)
    assert [len(u) for u in units] == [4, 2]
    assert [s.key for u in units for s in iter_folder(tmp_path, u)] == [s.key for s in samples]
    # a unit reads only its own captions: "lonely" has none, sub/d has its own
    unit_caps = [s.caption for s in iter_folder(tmp_path, units[1])]
    assert unit_caps[0] is None and (unit_caps[1] or "").strip() == expected["sub/d"]


def test_malformed_captions_jsonl_names_the_line(tmp_path: Path) -> None:
    make_folder(tmp_path, "jsonl")
    with (tmp_path / "captions.jsonl").open("a") as f:
        f.write('{"caption": "no file key"}\n')
    with pytest.raises(DataError, match=r"captions.jsonl:6"):
        list(iter_folder(tmp_path))


def test_sample_keys_lists_from_the_headers_the_keys_a_pass_reads_with_image_and_caption(
    tmp_path: Path,
) -> None:
    import realdata

    from ablate.data.sources import sample_keys

    (shard,) = realdata.write_webdataset(tmp_path, shards=1, per_shard=6, planted=True)
    read = [s for s in iter_webdataset(shard) if s.image is not None and s.caption is not None]
    assert sample_keys(shard) == [s.key for s in read]  # the corrupt JPEG is there: its bytes are not read
    assert "nocapt0001" not in sample_keys(shard) and "corrupt001" in sample_keys(shard)
    (tmp_path / "not.tar").write_bytes(b"not a tar archive" * 64)
    with pytest.raises(DataError, match="cannot be listed"):
        sample_keys(tmp_path / "not.tar")
