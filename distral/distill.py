"""`distral distill`: a multitask student learns from finished runs, in one jit (two_room).

Policy Distillation (Rusu et al., 2016, arXiv:1511.06295) and Actor-Mimic (Parisotto et
al., 2016, arXiv:1511.06342) on the pure-JAX two-room tasks. One compiled chunk repeats
`log_every` times: a rollout of `unroll_length` steps of every task's environments, acting
with the student (or the teacher, or a per-step mixture: `distill.behaviour`); the
teachers label every visited state with their outputs and features; the samples go into
one replay per task (a ring buffer of `distill.replay_per_task`); then one update of the
student on `distill.batch_per_task` samples drawn uniformly from each task's replay (tasks
interleaved evenly, as in both papers). Seeds are vmapped; teachers are shared.

The run directory is `distral train`'s: metrics.csv (eval_return_task_i is the student's
evaluation, teacher_eval_return the teachers' on the same episodes' keys, kl_task_i the
KL from softmax(teacher / tau) to the student), checkpoints whose `runner/train/params`
are the student network's (so `rundir.load_run` reads it and a student can teach in its
turn), curves.png and summary.json with per-task student and teacher returns and the
parameter counts.

On the games (MinAtar, Atari) `distral distill` runs `distral launch`'s processes instead:
each actor holds the student's head for its task and that task's teacher (`actor_policy`)
and writes every state with the teacher's labels into its task's Reverb table; the
learner takes `batch_per_task` samples of every task per step
(`distral.distributed.replay.TeacherSampler`) and evaluates student and teachers
(`experiment_and_teachers` builds what each process needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distral import rundir, runloop
from distral.config import STUDENT_FAMILIES, ConfigError, TrainConfig
from distral.core import distillation
from distral.envs import two_room
from distral.evaluator import evaluation_key, policy_returns_fn
from distral.experiment import Experiment, make_experiment
from distral.teachers import Teacher, load_teachers, num_params, teacher_actions, total_params

Array = jax.Array


class Replay(NamedTuple):
    """One ring buffer per task; every rollout writes the same count into each."""

    observation: Array  # [N, C, *obs]
    teacher_outputs: Array  # [N, C, A]
    teacher_features: Array  # [N, C, D_max] (D_max = 1, zeros, without feature regression)
    size: Array  # [] int32: samples held per task
    cursor: Array  # [] int32: the next write position


class DistillRunner(NamedTuple):
    """Everything the jitted loop carries for one seed."""

    train: distillation.DistillState
    env_state: two_room.EnvState  # [N, E]
    obs: Array  # [N, E, D]
    episode_return: Array  # [N, E]
    replay: Replay
    key: Array


def student_experiment(experiment: Experiment, teachers: Sequence[Teacher]) -> Experiment:
    """`experiment` (of `algorithm: distill`) with its learner told the teachers' feature
    sizes, which size Actor-Mimic's regression heads f_i."""
    return experiment.with_learner_config(feature_dims=tuple(t.feature_dim for t in teachers))


def feature_size(learner: distillation.LearnerConfig) -> int:
    """The width of the teacher features kept per sample: the largest teacher's with
    feature regression, else 1 (a zero: nothing to regress)."""
    return max(learner.feature_dims) if learner.loss.uses_features else 1


def labels(
    teacher: Teacher, params: Any, obs: Array, learner: distillation.LearnerConfig
) -> tuple[Array, Array]:
    """Teacher outputs [B, A] and features [B, `feature_size`] of observations [B, ...]:
    the features zero-padded to the largest teacher's, or one zero without feature
    regression."""
    outputs, features = teacher.apply(params, obs)
    if not learner.loss.uses_features:
        return outputs, jnp.zeros((*outputs.shape[:-1], 1))
    return outputs, jnp.pad(features, ((0, 0), (0, feature_size(learner) - features.shape[-1])))


