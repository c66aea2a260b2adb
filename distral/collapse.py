"""Collapse detection: a task policy stuck in a deterministic behaviour that does no good.

A task has *collapsed* when its pi_i is (near-)deterministic, entropy below a threshold
(nats, `TrainConfig.collapse_entropy`), while its training return is at or below the
task's *floor*: the return of never reaching the goal in the two-room grid world (every
step's -0.1 for `max_steps` steps: a policy that never gets there does no better), or the
uniform-random policy's score in a game. The typical case is a policy that walks into the
same wall for a whole episode (-0.6 per step): a fixed point of policy-gradient learning,
since the one action taken has zero advantage and no other action is ever sampled.

`distral train` and `distral launch` both call `CollapseMonitor.check` at every log row:
metrics.csv gets a `collapsed_tasks` column (how many tasks are collapsed) and
`entropy_task_i` columns, and the console a one-line warning naming the task and the step
when a task collapses. This module is pure numpy: no JAX, no files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

#: Default entropy threshold in nats: below it pi_i puts ~98% or more on one action (4
#: actions) -- far sharper than any solved two-room task's policy at the end of training.
DEFAULT_ENTROPY = 0.1


def collapsed(
    entropy: np.ndarray, returns: np.ndarray, floor: np.ndarray, threshold: float
) -> np.ndarray:
    """bool [N]: entropy < threshold and return <= floor (NaN in any input: False).

    A return within 1e-3 (relative, at least 1e-3 absolute) above the floor counts as at
    the floor: a deterministic loop that never reaches the goal scores the floor exactly,
    up to float rounding.
    """
    entropy, returns, floor = (np.asarray(x, np.float64) for x in (entropy, returns, floor))
    tolerance = 1e-3 * np.maximum(1.0, np.abs(floor))
    with np.errstate(invalid="ignore"):
        flags = (entropy < threshold) & (returns <= floor + tolerance)
    return flags & np.isfinite(entropy) & np.isfinite(returns) & np.isfinite(floor)


class CollapseMonitor:
    """Flags collapsed tasks at each log row; says so once when a task collapses.

    A row without a finished episode of a task (NaN return: long game episodes) or without
    its data (NaN entropy: no unroll of that task in the window) keeps that task's last
    values, so a stalled game policy stays flagged between the episodes that end.

    Args:
      task_names: one name per task, for the warning ("goal (1, 1)", "breakout").
      floor: [N] floor returns (NaN: never flag that task).
      threshold: entropy threshold in nats (0 disables the monitor: `check` gives NaN).
      warn: where the one-line warnings go (the console, through the progress bar).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        floor: np.ndarray,
        threshold: float,
        warn: Callable[[str], None] = print,
    ) -> None:
        self._names = list(task_names)
        self._floor = np.asarray(floor, np.float64)
        self._threshold = threshold
        self._warn = warn
        self._flags: dict[int, np.ndarray] = {}
        self._last: dict[tuple[str, int], np.ndarray] = {}

    def _carry(self, name: str, seed: int, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        last = self._last.get((name, seed))
        if last is not None:
            x = np.where(np.isfinite(x), x, last)
        self._last[(name, seed)] = x
        return x

    def check(self, seed: int, env_steps: int, entropy: np.ndarray, returns: np.ndarray) -> float:
        """The number of collapsed tasks of `seed` at this row (NaN when the monitor is
        off); warns for new ones."""
        if self._threshold <= 0:
            return math.nan
        entropy = self._carry("entropy", seed, entropy)
        returns = self._carry("returns", seed, returns)
        flags = collapsed(entropy, returns, self._floor, self._threshold)
        before = self._flags.get(seed, np.zeros_like(flags))
        for i in np.flatnonzero(flags & ~before):
            self._warn(
                f"collapse: seed {seed}, task {i} ({self._names[i]}) at {env_steps:,} env "
                f"steps per task: pi_i entropy {entropy[i]:.3f} nats < {self._threshold:g}, "
                f"return {returns[i]:.2f} <= floor {self._floor[i]:.2f}"
            )
        self._flags[seed] = flags
        return int(flags.sum())
