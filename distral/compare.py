"""`distral compare`: the seven variants (or some), N seeds each, aggregated honestly.

Runs every (variant, grid setting) through `distral train` (seeds vmapped in one program) or
`distral launch` (one launch per seed), into DIR/runs/VARIANT/SETTING[/seedK]. A re-run of
the same command skips finished runs and resumes stopped ones, so a sweep survives a crash.
Then it aggregates the pi_i evaluation return (`eval_return`, mean over tasks, of each log
row) per variant:

- final return: the last row's value per seed; mean and its 95% CI over seeds;
- AUC: the mean of the curve over training (trapezoid area / env-step range), per seed;
- env steps to reach the threshold (default: optimum - 0.3), mean over the seeds that reach
  it, and how many do;
- IQM of the final per-task returns (runs x tasks) with its 95% CI, and the probability
  of improvement between variants: rliable (Agarwal et al., 2021, arXiv:2108.13264).

Every CI, in the tables and the figures, is rliable's stratified bootstrap over seeds
(`distral.stats`: 95%, `CI_REPS` resamples, seeded).

With `--grid` every variant runs on each setting of the grid (the paper's robustness
protocol, Teh et al., 2017, arXiv:1707.04175, Section 4.2: 3 values of beta x 3 learning
rates; the A3C rows, which have no beta, take the entropy-cost axis instead); the main table
shows each variant's best setting by AUC, and robustness.png / grid.csv the spread.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from distral.config import ConfigError, TrainConfig, load_config, load_run_config, parse_sets
from distral.core.variants import PAPER_VARIANTS, VARIANTS, get_variant
from distral.files import atomic_write, json_safe
from distral.plotting import PlotError, plot_seed_curves, pyplot, read_metrics, save_figure
from distral.stats import CI_REPS, CI_SEED, interval_estimates, mean_ci

#: The default robustness grid's fixed axes. beta: the Distral rows' default is 30
#: (variants.py); entropy cost around A3C's 0.01 (Mnih et al. 2016). The learning-rate axis
#: is the config's own rate x 1/3, 1, 3 (`default_grid`), so the grid is centred on whatever
#: preset it is given (the two-room preset's 3e-2 and a game preset's 6e-4 alike).
DEFAULT_GRID = "beta=10,30,100,entropy_cost=0.003,0.01,0.03"
LEARNING_RATE_FACTORS = (1 / 3, 1.0, 3.0)
_ALIASES = {"lr": "learning_rate"}
THRESHOLD_MARGIN = 0.3  # default threshold: optimum - 0.3 (issue 3's learning bar)


class CompareError(ConfigError):
    """Bad compare input; the message is one line."""


# PLAN


def parse_grid(text: str) -> dict[str, list[Any]]:
    """'beta=3,10,lr=1e-3,3e-3' -> {'beta': [3, 10], 'learning_rate': [0.001, 0.003]}."""
    grid: dict[str, list[Any]] = {}
    key = None
    for token in (t.strip() for t in text.split(",")):
        if "=" in token:
            key, _, token = token.partition("=")
            key = _ALIASES.get(key.strip(), key.strip())
            if not key or key in grid:
                raise CompareError(f"--grid {text!r}: key {key!r} is empty or given twice")
            grid[key] = []
        if key is None or not token:
            raise CompareError(f"--grid {text!r} must look like beta=3,10,30,lr=3e-4,1e-3")
        grid[key].append(_scalar(token))
    return grid


def default_grid(config_path: str | Path, sets: Sequence[str]) -> dict[str, list[Any]]:
    """`DEFAULT_GRID` plus learning_rate = the config's rate x `LEARNING_RATE_FACTORS`."""
    base = load_config(config_path, sets).learning_rate
    rates = [float(f"{base * f:.3g}") for f in LEARNING_RATE_FACTORS]
    grid = parse_grid(DEFAULT_GRID)
    return {"beta": grid["beta"], "learning_rate": rates, "entropy_cost": grid["entropy_cost"]}


def _scalar(token: str) -> Any:
    """A YAML scalar; '1e-3', which YAML 1.1 leaves a string, becomes a float."""
    value = parse_sets([f"v={token}"])["v"]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _applies(key: str, variant: str) -> bool:
    v = VARIANTS[variant]
    if key == "beta":
        return v.beta_overridable
    if key == "entropy_cost":
        return v.entropy_cost > 0  # the A3C rows; Distral's entropy is alpha's business
    if key == "alpha":
        return v.alpha_overridable
    return True


def setting_tag(setting: dict[str, Any]) -> str:
    """A directory-safe name for a grid setting ('default' for none)."""
    if not setting:
        return "default"
    return ",".join(f"{k}={v}" for k, v in setting.items())