def actor_policy(experiment: Experiment, teacher: Teacher) -> Any:
    """The distributed actor's policy for `teacher`'s task (`distral.distributed.actor.
    Policy`): the behaviour (`distill.behaviour`: the student's head for the task, the
    teacher, or a per-step mixture) picks the actions; every state goes out with the
    teacher's outputs and (padded) features. The student's parameters are the actor's
    one-task slice (`network.task_params`), so its head is head 0."""
    network = experiment.network
    settings = experiment.config.distill
    learner = experiment.parts.learner_config

    @jax.jit
    def act(student: Any, teacher_params: Any, obs: Array, key: Array) -> tuple[Array, dict]:
        k_student, k_teacher, k_mix = jax.random.split(key, 3)
        outputs, features = labels(teacher, teacher_params, obs, learner)
        action = teacher_actions(teacher.outputs, outputs, k_teacher)
        if settings.behaviour != "teacher":
            logits = network.apply_task(student, obs, jnp.zeros((), jnp.int32)).logits
            own = jax.random.categorical(k_student, logits)
            if settings.behaviour == "mixture":
                use_teacher = jax.random.bernoulli(k_mix, settings.teacher_prob, own.shape)
                own = jnp.where(use_teacher, action, own)
            action = own
        return action, {"teacher_outputs": outputs, "teacher_features": features}

    return lambda params, obs, key: act(params, teacher.params, obs, key)


