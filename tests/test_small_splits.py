"""Small real data sets (issue 22, item 7): a split too small for a stage is refused at launch, before
anything is written, naming the split, its size and the setting to change; and `evaluate` copes with val
and heldout splits that `prepare` left empty."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import realdata

from ablate.config.compose import compose_config, to_run_config
from ablate.data.sources import split_of
from ablate.errors import ConfigError
from ablate.launch.launcher import launch
from ablate.stages import prepare

# 300 samples whose keys all hash into train at the default 0.2% val and 0.2% heldout fractions.
SEED, SHARDS, PER_SHARD = 3, 3, 100


def _keys(seed: int = SEED, shards: int = SHARDS, per_shard: int = PER_SHARD) -> list[str]:
    """The keys realdata.write_webdataset gives its samples (without the planted bad ones)."""
    return [
        f"{seed:02d}{s:05d}{i:04d}" for s in range(shards) for i in range(s * per_shard, (s + 1) * per_shard)
    ]


def _small_set(tmp_path: Path) -> list[str]:
    """Run overrides on realdata's assets with data.path at 300 samples, at the default split fractions."""
    shards = tmp_path / "small"
    realdata.write_webdataset(shards, shards=SHARDS, per_shard=PER_SHARD, seed=SEED, planted=False)
    keep = [
        o
        for o in realdata.overrides(tmp_path / "assets")
        if not o.startswith(("data.path=", "data.val_fraction=", "data.heldout_fraction="))
    ]
    return [*keep, f"data.path={shards}"]


def _cfg(*overrides: str):
    return to_run_config(compose_config(list(overrides)))


def test_the_small_set_is_what_the_test_says() -> None:
    splits = [split_of(k, 0.002, 0.002) for k in _keys()]
    assert len(splits) == 300 and set(splits) == {"train"}


def test_a_launch_refuses_a_set_whose_val_and_heldout_splits_are_empty(tmp_path: Path) -> None:
    overrides = _small_set(tmp_path)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: small\ngrid:\n  model.init: [pretrained, random]\n")
    results = tmp_path / "results"
    with pytest.raises(ConfigError) as err:
        launch(sweep, overrides, results, echo=lambda line: None)
    text = str(err.value)
    assert err.value.key == "data.val_fraction" and err.value.value == 0.002
    assert f"data.path={tmp_path / 'small'} holds 300 sample(s)" in text
    assert "the val split gets 0 of them and heldout 0" in text
    assert "set data.val_fraction=0.05 (" in text and "data.eval_path" in text
    assert not results.exists()  # refused before the store, the lock or the manifest

    lines: list[str] = []
    assert launch(sweep, overrides, results, dry_run=True, echo=lines.append) == 0
    small = [
        line for line in "\n".join(lines).splitlines() if line.startswith("too small (a launch stops here)")
    ]
    assert len(small) == 1 and "val split gets 0" in small[0]  # both arms' problem, said once

    # The fraction the message suggests passes, and puts as many samples in val as it says.
    suggested = int(text.split("set data.val_fraction=0.05 (")[1].split(" ")[0])
    assert suggested == sum(split_of(k, 0.05, 0.002) == "val" for k in _keys()) >= 10
    prepare.check_splits(_cfg(*overrides, "data.val_fraction=0.05"))
    # Nothing needs val where evaluate samples unconditionally or a reference set's captions.
    prepare.check_splits(_cfg(*overrides, "data.task=uncond"))
    prepare.check_splits(_cfg(*overrides, f"data.eval_path={tmp_path / 'small'}"))


def test_an_image_folder_is_counted_by_its_file_names(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for key in _keys()[:40]:
        Image.new("RGB", (32, 32)).save(folder / f"{key}.png")
        (folder / f"{key}.txt").write_text("a red circle")
    with pytest.raises(ConfigError, match=r"holds 40 sample\(s\).*val split gets 0"):
        prepare.check_splits(_cfg("data=folder", f"data.path={folder}"))
    # Everything in val and heldout: nothing to train on.
    with pytest.raises(ConfigError, match=r"'data.path'.*none is left to train on") as err:
        prepare.check_splits(
            _cfg("data=folder", f"data.path={folder}", "data.val_fraction=0.5", "data.heldout_fraction=0.499")
        )
    assert "at least one sample in the train split" in str(err.value)


def test_a_large_set_is_read_only_until_every_split_needed_has_a_sample(tmp_path: Path, monkeypatch) -> None:
    shards = realdata.write_webdataset(tmp_path / "big", shards=4, per_shard=400, seed=1, planted=False)
    listed: list[str] = []

    def counting(shard: str) -> list[str]:
        listed.append(Path(shard).name)
        return real(shard)

    real = prepare.sample_keys
    monkeypatch.setattr(prepare, "sample_keys", counting)
    prepare._shard_keys.cache_clear()
    cfg = _cfg("data=webdataset", f"data.path={tmp_path / 'big'}", "data.val_fraction=0.01")
    prepare.check_splits(cfg)
    assert listed == [shards[0].name]  # its first shard already has train, val and heldout samples
    prepare.check_splits(cfg)
    assert listed == [shards[0].name]  # listed once per shard version, not once per arm


def test_evaluate_samples_training_captions_when_prepare_left_val_and_heldout_empty(tmp_path: Path) -> None:
    from ablate.data.sequence import VocabLayout, layout_t2i
    from ablate.data.shards import ShardWriter
    from ablate.stages import names
    from ablate.stages.evaluate import prompt_sets
    from ablate.tokenize.text import TextTokenizer

    cfg = _cfg("data=webdataset", f"data.path={tmp_path}", f"model.text_vocab_size={realdata.TEXT_VOCAB}")
    tok_dir = tmp_path / "text_tokenizer"
    tok_dir.mkdir()
    tok = TextTokenizer.from_file(realdata.write_tokenizer(tok_dir / "tokenizer.json"))
    layout = VocabLayout(text_vocab_size=realdata.TEXT_VOCAB, codebook_size=realdata.CODES)
    n_codes, captions = 16, ["a red circle", "a small blue square", "a green triangle"]
    prep = tmp_path / "prepare"
    for split in ("train", "val", "heldout"):
        writer = ShardWriter(prep / split, seq_len=cfg.data.seq_len, vocab_size=layout.size)
        if split == "train":
            codes = np.zeros(n_codes, np.int64)
            writer.add_many(
                np.stack([layout_t2i(tok.encode(c), codes, layout, cfg.data.seq_len) for c in captions])
            )
        writer.finish({"vocab": layout.to_dict()})
    logged: list[str] = []
    inputs = {names.PREPARE: prep, names.TEXT_TOKENIZER: tok_dir}
    ctx = SimpleNamespace(cfg=cfg, inputs=inputs, log=logged.append)
    (only,) = prompt_sets(ctx, layout, n_codes)
    assert only.name == "train" and [c.strip() for c in only.captions] == captions and len(only.prompts) == 3
    assert len(logged) == 1 and "hold no sample" in logged[0] and "data.val_fraction" in logged[0]

    # With a sample in val, val and heldout are sampled as before.
    writer = ShardWriter(prep / "val", seq_len=cfg.data.seq_len, vocab_size=layout.size, overwrite=True)
    writer.add_many(
        layout_t2i(tok.encode("a red circle"), np.zeros(n_codes, np.int64), layout, cfg.data.seq_len)[None]
    )
    writer.finish({"vocab": layout.to_dict()})
    assert [s.name for s in prompt_sets(ctx, layout, n_codes)] == ["seen", "heldout"]