def setting_dir(setting: dict[str, Any]) -> str:
    """`setting_tag` as a directory name: without spaces and glob characters, which a run's
    path must not hold (`rundir.check_globless`): hidden_sizes=[64, 32] -> hidden_sizes=64,32."""
    from distral.rundir import GLOB_CHARACTERS

    return setting_tag(setting).translate(str.maketrans("", "", GLOB_CHARACTERS + " "))


class RunSpec(NamedTuple):
    variant: str
    setting: dict[str, Any]  # the grid values of this run
    config: TrainConfig
    run_dirs: tuple[Path, ...]  # one (train: all seeds vmapped) or one per seed (launch)


def plan(
    config_path: str | Path,
    sets: Sequence[str],
    variants: Sequence[str],
    seeds: int,
    grid: dict[str, list[Any]] | None,
    mode: str,
    out: Path,
) -> list[RunSpec]:
    """Every run's resolved config, checked before anything runs (errors are one line)."""
    if mode not in ("train", "launch"):
        raise CompareError(f"--mode {mode!r}; valid: train, launch")
    if seeds < 1:
        raise CompareError(f"--seeds {seeds} must be >= 1")
    # The family, read with the first compared variant: a --set that only the compared
    # variants take (entropy_cost for the A3C rows) is valid whatever the file's variant.
    first = {"variant": variants[0]} if variants and variants[0] in VARIANTS else None
    if load_config(config_path, sets, first).algorithm == "distill":
        if list(variants) not in (list(PAPER_VARIANTS), list(VARIANTS)):
            raise CompareError(
                "--variants names Distral variants; a distill config compares the settings "
                "of its --grid (e.g. --grid distill.loss=nll,mse,kl)"
            )
        return _plan_students(config_path, sets, seeds, grid or {}, mode, out)
    for name in variants:
        get_variant(name)  # VariantError names the bad one
    if len(set(variants)) != len(variants):
        raise CompareError(f"--variants {','.join(variants)} names a variant twice")
    specs = []
    for name in variants:
        axes = {k: v for k, v in (grid or {}).items() if _applies(k, name)}
        for values in itertools.product(*axes.values()):
            setting = dict(zip(axes, values, strict=True))
            overrides: dict[str, Any] = {"variant": name, "seeds": list(range(seeds))}
            config = load_config(config_path, [*sets, *_as_sets(setting)], overrides)
            base = out / "runs" / name / setting_dir(setting)
            if mode == "train":
                dirs: tuple[Path, ...] = (base,)
            else:
                dirs = tuple(base / f"seed{s}" for s in range(seeds))
            specs.append(RunSpec(name, setting, config, dirs))
    if mode == "train":
        for spec in specs:
            if spec.config.env.name != "two_room":
                raise CompareError(
                    f"--mode train needs a pure-JAX environment; {spec.config.env.name!r} "
                    "runs with --mode launch"
                )
    return specs


def _plan_students(
    config_path: str | Path,
    sets: Sequence[str],
    seeds: int,
    grid: dict[str, list[Any]],
    mode: str,
    out: Path,
) -> list[RunSpec]:
    """A distillation config: each grid setting is a method of its own (a table row named
    by its setting), run by `distral distill`'s runner (two_room, --mode train) or through
    `distral launch` (the games, --mode launch), into OUT/runs/distill/SETTING[/seedK].
    Teacher paths become absolute, as `distral distill` makes them."""
    specs = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values, strict=True))
        config = load_config(
            config_path, [*sets, *_as_sets(setting)], {"seeds": list(range(seeds))}
        )
        teachers = tuple(str(Path(t).absolute()) for t in config.distill.teachers)
        config = dataclasses.replace(
            config, distill=dataclasses.replace(config.distill, teachers=teachers)
        )
        if (mode == "train") != (config.env.name == "two_room"):
            raise CompareError(
                f"a distill config on {config.env.name!r} compares with --mode "
                f"{'train' if config.env.name == 'two_room' else 'launch'}"
            )
        base = out / "runs" / "distill" / setting_dir(setting)
        dirs = (base,) if mode == "train" else tuple(base / f"seed{s}" for s in range(seeds))
        specs.append(RunSpec(setting_tag(setting), setting, config, dirs))
    return specs


def _as_sets(setting: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in setting.items()]


def _seed_config(config: TrainConfig, seed: int) -> TrainConfig:
    return dataclasses.replace(config, seeds=(seed,))