class Distiller:
    """Builds the jitted programs of one `algorithm: distill` configuration."""

    def __init__(self, config: TrainConfig, teachers: Sequence[Teacher] | None = None) -> None:
        if config.algorithm != "distill":
            raise ConfigError(
                f"distral distill runs algorithm 'distill'; this config's is "
                f"{config.algorithm!r} (set algorithm: distill)"
            )
        if config.env.name != "two_room":
            raise ConfigError(
                f"the one-program student runs the pure-JAX two_room; env.name="
                f"{config.env.name!r} runs through distral launch's processes "
                "(distral distill does that for the games)"
            )
        per_rollout = config.num_envs_per_task * config.unroll_length
        if config.distill.replay_per_task < per_rollout:
            raise ConfigError(
                f"distill.replay_per_task={config.distill.replay_per_task} holds less than one "
                f"rollout's {per_rollout} samples per task (num_envs_per_task x unroll_length)"
            )
        self.config = config
        self.settings = config.distill
        self.experiment = experiment = make_experiment(config)
        assert experiment.env_params is not None  # two_room, checked above
        self.env_params = experiment.env_params
        self.num_tasks = experiment.num_tasks
        self.network = experiment.network
        if teachers is None:
            teachers = load_teachers(self.settings.teachers, experiment, self.settings.teacher_seed)
        self.teachers = tuple(teachers)
        self.teacher_params = tuple(t.params for t in self.teachers)
        self.parts = student_experiment(experiment, self.teachers).parts
        self.feature_size = feature_size(self.parts.learner_config)
        self._returns = policy_returns_fn(
            self.env_params, config.eval_episodes_per_task, config.env.step_limit
        )
        self.init = jax.jit(jax.vmap(self._init))
        self.run_chunk = jax.jit(jax.vmap(self._chunk, in_axes=(0, None)))
        self.evaluate = jax.jit(jax.vmap(self._evaluate, in_axes=(0, None, 0)))
        # Trace (no compile) every program once, so that a config that cannot run fails
        # here, before any file is written.
        runner = jax.eval_shape(self._init, jax.random.PRNGKey(0))
        jax.eval_shape(self._chunk, runner, self.teacher_params)
        jax.eval_shape(self._evaluate, runner.train.params, self.teacher_params, runner.key)

    @property
    def student_params(self) -> int:
        """Scalars of the student network (the regression heads f_i are not the student)."""
        return num_params(self.experiment.params_template())

    def eval_keys(self, log_step: int) -> Array:
        """Evaluation keys [seeds] of a log step: pi_i's half of `distral train`'s keys."""
        keys = [jax.random.split(evaluation_key(s, log_step))[0] for s in self.config.seeds]
        return jnp.stack(keys)

    # THE RUN LOOP'S PARTS (`runloop.ChunkRunner`)
    progress_column = "eval_return"  # the student's evaluation

    @property
    def progress_label(self) -> str:
        return f"distill {self.settings.loss}"

    def columns(self) -> list[str]:
        scalars = [*self.experiment.algorithm.metrics, "teacher_eval_return"]
        return rundir.metric_columns(self.num_tasks, scalars)

    def chunk(self, runner: DistillRunner, log_step: int) -> tuple[DistillRunner, Any]:
        runner, stats = self.run_chunk(runner, self.teacher_params)
        keys = self.eval_keys(log_step)
        student, teacher = self.evaluate(runner.train.params, self.teacher_params, keys)
        return runner, jax.device_get((stats, student, teacher))

    def row_writer(self, warn: Callable[[str], None]) -> _StudentRows:
        return _StudentRows(self)

    def summary_fields(self, runner: DistillRunner) -> dict[str, Any]:
        """A student's entries: per-task student and teacher returns of the final
        evaluation (means over seeds) and the parameter counts (compression)."""
        student, teacher = self.evaluate(
            runner.train.params, self.teacher_params, self.eval_keys(self.config.num_log_steps)
        )
        student, teacher = np.asarray(student).mean(0), np.asarray(teacher).mean(0)
        return student_fields(self.config, student, teacher, self.student_params, self.teachers)

    # TEACHERS: labels of a task-major observation batch [N, E, ...]
    def teach(self, teacher_params: tuple[Any, ...], obs: Array) -> tuple[Array, Array]:
        """(outputs [N, E, A], features [N, E, D_max]): teacher i labels row i."""
        outputs, features = [], []
        for i, (teacher, params) in enumerate(zip(self.teachers, teacher_params, strict=True)):
            out, feat = labels(teacher, params, obs[i], self.parts.learner_config)
            outputs.append(out)
            features.append(feat)
        return jnp.stack(outputs), jnp.stack(features)

    def _evaluate(
        self, params: Any, teacher_params: tuple[Any, ...], key: Array
    ) -> tuple[Array, Array]:
        """(student returns [N], teacher returns [N]) on the same keys: paired episodes."""

        def student(params: Any, obs: Array) -> Array:
            return self.network.apply_tasks(params, obs).logits

        def teachers(params: Any, obs: Array) -> Array:
            return self.teach(params, obs)[0]

        return self._returns(student, params, key), self._returns(teachers, teacher_params, key)

    # INIT
    def _init(self, key: Array) -> DistillRunner:
        k_train, k_env, k_run = jax.random.split(key, 3)
        E, N, C = self.config.num_envs_per_task, self.num_tasks, self.settings.replay_per_task
        example = jnp.zeros((1, self.experiment.obs_size))
        train = self.experiment.algorithm.init_state(k_train, self.parts, example)
        keys = jax.random.split(k_env, N * E).reshape(N, E, -1)
        task_ids = jnp.broadcast_to(jnp.arange(N)[:, None], (N, E))
        reset = jax.vmap(jax.vmap(two_room.reset, (0, None, 0)), (0, None, 0))
        env_state, obs = reset(keys, self.env_params, task_ids)
        A = self.network.num_actions
        replay = Replay(
            jnp.zeros((N, C, *obs.shape[2:]), obs.dtype),
            jnp.zeros((N, C, A)),
            jnp.zeros((N, C, self.feature_size)),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )
        return DistillRunner(train, env_state, obs, jnp.zeros((N, E)), replay, k_run)

    # ROLLOUT: T steps of every environment with the behaviour policy; teachers label.
    def rollout(
        self, runner: DistillRunner, teacher_params: tuple[Any, ...]
    ) -> tuple[DistillRunner, tuple[Array, Array, Array], Array, Array]:
        params = runner.train.params
        N, E = self.num_tasks, self.config.num_envs_per_task
        task_ids = jnp.broadcast_to(jnp.arange(N)[:, None], (N, E))
        step = jax.vmap(jax.vmap(two_room.step_auto_reset, (0, None, 0, 0, 0)), (0, None, 0, 0, 0))
        behaviour, teacher_prob = self.settings.behaviour, self.settings.teacher_prob

        def one_step(carry, _):
            env_state, obs, ep_ret, ret_sum, count, key = carry
            key, k_act, k_mix, k_env = jax.random.split(key, 4)
            outputs, features = self.teach(teacher_params, obs)
            if behaviour == "teacher":
                logits = outputs
            else:
                logits = self.network.apply_tasks(params, obs).logits
                if behaviour == "mixture":
                    use_teacher = jax.random.bernoulli(k_mix, teacher_prob, (N, E))
                    logits = jnp.where(use_teacher[..., None], outputs, logits)
            action = jax.random.categorical(k_act, logits)
            keys = jax.random.split(k_env, N * E).reshape(N, E, -1)
            env_state, next_obs, reward, _, done = step(
                keys, self.env_params, env_state, action, task_ids
            )
            ep_ret = ep_ret + reward
            ret_sum = ret_sum + jnp.sum(jnp.where(done, ep_ret, 0.0), axis=1)
            count = count + jnp.sum(done, axis=1)
            ep_ret = jnp.where(done, 0.0, ep_ret)
            return (env_state, next_obs, ep_ret, ret_sum, count, key), (obs, outputs, features)

        zeros = jnp.zeros(N)
        carry = (runner.env_state, runner.obs, runner.episode_return, zeros, zeros, runner.key)
        carry, samples = jax.lax.scan(one_step, carry, None, length=self.config.unroll_length)
        env_state, obs, ep_ret, ret_sum, count, key = carry
        # [T, N, E, ...] -> [N, T * E, ...]: each task's samples of this rollout.
        samples = jax.tree.map(lambda x: x.swapaxes(0, 1).reshape((N, -1, *x.shape[3:])), samples)
        runner = runner._replace(env_state=env_state, obs=obs, episode_return=ep_ret, key=key)
        return runner, samples, ret_sum, count

    def write(self, replay: Replay, samples: tuple[Array, Array, Array]) -> Replay:
        """The rollout's samples into every task's ring buffer (the oldest overwritten)."""
        C = self.settings.replay_per_task
        n = samples[0].shape[1]
        positions = (replay.cursor + jnp.arange(n)) % C
        obs, out, feat = (
            buffer.at[:, positions].set(x) for buffer, x in zip(replay[:3], samples, strict=True)
        )
        return Replay(obs, out, feat, jnp.minimum(replay.size + n, C), (replay.cursor + n) % C)

    def sample(self, replay: Replay, key: Array) -> distillation.Batch:
        """`batch_per_task` samples of each task, uniformly from what its replay holds;
        task-major (samples of task i at i*b..(i+1)*b-1)."""
        N, b = self.num_tasks, self.settings.batch_per_task
        index = jax.random.randint(key, (N, b), 0, replay.size)
        take = jax.vmap(lambda buffer, i: buffer[i])
        obs, out, feat = (take(buffer, index) for buffer in replay[:3])
        return distillation.Batch(
            obs.reshape((N * b, *obs.shape[2:])),
            out.reshape((N * b, -1)),
            feat.reshape((N * b, -1)),
            jnp.repeat(jnp.arange(N, dtype=jnp.int32), b),
        )

    # CHUNK: `log_every` x (rollout, write, sample, update), scanned.
    def _chunk(
        self, runner: DistillRunner, teacher_params: tuple[Any, ...]
    ) -> tuple[DistillRunner, dict[str, Any]]:
        def one_update(runner, _):
            runner, samples, ret_sum, count = self.rollout(runner, teacher_params)
            replay = self.write(runner.replay, samples)
            key, k_sample = jax.random.split(runner.key)
            batch = self.sample(replay, k_sample)
            train, metrics = self.experiment.algorithm.update_step(runner.train, batch, self.parts)
            runner = runner._replace(train=train, replay=replay, key=key)
            return runner, (ret_sum, count, metrics)

        runner, (ret_sum, count, metrics) = jax.lax.scan(
            one_update, runner, None, length=self.config.log_every
        )
        stats = {
            "return_sum": ret_sum.sum(0),
            "episode_count": count.sum(0),
            "metrics": jax.tree.map(lambda x: x.mean(0), metrics),
        }
        return runner, stats


