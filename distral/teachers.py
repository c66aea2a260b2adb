"""Teachers for distillation: finished run directories read as pure functions.

A teacher of task i is a jit-able `apply(params, obs [B, *obs_shape]) -> (outputs [B, A],
features [B, D])` with its own parameters: a policy teacher's outputs are the logits of its
pi_i, its features the hidden representation those logits are computed from
(`DistralNetwork.task_features`), which Actor-Mimic's feature regression targets. An Ape-X
DQN run's teacher (`algorithm: apex`) outputs its task head's Q-values, and its features
are the shared torso's (Rusu et al.'s and Parisotto et al.'s teachers were DQNs). Any run
of `distral train`, `distral launch` or `distral distill` is a teacher source, whatever its
variant and network; teachers and students need not share an architecture.

A teacher acts (`teacher_actions`: the behaviour `teacher` or `mixture`, and its
evaluation) as its own run did: a policy samples from softmax(logits), a Q-value teacher
is epsilon-greedy at Ape-X's evaluation epsilon.

Teachers are matched to the student's tasks by task name (a two-room goal cell, a game),
so one 8-task run teaches all 8 two-room tasks and five one-game runs teach five games.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from distral.config import APEX_FAMILIES, ConfigError
from distral.experiment import Experiment

TEACHER_OUTPUTS = ("logits", "q_values")  # a policy teacher's pi_i; an Ape-X DQN's Q-values


class Teacher(NamedTuple):
    """One task's teacher: call it on observations, or jit `apply` with `params`."""

    task_name: str  # the task it teaches (as the student's experiment names it)
    source: str  # "RUN_DIR, task k": where it was read from
    params: Any  # its parameters: its own task column and the shared parts only
    apply: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
    outputs: str  # what its outputs are (TEACHER_OUTPUTS)
    num_params: int  # scalars in `params`: its size alone, for the compression tables
    feature_dim: int
    run: str = ""  # the run directory it was read from ("" for a hand-made teacher)
    shared_params: int = 0  # of `num_params`, those its run's other tasks' teachers share

    def __call__(self, obs: Any) -> tuple[jax.Array, jax.Array]:
        return self.apply(self.params, obs)


def num_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def total_params(teachers: Sequence[Teacher]) -> int:
    """The scalars of a set of teachers, the parts that teachers from one run share (h, a
    shared torso) counted once: what the teachers are, as opposed to the sum of their
    standalone sizes."""
    runs = {t.run: t.shared_params for t in teachers if t.run}
    return sum(t.num_params for t in teachers) - sum(
        shared * (sum(t.run == run for t in teachers) - 1) for run, shared in runs.items()
    )


def _shared_params(run: Any) -> int:
    """Scalars of `run`'s network that every task's teacher holds: a one-task slice holds
    the shared parts and one column, so column = (full - slice) / (N - 1)."""
    network = run.experiment.network
    full = num_params(run.params)
    if network.num_tasks == 1:
        return 0
    one = num_params(network.task_params(run.params, 0))
    return one - (full - one) // (network.num_tasks - 1)


