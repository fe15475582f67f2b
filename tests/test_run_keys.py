"""Every stage key of every shipped sweep file, at both scales, as committed in golden/run_keys.json: a
refactor that changes a key would orphan every results directory already written, so it fails here.

A change that means to re-run a stage (its version bumped, its config slice grown) regenerates the file:
`ABLATE_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_run_keys.py`, and the diff shows which keys moved."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scales import PAPER_SCALE

from ablate.arms import resolve_arms
from ablate.stages.plan import plan_stages
from ablate.sweep import load_sweep

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "run_keys.json"


def all_keys() -> dict[str, dict[str, dict[str, str]]]:
    """'<sweep file> <scale>' -> arm label -> stage -> key."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        for scale, cli in (("demo", []), ("paper", PAPER_SCALE)):
            arms = resolve_arms(load_sweep(path, cli))
            out[f"{path.name} {scale}"] = {
                a.label: {s.name: s.key for s in plan_stages(a.config)} for a in arms
            }
    return out


def test_stage_keys_of_every_sweep_file_are_unchanged():
    keys = all_keys()
    if os.environ.get("ABLATE_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(keys) == sorted(golden), "a sweep file was added or removed: regenerate (see docstring)"
    for name in golden:
        assert keys[name] == golden[name], f"stage keys of {name} changed"