# THE RUN: Python between chunks (`distral/runloop.py`).


class _StudentRows:
    """The metrics rows of one chunk, one per seed: the student's evaluation in pi_i's
    place, the teachers' mean return beside it."""

    def __init__(self, distiller: Distiller) -> None:
        self.distiller = distiller

    def rows(self, log_step: int, data: Any, wall: float, seconds: float) -> list[dict[str, float]]:
        stats, student, teacher = data
        distiller = self.distiller
        config = distiller.config
        rows = []
        for j, seed in enumerate(config.seeds):
            returns = runloop.mean_returns(stats["return_sum"][j], stats["episode_count"][j])
            metrics = {name: value[j] for name, value in stats["metrics"].items()}
            tasks = rundir.TaskStats(
                returns,
                student[j],
                np.full(distiller.num_tasks, np.nan),
                metrics["kl_per_task"],
                metrics["entropy_per_task"],
            )
            head = runloop.row_head(config, distiller.num_tasks, seed, log_step, wall, seconds)
            scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
            scalars["teacher_eval_return"] = float(np.mean(teacher[j]))
            rows.append(
                rundir.metrics_row(
                    head,
                    tasks,
                    scalars,
                    optimal_return=float(distiller.experiment.optimal_returns.mean()),
                    collapsed_tasks=math.nan,
                    has_kl=True,
                )
            )
        return rows