def _policy_teacher(run: Any, task: int) -> Teacher:
    """Task `task`'s pi_i of a Distral-family run (`rundir.LoadedRun`)."""
    import jax.numpy as jnp

    network = run.experiment.network
    params = network.task_params(run.params, task)  # column `task` becomes column 0
    zero = jnp.zeros((), jnp.int32)

    def apply(params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = network.apply_task(params, obs, zero).logits
        return logits, network.task_features(params, obs, zero)

    return _run_teacher(run, task, params, apply, "logits")


def _q_teacher(run: Any, task: int) -> Teacher:
    """Task `task`'s Q-values of an Ape-X DQN run (`rundir.LoadedRun`): the shared torso and
    that task's value and advantage streams."""
    import jax.numpy as jnp

    network = run.experiment.network
    params = network.task_params(run.params, task)  # stream `task` becomes stream 0

    def apply(params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        head = jnp.zeros(obs.shape[:1], jnp.int32)
        return network.apply(params, obs, head), network.features(params, obs)

    return _run_teacher(run, task, params, apply, "q_values")


def _run_teacher(run: Any, task: int, params: Any, apply: Any, outputs: str) -> Teacher:
    """The `Teacher` of task `task` of `run` from its parameters and `apply`."""
    features = jax.eval_shape(apply, params, run.experiment.example_obs)[1]
    return Teacher(
        task_name=run.experiment.task_names[task],
        source=f"{run.path}, task {task}",
        params=params,
        apply=apply,
        outputs=outputs,
        num_params=num_params(params),
        feature_dim=int(features.shape[-1]),
        run=str(run.path),
        shared_params=_shared_params(run),
    )


def teacher_actions(outputs: str, values: jax.Array, key: jax.Array) -> jax.Array:
    """A teacher's actions from its outputs `values` [B, A] (jit-able; `outputs` is its
    `Teacher.outputs`): sampled from softmax(logits) for a policy, epsilon-greedy at
    `apex.EVAL_EPSILON` (how Ape-X evaluates) for Q-values."""
    from distral.core import apex

    if outputs == "q_values":
        return apex.epsilon_greedy(values, jax.numpy.asarray(apex.EVAL_EPSILON), key)
    return jax.random.categorical(key, values)


def _check_compatible(run: Any, student: Experiment) -> None:
    """A one-line ConfigError naming the run when it cannot teach `student`'s tasks."""
    teacher = run.experiment
    where = str(run.path)
    if teacher.config.env.name != student.config.env.name:
        raise ConfigError(
            f"teacher {where!r} ran env {teacher.config.env.name!r}, "
            f"the student env {student.config.env.name!r}"
        )
    t_grid, s_grid = teacher.env_params, student.env_params
    if t_grid is not None and s_grid is not None and not np.array_equal(t_grid.walls, s_grid.walls):
        raise ConfigError(f"teacher {where!r} ran another two_room map than the student's")
    t_spec, s_spec = teacher.observation_spec, student.observation_spec
    if (t_spec.shape, t_spec.dtype) != (s_spec.shape, s_spec.dtype):
        raise ConfigError(
            f"teacher {where!r} has observations {t_spec.shape} {t_spec.dtype}, "
            f"the student {s_spec.shape} {s_spec.dtype}"
        )
    if teacher.network.num_actions != student.network.num_actions:
        raise ConfigError(
            f"teacher {where!r} has {teacher.network.num_actions} actions, "
            f"the student {student.network.num_actions}"
        )


def load_teachers(
    run_dirs: Sequence[str | Path], student: Experiment, seed: int | None = None
) -> tuple[Teacher, ...]:
    """One teacher per task of `student`, in its task order, from the runs `run_dirs`
    (their latest checkpoints, seed `seed` or each run's first). A run that cannot teach
    (another environment, layout, observation or action shape), a task taught twice, or a
    task no run teaches is a one-line ConfigError naming it."""
    from distral.rundir import load_run

    if not run_dirs:
        raise ConfigError("no teacher: give at least one --teacher RUN_DIR (or distill.teachers)")
    found: dict[str, Teacher] = {}
    for run_dir in run_dirs:
        run = load_run(run_dir, seed)
        _check_compatible(run, student)
        for task, name in enumerate(run.experiment.task_names):
            if name not in student.task_names:
                continue
            if name in found:
                raise ConfigError(
                    f"task {name!r} has two teachers: {found[name].source!r} and "
                    f"{f'{run.path}, task {task}'!r}"
                )
            make = _q_teacher if run.config.algorithm in APEX_FAMILIES else _policy_teacher
            found[name] = make(run, task)
    missing = [name for name in student.task_names if name not in found]
    if missing:
        raise ConfigError(
            f"no teacher for task {missing[0]!r} (task {student.task_names.index(missing[0])}"
            f" of the student) in {', '.join(repr(str(r)) for r in run_dirs)}"
        )
    return tuple(found[name] for name in student.task_names)
