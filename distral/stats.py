"""Confidence intervals: one method for every table and figure of distral.

rliable's stratified bootstrap (Agarwal et al., 2021, arXiv:2108.13264): runs (seeds) are
resampled with replacement, separately within each task (stratum), and the interval is the
2.5 and 97.5 percentiles of the statistic over `CI_REPS` resamples. `interval_estimates`
takes any statistic (the mean, the IQM); `mean_ci` is the common case, the mean over runs
of every column at once (a learning curve's points, per-task scores, paired differences).

rliable 1.2.0's `StratifiedBootstrap` draws its resamples from numpy's global generator
and ignores the `random_state` it is given, so `interval_estimates` seeds that generator
for the call and restores its state afterwards: the same input gives the same interval.
rliable, arch and scipy are imported on first use, which keeps this module light.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

CI_REPS = 2000  # bootstrap resamples per interval
CI_SEED = 0  # the global-generator seed of every interval
CI_SIZE = 0.95


class Interval(NamedTuple):
    """A statistic and its 95% confidence interval, elementwise."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


@contextmanager
def _seeded_global_generator(seed: int) -> Iterator[None]:
    # The legacy global generator on purpose: it is the one rliable 1.2.0 draws from.
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def interval_estimates(
    scores: Mapping[str, np.ndarray],
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    reps: int = CI_REPS,
    seed: int = CI_SEED,
) -> dict[str, Interval]:
    """Per key: `statistic` of its scores [runs, tasks, ...] and the 95% percentile CI.

    `statistic` maps a [runs, tasks, ...] array to a 1-D array (e.g. the IQM as one value,
    or the mean of each task). Each key is bootstrapped with the generator seeded afresh.
    """
    from rliable import library as rly  # here: rliable pulls in arch and scipy

    out = {}
    for key, s in scores.items():
        with _seeded_global_generator(seed), warnings.catch_warnings():
            # arch warns about the legacy RandomState that rliable hands it
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = rly.get_interval_estimates(
                {key: s}, statistic, reps=reps, confidence_interval_size=CI_SIZE
            )
        out[key] = Interval(np.asarray(point[key]), interval[key][0], interval[key][1])
    return out


def mean_ci(
    samples: np.ndarray, axis: int = 0, *, reps: int = CI_REPS, seed: int = CI_SEED
) -> Interval:
    """The mean of `samples` over runs (along `axis`) and its 95% stratified-bootstrap CI.

    Every other index is a stratum: its runs are resampled on their own, so each element's
    interval is the percentile bootstrap of that element's mean. One run gives a
    zero-width interval at its value. No NaN handling: drop or group NaNs first.
    """
    samples = np.moveaxis(np.asarray(samples, dtype=float), axis, 0)
    shape = samples.shape[1:]
    flat = samples.reshape(samples.shape[0], -1)  # [runs, strata]
    if flat.shape[1] == 0:
        empty = np.zeros(shape)
        return Interval(empty, empty.copy(), empty.copy())
    est = interval_estimates({"x": flat}, lambda s: s.mean(axis=0), reps=reps, seed=seed)["x"]
    return Interval(*(np.reshape(a, shape) for a in est))


def ratio_ci(
    numerator: np.ndarray, denominator: np.ndarray, *, reps: int = CI_REPS, seed: int = CI_SEED
) -> Interval:
    """mean(numerator) / mean(denominator) of paired samples (a student's and its teacher's
    returns on the same episodes) and its 95% CI: the same bootstrap, resampling the pairs
    (a pair's two values stay together, so what they share cancels in the ratio)."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"ratio_ci: two 1-D samples of one size, got {a.shape} and {b.shape}")
    pairs = np.arange(a.size, dtype=float)[:, None]  # resample pair indices [pairs, 1 task]

    def ratio(s: np.ndarray) -> np.ndarray:
        i = s[:, 0].astype(int)
        return np.array([a[i].mean() / b[i].mean()])

    est = interval_estimates({"x": pairs}, ratio, reps=reps, seed=seed)["x"]
    return Interval(*(np.asarray(v)[0] for v in est))


def ci_text(values: np.ndarray, fmt: str) -> str:
    """'mean [low, high]' of `mean_ci` over the finite values, each formatted with `fmt`,
    and '(k never)' for the k that are not finite (runs that never got there); 'never'
    if none is."""
    values = np.asarray(values, dtype=float)
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return "never"
    mean, low, high = (float(v) for v in mean_ci(ok))
    missing = "" if ok.size == values.size else f" ({values.size - ok.size} never)"
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]{missing}"
