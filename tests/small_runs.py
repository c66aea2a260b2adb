"""Small finished `distral train` runs that several test files read (not a test module).

A kl_ent_2col run and an a3c run of the same 3 two-room tasks, two seeds each: teachers
(tests/test_teachers.py, tests/test_distill.py), transfer sources (tests/test_transfer.py)
and run directories to read (tests/test_train.py, tests/test_rundir.py). The `small_run`
fixture (tests/conftest.py) trains each at its first use in a test process and hands the
same directory to every later test, which only reads it. Tests that train their own runs
of these variants at TINY's sizes and two seeds (tests/test_guard.py,
tests/test_compare.py, the CLI run of tests/test_train.py) run the same programs, which
the suite's compilation cache (tests/conftest.py) compiles once: compiling is most of a
small run's cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# 3 tasks (goal_seed 0) of at most 20 steps, 80 env steps per task: 2 log rows.
TINY: dict[str, Any] = dict(
    hidden_sizes=[8], num_envs_per_task=2, unroll_length=5, log_every=4,
    eval_episodes_per_task=2, env_steps_per_task=80, env={"num_tasks": 3, "max_steps": 20},
)  # fmt: skip

RUNS: dict[str, dict[str, Any]] = {
    "2col": dict(variant="kl_ent_2col", seeds=[2, 5]),
    "a3c": dict(variant="a3c", seeds=[1, 4]),
}


def tiny_config(**overrides: Any) -> Any:
    """TINY with `overrides`; an `env` override is merged into TINY's."""
    from distral import config as cfg

    env = {**TINY["env"], **overrides.pop("env", {})}
    return cfg.load_config(None, overrides={**TINY, **overrides, "env": env})


def train(name: str, run_dir: Path) -> Path:
    """Trains RUNS[name] into `run_dir`; returns it."""
    from distral.train import run

    run(tiny_config(**RUNS[name]), run_dir, progress=False)
    return run_dir


def write_launch_run(run_dir: Path, config: Any) -> Path:
    """A run directory of `config` as `distral launch`'s learner writes one (config.yaml,
    one metrics row, a checkpoint of the family's fresh learner state), written in this
    process: a teacher source for tests that read a run's parameters, not its learning."""
    import jax
    import numpy as np

    from distral import rundir
    from distral.distributed.learner import checkpoint_parts, metric_columns
    from distral.experiment import make_experiment
    from distral.transfer import init_state_fn

    experiment = make_experiment(config)
    seed = config.seeds[0]
    parts = checkpoint_parts(
        init_state_fn(experiment)(jax.random.PRNGKey(seed)),
        np.zeros(experiment.num_tasks, np.int64),
        0.0,
    )
    log, _, _ = rundir.open_log(
        run_dir, config, metric_columns(experiment), parts, resume=False, seeds=[seed]
    )
    log.write([{"seed": seed, "log_step": 1, "env_steps_per_task": 0, "updates": 0}])
    log.save(1, parts)
    log.close()
    return run_dir
