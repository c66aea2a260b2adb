"""The run directory shared by every runner (`distral train`, `distral launch`) and the
one way to read a finished run (`load_run`).

    config.yaml    the resolved configuration (written first)
    metrics.csv    one row per log step and seed (appended; cut back to the last
                   checkpoint on resume; an older header is migrated)
    tb/seed_S/     TensorBoard scalars (events past the checkpoint purged on resume)
    checkpoints/   orbax, named by key path (`distral.checkpoint`), latest N kept
    summary.json   the final numbers (strict JSON: NaN is null)
    curves.png     the per-run figure

A runner opens a `RunLog`, restores from it, writes rows through it, saves checkpoints
through it and ends with `RunLog.finish`. Every file is written by write-then-rename, so a
crash never leaves half a file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from distral.checkpoint import Checkpoints
from distral.config import ConfigError, TrainConfig
from distral.envs import two_room
from distral.files import atomic_write, atomic_write_json, atomic_write_rows, json_safe

# Scalars mirrored to TensorBoard (x axis: env steps per task).
TB_SCALARS = ("mean_return", "eval_return", "pi0_eval_return", "loss", "kl", "entropy")
# Per-task columns: f"{prefix}_task_{i}".
PER_TASK_PREFIXES = ("return", "eval_return", "pi0_eval_return", "kl", "entropy")


def metric_columns(num_tasks: int, scalars: Sequence[str]) -> list[str]:
    """metrics.csv's columns: what every runner logs, the algorithm's scalar `scalars`
    (its `Algorithm.metrics`), and the per-task columns."""
    return [
        "seed",
        "log_step",
        "updates",
        "env_steps_per_task",
        "wall_seconds",
        "steps_per_second",
        "mean_return",
        "eval_return",
        "pi0_eval_return",
        "optimal_return",
        *scalars,
        "collapsed_tasks",
        *(f"{p}_task_{i}" for p in PER_TASK_PREFIXES for i in range(num_tasks)),
    ]


def nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else math.nan


GLOB_CHARACTERS = "[]*?"


def check_globless(path: Path, what: str) -> None:
    """orbax finds a run's checkpoints by globbing its directory: under a path with a glob
    character it saves but finds none, so such a run could not resume or be loaded."""
    bad = sorted({c for c in str(Path(path).absolute()) if c in GLOB_CHARACTERS})
    if bad:
        raise ConfigError(
            f"{what} {str(path)!r}: a run directory's path must not contain {' '.join(bad)} "
            "(orbax globs it to find checkpoints)"
        )


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """A new run needs a missing or empty directory; a resumed one needs its config."""
    check_globless(run_dir, "--resume" if resume else "--out")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {str(run_dir)!r}: no config.yaml there")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} is a file, not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        hint = f"use --resume {run_dir}" if (run_dir / "config.yaml").exists() else "pick another"
        raise ConfigError(f"--out {str(run_dir)!r} exists and is not empty: {hint}")


def inline_layout(config: TrainConfig) -> TrainConfig:
    """A layout given as a file path is stored as its map text, so the run is self-contained."""
    layout = config.env.layout
    if config.env.name != "two_room" or "\n" in layout or layout in two_room.LAYOUTS:
        return config
    text = two_room.load_layout(layout)
    return dataclasses.replace(config, env=dataclasses.replace(config.env, layout=text))


def last_rows(path: Path, finite: str | None = None) -> dict[int, dict[str, Any]]:
    """The last metrics row of each seed (with `finite`: the last whose `finite` column has
    a value, e.g. "eval_return" skips a row whose evaluation a stop cut short)."""
    with path.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    if not records:
        raise ConfigError(f"{str(path)!r} holds no metrics rows to summarise")
    rows: dict[int, dict[str, Any]] = {}
    for r in records:
        row = {k: float(v) if v else math.nan for k, v in r.items()}
        if finite is None or math.isfinite(row.get(finite, math.nan)):
            rows[int(r["seed"])] = row
    return rows


def count_or_none(value: float | None) -> int | None:
    """A count read back from metrics.csv (a float; NaN or missing: unknown, None)."""
    return None if value is None or math.isnan(value) else int(value)


def prepare_metrics(path: Path, columns: Sequence[str]) -> list[str]:
    """The header to append metrics rows under; an older file's header is migrated first.

    A run resumed by a newer distral may compute more columns than its metrics.csv holds.
    The file is then rewritten (atomically) under `columns` followed by any old column no
    longer computed: every value stays under its name, new columns are empty in old rows.
    """
    columns = list(columns)
    if not path.exists() or path.stat().st_size == 0:
        return columns
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    merged = columns + [c for c in header if c not in columns]
    if header == merged:
        return merged
    where = {c: i for i, c in enumerate(header)}
    body = [
        [r[where[c]] if c in where and where[c] < len(r) else "" for c in merged] for r in rows[1:]
    ]
    atomic_write_rows(path, [merged, *body])
    return merged


def truncate_metrics(path: Path, log_step: int) -> None:
    """Drops rows past the checkpoint (written before a crash), so a resume appends cleanly."""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    col = header.index("log_step")
    # Also drops a row cut short by a crash mid-write.
    kept = [
        r for r in body if len(r) == len(header) and r[col].isdigit() and int(r[col]) <= log_step
    ]
    if len(kept) == len(body):
        return
    atomic_write_rows(path, [header, *kept])


# ROWS: what every runner logs per seed and log step.


class TaskStats(NamedTuple):
    """[N] per-task numbers behind a metrics row."""

    training_return: np.ndarray  # mean return of the episodes that ended (NaN: none ended)
    eval_return: np.ndarray  # pi_i evaluated on its own task
    pi0_eval_return: np.ndarray  # pi_0 on every task (NaN without pi_0)
    kl: np.ndarray  # KL(pi_i || pi_0) over the window's updates
    entropy: np.ndarray  # entropy of pi_i over the window's updates


def metrics_row(
    head: Mapping[str, float],
    tasks: TaskStats,
    scalars: Mapping[str, float],
    *,
    optimal_return: float,
    collapsed_tasks: float,  # a count, NaN with the collapse monitor off
    has_kl: bool,
) -> dict[str, float]:
    """One metrics.csv row: `head` (seed, log_step, updates, env_steps_per_task, wall and
    rate columns), the means over tasks, the loss `scalars` (window means; a name already
    in the row keeps the row's value), and the per-task columns. `has_kl`: whether the KL
    columns mean something (KL(pi_i || pi_0) with a pi_0, KL(teacher || student) for a
    distillation student); without (a3c) they and pi_0's entropy are NaN."""
    row: dict[str, float] = {
        **head,
        "mean_return": nanmean(tasks.training_return),
        "eval_return": float(np.mean(tasks.eval_return)),
        "pi0_eval_return": nanmean(tasks.pi0_eval_return),
        "optimal_return": optimal_return,
    }
    for name, value in scalars.items():
        row.setdefault(name, value)
    row["collapsed_tasks"] = collapsed_tasks
    for prefix, values in zip(PER_TASK_PREFIXES, tasks, strict=True):
        row.update({f"{prefix}_task_{i}": float(v) for i, v in enumerate(values)})
    if not has_kl:
        kl_columns = [f"kl_task_{i}" for i in range(len(tasks.kl))]
        row.update(dict.fromkeys(["kl", "distilled_entropy", *kl_columns], math.nan))
    return row


def summarise(
    metrics_path: Path,
    config: TrainConfig,
    optimal_returns: np.ndarray,
    task_names: Sequence[str],
    *,
    seeds: Sequence[int],
    **extra: Any,
) -> dict[str, Any]:
    """summary.json's content from each seed's last metrics row: final returns (means over
    seeds; a last row whose evaluation a stop cut short takes the last finished one),
    collapsed tasks, and `extra` (wall_seconds, runner-specific counts)."""
    rows = last_rows_or_empty(metrics_path)  # empty: stopped before the first log row
    evaluated = last_rows_or_empty(metrics_path, finite="eval_return")
    for seed, row in rows.items():
        if math.isnan(row["eval_return"]) and seed in evaluated:
            row.update({k: evaluated[seed][k] for k in ("eval_return", "pi0_eval_return")})

    def final(column: str) -> float:
        return nanmean(np.array([r[column] for r in rows.values()] or [math.nan]))

    return {
        "algorithm": config.algorithm,
        "variant": config.variant,
        "seeds": list(seeds),
        "final_mean_return": final("eval_return"),
        "final_mean_return_per_seed": {str(s): r["eval_return"] for s, r in rows.items()},
        "final_training_return": final("mean_return"),
        "final_pi0_return": final("pi0_eval_return"),
        "optimal_mean_return": nanmean(optimal_returns),
        "optimal_returns": [float(v) for v in optimal_returns],
        "tasks": list(task_names),
        "env_steps_per_task": count_or_none(final("env_steps_per_task")),
        "collapsed_tasks_per_seed": {
            str(s): count_or_none(r.get("collapsed_tasks")) for s, r in rows.items()
        },
        **extra,
    }


class RunResult(NamedTuple):
    """What a runner returns: its run directory and summary.json's content."""

    run_dir: Path
    summary: dict[str, Any]


# THE RUN LOG: one object per run that a runner writes everything through.


class RunLog:
    """The writing side of a run directory. `open_log` makes one."""

    def __init__(
        self, run_dir: Path, config: TrainConfig, columns: Sequence[str], seeds: Sequence[int]
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.columns = list(columns)
        self.seeds = list(seeds)
        self.metrics_path = run_dir / "metrics.csv"
        self.checkpoints = Checkpoints(run_dir / "checkpoints", config.keep_checkpoints)
        self._writers: dict[int, Any] = {}
        self._fh: Any = None
        self._csv: Any = None

    def open_metrics(self, *, resume: bool, log_step: int) -> None:
        """metrics.csv cut back to `log_step` (resume), migrated, opened for appending;
        TensorBoard writers that purge the events past the resumed rows."""
        from tensorboardX import SummaryWriter

        if resume:
            truncate_metrics(self.metrics_path, log_step)
        new_file = not self.metrics_path.exists() or self.metrics_path.stat().st_size == 0
        self.columns = prepare_metrics(self.metrics_path, self.columns)
        purge = None
        if resume:
            kept = [] if new_file else list(last_rows_or_empty(self.metrics_path).values())
            purge = int(max((r["env_steps_per_task"] for r in kept), default=0)) + 1
        for seed in self.seeds:
            tb_dir = str(self.run_dir / "tb" / f"seed_{seed}")
            self._writers[seed] = SummaryWriter(tb_dir, purge_step=purge)
        self._fh = self.metrics_path.open("a", newline="")
        self._csv = csv.DictWriter(self._fh, fieldnames=self.columns)
        if new_file:
            self._csv.writeheader()

    def write(self, rows: Sequence[Mapping[str, float]]) -> None:
        """Appends `rows` (one per seed) to metrics.csv and TensorBoard, then flushes."""
        for row in rows:
            self._csv.writerow({c: row.get(c, "") for c in self.columns})
            for name in TB_SCALARS:
                value = row.get(name, math.nan)
                if not math.isnan(value):
                    step = int(row["env_steps_per_task"])
                    self._writers[int(row["seed"])].add_scalar(name, value, step)
        self._fh.flush()

    def save(self, log_step: int, parts: Mapping[str, Any]) -> None:
        """Checkpoint `log_step` of the named pytrees `parts` (atomic, latest N kept)."""
        self.checkpoints.save(log_step, parts)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        for w in self._writers.values():
            w.close()
        self.checkpoints.close()

    def finish(self, summary: Mapping[str, Any], *, plot: bool = True) -> dict[str, Any]:
        """Writes summary.json, then curves.png when there are rows and `plot`; returns
        the summary as written (NaN as None). A run stopped by a signal skips the figure:
        its processes have seconds to end, and `distral plot` draws it any time."""
        from distral.plotting import plot_run

        safe = json_safe(dict(summary))
        atomic_write_json(self.run_dir / "summary.json", safe)
        if plot and self.metrics_path.exists() and last_rows_or_empty(self.metrics_path):
            plot_run(self.run_dir)
        return safe


def finished(run_dir: str | Path) -> bool:
    """Whether the run in `run_dir` ended whole: its summary.json is written, and a launch's
    (which also writes one when a signal or a fault stops it) records its learner budget
    spent. `distral train` writes summary.json only at the end of its budget."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    budget = summary.get("learner_budget")
    return budget is None or summary.get("learner_steps", 0) >= budget


def last_rows_or_empty(path: Path, finite: str | None = None) -> dict[int, dict[str, Any]]:
    """`last_rows`, or {} when there is no metrics file or no row yet."""
    try:
        return last_rows(path, finite)
    except (ConfigError, FileNotFoundError):
        return {}


def open_log(
    run_dir: Path,
    config: TrainConfig,
    columns: Sequence[str],
    like: Mapping[str, Any],
    *,
    resume: bool,
    seeds: Sequence[int],
) -> tuple[RunLog, dict[str, Any] | None, int]:
    """Opens `run_dir` for writing: config.yaml, the checkpoints, metrics.csv and
    TensorBoard. Returns (the log, the latest checkpoint's parts in the structures of
    `like` when resuming one, else None, the log step to continue from)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    from distral.config import dump_yaml

    atomic_write(run_dir / "config.yaml", dump_yaml(config))
    log = RunLog(run_dir, config, columns, seeds)
    restored, log_step = None, 0
    if resume and log.checkpoints.latest_step() is not None:
        restored, log_step = log.checkpoints.restore(like)
    log.open_metrics(resume=resume, log_step=log_step)
    return log, restored, log_step


# READING A RUN


class LoadedRun(NamedTuple):
    """A finished (or stopped) run, read-only: what probes, benchmarks and teachers use."""

    path: Path
    config: TrainConfig  # as it ran (`config.load_run_config`)
    experiment: Any  # `distral.experiment.Experiment`: network, tasks, environments
    seed: int
    params: Any  # the network parameters of `seed` in the latest checkpoint
    log_step: int  # the checkpoint's log step
    metrics: dict[str, np.ndarray]  # metrics.csv, column -> values (all seeds' rows)
    summary: dict[str, Any] | None  # summary.json, if the run ended


def _seed_params(raw: Mapping[str, Any], config: TrainConfig, seed: int, template: Any) -> Any:
    """The parameters of `seed` in a raw checkpoint (`Checkpoints.restore_raw`), in the
    structure of the network's `template`. `distral train` stores all seeds' runners with
    a leading seed axis under `runner/train`; `distral launch` its one learner state under
    `train`; the older flat layouts hold the parameters as their first leaves."""
    import jax

    from distral.checkpoint import from_named

    index = list(config.seeds).index(seed)
    if "runner" in raw:
        stacked = from_named(raw["runner"]["train"]["params"], template)
        return jax.tree.map(lambda x: x[index], stacked)
    if "train" in raw:
        return from_named(raw["train"]["params"], template)
    prefix = "runner" if "runner_0000" in raw else "state"
    treedef = jax.tree.structure(template)
    leaves = [np.asarray(raw[f"{prefix}_{i:04d}"]) for i in range(treedef.num_leaves)]
    if prefix == "runner":
        leaves = [x[index] for x in leaves]
    return jax.tree.unflatten(treedef, leaves)


def load_run(run_dir: str | Path, seed: int | None = None) -> LoadedRun:
    """Reads a run directory of `distral train` or `distral launch`: its config, the
    experiment it builds (network, tasks), the latest checkpoint's parameters of `seed`
    (default: the run's first seed), metrics.csv and summary.json. A one-line ConfigError
    names what is missing."""
    import json

    from distral.checkpoint import Checkpoints
    from distral.config import load_run_config
    from distral.experiment import make_experiment
    from distral.plotting import read_metrics

    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{str(path)!r} is not a run directory: no config.yaml there")
    check_globless(path, "run")
    config = load_run_config(path)
    seed = config.seeds[0] if seed is None else seed
    if seed not in config.seeds:
        raise ConfigError(
            f"seed {seed} is not a seed of {str(path)!r} (seeds {list(config.seeds)})"
        )
    experiment = make_experiment(config)
    try:
        raw, step = Checkpoints(path / "checkpoints").restore_raw()
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} has no checkpoint") from None
    params = _seed_params(raw, config, seed, experiment.params_template())
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return LoadedRun(path, config, experiment, seed, params, step, read_metrics(path), summary)