def run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    distiller: Distiller | None = None,
) -> rundir.RunResult:
    """Distils the teachers of `config` into a student in `run_dir` (resuming from its
    last checkpoint if `resume`). Without `resume`, nothing in `run_dir` is overwritten."""
    run_dir = Path(run_dir).absolute()
    rundir.check_run_dir(run_dir, resume=resume)
    config = rundir.inline_layout(config)
    distiller = distiller or Distiller(config)
    return runloop.run(distiller, config, run_dir, resume=resume, progress=progress)


def student_fields(
    config: TrainConfig,
    student: np.ndarray,
    teacher: np.ndarray,
    student_params: int,
    teachers: Sequence[Teacher],
) -> dict[str, Any]:
    """A student's summary.json entries (both runners): per-task student and teacher
    returns of the final evaluation, the worst gap, and the parameter counts."""
    return {
        "loss": config.distill.loss,
        "student_returns_per_task": [float(x) for x in student],
        "teacher_returns_per_task": [float(x) for x in teacher],
        "worst_gap_to_teacher": float(np.max(teacher - student)),
        "student_params": student_params,
        "teacher_params": total_params(teachers),
        "teachers": [t.source for t in teachers],
    }


def experiment_and_teachers(config: TrainConfig) -> tuple[Experiment, tuple[Teacher, ...] | None]:
    """What each process of a distributed run builds: the experiment, and for a
    distillation student its teachers (read from their runs; their feature sizes told to
    the learner). Other families have no teachers (None)."""
    experiment = make_experiment(config)
    if config.algorithm not in STUDENT_FAMILIES:
        return experiment, None
    teachers = load_teachers(config.distill.teachers, experiment, config.distill.teacher_seed)
    if config.algorithm == "apex_distill":  # a dueling student: no feature regression
        return experiment, teachers
    return student_experiment(experiment, teachers), teachers