def _state(run_dir: Path, config: TrainConfig) -> str:
    """'done', 'resume' or 'new'; a run dir made by another config is an error."""
    from distral.rundir import finished, inline_layout

    if finished(run_dir):
        state = "done"
    elif (run_dir / "config.yaml").is_file():
        state = "resume"
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise CompareError(f"{run_dir} holds files but no config.yaml: move it away")
    else:
        return "new"
    if load_run_config(run_dir) != inline_layout(config):
        raise CompareError(f"{run_dir} was run with another config: use another --out or remove it")
    return state


def check_out(specs: Sequence[RunSpec], mode: str) -> dict[Path, str]:
    """Each run directory's state, checked for every run before the first starts."""
    states = {}
    for spec in specs:
        for i, d in enumerate(spec.run_dirs):
            config = spec.config if mode == "train" else _seed_config(spec.config, i)
            states[d] = _state(d, config)
    return states


# EXECUTE


def execute(
    specs: Sequence[RunSpec], states: dict[Path, str], mode: str, *, progress: bool = True
) -> None:
    """Runs what is not finished, in order; prints one line per run."""
    for spec in specs:
        for i, run_dir in enumerate(spec.run_dirs):
            state = states[run_dir]
            label = f"{spec.variant} {setting_tag(spec.setting)}"
            if mode == "launch":
                label += f" seed {i}"
            if state == "done":
                print(f"compare: {label}: done, skipped", flush=True)
                continue
            print(f"compare: {label}: {'resuming' if state == 'resume' else 'running'}", flush=True)
            start = time.perf_counter()
            if mode == "train":
                from distral import distill, train

                runner = distill if spec.config.algorithm == "distill" else train
                runner.run(spec.config, run_dir, resume=state == "resume", progress=progress)
            else:
                from distral.distributed.launch import launch

                launch(_seed_config(spec.config, i), run_dir, resume=state == "resume")
            print(f"compare: {label}: {time.perf_counter() - start:.0f} s", flush=True)


# AGGREGATE


class Curves(NamedTuple):
    """One (variant, setting)'s runs: curves on a shared x, one row per seed."""

    x: np.ndarray  # [K] env steps per task
    y: np.ndarray  # [seeds, K] eval_return (NaN where a seed has no row)
    final_tasks: np.ndarray  # [seeds, tasks] last row's per-task eval return
    optimal: float


