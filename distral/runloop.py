"""The single-process run loop of `distral train` and `distral distill` (two-room).

Both runners train in jitted chunks of `log_every` updates, each followed by an evaluation
and one metrics row per seed. Everything between chunks is here, once: the run directory
(config, metrics appended, checkpoints, resume), the progress bar, the NaN guard, the
checkpoint every `checkpoint_every` rows and the summary. A runner gives its parts
(`ChunkRunner`); a new single-process runner writes only its chunk, its evaluation and its
rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from distral import rundir
from distral.config import TrainConfig
from distral.experiment import Experiment
from distral.guard import NanGuard
from distral.progress import Progress

Rows = list[dict[str, float]]


class RowWriter(Protocol):
    def rows(self, log_step: int, data: Any, wall: float, seconds: float) -> Rows:
        """One metrics row per seed of a chunk's fetched `data`, at `log_step` (from 1);
        `wall` is the run's wall time so far, `seconds` the chunk's."""
        ...


class ChunkRunner(Protocol):
    """What a runner gives the loop. Its runner state holds every seed (a leading axis)
    and has `.train`, the `learning.TrainingState` whose parameters the guard checks."""

    experiment: Experiment

    @property
    def progress_label(self) -> str:
        """The progress bar's name for the run."""
        ...

    @property
    def progress_column(self) -> str:
        """The row entry the progress bar shows (its mean over seeds)."""
        ...

    def init(self, keys: jax.Array) -> Any:
        """The runner state of every seed, from one PRNG key per seed."""
        ...

    def columns(self) -> list[str]:
        """metrics.csv's columns."""
        ...

    def chunk(self, runner: Any, log_step: int) -> tuple[Any, Any]:
        """`log_every` updates, then the evaluation of log step `log_step` (from 1);
        returns the new state and the chunk's statistics fetched to the host."""
        ...

    def row_writer(self, warn: Callable[[str], None]) -> RowWriter:
        """The rows' maker for one run; `warn` prints a line above the progress bar."""
        ...

    def summary_fields(self, runner: Any) -> dict[str, Any]:
        """summary.json's entries beyond the common ones (none: {})."""
        ...


def checkpoint_parts(runner: Any, wall_seconds: float) -> dict[str, Any]:
    """What a single-process checkpoint holds (`rundir.load_run` reads `runner/train`)."""
    return {"runner": runner, "wall_seconds": np.asarray(wall_seconds, np.float64)}


def run(
    runner_parts: ChunkRunner,
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    on_log: Callable[[int], None] | None = None,
) -> rundir.RunResult:
    """Runs `config.num_log_steps` chunks into `run_dir` (checked, and `config` with its
    layout inlined, by the caller), from its last checkpoint if `resume`."""
    parts = runner_parts
    seeds = list(config.seeds)
    runner = parts.init(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
    log, restored, start_log = rundir.open_log(
        run_dir, config, parts.columns(), checkpoint_parts(runner, 0.0), resume=resume,
        seeds=seeds,
    )  # fmt: skip
    wall_before = 0.0
    if restored is not None:
        runner, wall_before = restored["runner"], float(restored["wall_seconds"])
    per_chunk = config.steps_per_update * config.log_every
    bar = Progress(
        f"{parts.progress_label} x{len(seeds)} seeds",
        config.num_log_steps * per_chunk,
        start_log * per_chunk,
        enabled=progress,
    )
    writer = parts.row_writer(bar.write)
    guard = NanGuard(config.halt_on_nan, bar.write)
    optimal = float(parts.experiment.optimal_returns.mean())
    t0 = time.perf_counter()
    try:
        for log_step in range(start_log + 1, config.num_log_steps + 1):
            t_chunk = time.perf_counter()
            runner, data = parts.chunk(runner, log_step)
            wall = wall_before + time.perf_counter() - t0
            rows = writer.rows(log_step, data, wall, time.perf_counter() - t_chunk)
            log.write(rows)
            _guard(guard, rows, runner.train.params)
            shown = rundir.nanmean(np.array([r[parts.progress_column] for r in rows]))
            bar.update(log_step * per_chunk, per_chunk, shown, optimal, rows[0]["steps_per_second"])
            if log_step % config.checkpoint_every == 0 or log_step == config.num_log_steps:
                log.save(log_step, checkpoint_parts(runner, wall))
            if on_log is not None:
                on_log(log_step)
    finally:
        bar.close()
        log.close()
    # A resumed run that had finished ran no chunk: its wall time is in its rows.
    last = rundir.last_rows_or_empty(log.metrics_path)
    ran = wall_before + time.perf_counter() - t0
    wall = max([ran, *(r["wall_seconds"] for r in last.values())])
    summary = rundir.summarise(
        log.metrics_path,
        config,
        parts.experiment.optimal_returns,
        parts.experiment.task_names,
        seeds=seeds,
        wall_seconds=round(wall, 2),
        **parts.summary_fields(runner),
    )
    return rundir.RunResult(run_dir, log.finish(summary))


def row_head(
    config: TrainConfig, num_tasks: int, seed: int, log_step: int, wall: float, seconds: float
) -> dict[str, float]:
    """A row's first entries: where the run is, and its speed (one chunk of every seed
    took `seconds`)."""
    per_chunk = config.steps_per_update * config.log_every
    return {
        "seed": seed,
        "log_step": log_step,
        "updates": log_step * config.log_every,
        "env_steps_per_task": log_step * per_chunk,
        "wall_seconds": round(wall, 3),
        "steps_per_second": round(per_chunk * num_tasks * len(config.seeds) / seconds, 1),
    }


def mean_returns(return_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per task, the mean return of the episodes that ended in a chunk (NaN where none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, return_sum / count, np.nan)


def _guard(guard: NanGuard, rows: Rows, params: Any) -> None:
    """Stops (or warns) at a non-finite loss, gradient norm or parameter of any seed,
    before the chunk's checkpoint."""
    for j, row in enumerate(rows):
        where = f"seed {row['seed']}, log step {row['log_step']} (updates {row['updates']})"
        guard.check(where, row, jax.tree.map(lambda x, j=j: x[j], params))
