"""FID through `ablate launch`: real-format data with a reference set, the evaluate stage as an array of
slices, one eval_set stage shared by two arms, and its FID equal to torch-fidelity's on the same images.

Needs the fid extra (`make test` runs it in .venv-fid).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import realdata
from fidweights import save_pngs, torch_fidelity_fid, write_random_inception

from ablate.config.compose import compose_config, to_run_config
from ablate.data.eval_set import eval_samples
from ablate.evaluate.fid import FID_WEIGHTS_FILE
from ablate.stages import names
from ablate.stages.evaluate import SLICE_FILE
from ablate.stages.inputs import FID_REFERENCE, open_image_tokenizer, read_captions

pytestmark = [pytest.mark.fid, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
N = 6  # prompts per arm: the reference set's 6 samples, in slices of 4 (two units: 4 + 2)
SWEEP = "name: fid\ngrid:\n  evaluate.temperature: [1.0, 0.7]\n"


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    overrides = realdata.overrides(root / "assets")
    reference = realdata.write_webdataset(root / "eval", shards=1, per_shard=N, seed=3, planted=False)[0]
    weights = write_random_inception(root / FID_WEIGHTS_FILE)
    sweep = root / "fid.yaml"
    sweep.write_text(SWEEP)
    args = [
        *overrides,
        f"data.eval_path={reference}",
        f"evaluate.fid_weights={weights}",
        f"evaluate.n_samples={N}",
        "evaluate.slice_size=4",
        "evaluate.batch_size=4",
        "model.init=random",
        "model.hidden_dim=32",
        "model.n_layers=2",
        "train.total_tokens=4608",
        "optim.warmup_tokens=0",
        "evaluate.probe_every_tokens=0",
        "cluster=debug",  # in the launch's process: one torch import for every job
    ]
    results = root / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--results", str(results), "launch", str(sweep), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results, args, weights


def test_two_arms_share_one_reference_set_and_each_gets_a_fid(launched):
    results, _, _ = launched
    eval_sets = list((results / "cache" / names.EVAL_SET).iterdir())
    assert len(eval_sets) == 1  # computed once for both arms
    assert (eval_sets[0] / FID_REFERENCE).is_file() and len(read_captions(eval_sets[0])) == N
    evaluates = sorted((results / "cache" / names.EVALUATE).iterdir())
    assert len(evaluates) == 2
    fids = []
    for d in evaluates:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["fid_samples"] == N and metrics["fid"] > 0
        fids.append(metrics["fid"])
        # Two slices, each a unit of its own with its own marker, assembled by the stage's job.
        assert sorted(p.name for p in (d / "units").iterdir()) == ["s0000", "s0001"]
        assert all((d / "units" / u / SLICE_FILE).is_file() for u in ("s0000", "s0001"))
    assert fids[0] != fids[1]  # other temperatures, other samples


def test_the_logged_fid_equals_torch_fidelity_on_the_same_images(launched, tmp_path):
    results, args, weights = launched
    cfg = to_run_config(compose_config(args))
    references = np.stack([img for _, _, img in eval_samples(cfg.data, N)])
    ref_dir = save_pngs(references, tmp_path / "ref")
    (tok_dir,) = (results / "cache" / names.IMAGE_TOKENIZER).iterdir()
    tok = open_image_tokenizer(tok_dir)
    for i, d in enumerate(sorted((results / "cache" / names.EVALUATE).iterdir())):
        codes = np.load(d / "samples.npz")["codes"]
        generated = save_pngs(tok.decode(codes.astype(np.int64)), tmp_path / f"gen{i}")
        theirs = torch_fidelity_fid(generated, ref_dir, weights)
        ours = json.loads((d / "metrics.json").read_text())["fid"]
        assert ours == pytest.approx(theirs, rel=1e-3)
