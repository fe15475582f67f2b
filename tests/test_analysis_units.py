"""analysis without MLflow: the figure and table functions from hand-made tidy frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imsave

from ablate.errors import AblateError
from analysis import curves, runs, samples, sensitivity
from analysis.frames import final_values
from analysis.plot import FIGURE5


def hist(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    return frame.assign(timestamp=np.arange(len(frame)))


def test_final_values_tail_mean_last_and_duplicates() -> None:
    rows = [("a", "image_loss", s, float(s)) for s in range(1, 41)]  # 40 steps: last 5% = 2 steps
    rows += [("a", "tokens", 1, 10.0), ("a", "tokens", 2, 20.0), ("a", "tokens", 2, 25.0)]  # step 2 twice
    rows += [("b", "image_loss", 0, 1.0), ("b", "image_loss", 1, np.nan)]
    got = final_values(hist(rows)).set_index(["run_id", "key"])
    assert got.loc[("a", "image_loss"), "tail_mean"] == 39.5 and got.loc[("a", "image_loss"), "tail_n"] == 2
    assert got.loc[("a", "image_loss"), "last_step"] == 40 and got.loc[("a", "image_loss"), "n"] == 40
    assert got.loc[("a", "tokens"), "last"] == 25.0 and got.loc[("a", "tokens"), "n"] == 2  # latest value
    assert np.isnan(got.loc[("b", "image_loss"), "tail_mean"])  # the last step logged NaN
    assert final_values(hist([])).empty


def test_run_table_labels_sweeps_and_evaluations() -> None:
    fetched = pd.DataFrame(
        {
            "run_id": ["t1", "t2", "e1", "e0"],
            "status": ["FINISHED"] * 4,
            "start_time": [1, 2, 4, 3],
            "tags.ablate.stage": ["train", "train", "evaluate", "evaluate"],
            "tags.ablate.run_key": ["k1", "k2", "ek1", "ek0"],
            "tags.ablate.train_key": [None, None, "k1", "k1"],
            "tags.ablate.sweeps.lr": ["true", None, "true", "true"],
            "tags.ablate.sweeps.paper": ["true", "true", None, None],
            "tags.ablate.trainable": [None, "emb_out", None, None],
            "params.model.init": ["pretrained", "random", None, None],
            "params.model.image_init": ["contrastive", "mean", None, None],
            "params.optim.lr": ["3e-4", None, None, None],
        }
    )
    table = runs.run_table(fetched)
    assert table["label"].tolist()[:2] == ["pretrained + contrastive", "random"]
    assert table["sweeps"].tolist() == ["lr;paper", "paper", "lr", "lr"]
    assert runs.in_sweeps(table, ["lr", "demo"]).tolist() == [True, False, True, True]
    assert table["lr"].iloc[0] == 3e-4 and np.isnan(table["lr"].iloc[1])
    assert table["trainable"].iloc[1] == "emb_out"  # from the tag: no train.trainable param
    assert runs.evaluations(table).to_dict() == {"t1": "e1"}  # the latest evaluate run of k1


def sens_points(xs: list[float]) -> pd.DataFrame:
    n = len(xs)
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n)],
            "arm": [f"arm{i}" for i in range(n)],
            "label": ["pretrained" if i % 2 == 0 else "random" for i in range(n)],
            "lr": xs,
            "y": np.arange(n, dtype=float),
            "tail_steps": [3] * n,
        }
    )


def test_sensitivity_averages_runs_per_x_and_needs_two_values(tmp_path: Path) -> None:
    points = sens_points([1e-4, 1e-4, 3e-4, 3e-4, 1e-4])  # pretrained at 1e-4: runs r0 and r4 (y 0 and 4)
    png, pdf, csv = sensitivity.sensitivity(points, "lr", tmp_path, "sensitivity_lr")
    data = pd.read_csv(csv)
    row = data[(data["init"] == "pretrained") & (data["x"] == 1e-4)].iloc[0]
    assert row["y"] == 2.0 and row["n_runs"] == 2 and row["run_ids"] == "r0;r4"
    assert data["init"].tolist() == ["pretrained", "pretrained", "random", "random"]
    assert png.exists() and pdf.exists()
    with pytest.raises(AblateError, match=r"only optim.lr = 0.0001; .*at least 2"):
        sensitivity.sensitivity(sens_points([1e-4, 1e-4]), "lr", tmp_path, "sensitivity_lr")


def test_figure5_leaves_out_missing_images(tmp_path: Path) -> None:
    imsave(tmp_path / "a.png", np.zeros((8, 12, 3)))
    panels = pd.DataFrame(
        {
            "init": ["random", "pretrained"],
            "arm": ["r", "p"],
            "caption_match_seen": [0.5, 0.25],
            "caption_match_heldout": [0.0, np.nan],
            "local_path": [str(tmp_path / "missing.png"), str(tmp_path / "a.png")],
        }
    )
    paths = samples.figure5_samples(panels, tmp_path / "out", FIGURE5.name)
    data = pd.read_csv(paths[2])
    assert data["init"].tolist() == ["pretrained"] and data["panel"].tolist() == [1]
    assert samples.panel_title(panels.iloc[1]) == "pretrained  (p)\ncaption match: seen 25%, held-out n/a"
    with pytest.raises(AblateError, match="samples.png"):
        samples.figure5_samples(panels.iloc[:1], tmp_path / "out", FIGURE5.name)


def test_positional_note() -> None:
    rotary = curves.positional_note(pd.Series(["none (rotary has no parameters)"] * 2))
    assert "rotary" in rotary and "no parameters" in rotary and "only the norms" in rotary
    learned = curves.positional_note(pd.Series(["pos_embed.weight", None]))
    assert "pos_embed.weight" in learned and "only the norms" not in learned
    assert "not recorded" in curves.positional_note(pd.Series([None]))
    # The legend names what trains: no '+ positional' setting where the model has no positional parameters.
    assert "+ positional" not in rotary and "'+ norms' (emb_out_norm)" in rotary
    assert curves._setting("pretrained", "emb_out_norm") == "pretrained: + norms (emb_out_norm)"
    assert curves._setting("pretrained", "emb_out_norm", positional=True).endswith(
        "+ positional embedding (emb_out_norm)"
    )
    assert not curves.has_positional(pd.Series(["none (rotary has no parameters)", None]))
    assert curves.has_positional(pd.Series(["pos_embed.weight"]))


def perplexity_points(
    inits: tuple[str, ...] = ("pretrained", "random", "pretrained + contrastive"),
) -> pd.DataFrame:
    """Figure 3's points for runs that fall from 300 to the same 3.3 by a tenth of training: late, the
    lines lie on top of each other."""
    from analysis.figures import plotted_points

    rows = []
    for k, label in enumerate(inits):
        init, _, image = label.partition(" + ")
        for step in range(1, 201):
            value = 3.3 + 300 * np.exp(-step / 4) + 0.01 * np.sin(step + k)
            rows.append((f"r{k}", "demo", f"init={label}", init, image or "random", "t2i", "all", step,
                         step * 1000.0, "perplexity", value))  # fmt: skip
    columns = [
        "run_id",
        "sweep",
        "arm",
        "init",
        "image_init",
        "task",
        "trainable",
        "step",
        "tokens",
        "metric",
        "value",
    ]
    return plotted_points(pd.DataFrame(rows, columns=columns), ["perplexity"], log_space=True)


def test_figure3_zooms_on_the_late_tokens_and_shows_every_init():
    from analysis.figures import RANGE_FROM, ZOOM_FROM, draw_figure3

    points = perplexity_points()
    whole, late = draw_figure3(points).axes
    end = points["tokens"].max()
    assert whole.get_yscale() == "log" and late.get_yscale() == "linear"
    assert late.get_xlim() == pytest.approx((ZOOM_FROM * end, end))
    # The zoomed panel's y-range is the late values', not the early fall's (which leaves through the top).
    final = points[points["tokens"] >= RANGE_FROM * end]["value"]
    low, high = late.get_ylim()
    assert low < final.min() and final.max() < high < final.max() + (final.max() - final.min()) * 2
    assert high < points[points["tokens"] >= ZOOM_FROM * end]["value"].max()
    # Every init has its own smoothed line in both panels; coinciding, each later one narrower and on top.
    for ax in (whole, late):
        thick = [line for line in ax.get_lines() if line.get_linewidth() >= 1.4 and len(line.get_xdata())]
        styles = [(line.get_color(), str(line.get_linestyle()), line.get_zorder(), line.get_linewidth())
                  for line in thick]  # fmt: skip
        assert len(styles) == 3 and len({(c, s) for c, s, _, _ in styles}) == 3
        by_z = sorted(styles, key=lambda t: t[2])
        assert all(a[3] > b[3] for a, b in zip(by_z[:-1], by_z[1:], strict=True))  # wider underneath


def test_log_axis_tick_labels_are_plain_and_do_not_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for low, high, expect in ((1.9, 523.0, {"2", "10", "100", "500"}), (60.0, 90.0, {"60", "90"}),
                              (1.5, 3e6, {"10", "1,000", "1,000,000"})):  # fmt: skip
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.subplots()
        values = pd.Series([low, high])
        ax.plot([0, 1], values)
        ax.set_yscale("log")
        curves.plain_log_axis(ax, values)
        FigureCanvasAgg(fig).draw()
        labels = [t for t in ax.get_yticklabels(minor=False) + ax.get_yticklabels(minor=True) if t.get_text()]
        lo, hi = ax.get_ylim()
        shown = [t for t in labels if lo <= t.get_position()[1] <= hi]
        assert expect <= {t.get_text() for t in shown} and not any("10^" in t.get_text() for t in shown)
        boxes = sorted((t.get_window_extent().y0, t.get_window_extent().y1) for t in shown)
        assert all(b[0] >= a[1] for a, b in zip(boxes[:-1], boxes[1:], strict=True)), [
            t.get_text() for t in shown
        ]


def test_ema_span_follows_a_drop_the_paper_ema_lags_behind():
    from analysis.smoothing import ema, ema_span

    tokens = np.arange(218) * 2304.0  # the demo's 218 steps
    loss = np.where(tokens < 100_000, 8.0, 2.0)  # a drop at 100K tokens
    after = tokens >= 100_000 + 20 * 2304
    smooth = ema_span(loss, tokens, span=0.02 * tokens[-1])  # ~10K tokens
    assert np.abs(smooth[after] - 2.0).max() < 0.1  # caught up within 20 steps (46K tokens) of the drop
    assert ema(loss, 0.95)[after][0] > 3.0  # where EMA 0.95 per step is still a third of the way up
    # Bias-corrected: no pull towards the first value; a constant stays constant; NaNs are skipped.
    np.testing.assert_allclose(ema_span(np.full(5, 3.0), np.arange(5.0), 2.0), 3.0)
    np.testing.assert_allclose(ema_span([1.0, np.nan, 3.0], [0.0, 1.0, 2.0], 1e9), [1.0, 1.0, 2.0])
    # Uneven spacing: a point far back weighs exp(-distance / span).
    got = ema_span([0.0, 1.0], [0.0, 1.0], 1.0)[1]
    assert got == pytest.approx(1.0 / (1.0 + np.exp(-1.0)))


def test_smoothing_span_is_the_papers_20_steps_but_at_most_1_percent_of_the_run():
    import pandas as pd

    from analysis.smoothing import smoothing_span

    demo = pd.Series(np.arange(218) * 2304.0)
    assert smoothing_span(demo, pd.Series(["a"] * 218)) == pytest.approx(0.01 * 217 * 2304)
    paper = pd.Series(np.arange(100_007) * 999_936.0)
    assert smoothing_span(paper, pd.Series(["a"] * len(paper))) == pytest.approx(20 * 999_936)


def test_the_freeze_sweep_named_by_figure_6_runs_every_setting():
    import yaml

    sweep = yaml.safe_load((Path(__file__).parent.parent / curves.FREEZE_SWEEP).read_text())
    assert sweep["grid"]["train.trainable"] == list(curves.FREEZE_SETTINGS)


def _seeded_summary() -> pd.DataFrame:
    """summary.csv rows: t2i pretrained vs random over 3 seeds, an uncond freeze pair over 3 seeds."""
    rows = []
    for seed in range(3):
        for init, image in (("pretrained", 2.0), ("random", 2.5)):
            rows.append({"arm": f"init={init} seed={seed}", "init": init, "image_init": "random", "task": "t2i",
                         "trainable": "all", "lr": 1e-3, "batch_tokens": 2304, "scale": "demo", "seed": seed,
                         "final_image_loss": image + 0.01 * seed, "final_text_loss": 3.0 + 0.1 * (-1) ** seed,
                         "final_loss": image})  # fmt: skip
        for trainable, loss in (("emb_out", 4.0), ("all", 3.0)):
            rows.append({"arm": f"trainable={trainable} seed={seed}", "init": "pretrained", "image_init": "random",
                         "task": "uncond", "trainable": trainable, "lr": 1e-3, "batch_tokens": 2304,
                         "scale": "demo", "seed": seed, "final_loss": loss + 0.2 * seed})  # fmt: skip
    return pd.DataFrame(rows)


def test_arm_summary_gives_mean_and_spread_across_seeds():
    from analysis.seeds import arm_summary

    arms = arm_summary(_seeded_summary()).set_index("arm")
    assert list(arms["seeds"]) == [3, 3, 3, 3]
    row = arms.loc["init=pretrained"]
    assert row["final_image_loss_mean"] == pytest.approx(2.01)
    assert row["final_image_loss_sd"] == pytest.approx(0.01)
    assert (row["final_image_loss_min"], row["final_image_loss_max"]) == pytest.approx((2.0, 2.02))


def test_comparisons_pair_seeds_and_say_whether_the_interval_excludes_zero():
    from analysis.seeds import comparisons, t975

    table = comparisons(_seeded_summary()).set_index(["comparison", "metric"])
    image = table.loc[("pretrained - random (text-to-image)", "final_image_loss")]
    # Paired by seed the differences are exactly -0.5: a zero-width interval that excludes 0.
    assert image["seeds"] == 3 and image["difference"] == pytest.approx(-0.5)
    assert image["ci_low"] == pytest.approx(-0.5) and image["excludes_zero"]
    text = table.loc[("pretrained - random (text-to-image)", "final_text_loss")]
    assert text["difference"] == pytest.approx(0.0) and not text["excludes_zero"]
    freeze = table.loc[("emb_out - all (unconditional, pretrained)", "final_loss")]
    assert freeze["difference"] == pytest.approx(1.0) and freeze["excludes_zero"]
    # A noisy difference: 1, 2, 6 -> mean 3, sd 2.65, half-width t(2) * sd / sqrt(3) = 6.57.
    from analysis.seeds import paired_interval

    n, mean, lo, hi = paired_interval(pd.Series([1.0, 2.0, 6.0]), pd.Series([0.0, 0.0, 0.0]))
    assert (n, mean) == (3, 3.0) and hi - mean == pytest.approx(t975(2) * np.std([1, 2, 6], ddof=1) / 3**0.5)
    assert lo < 0 < hi


def test_a_comparison_with_unequal_seeds_gives_the_means_of_the_paired_seeds():
    from analysis.seeds import comparisons

    # Random runs seeds 0-2, pretrained only seed 0 (the demo: one contrastive seed beside two of the
    # arm it is compared with): the means are over seed 0, so a_mean - b_mean is the difference shown.
    rows = _seeded_summary()
    rows = rows[(rows["init"] == "random") | (rows["seed"] == 0)]
    image = (
        comparisons(rows)
        .set_index(["comparison", "metric"])
        .loc[("pretrained - random (text-to-image)", "final_image_loss")]
    )
    assert image["seeds"] == 1 and (image["a_mean"], image["b_mean"]) == pytest.approx((2.0, 2.5))
    assert image["a_mean"] - image["b_mean"] == pytest.approx(image["difference"])


def test_csvs_write_config_values_as_the_sweep_does(tmp_path: Path):
    from analysis.seeds import write_seed_tables
    from analysis.tables import as_written, write_summary

    assert [as_written(v) for v in (1152.0, 0.1 * 0.003, 1.67e-4, 5e-5, 1e-3, 0.5, 2_000_000.0)] == [
        "1152", "3e-4", "1.67e-4", "5e-5", "0.001", "0.5", "2000000"
    ]  # fmt: skip
    assert as_written(float("nan")) == "" and as_written("demo") == "demo"
    # As the run table reads them from MLflow params: floats, the lr with binary noise.
    summary = _seeded_summary().assign(
        lr=0.1 * 0.003, batch_tokens=1152.0, tokens=2_000_000.0, seed=lambda f: f["seed"] * 1.0
    )
    write_seed_tables(summary, tmp_path)
    write_summary(summary, tmp_path)
    comparisons = pd.read_csv(tmp_path / "comparisons.csv")
    context = comparisons.set_index("comparison")["context"]
    assert context["pretrained - random (text-to-image)"].iloc[0] == "lr=3e-4 batch_tokens=1152 scale=demo"
    arms = (tmp_path / "summary_arms.csv").read_text().splitlines()
    assert arms[1].startswith("init=pretrained,pretrained,random,t2i,all,3e-4,1152,demo,3,")
    rows = (tmp_path / "summary.csv").read_text()
    assert ",3e-4,1152," in rows and ",2000000\n" in rows and "1152.0" not in rows and "e+06" not in rows
    # Measured numbers keep 4 significant digits.
    assert pd.read_csv(tmp_path / "summary_arms.csv")["final_image_loss_mean"].iloc[0] == 2.01


def test_seed_bands_take_mean_min_and_max_across_the_seeds_of_an_arm():
    from analysis.figures import seed_bands

    x = [0.0, 10.0, 20.0]
    lines = pd.DataFrame(
        {
            "run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
            "arm": ["init=pretrained seed=0"] * 3 + ["init=pretrained seed=1"] * 3 + ["init=random"] * 3,
            "tokens": x * 3,
            "value": [1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 9.0, 9.0, 9.0],
        }
    )
    single, bands = seed_bands(lines, "tokens")
    assert list(single["run_id"].unique()) == ["c"]  # alone in its arm: drawn as it is
    ((bx, mean, lo, hi),) = bands
    np.testing.assert_allclose(bx, x)
    np.testing.assert_allclose(mean, [2.0, 3.0, 4.0])
    np.testing.assert_allclose(lo, [1.0, 2.0, 3.0]) and np.testing.assert_allclose(hi, [3.0, 4.0, 5.0])
