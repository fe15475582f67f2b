"""No code from a checkpoint file runs: open_lm checkpoints (model.checkpoint) and training checkpoints
(checkpoints/last.pt) are read with weights_only=True; last.pt files of the earlier format still resume."""

from __future__ import annotations

import io
import pathlib
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.errors import CheckpointError
from ablate.model.checkpoint_io import load_open_lm_state_dict
from ablate.train.checkpoint import load_checkpoint, save_checkpoint


class Payload:
    """Unpickling this creates the marker file: what a crafted checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def crafted(path: Path, marker: Path, **state) -> Path:
    torch.save({**state, "extra": Payload(marker)}, path)
    return path


def weights() -> dict[str, torch.Tensor]:
    return {"tok_embeddings.weight": torch.randn(4, 2)}


def test_a_crafted_open_lm_checkpoint_runs_nothing_and_names_trust_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "evil_epoch_1.pt", marker, state_dict=weights())
    with pytest.raises(CheckpointError) as info:
        load_open_lm_state_dict(path)
    assert not marker.exists()
    msg = str(info.value)
    assert "model.trust_checkpoint=true" in msg and "pathlib" in msg and str(path) in msg
    # The payload is live: trusting the file runs it (which is why trusting is explicit).
    with pytest.warns(UserWarning, match="full pickle"):
        load_open_lm_state_dict(path, trust=True)
    assert marker.exists()


def test_a_crafted_last_pt_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "last.pt", marker, step=3, model=weights())
    with pytest.raises(CheckpointError, match="could run code.*Delete it to restart"):
        load_checkpoint(path)
    assert not marker.exists()


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def training_state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(), "step": 7}


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b


def test_last_pt_round_trips_with_every_rng_state(tmp_path):
    state = training_state()
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert_same(state, loaded)
    np.random.set_state(loaded["rng"]["numpy"])
    random.setstate(loaded["rng"]["python"])
    a = (np.random.rand(), random.random())
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    assert a == (np.random.rand(), random.random())


def numpy1_pickle(src: Path, dst: Path) -> None:
    """src rewritten as numpy 1 pickled it: the array reconstructor under numpy.core (numpy 2: numpy._core)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)


def test_a_last_pt_of_the_earlier_format_still_resumes(tmp_path):
    # Written as the previous ablate did: a plain torch.save (read back then with full unpickling).
    state = training_state()
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert_same(state, load_checkpoint(old))
    numpy1_pickle(old, tmp_path / "numpy1.pt")
    assert_same(state, load_checkpoint(tmp_path / "numpy1.pt"))


def test_a_damaged_last_pt_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="Delete it to restart"):
        load_checkpoint(path)
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a training state"):
        load_checkpoint(path)
