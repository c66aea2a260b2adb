"""The evaluator: pi_i on its own task and pi_0 on every task (Teh et al., 2017,
arXiv:1707.04175; DESIGN.md section 3).

`evaluation_fn` is pure: `distral train` vmaps it over seeds inside its program and the
distributed learner jits it as is. Each evaluation runs `episodes` fresh episodes per task
to the time limit (no auto-reset) and returns the mean undiscounted return per task.
Keys are a function of the seed and the log step alone (`evaluation_key`), so a resumed run
evaluates exactly as an uninterrupted one: on the two-room, and a distillation student on
the games. Other game runs' `GameEvaluator` keeps its environments across evaluations, whose
random state a resumed run starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distral.envs import two_room
from distral.experiment import Experiment, seed32

Array = jax.Array
EvaluationFn = Callable[[Any, Array], tuple[Array, Array]]


def evaluation_key(seed: int, log_step: int) -> Array:
    """The key of the evaluation at `log_step` of seed `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(10_000 + seed), log_step)


LogitsFn = Callable[[Any, Array], Array]  # (params, obs [N, E, *obs]) -> logits [N, E, A]


def policy_returns_fn(
    env_params: two_room.TwoRoomParams, episodes: int, max_steps: int
) -> Callable[[LogitsFn, Any, Array], Array]:
    """(logits_fn, params, key) -> mean undiscounted return [N] of `episodes` fresh
    two-room episodes per task, row i of the observations from task i, actions sampled
    from `logits_fn(params, obs)`. Pure: any policy over all tasks at once (a Distral
    network's pi_i or pi_0, a student, a set of teachers) is evaluated the same way."""
    N, E = two_room.num_tasks(env_params), episodes
    task_ids = jnp.broadcast_to(jnp.arange(N)[:, None], (N, E))
    reset = jax.vmap(jax.vmap(two_room.reset, (0, None, 0)), (0, None, 0))
    step = jax.vmap(jax.vmap(two_room.step, (None, 0, 0, 0)), (None, 0, 0, 0))

    def returns(logits_fn: LogitsFn, params: Any, key: Array) -> Array:
        k_reset, k_run = jax.random.split(key)
        env_state, obs = reset(
            jax.random.split(k_reset, N * E).reshape(N, E, -1), env_params, task_ids
        )

        def one_step(carry, key):
            env_state, obs, total, alive = carry
            action = jax.random.categorical(key, logits_fn(params, obs))
            env_state, obs, reward, discount = step(env_params, env_state, action, task_ids)
            total = total + jnp.where(alive, reward, 0.0)
            alive = alive & (discount > 0)
            return (env_state, obs, total, alive), None

        init = (env_state, obs, jnp.zeros((N, E)), jnp.ones((N, E), bool))
        (_, _, total, _), _ = jax.lax.scan(one_step, init, jax.random.split(k_run, max_steps))
        return total.mean(axis=1)

    return returns


def evaluation_fn(experiment: Experiment, episodes: int) -> EvaluationFn:
    """(params, key) -> (pi_i returns [N], pi_0 returns [N]); pi_0's are NaN without pi_0."""
    env_params, network = experiment.env_params, experiment.network
    assert env_params is not None, "evaluation runs the pure-JAX two_room"
    returns = policy_returns_fn(env_params, episodes, experiment.config.env.step_limit)

    def pi_i(params: Any, obs: Array) -> Array:
        return network.apply_tasks(params, obs).logits

    def pi_0(params: Any, obs: Array) -> Array:
        return network.apply_tasks(params, obs).distilled_logits

    def evaluate(params: Any, key: Array) -> tuple[Array, Array]:
        k_i, k_0 = jax.random.split(key)
        pi_i_returns = returns(pi_i, params, k_i)
        if not experiment.has_pi0:
            return pi_i_returns, jnp.full_like(pi_i_returns, jnp.nan)
        return pi_i_returns, returns(pi_0, params, k_0)

    return evaluate


class Evaluator:
    """The distributed run's evaluator: one jitted evaluation of one seed's parameters."""

    def __init__(self, experiment: Experiment, episodes: int, seed: int) -> None:
        self._evaluate = jax.jit(evaluation_fn(experiment, episodes))
        self._seed = seed

    def __call__(self, params: Any, log_step: int) -> tuple[np.ndarray, np.ndarray]:
        """(pi_i returns [N], pi_0 returns [N]) of the evaluation at `log_step`."""
        pi_i, pi_0 = self._evaluate(params, evaluation_key(self._seed, log_step))
        return np.asarray(pi_i), np.asarray(pi_0)


class GameEvaluator:
    """The evaluator of the game environments (MinAtar, Atari): dm_env episodes in Python.

    Each task keeps `episodes` environments; an evaluation resets them, runs pi_i (then
    pi_0, or with `teachers` each task's teacher: a distillation student's run) on all of
    them in lockstep (one jitted action selection per step) until every episode ended or
    the step limit, and returns the mean return per task. It runs in the learner process
    and blocks it meanwhile: keep `eval_episodes_per_task` small for Atari.

    Teachers are evaluated paired with the student, as on the two-room: a student's
    evaluation builds its environments and its teachers' afresh, with the same seeds
    (from the evaluator's seed, the task, the episode and the log step), and each game's
    teacher starts from the key the student's game started with (the evaluation's key
    folded with the game), so episode e of both starts alike, meets the same environment
    randomness, and picks its actions with the same Gumbel draws. Two equal policies play
    equal episodes, at every evaluation; the gap measures the policies' difference, not
    two draws of evaluation noise; and a teacher's episodes depend on the seed and the
    log step only, not on the student it is paired with. Runs without
    teachers keep one set of environments across evaluations, as before.
    """

    def __init__(
        self,
        experiment: Experiment,
        episodes: int,
        seed: int,
        should_stop: Callable[[], bool] | None = None,
        teachers: Sequence[Any] | None = None,
    ) -> None:
        from distral.core import acting

        self._should_stop = should_stop or (lambda: False)
        self._experiment = experiment
        self._seed = seed
        self._limit = experiment.config.env.step_limit

        self._episodes = episodes
        self._select_pi0 = acting.select_action_pi0
        self._teachers = None if teachers is None else [_teacher_policy(t) for t in teachers]
        # one set for the whole run; a student's (paired) evaluations make theirs each time
        self._envs = self._environments(0) if teachers is None else []

    def _environments(self, log_step: int) -> list[list[Any]]:
        """Each task's `episodes` environments, seeded by (seed, task, episode, 1 + log_step):
        the first evaluation's seeds are those a run without teachers keeps."""
        make, seed = self._experiment.make_env, self._seed
        return [
            [make(task, seed32(seed, task, e, 1 + log_step)) for e in range(self._episodes)]
            for task in range(self._experiment.num_tasks)
        ]

    def _network(self, params: Any, use_pi0: bool) -> Callable[[int], _Act]:
        """Task -> (obs, key) -> actions of pi_i (the family's `select_action`) or pi_0,
        on the task's column alone."""
        experiment, pi_0 = self._experiment, self._select_pi0
        network, act = experiment.network, experiment.algorithm.select_action
        parts = experiment.parts

        def for_task(task: int) -> _Act:
            column = network.task_params(params, task)
            if use_pi0:
                return lambda obs, key: pi_0(column, obs, np.int32(0), key, network=network)[0]
            # the family's acting function (Ape-X's is near-greedy on Q)
            return lambda obs, key: act(column, obs, np.int32(0), key, parts)[0]

        return for_task

    def _returns(
        self, policy: Callable[[int], _Act], root: Array, environments: list[list[Any]]
    ) -> np.ndarray:
        """Each episode's return [N, episodes], all NaN if a stop came first. Task i's
        episodes start from `fold_in(root, i)`: no key runs on from one task to the next,
        so a task's draws do not depend on how long the policy's earlier tasks lasted."""
        out = np.zeros((self._experiment.num_tasks, self._episodes))
        for task, envs in enumerate(environments):
            key = jax.random.fold_in(root, task)
            obs = np.stack([np.asarray(env.reset().observation) for env in envs])
            act = policy(task)
            alive = np.ones(len(envs), bool)
            for _ in range(self._limit):
                key, sub = jax.random.split(key)
                action = np.asarray(act(obs, sub))
                for e, env in enumerate(envs):
                    if not alive[e]:
                        continue
                    ts = env.step(int(action[e]))
                    out[task, e] += float(ts.reward)
                    obs[e] = ts.observation
                    alive[e] = not ts.last()
                if not alive.any():
                    break
                if self._should_stop():  # a stop must not wait for long episodes
                    return np.full_like(out, np.nan)
        return out

    def episode_returns(self, params: Any, log_step: int) -> tuple[np.ndarray, np.ndarray]:
        """(pi_i's returns [N, episodes], pi_0's or the teachers' [N, episodes]; NaN where
        the run has neither) of the evaluation at `log_step`, episode by episode; the
        teachers' episodes are paired with the student's (the class's docstring)."""
        k_i, k_0 = jax.random.split(evaluation_key(self._seed, log_step))
        student = self._network(params, use_pi0=False)
        if self._teachers is not None:
            pi_i = self._returns(student, k_i, self._environments(log_step))
            paired = self._environments(log_step)  # the student's seeds again
            return pi_i, self._returns(self._teachers.__getitem__, k_i, paired)
        pi_i = self._returns(student, k_i, self._envs)
        if not self._experiment.has_pi0:
            return pi_i, np.full_like(pi_i, np.nan)
        return pi_i, self._returns(self._network(params, use_pi0=True), k_0, self._envs)

    def __call__(self, params: Any, log_step: int) -> tuple[np.ndarray, np.ndarray]:
        """(pi_i returns [N], pi_0 returns [N]) of the evaluation at `log_step`; with
        teachers, (the student's returns, the teachers')."""
        pi_i, other = self.episode_returns(params, log_step)
        return pi_i.mean(axis=1), other.mean(axis=1)


_Act = Callable[[np.ndarray, Array], Array]  # (observations [B, ...], key) -> actions [B]


def _teacher_policy(teacher: Any) -> _Act:
    """A teacher's actions as its run acted (`teachers.teacher_actions`), jitted once."""
    from distral.teachers import teacher_actions

    sample = jax.jit(
        lambda params, obs, key: teacher_actions(
            teacher.outputs, teacher.apply(params, obs)[0], key
        )
    )
    return lambda obs, key: sample(teacher.params, obs, key)


def make_evaluator(
    experiment: Experiment,
    episodes: int,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
    teachers: Sequence[Any] | None = None,
):
    """The evaluator of a distributed run: jitted for two_room, dm_env episodes for games
    (where `teachers`, a distillation student's, take pi_0's place).

    A game evaluation gives up (NaN returns) as soon as `should_stop()` is true, so that a
    stop request is honoured within the launcher's 10 s; the two-room one takes ~0.1 s.
    """
    if experiment.config.env.name == "two_room":
        return Evaluator(experiment, episodes, seed)
    return GameEvaluator(experiment, episodes, seed, should_stop, teachers)
