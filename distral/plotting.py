"""Learning curves from run directories (Distral, Teh et al., 2017, arXiv:1707.04175).

Reads what `distral train` writes into a run directory:

    metrics.csv    header, then one row per (log step, seed); a resumed run appends rows
    summary.json   {"variant", "seeds", "final_mean_return", "optimal_mean_return", ...};
                   absent if the run was interrupted (then config.yaml gives the variant)

and draws the mean over seeds with a 95% confidence band of that mean (`distral.stats`:
rliable's stratified bootstrap over seeds). No JAX here, and matplotlib and rliable are
imported on first use, so importing this module is fast.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from distral.files import atomic_output
from distral.stats import mean_ci

Metrics = dict[str, np.ndarray]

_Y_LABELS = {
    "mean_return": "mean return over tasks",
    "pi0_eval_return": "pi_0 evaluation return",
    "kl": "KL(pi_i || pi_0)",
    "entropy": "entropy",
    "loss": "loss",
}
_X_LABELS = {"env_steps_per_task": "env steps per task", "updates": "learner updates"}


class PlotError(ValueError):
    """A run directory that cannot be plotted. The message is one line, for the CLI."""


def read_metrics(run_dir: str | Path) -> Metrics:
    """Reads `run_dir/metrics.csv` as column -> float array, rows in file order.

    Empty or non-numeric cells become NaN, as do cells missing from a short row. A last line
    without its newline is dropped: it may be a row `distral train` is writing right now.
    """
    path = Path(run_dir) / "metrics.csv"
    if not Path(run_dir).is_dir():
        raise PlotError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise PlotError(f"no metrics.csv in run directory: {path}")
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = list(csv.reader(text.splitlines()))
    header, rows = (lines[0], lines[1:]) if lines else ([], [])
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not header or not rows:
        raise PlotError(f"metrics.csv has no rows: {path}")
    table = np.full((len(rows), len(header)), np.nan)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row[: len(header)]):
            try:
                table[i, j] = float(cell)
            except ValueError:
                pass
    return {name: table[:, j] for j, name in enumerate(header)}


def learning_curve(
    metrics: Metrics, column: str = "mean_return", x: str = "env_steps_per_task"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean over seeds of `column` at each value of `x`, with a 95% CI of that mean.

    The band is `stats.mean_ci` over the seeds that have a finite value at that x (the mean
    itself when one has). NaNs are ignored per point; an x where no seed has a value is left
    out. If a resumed run logged the same x twice for one seed, the later row wins. The
    points with the same seeds are bootstrapped together (one call per set of seeds).
    Returns (x [K], mean [K], low [K], high [K], number of seeds).
    """
    for name in ("seed", x, column):
        if name not in metrics:
            raise PlotError(f"metrics have no column {name!r}")
    latest: dict[tuple[float, float], float] = {}
    for s, xv, v in zip(metrics["seed"], metrics[x], metrics[column], strict=True):
        if not math.isnan(xv):
            latest[(s, xv)] = v
    by_x: dict[float, dict[float, float]] = {}  # x -> seed -> value
    for (s, xv), v in latest.items():
        if not math.isnan(v):
            by_x.setdefault(xv, {})[s] = v
    xs = sorted(by_x)
    groups: dict[tuple[float, ...], list[int]] = {}  # the seeds present -> their points
    for k, xv in enumerate(xs):
        groups.setdefault(tuple(sorted(by_x[xv])), []).append(k)
    mean, low, high = (np.zeros(len(xs)) for _ in range(3))
    for seeds, points in groups.items():
        samples = np.array([[by_x[xs[k]][s] for k in points] for s in seeds])
        mean[points], low[points], high[points] = mean_ci(samples)
    n_seeds = len({s for values in by_x.values() for s in values})
    return np.asarray(xs, dtype=float), mean, low, high, n_seeds


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _method(fields: dict[str, Any]) -> str | None:
    """`TrainConfig.method` of a summary's or config's fields: the variant in Distral's
    family, else the algorithm."""
    algorithm = fields.get("algorithm", "distral")
    name = fields.get("variant") if algorithm == "distral" else algorithm
    return name if isinstance(name, str) and name else None


def run_label(run_dir: str | Path) -> str:
    """The method of a run (the variant, or another family's algorithm): summary.json,
    else config.yaml, else the directory name."""
    run_dir = Path(run_dir)
    label = _method(_read_summary(run_dir))
    if label is None:
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            config = None
        label = _method(config) if isinstance(config, dict) else None
    return label or run_dir.name


def run_labels(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """One legend label per run; labels shared by several runs get ' (dir name)' appended."""
    if labels is not None and len(labels) != len(run_dirs):
        raise PlotError(f"{len(labels)} labels given for {len(run_dirs)} run directories")
    out = list(labels) if labels is not None else [run_label(d) for d in run_dirs]
    return [
        f"{label} ({Path(d).name})" if out.count(label) > 1 else label
        for label, d in zip(out, run_dirs, strict=True)
    ]


def _optimal_return(run_dirs: Sequence[str | Path]) -> float | None:
    for d in run_dirs:
        value = _read_summary(Path(d)).get("optimal_mean_return")
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def pyplot() -> Any:
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib  # here, not at the top: keeps `import distral.plotting` fast

    matplotlib.use("Agg")  # files only, no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def plot_band(
    ax: Any,
    x: np.ndarray,
    ci: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    label: str | None = None,
    lw: float | None = None,
    band_alpha: float = 0.25,
) -> Any:
    """The mean line of `ci` = (mean, low, high) over `x`, and the band in its colour."""
    mean, low, high = ci
    (line,) = ax.plot(x, mean, label=label, lw=lw)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=band_alpha, linewidth=0)
    return line


