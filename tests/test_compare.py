"""`distral compare`: grid parsing, the statistics against plain references, real runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import small_runs
import yaml

from distral import compare
from distral.compare import CompareError, parse_grid
from distral.config import load_config
from distral.core.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]

# The real trainer, tiny: tests/small_runs.py's 3 tasks, 3 log rows of 40 env steps per
# task. At 2 seeds kl_ent_2col runs the program of its shared run: the suite compiles it
# once; a3c_2col and kl_ent_1col at the default beta serve both end-to-end tests here.
TINY = {**small_runs.TINY, "env_steps_per_task": 120, "checkpoint_every": 1, "keep_checkpoints": 1}


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1")
    return subprocess.run(
        [sys.executable, "-m", "distral.cli", "compare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


# GRID AND PLAN


def test_parse_grid():
    assert parse_grid("beta=3,10,lr=1e-3,3e-3") == {
        "beta": [3, 10],
        "learning_rate": [0.001, 0.003],
    }
    assert parse_grid("env.num_envs_per_task=8") == {"env.num_envs_per_task": [8]}
    for bad in ("3,10", "beta=", "beta=1,beta=2", "=1"):
        with pytest.raises(CompareError):
            parse_grid(bad)
    # a label keeps a list's brackets; a run directory's name may not (orbax globs it)
    setting = {"hidden_sizes": [64, 32], "beta": 3}
    assert compare.setting_tag(setting) == "hidden_sizes=[64, 32],beta=3"
    assert compare.setting_dir(setting) == "hidden_sizes=64,32,beta=3"


def test_default_grid_gives_every_variant_nine_settings(tiny_config, tmp_path):
    grid = compare.default_grid(tiny_config, ["learning_rate=1e-3"])
    assert grid["learning_rate"] == [3.33e-4, 1e-3, 3e-3]
    specs = compare.plan(tiny_config, [], list(VARIANTS), 2, grid, "train", tmp_path / "o")
    by_variant: dict[str, list] = {}
    for s in specs:
        by_variant.setdefault(s.variant, []).append(s)
    assert {k: len(v) for k, v in by_variant.items()} == {k: 9 for k in VARIANTS}
    a3c = {(s.config.entropy_cost, s.config.learning_rate) for s in by_variant["a3c"]}
    assert a3c == {(e, lr) for e in (0.003, 0.01, 0.03) for lr in (3.33e-4, 1e-3, 3e-3)}
    kl = {(s.config.beta, s.config.learning_rate) for s in by_variant["kl_2col"]}
    assert kl == {(b, lr) for b in (10.0, 30.0, 100.0) for lr in (3.33e-4, 1e-3, 3e-3)}
    assert all(s.config.seeds == (0, 1) for s in specs)
    assert specs[0].run_dirs == (
        tmp_path / "o" / "runs" / "a3c" / "learning_rate=0.000333,entropy_cost=0.003",
    )
    launch = compare.plan(tiny_config, [], ["a3c"], 3, None, "launch", tmp_path / "o")
    assert [d.name for d in launch[0].run_dirs] == ["seed0", "seed1", "seed2"]


def test_a_set_for_the_compared_variants_only(tiny_config, tmp_path):
    """`--set entropy_cost=...` with A3C rows only is valid, whatever variant the config
    file names; with a Distral row among them it is that row's one-line error."""
    assert load_config(tiny_config).variant == "kl_ent_2col"  # the default
    specs = compare.plan(
        tiny_config, ["entropy_cost=0.03"], ["gated_task", "a3c"], 2, None, "train", tmp_path
    )
    assert [(s.variant, s.config.entropy_cost) for s in specs] == [
        ("gated_task", 0.03),
        ("a3c", 0.03),
    ]
    with pytest.raises(ValueError, match="'kl_ent_2col' has no entropy bonus"):
        compare.plan(
            tiny_config, ["entropy_cost=0.03"], ["a3c", "kl_ent_2col"], 2, None, "train", tmp_path
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(variants=["a3c", "nope"]), "unknown variant 'nope'"),
        (dict(seeds=0), "--seeds 0 must be >= 1"),
        (dict(mode="cluster"), "--mode 'cluster'; valid: train, launch"),
        (dict(grid={"learning_rate": [-1.0]}), "learning_rate"),
        (dict(variants=["a3c", "a3c"]), "names a variant twice"),
    ],
)
def test_plan_rejects_bad_input(tiny_config, tmp_path, args, message):
    kw = dict(variants=["a3c"], seeds=2, grid=None, mode="train") | args
    with pytest.raises(ValueError, match=message):
        compare.plan(tiny_config, [], kw["variants"], kw["seeds"], kw["grid"], kw["mode"], tmp_path)


# STATISTICS


