"""FID maths and the checks on its weights file (ablate.evaluate.fid); torch-fidelity itself is tested in
tests/test_fid_torch_fidelity.py, in the venv with the fid extra."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.errors import AblateError, AssetMissingError, DataError
from ablate.evaluate.fid import (
    FID_WEIGHTS_FILE,
    check_weights,
    fid_from_features,
    frechet_distance,
    load_inception,
)


def test_fid_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(200, 16))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(torch.from_numpy(feats).float(), feats) == pytest.approx(0.0, abs=1e-4)
    few = feats[:5]  # fewer samples than dimensions: singular covariance, still finite and ~0
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-8)


def test_fid_grows_with_mean_shift():
    feats = np.random.default_rng(1).normal(size=(300, 8))
    fids = [fid_from_features(feats, feats + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False))
    # A translation keeps the covariance, so FID is exactly the squared mean shift: 8 dims x s^2.
    assert fids[-1] == pytest.approx(8 * 2.0**2, rel=1e-9)


def test_frechet_distance_matches_reference_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sa, sb = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)  # non-commuting SPD covariances
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    # tr sqrt(Sa Sb) from the (real, positive) eigenvalues of the non-symmetric product itself.
    tr_covmean = np.sqrt(np.linalg.eigvals(sa @ sb).real).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_covmean
    assert frechet_distance(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-10)
    # Diagonal case in closed form: sum (sqrt(a_i) - sqrt(b_i))^2.
    da, db = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(da), np.zeros(3), np.diag(db)) == pytest.approx(1 + 0 + 4)


def test_fid_input_errors():
    with pytest.raises(DataError, match="N >= 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(DataError, match="one D"):
        fid_from_features(np.ones((5, 4)).cumsum(0), np.ones((5, 3)).cumsum(0))


@pytest.mark.parametrize("path", [None, "does/not/exist.pth"])
def test_missing_weights_name_the_key_the_file_and_where_it_comes_from(path):
    with pytest.raises(AssetMissingError) as err:
        check_weights(path)
    msg = str(err.value)
    assert f"evaluate.fid_weights=/path/to/{FID_WEIGHTS_FILE}" in msg
    assert "https://github.com/toshas/torch-fidelity/releases/download/" in msg


class _Payload:
    """A pickle that would create a file when unpickled (what a crafted 'weights' file can do)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_a_crafted_pickle_is_refused_and_its_payload_never_runs(tmp_path: Path):
    evil = tmp_path / FID_WEIGHTS_FILE
    target = tmp_path / "pwned"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Payload(target)}, f)
    with pytest.raises(DataError, match="not a plain state dict of tensors"):
        check_weights(evil)
    assert not target.exists()
    with pytest.raises(DataError, match="not a plain state dict"):
        load_inception(evil)  # refused before torch-fidelity (which unpickles fully) sees it
    assert not target.exists()


def test_a_state_dict_of_another_network_is_refused(tmp_path: Path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="not torch-fidelity's InceptionV3"):
        check_weights(tmp_path / "other.pth")


def test_without_the_fid_extra_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch):
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / FID_WEIGHTS_FILE)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(AblateError, match=r"pip install -e '\.\[fid\]'"):
        load_inception(tmp_path / FID_WEIGHTS_FILE)


def test_fid_of_translated_features_is_the_squared_shift():
    x = np.random.default_rng(4).normal(size=(50, 5))
    assert fid_from_features(x, x + 1.0) == pytest.approx(5.0, rel=1e-9)
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2.0)
