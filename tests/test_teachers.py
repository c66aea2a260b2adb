"""Teachers read from finished runs (distral.teachers): their outputs and features are the
run's pi_i, they reproduce the run's own evaluation returns, and runs that cannot teach
the student are one-line errors naming them."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral import config as cfg
from distral import rundir, teachers
from distral.evaluator import evaluation_key, policy_returns_fn
from distral.experiment import make_experiment
from distral.train import run

TINY = dict(
    hidden_sizes=[8], num_envs_per_task=4, unroll_length=5, log_every=4,
    eval_episodes_per_task=4, env_steps_per_task=80, learning_rate=0.05,
)  # fmt: skip


def _run(path, **overrides):
    config = cfg.load_config(None, overrides={**TINY, **overrides})
    run(config, path, progress=False)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A kl_ent_2col run (2 seeds) and an a3c run of the same 8 two-room tasks."""
    root = tmp_path_factory.mktemp("teachers")
    configs = {
        "2col": _run(root / "2col", variant="kl_ent_2col", seeds=[0, 3]),
        "a3c": _run(root / "a3c", variant="a3c", seeds=[1]),
    }
    return root, configs


def test_a_teacher_is_its_runs_pi_i_with_its_features(runs):
    root, configs = runs
    student = make_experiment(configs["a3c"])
    for name, seed in (("2col", 3), ("a3c", 1)):
        loaded = rundir.load_run(root / name, seed=seed)
        network = loaded.experiment.network
        found = teachers.load_teachers([root / name], student, seed=seed)
        assert [t.task_name for t in found] == list(student.task_names)
        obs = jax.random.normal(jax.random.PRNGKey(0), (6, *student.obs_shape))
        all_logits = [
            network.apply(loaded.params, obs, jnp.full(6, i, jnp.int32)).logits for i in range(8)
        ]
        for i, teacher in enumerate(found):
            logits, features = jax.jit(teacher.apply)(teacher.params, obs)
            np.testing.assert_allclose(logits, all_logits[i], rtol=1e-5, atol=1e-6)
            other = all_logits[(i + 1) % 8]
            assert np.abs(np.asarray(other - all_logits[i])).max() > 1e-3  # tasks differ
            want = network.task_features(loaded.params, obs, jnp.int32(i))
            np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)
            assert teacher.feature_dim == features.shape[1] == (16 if name == "2col" else 8)
            assert teacher.source == f"{root / name}, task {i}"
        # The teacher holds its own column and the shared parts: 8 + 1 columns for 2col.
        full = teachers.num_params(loaded.params)
        column = teachers.num_params(jax.tree.map(lambda x: x[0], loaded.params["tasks"]))
        assert found[0].num_params == full - 7 * column
        assert teachers.total_params(found) == full  # h (2col) counted once, not 8 times


def test_teachers_reproduce_the_runs_own_evaluation_returns(runs):
    """The 2col run's last evaluation of pi_i (seed 3), redone with its 8 teachers and
    the same key, gives the returns in its metrics.csv."""
    root, configs = runs
    student = make_experiment(configs["2col"])
    found = teachers.load_teachers([root / "2col"], student, seed=3)
    loaded = rundir.load_run(root / "2col", seed=3)

    def logits_fn(params, obs):  # obs [N, E, ...]: row i is task i's, taught by teacher i
        return jnp.stack(
            [t.apply(p, obs[i])[0] for i, (t, p) in enumerate(zip(found, params, strict=True))]
        )

    returns = policy_returns_fn(
        student.env_params, configs["2col"].eval_episodes_per_task, configs["2col"].env.step_limit
    )
    key = jax.random.split(evaluation_key(3, loaded.log_step))[0]  # pi_i's half
    got = np.asarray(jax.jit(returns, static_argnums=0)(logits_fn, [t.params for t in found], key))
    with open(root / "2col" / "metrics.csv") as f:
        row = [
            r
            for r in csv.DictReader(f)
            if (r["seed"], r["log_step"]) == ("3", str(loaded.log_step))
        ]
    want = [float(row[0][f"eval_return_task_{i}"]) for i in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_runs_that_cannot_teach_are_named(runs, tmp_path):
    root, configs = runs
    a3c, two = str(root / "a3c"), str(root / "2col")
    student = make_experiment(configs["a3c"])
    with pytest.raises(cfg.ConfigError, match="has two teachers") as e:
        teachers.load_teachers([a3c, two], student)
    assert "\n" not in str(e.value)
    other_goals = make_experiment(
        cfg.load_config(None, overrides={**TINY, "env": {"goal_seed": 7}})
    )
    with pytest.raises(cfg.ConfigError, match=r"no teacher for task 'goal \(\d+, \d+\)'"):
        teachers.load_teachers([a3c], other_goals)
    public = make_experiment(
        cfg.load_config(None, overrides={**TINY, "env": {"layout": "distral_public"}})
    )
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
