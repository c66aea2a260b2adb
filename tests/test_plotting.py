"""Learning curves from synthetic run directories: the CI maths, reading, labels, PNGs."""

import csv
import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from distral import plotting, stats
from distral.plotting import PlotError, learning_curve, plot_run, plot_runs, read_metrics

N_TASKS = 2
COLUMNS = [
    "seed",
    "updates",
    "env_steps_per_task",
    "wall_seconds",
    "steps_per_second",
    "mean_return",
    "pi0_eval_return",
    "loss",
    "kl",
    "entropy",
    *(f"return_task_{i}" for i in range(N_TASKS)),
    *(f"kl_task_{i}" for i in range(N_TASKS)),
    "note",  # an unknown, non-numeric column: must not break reading
]


def _row(seed, step, mean_return, pi0=float("nan")):
    return {
        "seed": seed,
        "updates": step // 10,
        "env_steps_per_task": step,
        "wall_seconds": step / 1000,
        "steps_per_second": 1000.0,
        "mean_return": "" if mean_return is None else mean_return,
        "pi0_eval_return": pi0,
        "loss": 1.0 / (1 + step),
        "kl": 0.5,
        "entropy": 1.3,
        "return_task_0": mean_return,
        "return_task_1": mean_return,
        "kl_task_0": 0.4,
        "kl_task_1": 0.6,
        "note": "ok",
    }


def _write_metrics(path, rows, append=False):
    with open(path, "a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if not append:
            writer.writeheader()
        writer.writerows(rows)


def _make_run(root, name, rows, variant="kl_1col", optimal=10.0, summary=True):
    run_dir = root / name
    run_dir.mkdir()
    _write_metrics(run_dir / "metrics.csv", rows)
    (run_dir / "config.yaml").write_text(f"variant: {variant}\nseeds: [0, 1, 2]\n")
    if summary:
        summary_json = {
            "variant": variant,
            "seeds": sorted({r["seed"] for r in rows}),
            "final_mean_return": 1.0,
            "optimal_mean_return": optimal,
            "env_steps_per_task": max(r["env_steps_per_task"] for r in rows),
            "wall_seconds": 1.0,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary_json))
    return run_dir


# One row per (log step, seed), in the order `distral train` logs them.
THREE_SEEDS = {100: [1.0, 2.0, 4.0], 200: [3.0, 5.0, 10.0]}
THREE_SEED_ROWS = [_row(s, x, v[s]) for x, v in THREE_SEEDS.items() for s in range(3)]


def test_learning_curve_three_seeds_is_the_ci_of_the_seeds_matrix(tmp_path):
    # The band is distral.stats' CI (tested against a plain bootstrap in test_stats.py) of
    # the [seeds, points] matrix the rows hold: one resample of the seeds per point.
    run = _make_run(tmp_path, "run", THREE_SEED_ROWS)
    x, mean, low, high, n_seeds = learning_curve(read_metrics(run))
    assert n_seeds == 3
    np.testing.assert_array_equal(x, [100.0, 200.0])
    want = stats.mean_ci(np.array(list(THREE_SEEDS.values())).T)
    np.testing.assert_array_equal(np.stack([mean, low, high]), np.stack(want))
    np.testing.assert_allclose(mean, [7 / 3, 6.0])
    assert np.all(low < mean) and np.all(mean < high)


def test_learning_curve_one_seed_band_is_the_mean(tmp_path):
    run = _make_run(tmp_path, "run", [_row(0, x, float(x)) for x in (100, 200, 300)])
    _, mean, low, high, n_seeds = learning_curve(read_metrics(run))
    assert n_seeds == 1
    np.testing.assert_array_equal(mean, [100.0, 200.0, 300.0])
    np.testing.assert_array_equal(low, mean)
    np.testing.assert_array_equal(high, mean)


def test_learning_curve_ignores_nans_per_point(tmp_path):
    rows = [
        # Step 100: no episode has finished for any seed yet -> the point is left out.
        *(_row(s, 100, None) for s in range(3)),
        # Step 200: seed 2 has no return yet -> the CI is over seeds 0 and 1.
        _row(0, 200, 2.0),
        _row(1, 200, 4.0),
        _row(2, 200, None),
        *(_row(s, 300, v) for s, v in enumerate([1.0, 2.0, 4.0])),
    ]
    metrics = read_metrics(_make_run(tmp_path, "run", rows))
    assert np.isnan(metrics["mean_return"][:3]).all()
    x, mean, low, high, n_seeds = learning_curve(metrics)
    assert n_seeds == 3
    np.testing.assert_array_equal(x, [200.0, 300.0])
    # Two values: resampled means 2, 3, 4 with probability 1/4, 1/2, 1/4 -> CI [2, 4].
    assert (mean[0], low[0], high[0]) == (3.0, 2.0, 4.0)
    want = stats.mean_ci(np.array([1.0, 2.0, 4.0]))
    assert (mean[1], low[1], high[1]) == tuple(float(v) for v in want)
    assert np.all(low <= mean) and np.all(mean <= high)