def plot_seed_curves(ax: Any, x: np.ndarray, y: np.ndarray, **style: Any) -> Any:
    """Mean over seeds of the curves y [seeds, K] on x [K], with its 95% CI band.

    Only the points where every seed has a value are drawn; `style` goes to `plot_band`.
    """
    ok = np.all(np.isfinite(y), axis=0)
    return plot_band(ax, x[ok], mean_ci(y[:, ok], axis=0), **style)


def _draw(ax: Any, metrics: Metrics, column: str, label: str | None = None) -> bool:
    """Mean line and CI band of `column` on `ax`; False (and a note) if it has no data."""
    if column in metrics:
        x, mean, low, high, _ = learning_curve(metrics, column)
    else:
        x = mean = low = high = np.zeros(0)
    plot_band(ax, x, (mean, low, high), label=label)
    if x.size == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel(_X_LABELS["env_steps_per_task"])
    ax.set_ylabel(_Y_LABELS.get(column, column.replace("_", " ")))
    return x.size > 0


def save_figure(fig: Any, out: str | Path) -> Path:
    """Writes the PNG to a temporary file beside `out`, then renames it into place."""
    out = Path(out)
    with atomic_output(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    return out


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    column: str = "mean_return",
    title: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """One curve and 95% CI band per run directory, on one axis; writes the PNG `out`."""
    if not run_dirs:
        raise PlotError("no run directories to plot")
    all_metrics = [read_metrics(d) for d in run_dirs]
    for d, metrics in zip(run_dirs, all_metrics, strict=True):
        if column not in metrics:
            raise PlotError(f"no column {column!r} in {Path(d) / 'metrics.csv'}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for metrics, label in zip(all_metrics, run_labels(run_dirs, labels), strict=True):
            _draw(ax, metrics, column, label)
        optimal = _optimal_return(run_dirs)
        if optimal is not None:
            ax.axhline(optimal, color="black", linestyle="--", linewidth=1, label="optimal")
        if title:
            ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        return save_figure(fig, out)
    finally:
        plt.close(fig)


def task_names(run_dir: str | Path, num_tasks: int) -> list[str]:
    """The tasks' names: the games of config.yaml's `env.games`, else 'task i'."""
    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    env = config.get("env") if isinstance(config, dict) else None
    games = env.get("games") if isinstance(env, dict) else None
    if isinstance(games, list) and len(games) == num_tasks:
        return [str(g) for g in games]
    return [f"task {i}" for i in range(num_tasks)]


def plot_per_task(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    column: str = "return",
    labels: Sequence[str] | None = None,
    references: dict[str, float] | None = None,
    reference_label: str = "reference",
    title: str | None = None,
) -> Path:
    """One panel per task: the `{column}_task_{i}` curves of every run, mean and 95% CI.

    `column` is a per-task family of metrics.csv ("return" for the actors' training
    episodes, "eval_return" for the evaluator's pi_i, "pi0_eval_return", "kl"). Tasks are
    named from the first run's config.yaml; `references` (task name -> value, e.g. a random
    policy's score) draws a dashed line in the matching panels. Writes the PNG `out`.
    """
    if not run_dirs:
        raise PlotError("no run directories to plot")
    all_metrics = [read_metrics(d) for d in run_dirs]
    num_tasks = 0
    while f"{column}_task_{num_tasks}" in all_metrics[0]:
        num_tasks += 1
    if num_tasks == 0:
        raise PlotError(f"no column {column}_task_0 in {Path(run_dirs[0]) / 'metrics.csv'}")
    names = task_names(run_dirs[0], num_tasks)
    plt = pyplot()
    cols = min(num_tasks, 3)
    rows = math.ceil(num_tasks / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    try:
        run_label_list = run_labels(run_dirs, labels)
        for i, ax in enumerate(axes.flat):
            if i >= num_tasks:
                ax.set_axis_off()
                continue
            for metrics, label in zip(all_metrics, run_label_list, strict=True):
                _draw(ax, metrics, f"{column}_task_{i}", label)
            ax.set_ylabel(column.replace("_", " "))
            value = (references or {}).get(names[i])
            if value is not None:
                ax.axhline(value, color="black", linestyle="--", linewidth=1, label=reference_label)
            ax.set_title(names[i])
        axes.flat[0].legend(fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return save_figure(fig, out)
    finally:
        plt.close(fig)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """The per-run figure: training return, pi_0 eval return, KL to pi_0, and entropy.

    Writes `out` (default `run_dir/curves.png`). A panel whose column is missing or all NaN
    (pi_0 eval for variants without pi_0) is drawn empty with a "no data" note.
    """
    metrics = read_metrics(run_dir)
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    try:
        panels = zip(
            axes.flat,
            ("mean_return", "pi0_eval_return", "kl", "entropy"),
            ("training return", "pi_0 evaluation return", "KL(pi_i || pi_0)", "entropy"),
            strict=True,
        )
        for ax, column, panel_title in panels:
            _draw(ax, metrics, column, "mean over seeds, 95% CI")
            ax.set_title(panel_title)
        optimal = _optimal_return([run_dir])
        if optimal is not None:
            axes[0, 0].axhline(optimal, color="black", linestyle="--", linewidth=1, label="optimal")
            axes[0, 0].legend()
        seeds = metrics.get("seed", np.zeros(0))
        n_seeds = np.unique(seeds[~np.isnan(seeds)]).size
        fig.suptitle(f"{run_label(run_dir)} ({n_seeds} seeds)")
        fig.tight_layout()
        return save_figure(fig, Path(run_dir) / "curves.png" if out is None else out)
    finally:
        plt.close(fig)
