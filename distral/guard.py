"""A run stops at the first non-finite loss, gradient norm or parameter.

A NaN or an infinity never recovers: every later update and checkpoint would carry it.
Both runners check the learner's loss and gradient norm (every update in `distral
launch`, every log row's means in `distral train`) and the parameters (every log row)
before they write a checkpoint, so the checkpoints on disk are always finite and
`--resume` starts from the last good one. With `halt_on_nan: false` the run only warns
(once) and goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

GUARDED_METRICS = ("loss", "grad_norm")


class DivergenceError(RuntimeError):
    """A non-finite loss, gradient norm or parameter. The message is one line."""


def non_finite(metrics: Mapping[str, Any], params: Any = None) -> str | None:
    """The name of the first non-finite guarded metric or parameter leaf, else None."""
    for name in GUARDED_METRICS:
        if name in metrics and not math.isfinite(float(metrics[name])):
            return f"{name}={float(metrics[name])}"
    if params is not None:
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            if not np.all(np.isfinite(np.asarray(leaf))):
                return f"parameter {jax.tree_util.keystr(path)}"
    return None


class NanGuard:
    """Raises `DivergenceError` (halt) or warns once (no halt) at the first non-finite value."""

    def __init__(self, halt: bool, warn: Callable[[str], None]) -> None:
        self.halt = halt
        self._warn = warn
        self._warned = False

    def check(self, where: str, metrics: Mapping[str, Any], params: Any = None) -> None:
        """`where` names the step (e.g. "seed 0, log step 3 (update 240)")."""
        bad = non_finite(metrics, params)
        if bad is None:
            return
        message = f"non-finite {bad} at {where}"
        if self.halt:
            raise DivergenceError(f"{message}; no checkpoint of it was written")
        if not self._warned:
            self._warn(f"warning: {message}; going on (halt_on_nan: false)")
            self._warned = True