def test_resumed_run_appended_rows_are_read_in_order(tmp_path):
    run = _make_run(tmp_path, "run", [_row(s, x, x / 100 + s) for x in (100, 200) for s in (0, 1)])
    # The resumed run appends to the same file, with no second header.
    resumed = [_row(s, x, x / 100 + s) for x in (300, 400) for s in (0, 1)]
    _write_metrics(run / "metrics.csv", resumed, append=True)
    metrics = read_metrics(run)
    np.testing.assert_array_equal(
        metrics["env_steps_per_task"], [100, 100, 200, 200, 300, 300, 400, 400]
    )
    np.testing.assert_array_equal(metrics["seed"], [0, 1] * 4)
    assert np.isnan(metrics["note"]).all()  # non-numeric cells become NaN
    x, mean, _, _, n_seeds = learning_curve(metrics)
    np.testing.assert_array_equal(x, [100, 200, 300, 400])
    np.testing.assert_allclose(mean, [1.5, 2.5, 3.5, 4.5])
    assert n_seeds == 2


def test_resumed_run_relogging_a_step_keeps_the_later_row(tmp_path):
    run = _make_run(tmp_path, "run", [_row(0, 100, 1.0), _row(0, 200, 2.0)])
    _write_metrics(run / "metrics.csv", [_row(0, 200, 7.0), _row(0, 300, 3.0)], append=True)
    x, mean, _, _, _ = learning_curve(read_metrics(run))
    np.testing.assert_array_equal(x, [100, 200, 300])
    np.testing.assert_array_equal(mean, [1.0, 7.0, 3.0])


def test_a_row_being_written_is_dropped(tmp_path):
    run = _make_run(tmp_path, "run", [_row(0, 100, 1.0)])
    with open(run / "metrics.csv", "a") as f:
        f.write("0,20,200,0.2,1000.0,9")  # no newline yet: the writer is mid-row
    metrics = read_metrics(run)
    np.testing.assert_array_equal(metrics["env_steps_per_task"], [100])


def test_run_label_sources(tmp_path):
    with_summary = _make_run(tmp_path, "a", [_row(0, 100, 1.0)], variant="kl_2col")
    interrupted = _make_run(tmp_path, "b", [_row(0, 100, 1.0)], variant="a3c", summary=False)
    bare = tmp_path / "c"
    bare.mkdir()
    assert plotting.run_label(with_summary) == "kl_2col"
    assert plotting.run_label(interrupted) == "a3c"  # from config.yaml
    assert plotting.run_label(bare) == "c"  # the directory name
    # Another family's runs are named by their algorithm: their `variant` is the unused
    # default (an Ape-X run's summary says kl_ent_2col).
    apex = _make_run(tmp_path, "d", [_row(0, 100, 1.0)], variant="kl_ent_2col")
    summary = json.loads((apex / "summary.json").read_text())
    (apex / "summary.json").write_text(json.dumps({**summary, "algorithm": "apex"}))
    assert plotting.run_label(apex) == "apex"
    student = _make_run(tmp_path, "e", [_row(0, 100, 1.0)], summary=False)
    (student / "config.yaml").write_text("algorithm: apex_distill\nvariant: kl_ent_2col\n")
    assert plotting.run_label(student) == "apex_distill"
    distral = _make_run(tmp_path, "f", [_row(0, 100, 1.0)], variant="a3c", summary=False)
    (distral / "config.yaml").write_text("algorithm: distral\nvariant: a3c\n")
    assert plotting.run_label(distral) == "a3c"


def test_run_labels_dedupe_identical_variants(tmp_path):
    rows = [_row(0, 100, 1.0)]
    a = _make_run(tmp_path, "beta1", rows, variant="kl_1col")
    b = _make_run(tmp_path, "beta10", rows, variant="kl_1col")
    c = _make_run(tmp_path, "base", rows, variant="a3c")
    assert plotting.run_labels([a, b, c]) == ["kl_1col (beta1)", "kl_1col (beta10)", "a3c"]
    assert plotting.run_labels([a, c], labels=["x", "y"]) == ["x", "y"]
    assert plotting.run_labels([a, b], labels=["x", "x"]) == ["x (beta1)", "x (beta10)"]
    with pytest.raises(PlotError, match="1 labels given for 2"):
        plotting.run_labels([a, b], labels=["x"])