def _iqm(x: np.ndarray) -> float:
    """Plain IQM: the mean of the middle 50% of the sorted values (n divisible by 4)."""
    v = np.sort(x.ravel())
    n = v.size
    return float(v[n // 4 : n - n // 4].mean())


def test_iqm_and_its_stratified_bootstrap_ci_match_a_plain_reference():
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(0, 1, (8, 4)), "b": rng.normal(1, 1, (8, 4)) ** 2}
    out = compare.iqm_with_ci(scores, reps=4000, seed=1)
    for name, s in scores.items():
        point, low, high = out[name]
        assert point == pytest.approx(_iqm(s), abs=1e-12)
        # plain stratified bootstrap: resample the runs of each task independently
        ref = []
        for _ in range(4000):
            cols = [s[rng.integers(0, 8, 8), t] for t in range(4)]
            ref.append(_iqm(np.stack(cols, axis=1)))
        ref_low, ref_high = np.percentile(ref, [2.5, 97.5])
        width = ref_high - ref_low
        assert low == pytest.approx(ref_low, abs=0.08 * width)
        assert high == pytest.approx(ref_high, abs=0.08 * width)


def test_probability_of_improvement_hand_computed():
    x = np.array([[1.0, 5.0], [2.0, 5.0]])  # runs x tasks
    y = np.array([[0.0, 5.0], [3.0, 5.0]])
    poi = compare.probability_of_improvement({"x": x, "y": y})
    # task 0: pairs (1>0, 1<3, 2>0, 2<3) -> 0.5; task 1: all ties -> 0.5; mean 0.5
    assert poi["x"]["y"] == pytest.approx(0.5)
    z = np.array([[4.0, 6.0], [4.0, 6.0]])
    poi = compare.probability_of_improvement({"x": x, "z": z})
    assert poi["z"]["x"] == pytest.approx(1.0)
    assert poi["x"]["z"] == pytest.approx(0.0)


def test_auc_and_steps_to_threshold_hand_computed():
    x = np.array([0.0, 10.0, 20.0, 40.0])
    y = np.array([-4.0, -2.0, 0.0, 1.0])
    # trapezoids: 10*(-3) + 10*(-1) + 20*0.5 = -30 -> / 40
    assert compare.auc(x, y) == pytest.approx(-30 / 40)
    assert compare.steps_to_threshold(x, y, -0.5) == 20.0
    assert np.isnan(compare.steps_to_threshold(x, y, 2.0))


def _write_run(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    columns = list(rows[0])
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def test_aggregate_on_known_runs_picks_the_best_setting_by_auc(tmp_path):
    def rows(seed, curve, tasks):
        return [
            {
                "seed": seed,
                "env_steps_per_task": 100 * (k + 1),
                "eval_return": v,
                "optimal_return": 1.0,
                "eval_return_task_0": tasks[0] if k == len(curve) - 1 else 0,
                "eval_return_task_1": tasks[1] if k == len(curve) - 1 else 0,
            }
            for k, v in enumerate(curve)
        ]

    good = tmp_path / "good"
    _write_run(good, rows(0, [-1.0, 0.5, 0.9], [0.8, 1.0]) + rows(1, [-1.0, 0.0, 0.7], [0.6, 0.8]))
    bad = tmp_path / "bad"
    _write_run(bad, rows(0, [-3.0, -2.0, 1.0], [1.0, 1.0]) + rows(1, [-3.0, -2.0, 1.0], [1.0, 1.0]))
    other = tmp_path / "other"
    _write_run(
        other, rows(0, [-2.0, -1.0, 0.0], [0.0, 0.0]) + rows(1, [-2.0, -1.0, 0.0], [0.0, 0.0])
    )
    spec = compare.RunSpec
    specs = [
        spec("kl_2col", {"beta": 1}, None, (good,)),
        spec("kl_2col", {"beta": 2}, None, (bad,)),
        spec("a3c", {}, None, (other,)),
    ]
    agg = compare.aggregate(specs, threshold=None)
    assert agg.optimal == 1.0 and agg.threshold == pytest.approx(0.7)
    kl, a3c = agg.rows
    assert kl["setting"] == "beta=1"  # AUC 0.075 beats bad's -1.0
    assert kl["final_return_mean"] == pytest.approx(0.8)
    # seed 0: (-1+0.5)/2*100 + (0.5+0.9)/2*100 = 45 over 200 -> 0.225; seed 1: -15 -> -0.075
    assert kl["auc_mean"] == pytest.approx((0.225 - 0.075) / 2)
    assert kl["steps_to_threshold"] == pytest.approx(300.0)  # both reach 0.7 at 300
    assert kl["seeds_reaching_threshold"] == 2
    assert a3c["seeds_reaching_threshold"] == 0 and np.isnan(a3c["steps_to_threshold"])
    assert kl["iqm"] == pytest.approx(_iqm(np.array([[0.8, 1.0], [0.6, 0.8]])))
    assert agg.poi["kl_2col"]["a3c"] == pytest.approx(1.0)
    assert len(agg.grid_rows) == 3


# END TO END (the real trainer and launcher)


def _check_outputs(out: Path, variants: list[str], seeds: int) -> list[dict]:
    assert {"curves.png", "table.md", "table.csv", "summary.json"} <= {
        p.name for p in out.iterdir()
    }
    assert matplotlib.image.imread(out / "curves.png").ndim == 3
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == variants
    for r in table:
        assert int(r["seeds"]) == seeds
        assert float(r["final_return_ci_low"]) <= float(r["final_return_mean"]) + 1e-9
        assert float(r["final_return_mean"]) <= float(r["final_return_ci_high"]) + 1e-9
        assert float(r["iqm_ci_low"]) <= float(r["iqm"]) + 1e-9 <= float(r["iqm_ci_high"]) + 2e-9
        assert -100.0 <= float(r["final_return_mean"]) <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == set(variants)
    return table


def test_cli_compares_variants_and_skips_finished_runs(distral, tiny_config, tmp_path):
    """Three variants, one of each kind of network with h (a3c_2col's h + f_i without a
    KL, Distral's 1col and 2col; a3c's one column trains in tests/small_runs.py's run):
    each variant is its own compiled program, ~10 s, and the seven's maths is tested
    in-process (tests/test_losses.py). The default, all seven, is planned in
    test_default_grid_gives_every_variant_nine_settings."""
    out = tmp_path / "cmp"
    names = ["a3c_2col", "kl_ent_1col", "kl_ent_2col"]
    variants = ("--variants", ",".join(names))
    p = distral("compare", tiny_config, *variants, "--seeds", "2", "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    _check_outputs(out, names, 2)
    assert p.stdout.count(": running") == 3
    for name in names:
        steps = [
            float(r["env_steps_per_task"])
            for r in csv.DictReader(open(out / "runs" / name / "default" / "metrics.csv"))
            if r["seed"] == "0"
        ]
        assert steps == sorted(steps) and steps[-1] == 120
    (out / "runs" / "a3c_2col" / "default" / "summary.json").unlink()
    p = distral("compare", tiny_config, *variants, "--seeds", "2", "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("done, skipped") == 2 and "a3c_2col default: resuming" in p.stdout
    assert (out / "runs" / "a3c_2col" / "default" / "summary.json").is_file()
    # another config in the same directory is refused before anything runs
    p = distral("compare", tiny_config, "--seeds", "2", "--out", out, "--set", "discount=0.9")
    assert p.returncode == 2
    assert "was run with another config" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_cli_grid_writes_the_robustness_outputs(distral, tiny_config, tmp_path):
    out = tmp_path / "grid"
    p = distral(
        "compare",
        tiny_config,
        "--variants",
        "a3c_2col,kl_ent_1col",
        "--seeds",
        "2",
        "--grid",
        "beta=10,30,lr=1e-3",
        "--out",
        out,
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    _check_outputs(out, ["a3c_2col", "kl_ent_1col"], 2)
    with open(out / "grid.csv") as f:
        grid = list(csv.DictReader(f))
    # a3c_2col (an A3C row) has no beta: its one learning rate; kl_ent_1col: 2 betas
    assert [r["variant"] for r in grid] == ["a3c_2col", "kl_ent_1col", "kl_ent_1col"]
    assert [r["setting"] for r in grid][1:] == [
        "beta=10,learning_rate=0.001",
        "beta=30,learning_rate=0.001",
    ]
    assert matplotlib.image.imread(out / "robustness.png").ndim == 3
    table = list(csv.DictReader(open(out / "table.csv")))
    best = max(
        (r for r in grid if r["variant"] == "kl_ent_1col"), key=lambda r: float(r["auc_mean"])
    )
    assert table[1]["setting"] == best["setting"]


def test_cli_launch_mode_runs_one_launch_per_seed(tmp_path):
    out = tmp_path / "launch"
    preset = ROOT / "experiments" / "two_room_distributed.yaml"
    sets = [
        "env.num_tasks=1",  # one actor process per launch
        "unroll_length=10",
        "distributed.envs_per_actor=8",
        "distributed.batch_size=2",
        "distributed.queue_size=4",
        "log_every=5",
        "distributed.max_learner_steps=20",
        "eval_episodes_per_task=4",
    ]
    args = [a for s in sets for a in ("--set", s)]
    p = cli(
        str(preset),
        "--variants",
        "kl_ent_2col",
        "--seeds",
        "2",
        "--mode",
        "launch",
        "--out",
        str(out),
        *args,
    )
    assert p.returncode == 0, p.stderr
    _check_outputs(out, ["kl_ent_2col"], 2)
    for seed in (0, 1):
        summary = json.loads(
            (out / "runs" / "kl_ent_2col" / "default" / f"seed{seed}" / "summary.json").read_text()
        )
        assert summary["seeds"] == [seed] and summary["learner_steps"] == 20


def test_cli_bad_input_is_one_line_and_runs_nothing(distral, tiny_config, tmp_path):
    out = tmp_path / "x"
    for args, message in [
        (["--variants", "a3c,bogus"], "unknown variant 'bogus'"),
        (["--grid", "beta"], "--grid 'beta' must look like"),
        (["--mode", "ray"], "--mode 'ray'"),
        (["--set", "gamma=1"], "unknown config key 'gamma'"),
    ]:
        p = distral("compare", tiny_config, "--out", out, *args)
        assert p.returncode == 2, (args, p.stderr)
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not out.exists()
    p = distral("compare", tmp_path / "missing.yaml", "--out", out)
    assert p.returncode == 2 and "does not exist" in p.stderr