def read_curves(run_dirs: Sequence[Path], column: str = "eval_return") -> Curves:
    """Per-seed curves of `column` from the metrics of one or more run directories."""
    per_seed: list[dict[float, float]] = []
    finals: list[np.ndarray] = []
    optimal = math.nan
    for d in run_dirs:
        m = read_metrics(d)
        if column not in m:
            raise PlotError(f"no column {column!r} in {d / 'metrics.csv'}")
        task_cols = sorted(
            (k for k in m if k.startswith(f"{column}_task_")),
            key=lambda k: int(k.rsplit("_", 1)[1]),
        )
        if "optimal_return" in m and np.any(np.isfinite(m["optimal_return"])):
            optimal = float(np.nanmean(m["optimal_return"]))
        for seed in np.unique(m["seed"][np.isfinite(m["seed"])]):
            rows = np.flatnonzero(m["seed"] == seed)
            curve: dict[float, float] = {}
            for r in rows:  # a resumed run may repeat a row: the later one wins
                curve[float(m["env_steps_per_task"][r])] = float(m[column][r])
            per_seed.append(curve)
            last = rows[np.argmax(m["env_steps_per_task"][rows])]
            finals.append(np.array([m[c][last] for c in task_cols] or [m[column][last]]))
    if not per_seed:
        raise PlotError(f"no rows in {', '.join(map(str, run_dirs))}")
    x = np.array(sorted(set().union(*per_seed)))
    y = np.array([[c.get(v, math.nan) for v in x] for c in per_seed])
    return Curves(x, y, np.stack(finals), optimal)


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under y(x) divided by the x range: the curve's mean over training."""
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return math.nan
    if x.size == 1 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def steps_to_threshold(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """First x where y >= threshold; NaN if never."""
    hits = np.flatnonzero(np.isfinite(y) & (y >= threshold))
    return float(x[hits[0]]) if hits.size else math.nan


def iqm_with_ci(
    scores: dict[str, np.ndarray], reps: int = CI_REPS, seed: int = CI_SEED
) -> dict[str, tuple[float, float, float]]:
    """rliable's IQM and its 95% CI (`stats.interval_estimates`) per method.

    `scores`: method -> final per-task returns [runs, tasks].
    """
    from rliable import metrics

    est = interval_estimates(
        scores, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps, seed=seed
    )
    return {k: (float(e.point[0]), float(e.low[0]), float(e.high[0])) for k, e in est.items()}


def probability_of_improvement(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """P(X > Y) for every ordered pair of methods (rliable; Mann-Whitney per task, averaged)."""
    from rliable import metrics

    return {
        a: {
            b: float(metrics.probability_of_improvement(scores[a], scores[b]))
            for b in scores
            if b != a
        }
        for a in scores
    }


def summarise_curves(curves: Curves, threshold: float) -> dict[str, Any]:
    finals = np.array(
        [row[np.isfinite(row)][-1] if np.any(np.isfinite(row)) else math.nan for row in curves.y]
    )
    aucs = np.array([auc(curves.x, row) for row in curves.y])
    steps = np.array([steps_to_threshold(curves.x, row, threshold) for row in curves.y])
    mean, low, high = (float(v) for v in mean_ci(finals))
    reached = np.isfinite(steps)
    return {
        "seeds": len(finals),
        "final_return_mean": mean,
        "final_return_ci_low": low,
        "final_return_ci_high": high,
        "final_return_per_seed": finals.tolist(),
        "auc_mean": float(aucs.mean()),
        "auc_per_seed": aucs.tolist(),
        "steps_to_threshold": float(steps[reached].mean()) if reached.any() else math.nan,
        "seeds_reaching_threshold": int(reached.sum()),
    }


class Aggregate(NamedTuple):
    rows: list[dict[str, Any]]  # table.csv: one per variant (its best setting by AUC)
    grid_rows: list[dict[str, Any]]  # grid.csv: one per (variant, setting)
    curves: dict[str, Curves]  # per variant, its best setting
    poi: dict[str, dict[str, float]]
    optimal: float
    threshold: float


def aggregate(specs: Sequence[RunSpec], threshold: float | None) -> Aggregate:
    """The tables of a finished comparison (reads only the run directories)."""
    by_setting = [(spec, read_curves(list(spec.run_dirs))) for spec in specs]
    optimals = [c.optimal for _, c in by_setting if math.isfinite(c.optimal)]
    optimal = float(np.mean(optimals)) if optimals else math.nan
    if threshold is None:
        threshold = optimal - THRESHOLD_MARGIN
    grid_rows = []
    best: dict[str, tuple[dict[str, Any], Curves]] = {}
    for spec, curves in by_setting:
        row = {"variant": spec.variant, "setting": setting_tag(spec.setting)}
        row.update(summarise_curves(curves, threshold))
        grid_rows.append(row)
        if spec.variant not in best or row["auc_mean"] > best[spec.variant][0]["auc_mean"]:
            best[spec.variant] = (row, curves)
    scores = {name: curves.final_tasks for name, (_, curves) in best.items()}
    iqm = iqm_with_ci(scores)
    rows = []
    for name, (row, _) in best.items():
        point, low, high = iqm[name]
        rows.append({**row, "iqm": point, "iqm_ci_low": low, "iqm_ci_high": high})
    poi = probability_of_improvement(scores) if len(scores) > 1 else {}
    best_curves = {name: c for name, (_, c) in best.items()}
    return Aggregate(rows, grid_rows, best_curves, poi, optimal, threshold)


# OUTPUTS

TABLE_COLUMNS = (
    "variant",
    "setting",
    "seeds",
    "final_return_mean",
    "final_return_ci_low",
    "final_return_ci_high",
    "auc_mean",
    "iqm",
    "iqm_ci_low",
    "iqm_ci_high",
    "steps_to_threshold",
    "seeds_reaching_threshold",
)
GRID_COLUMNS = (*TABLE_COLUMNS[:7], "steps_to_threshold", "seeds_reaching_threshold")


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of `rows` (dicts) in the order of `columns`; floats to 6 significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([f"{r[c]:.6g}" if isinstance(r[c], float) else r[c] for c in columns])
    return buf.getvalue()


def _num(x: float, fmt: str = ".3f") -> str:
    return "n/a" if not math.isfinite(x) else format(x, fmt)


def table_markdown(agg: Aggregate, grid: bool) -> str:
    lines = [
        "| variant | "
        + ("setting (best AUC) | " if grid else "")
        + "final return [95% CI] | AUC | IQM [95% CI] | env steps to threshold (seeds) |",
        "|---|" + ("---|" if grid else "") + "---|---|---|---|",
    ]
    for r in agg.rows:
        lines.append(
            f"| {r['variant']} | "
            + (f"{r['setting']} | " if grid else "")
            + f"{_num(r['final_return_mean'])} [{_num(r['final_return_ci_low'])}, "
            f"{_num(r['final_return_ci_high'])}] | {_num(r['auc_mean'])} | {_num(r['iqm'])} "
            f"[{_num(r['iqm_ci_low'])}, {_num(r['iqm_ci_high'])}] | "
            f"{_num(r['steps_to_threshold'], ',.0f')} "
            f"({r['seeds_reaching_threshold']}/{r['seeds']}) |"
        )
    lines += [
        "",
        f"Final return and AUC: pi_i evaluation return averaged over tasks; optimum "
        f"{_num(agg.optimal)}; threshold {_num(agg.threshold)}. 95% CIs: rliable's stratified "
        f"bootstrap over seeds ({CI_REPS:,} resamples) of the mean (final return) and of the "
        "IQM over seeds x tasks.",
    ]
    if agg.poi:
        names = list(agg.poi)
        lines += [
            "",
            "Probability of improvement P(row > column) on the final per-task returns:",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for a in names:
            cells = ["-" if a == b else f"{agg.poi[a][b]:.2f}" for b in names]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(agg: Aggregate, out: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        for name, c in agg.curves.items():
            plot_seed_curves(ax, c.x, c.y, label=name, band_alpha=0.2)
        if math.isfinite(agg.optimal):
            ax.axhline(agg.optimal, color="black", ls="--", lw=1, label="optimal")
        ax.set_xlabel("env steps per task")
        ax.set_ylabel("pi_i evaluation return (mean over tasks)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, out)
    finally:
        plt.close(fig)


def plot_robustness(agg: Aggregate, out: Path) -> Path:
    """Per variant, every grid setting's final return and AUC (mean over seeds)."""
    plt = pyplot()
    names = list(dict.fromkeys(r["variant"] for r in agg.grid_rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    try:
        for ax, key, label in zip(
            axes, ("final_return_mean", "auc_mean"), ("final return", "AUC"), strict=True
        ):
            for i, name in enumerate(names):
                vals = [r[key] for r in agg.grid_rows if r["variant"] == name]
                ax.boxplot([vals], positions=[i], widths=0.5, showfliers=False)
                ax.scatter(
                    np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)),
                    vals,
                    s=12,
                    alpha=0.7,
                )
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_ylabel(f"{label} (mean over seeds)")
            ax.set_title(f"{label} across the grid")
            if math.isfinite(agg.optimal):
                ax.axhline(agg.optimal, color="black", ls="--", lw=1)
        fig.tight_layout()
        return save_figure(fig, out)
    finally:
        plt.close(fig)


def write_outputs(
    out: Path, agg: Aggregate, *, grid: dict[str, list[Any]] | None, info: dict[str, Any]
) -> None:
    """curves.png, table.md, table.csv, summary.json (+ grid.csv, robustness.png)."""
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(agg, out / "curves.png", f"{info['config']}: {info['seeds']} seeds per variant")
    atomic_write(out / "table.csv", csv_text(agg.rows, TABLE_COLUMNS))
    atomic_write(out / "table.md", table_markdown(agg, grid is not None))
    if grid is not None:
        atomic_write(out / "grid.csv", csv_text(agg.grid_rows, GRID_COLUMNS))
        plot_robustness(agg, out / "robustness.png")
    summary = {
        **info,
        "grid": grid,
        "optimal": agg.optimal,
        "threshold": agg.threshold,
        "variants": {r["variant"]: r for r in agg.rows},
        "grid_results": agg.grid_rows if grid is not None else None,
        "probability_of_improvement": agg.poi,
    }
    atomic_write(out / "summary.json", json.dumps(json_safe(summary), indent=1) + "\n")


def compare(
    config_path: str | Path,
    out: Path,
    *,
    variants: Sequence[str] = PAPER_VARIANTS,
    seeds: int = 5,
    grid: dict[str, list[Any]] | None = None,
    mode: str = "train",
    sets: Sequence[str] = (),
    threshold: float | None = None,
    progress: bool = True,
) -> Aggregate:
    """Plans (checking everything), runs what is missing, aggregates, writes the outputs."""
    specs = plan(config_path, sets, variants, seeds, grid, mode, out)
    states = check_out(specs, mode)
    start = time.perf_counter()
    execute(specs, states, mode, progress=progress)
    agg = aggregate(specs, threshold)
    info = {
        "config": str(config_path),
        "sets": list(sets),
        "mode": mode,
        "seeds": seeds,
        "runs": sum(len(s.run_dirs) for s in specs),
        "runs_skipped": sum(v == "done" for v in states.values()),
        "wall_seconds": time.perf_counter() - start,
    }
    write_outputs(out, agg, grid=grid, info=info)
    return agg