@pytest.fixture
def saved_figures(monkeypatch):
    """Records each figure as it is saved, so a test can look at what was drawn."""
    figures = []
    save = plotting.save_figure

    def recording_save(fig, out):
        figures.append(fig)
        return save(fig, out)

    monkeypatch.setattr(plotting, "save_figure", recording_save)
    return figures


def test_plot_runs_writes_a_png_with_one_curve_per_run(tmp_path, saved_figures):
    a = _make_run(tmp_path, "a", THREE_SEED_ROWS, variant="kl_1col", optimal=12.5)
    b = _make_run(tmp_path, "b", THREE_SEED_ROWS, variant="a3c", summary=False)
    out = plot_runs([b, a], tmp_path / "plots" / "cmp.png", title="two runs")
    assert out == tmp_path / "plots" / "cmp.png"
    assert out.stat().st_size > 0
    assert matplotlib.image.imread(out).ndim == 3
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temp file left
    (ax,) = saved_figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a3c", "kl_1col", "optimal"]
    # Optimal from the first summary that has one (b has none), dashed and horizontal.
    optimal = ax.get_lines()[-1]
    assert optimal.get_linestyle() == "--"
    np.testing.assert_array_equal(optimal.get_ydata(), [12.5, 12.5])
    assert ax.get_xlabel() == "env steps per task"
    assert ax.get_ylabel() == "mean return over tasks"


def test_plot_runs_missing_column_names_the_file(tmp_path):
    run = _make_run(tmp_path, "run", THREE_SEED_ROWS)
    with pytest.raises(PlotError, match=r"no column 'nope' in .*metrics\.csv"):
        plot_runs([run], tmp_path / "out.png", column="nope")


def test_plot_run_has_four_panels_when_pi0_is_all_nan(tmp_path, saved_figures):
    run = _make_run(tmp_path, "run", THREE_SEED_ROWS, summary=False)
    out = plot_run(run)
    assert out == run / "curves.png"
    assert matplotlib.image.imread(out).ndim == 3
    axes = saved_figures[0].axes
    assert [ax.get_title() for ax in axes] == [
        "training return",
        "pi_0 evaluation return",
        "KL(pi_i || pi_0)",
        "entropy",
    ]
    assert [t.get_text() for t in axes[1].texts] == ["no data"]
    assert all(len(ax.texts) == 0 for ax in (axes[0], axes[2], axes[3]))
    assert saved_figures[0].get_suptitle() == "kl_1col (3 seeds)"  # label from config.yaml


def test_plot_per_task_has_a_panel_per_game_with_its_curve_and_reference(tmp_path, saved_figures):
    rows = [dict(r, return_task_1=2 * float(r["return_task_0"])) for r in THREE_SEED_ROWS]
    run = _make_run(tmp_path, "run", rows, variant="kl_ent_2col")
    (run / "config.yaml").write_text(
        "variant: kl_ent_2col\nenv: {name: minatar, games: [breakout, freeway]}\n"
    )
    out = plotting.plot_per_task(
        [run], tmp_path / "games.png", references={"freeway": 0.17}, reference_label="random"
    )
    assert matplotlib.image.imread(out).ndim == 3
    axes = saved_figures[0].axes
    assert [ax.get_title() for ax in axes] == ["breakout", "freeway"]
    for ax, scale in zip(axes, (1.0, 2.0), strict=True):  # task 1's curve is twice task 0's
        mean = ax.get_lines()[0].get_ydata()
        np.testing.assert_allclose(mean, [scale * 7 / 3, scale * 6.0])  # hand means, 3 seeds
    (reference,) = axes[1].get_lines()[1:]  # only the game with a reference has the line
    np.testing.assert_array_equal(reference.get_ydata(), [0.17, 0.17])
    assert len(axes[0].get_lines()) == 1
    # Without games in config.yaml the panels are "task i"; a family with no columns fails.
    assert plotting.task_names(tmp_path / "nowhere", 2) == ["task 0", "task 1"]
    with pytest.raises(PlotError, match=r"no column eval_return_task_0 in .*metrics\.csv"):
        plotting.plot_per_task([run], tmp_path / "x.png", column="eval_return")


def test_missing_or_empty_runs_raise_one_line_errors(tmp_path):
    missing = tmp_path / "no_such_run"
    no_csv = tmp_path / "no_csv"
    no_csv.mkdir()
    header_only = tmp_path / "header_only"
    header_only.mkdir()
    _write_metrics(header_only / "metrics.csv", [])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.csv").write_text("")
    for run_dir in (missing, no_csv, header_only, empty):
        with pytest.raises(PlotError) as info:
            read_metrics(run_dir)
        assert str(run_dir) in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(PlotError, match="no_such_run"):
        plot_run(missing)


def test_import_is_light():
    code = (
        "import sys, distral.plotting; "
        "heavy = {'jax', 'matplotlib.pyplot', 'scipy.stats'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
