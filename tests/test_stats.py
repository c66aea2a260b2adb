"""The one CI method (distral.stats) against a plain-numpy bootstrap and hand numbers."""

from __future__ import annotations

import numpy as np
import pytest

from distral import stats


def _plain_bootstrap(samples: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, ...]:
    """Percentile bootstrap of the column means of samples [runs, K], each column resampled
    on its own, drawing the same indices as rliable (numpy's global generator, one
    [runs, K] draw per resample)."""
    runs, k = samples.shape
    np.random.seed(seed)  # noqa: NPY002
    means = []
    for _ in range(reps):
        idx = np.random.choice(runs, (runs, k), replace=True)  # noqa: NPY002
        means.append([sum(samples[idx[i, j], j] for i in range(runs)) / runs for j in range(k)])
    low, high = np.percentile(np.array(means), [2.5, 97.5], axis=0)
    return samples.mean(axis=0), low, high


def test_mean_ci_is_the_percentile_bootstrap_of_the_mean():
    values = np.array([0.1, -2.0, 0.3, 0.25, -0.7])
    mean, low, high = stats.mean_ci(values, reps=500, seed=7)
    want = _plain_bootstrap(values[:, None], reps=500, seed=7)
    np.testing.assert_allclose((mean, low, high), [w[0] for w in want], rtol=0, atol=1e-12)
    assert low < values.mean() < high
    assert mean.shape == ()


def test_mean_ci_resamples_each_column_on_its_own():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(6, 4)) * [1.0, 2.0, 0.1, 5.0]
    got = stats.mean_ci(samples.T, axis=1, reps=300, seed=2)  # runs on axis 1
    want = _plain_bootstrap(samples, reps=300, seed=2)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)
    assert np.all(got.low < got.point) and np.all(got.point < got.high)


def test_mean_ci_hand_numbers():
    # A constant sample and a single run: a zero-width interval at the value.
    const = stats.mean_ci(np.full((4, 2), 3.0))
    np.testing.assert_array_equal(np.stack(const), np.full((3, 2), 3.0))
    one = stats.mean_ci(np.array([[5.0, -1.0]]))
    np.testing.assert_array_equal(np.stack(one), [[5.0, -1.0]] * 3)
    # Two values a < b: a resample's mean is a, (a+b)/2 or b with probability 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are a and b.
    assert tuple(float(v) for v in stats.mean_ci(np.array([2.0, 4.0]))) == (3.0, 2.0, 4.0)
    assert [a.shape for a in stats.mean_ci(np.zeros((3, 0)))] == [(0,)] * 3


def test_ratio_ci_resamples_the_pairs_together():
    rng = np.random.default_rng(5)
    teacher = rng.exponential(1.2, 40)
    student = 0.9 * teacher + rng.normal(0.0, 0.1, 40)  # paired: mostly what the teacher got
    got = stats.ratio_ci(student, teacher, reps=400, seed=3)
    # the plain bootstrap of the pairs, the same draws (one [40, 1] index array each)
    np.random.seed(3)  # noqa: NPY002
    ratios = []
    for _ in range(400):
        idx = np.random.choice(40, (40, 1), replace=True)[:, 0]  # noqa: NPY002
        ratios.append(sum(student[idx]) / sum(teacher[idx]))
    low, high = np.percentile(ratios, [2.5, 97.5])
    want = (student.mean() / teacher.mean(), low, high)
    np.testing.assert_allclose(tuple(got), want, rtol=1e-12)
    assert got.low < got.point < got.high and got.point.shape == ()
    # Large samples: the delta method's mean +- 1.96 SE with the pairs' covariance, far
    # narrower than if the two samples were independent.
    b = rng.normal(10.0, 4.0, 4000)
    a = 0.9 * b + rng.normal(0.0, 1.0, 4000)
    r = a.mean() / b.mean()
    se = np.sqrt(np.var(a - r * b) / 4000) / b.mean()
    big = stats.ratio_ci(a, b)
    np.testing.assert_allclose((big.low, big.high), (r - 1.96 * se, r + 1.96 * se), atol=0.2 * se)
    independent = r * np.sqrt(a.var() / a.mean() ** 2 / 4000 + b.var() / b.mean() ** 2 / 4000)
    assert big.high - big.low < 0.5 * 2 * 1.96 * independent
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        stats.ratio_ci(np.ones(3), np.ones(4))


def test_intervals_are_seeded_and_leave_the_global_generator_alone():
    x = np.random.default_rng(0).normal(size=(8, 3))
    np.random.seed(123)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    a = stats.mean_ci(x, reps=200)
    b = stats.mean_ci(x, reps=200)
    c = stats.mean_ci(x, reps=200, seed=1)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def test_interval_estimates_of_any_statistic():
    x = np.array([[1.0], [2.0], [3.0], [10.0]])
    est = stats.interval_estimates({"m": x}, lambda s: np.array([np.median(s)]), reps=400)
    point, low, high = est["m"]
    assert float(point[0]) == pytest.approx(2.5)
    assert 1.0 <= low[0] <= 2.5 <= high[0] <= 10.0


def test_ci_text_formats_the_finite_runs_and_counts_the_others():
    # one finite run: a zero-width interval at its value; two never got there
    assert stats.ci_text(np.array([np.nan, 2.5, np.inf]), ".1f") == "2.5 [2.5, 2.5] (2 never)"
    assert stats.ci_text(np.array([1000.0, 1000.0]), ",.0f") == "1,000 [1,000, 1,000]"
    assert stats.ci_text(np.array([np.nan]), ".1f") == "never"
