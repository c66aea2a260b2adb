"""The run directory shared by `distral train` and `distral launch` (DESIGN.md section 4).

config.yaml (resolved), metrics.csv (one row per log step and seed, appended; cut back to
the last checkpoint on resume), tb/ (TensorBoard), checkpoints/ (orbax, atomic), curves.png
and summary.json. Files are written by write-then-rename, so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distral.config import ConfigError, TrainConfig
from distral.envs import two_room
from distral.files import atomic_write, atomic_write_rows


def metric_columns(num_tasks: int) -> list[str]:
    scalars = [
        "loss",
        "policy_loss",
        "value_loss",
        "distill_loss",
        "entropy_loss",
        "kl",
        "entropy",
        "distilled_entropy",
        "regularised_reward",
        "regulariser",
        "regulariser_loss",
        "logit_spread",
        "grad_norm",
        "grad_norm_distilled",
        "grad_norm_tasks",
        "collapsed_tasks",
    ]
    per_task = [
        f"{p}_task_{i}"
        for p in ("return", "eval_return", "pi0_eval_return", "kl", "entropy")
        for i in range(num_tasks)
    ]
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
        *per_task,
    ]


def nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else math.nan


def open_run(run_dir: Path, config: TrainConfig) -> Any:
    """Creates `run_dir`, writes the resolved config.yaml and returns the orbax
    CheckpointManager of `run_dir/checkpoints` (synchronous saves, latest N kept)."""
    import orbax.checkpoint as ocp

    from distral.config import dump_yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", dump_yaml(config))
    return ocp.CheckpointManager(
        run_dir / "checkpoints",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints, enable_async_checkpointing=False
        ),
    )


def restore_latest(manager: Any, like: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(tree, step) of the latest checkpoint of `manager` (an orbax CheckpointManager),
    restored in the layout of the flat array mapping `like`."""
    import jax
    import orbax.checkpoint as ocp

    step = int(manager.latest_step())
    restored = manager.restore(step, args=ocp.args.StandardRestore(jax.device_get(like)))
    return restored, step


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """A new run needs a missing or empty directory; a resumed one needs its config."""
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
