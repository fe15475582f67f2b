"""A curve's final value (ablate.train.final): the one definition the train stage logs, summary.csv and
`ablate status` report; and metrics.jsonl keeping the first value of each (key, step)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablate.rundir import RunDir
from ablate.train.final import final_values, tail_count
from analysis.frames import final_values as frame_final_values


def test_the_final_value_is_the_mean_of_the_last_five_percent_of_steps():
    assert [tail_count(n) for n in (1, 19, 20, 21, 100, 218)] == [1, 1, 1, 2, 5, 11]
    rows = [{"step": s, "loss": float(s), "text_loss": float(100 - s)} for s in range(1, 101)]
    rows.append({"step": 0, "heldout_text_ppl": 5.0})  # a probe row: no loss keys
    got = final_values(rows, ("loss", "text_loss", "image_loss"))
    assert got == {"final_loss": np.mean([96, 97, 98, 99, 100]), "final_text_loss": np.mean([4, 3, 2, 1, 0])}
    assert "final_image_loss" not in got  # never logged: left out, not NaN


def test_nans_are_skipped_and_a_step_logged_twice_counts_once():
    rows = [{"step": s, "loss": 1.0} for s in range(1, 40)] + [{"step": 40, "loss": math.nan}]
    rows.append({"step": 40, "loss": 7.0})  # the same step again (a resumed run): the first value is kept
    assert final_values(rows, ("loss",)) == {"final_loss": 1.0}  # 2 tail steps: 39 (1.0) and 40 (NaN)


def test_analysis_computes_the_same_final_value_from_the_tracked_history():
    rng = np.random.default_rng(0)
    values = rng.normal(size=218)
    rows = [{"step": s + 1, "loss": float(v)} for s, v in enumerate(values)]
    hist = pd.DataFrame(
        {"run_id": "r", "key": "loss", "step": np.arange(1, 219), "value": values, "timestamp": 0}
    )
    assert frame_final_values(hist)["tail_mean"].iloc[0] == final_values(rows, ("loss",))["final_loss"]


def test_metrics_jsonl_keeps_the_first_value_of_each_key_and_step(tmp_path):
    log = RunDir(tmp_path).metrics_log()
    log.append(5, {"loss": 1.0, "tokens": 10.0})
    log.append(5, {"loss": 2.0})  # a re-executed step after a resume: dropped
    log.append(5, {"final_loss": 1.0, "loss": 3.0})  # another key at the same step: kept, alone
    assert log.rows() == [{"step": 5, "loss": 1.0, "tokens": 10.0}, {"step": 5, "final_loss": 1.0}]
    again = RunDir(tmp_path).metrics_log()  # a new process reads what the file holds
    again.append(5, {"final_loss": 9.0, "loss": 9.0})
    assert len(again.rows()) == 2
