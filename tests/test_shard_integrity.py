"""Corrupted shards are clear errors naming the file, never silent wrong data: metadata checked on open,
ids against the vocabulary on every read, constant (overwritten) files on open, and `ablate verify`
re-hashing every cached shard against its meta.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ablate.cli import main
from ablate.data.shards import ShardDataset, ShardWriter, read_batch, shard_name
from ablate.errors import DataError
from ablate.verify import run

VOCAB, L = 100, 12


def write(path, n=40, per_shard=10, seed=0):
    rng = np.random.default_rng(seed)
    with ShardWriter(path, seq_len=L, vocab_size=VOCAB, sequences_per_shard=per_shard) as w:
        w.add_many(rng.integers(0, VOCAB, size=(n, L)))
        w.finish({"note": "test"})
    return path


def poke(path, shard, row, col, value):
    """Overwrite one token in place (same size: only the hash, or the id check, can tell)."""
    m = np.memmap(path / shard_name(shard), dtype=np.uint16, mode="r+", shape=(10, L))
    m[row, col] = value
    m.flush()
    del m


def test_an_out_of_vocabulary_id_is_a_data_error_naming_file_row_and_id(tmp_path):
    d = write(tmp_path / "s")
    poke(d, 2, 3, 5, 4000)
    ds = ShardDataset(d)  # sizes and metadata are fine: it opens
    assert read_batch(ds, [0, 1, 15]).shape == (3, L)  # batches without the row are untouched
    with pytest.raises(DataError) as info:
        read_batch(ds, [0, 23, 31])  # global 23 = shard 2, row 3
    msg = str(info.value)
    assert str(d / shard_name(2)) in msg and "token id 4000" in msg and "sequence 3" in msg
    assert "position 5" in msg and f"[0, {VOCAB})" in msg
    with pytest.raises(DataError, match="token id 4000"):
        ds[23]


def test_a_shard_overwritten_with_one_id_is_refused_on_open(tmp_path):
    d = write(tmp_path / "s")
    np.full((10, L), 5, dtype=np.uint16).tofile(d / shard_name(1))  # same size, every token 5
    with pytest.raises(DataError, match=r"shard_00001\.bin: every probed sequence .* token id 5 repeated 12"):
        ShardDataset(d)


def test_one_constant_row_is_not_mistaken_for_a_constant_file(tmp_path):
    d = write(tmp_path / "s")
    poke(d, 0, 0, slice(None), 7)
    assert len(ShardDataset(d)) == 40


@pytest.mark.parametrize("vocab", [None, 0, 70000, "100", True])
def test_a_meta_json_without_a_usable_vocab_size_is_refused(tmp_path, vocab):
    d = write(tmp_path / "s")
    meta = json.loads((d / "meta.json").read_text())
    if vocab is None:
        del meta["vocab_size"]
    else:
        meta["vocab_size"] = vocab
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="vocab_size"):
        ShardDataset(d)


def cache(tmp_path):
    """results/cache/<stage>/<key>/ with two shard directories, one stage complete."""
    prep = tmp_path / "results" / "cache" / "prepare" / "k1"
    write(prep / "train")
    write(prep / "val", n=12, seed=1)
    (prep / "_COMPLETE.json").write_text("{}")
    write(tmp_path / "results" / "cache" / "pretrain" / "k2" / "corpus", n=5, seed=2)
    return tmp_path / "results", prep


def test_verify_reports_every_file_and_passes_when_intact(tmp_path):
    results, _ = cache(tmp_path)
    lines: list[str] = []
    assert run(results, echo=lines.append) == 0
    ok = [ln for ln in lines if ln.strip().startswith("ok ")]
    assert len(ok) == 4 + 2 + 1
    assert lines[-1] == "7 shard file(s) in 2 stage director(ies) checked: 0 bad"
    assert any("pretrain/k2: NOT complete" in ln for ln in lines)


def test_verify_names_a_corrupted_shard_and_its_stage_directory(tmp_path, capsys):
    results, prep = cache(tmp_path)
    poke(prep / "train", 1, 0, 0, 1)  # a valid id: no reader would notice, the hash does
    (prep / "val" / shard_name(1)).write_bytes(b"short")
    assert main(["--results", str(results), "verify"]) == 1
    out = capsys.readouterr().out
    assert f"BAD {prep / 'train' / shard_name(1)}: sha256" in out
    assert f"BAD {prep / 'val' / shard_name(1)}: size 5 B, recorded" in out
    assert f"ok  {prep / 'train' / shard_name(0)}" in out
    assert "2 bad" in out and f"\n  {prep}" in out


def test_verify_with_nothing_cached_says_so(tmp_path, capsys):
    assert main(["--results", str(tmp_path), "verify"]) == 2
    assert "nothing to verify" in capsys.readouterr().err


def test_verify_of_one_sweep_checks_only_its_stage_directories(tmp_path, capsys):
    from ablate.launch.manifest import manifest_path

    results, prep = cache(tmp_path)
    path = manifest_path(results, "mine")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"jobs": {"prepare-k1": {"stage": "prepare", "key": "k1", "dir": str(prep)}}}))
    assert main(["--results", str(results), "verify", "mine"]) == 0
    out = capsys.readouterr().out
    assert "6 shard file(s) in 1 stage director(ies) checked: 0 bad" in out and "pretrain" not in out
    assert main(["--results", str(results), "verify", "other"]) == 2
    assert "no sweep named 'other'" in capsys.readouterr().err
