"""Teachers read from finished runs (distral.teachers): their outputs and features are the
run's pi_i, they reproduce the run's own evaluation returns, and runs that cannot teach
the student are one-line errors naming them."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_runs import RUNS, TINY, tiny_config

from distral import config as cfg
from distral import rundir, teachers
from distral.evaluator import evaluation_key, policy_returns_fn
from distral.experiment import make_experiment

N = TINY["env"]["num_tasks"]  # the runs' two-room tasks


@pytest.fixture
def runs(small_run):
    """A kl_ent_2col run (seeds 2 and 5) and an a3c run (seed 1) of the same N two-room
    tasks (tests/small_runs.py): their directories and configs."""
    paths = {name: small_run(name) for name in RUNS}
    configs = {name: tiny_config(**RUNS[name]) for name in RUNS}
    return paths, configs


def test_a_teacher_is_its_runs_pi_i_with_its_features(runs):
    paths, configs = runs
    student = make_experiment(configs["a3c"])
    for name, seed in (("2col", 5), ("a3c", 1)):
        loaded = rundir.load_run(paths[name], seed=seed)
        network = loaded.experiment.network
        found = teachers.load_teachers([paths[name]], student, seed=seed)
        assert [t.task_name for t in found] == list(student.task_names)
        obs = jax.random.normal(jax.random.PRNGKey(0), (6, *student.obs_shape))
        all_logits = [
            network.apply(loaded.params, obs, jnp.full(6, i, jnp.int32)).logits for i in range(N)
        ]
        for i, teacher in enumerate(found):
            logits, features = jax.jit(teacher.apply)(teacher.params, obs)
            np.testing.assert_allclose(logits, all_logits[i], rtol=1e-5, atol=1e-6)
            other = all_logits[(i + 1) % N]
            assert np.abs(np.asarray(other - all_logits[i])).max() > 1e-3  # tasks differ
            want = network.task_features(loaded.params, obs, jnp.int32(i))
            np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)
            assert teacher.feature_dim == features.shape[1] == (16 if name == "2col" else 8)
            assert teacher.source == f"{paths[name]}, task {i}"
        # The teacher holds its own column and the shared parts: N + 1 columns for 2col.
        full = teachers.num_params(loaded.params)
        column = teachers.num_params(jax.tree.map(lambda x: x[0], loaded.params["tasks"]))
        assert found[0].num_params == full - (N - 1) * column
        assert teachers.total_params(found) == full  # h (2col) counted once, not N times


def test_teachers_reproduce_the_runs_own_evaluation_returns(runs):
    """The 2col run's last evaluation of pi_i (seed 5, its second), redone with its N
    teachers and the same key, gives the returns in its metrics.csv."""
    paths, configs = runs
    student = make_experiment(configs["2col"])
    found = teachers.load_teachers([paths["2col"]], student, seed=5)
    loaded = rundir.load_run(paths["2col"], seed=5)

    def logits_fn(params, obs):  # obs [N, E, ...]: row i is task i's, taught by teacher i
        return jnp.stack(
            [t.apply(p, obs[i])[0] for i, (t, p) in enumerate(zip(found, params, strict=True))]
        )

    returns = policy_returns_fn(
        student.env_params, configs["2col"].eval_episodes_per_task, configs["2col"].env.step_limit
    )
    key = jax.random.split(evaluation_key(5, loaded.log_step))[0]  # pi_i's half
    got = np.asarray(jax.jit(returns, static_argnums=0)(logits_fn, [t.params for t in found], key))
    with open(paths["2col"] / "metrics.csv") as f:
        row = [
            r
            for r in csv.DictReader(f)
            if (r["seed"], r["log_step"]) == ("5", str(loaded.log_step))
        ]
    want = [float(row[0][f"eval_return_task_{i}"]) for i in range(N)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_runs_that_cannot_teach_are_named(runs, tmp_path):
    paths, configs = runs
    a3c, two = str(paths["a3c"]), str(paths["2col"])
    student = make_experiment(configs["a3c"])
    with pytest.raises(cfg.ConfigError, match="has two teachers") as e:
        teachers.load_teachers([a3c, two], student)
    assert "\n" not in str(e.value)
    other_goals = make_experiment(tiny_config(env={"goal_seed": 7}))
    with pytest.raises(cfg.ConfigError, match=r"no teacher for task 'goal \(\d+, \d+\)'"):
        teachers.load_teachers([a3c], other_goals)
    public = make_experiment(tiny_config(env={"layout": "distral_public"}))
    with pytest.raises(cfg.ConfigError, match=f"teacher '{a3c}' ran another two_room map"):
        teachers.load_teachers([a3c], public)
    minatar = make_experiment(
        cfg.load_config(
            None, overrides={**TINY, "torso": "minatar_cnn", "env": {"name": "minatar"}}
        )
    )
    with pytest.raises(cfg.ConfigError, match=f"teacher '{a3c}' ran env 'two_room'"):
        teachers.load_teachers([a3c], minatar)
    with pytest.raises(cfg.ConfigError, match="no teacher: give at least one"):
        teachers.load_teachers([], student)
    with pytest.raises(
        cfg.ConfigError, match=f"'{tmp_path}' is not a run directory: no config.yaml there"
    ):
        teachers.load_teachers([tmp_path], student)
