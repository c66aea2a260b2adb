"""`distral train`: the single-process trainer, with rollouts and updates in one jit.

For pure-JAX environments the whole loop (DESIGN.md section 3, "single-process fast
path") is one compiled program: `lax.scan` over unroll steps and over updates, `vmap` over
environments, tasks and seeds. It uses the same networks, `distral_loss` and
`learning.update_step` as the distributed learner. Python only runs between chunks of
`log_every` updates: logging, evaluation, checkpoints.

Run directory: config.yaml, metrics.csv (appended), tb/ (TensorBoard), checkpoints/
(orbax, atomic, latest N), curves.png, summary.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distral import rundir, runloop
from distral.collapse import CollapseMonitor
from distral.config import ConfigError, TrainConfig
from distral.core import learning
from distral.envs import two_room
from distral.evaluator import evaluation_fn, evaluation_key
from distral.experiment import make_experiment
from distral.transfer import init_state_fn

Array = jax.Array


class RunnerState(NamedTuple):
    """Everything the jitted loop carries for one seed."""

    train: learning.TrainingState
    env_state: two_room.EnvState  # [N, E]
    obs: Array  # [N, E, D]
    episode_return: Array  # [N, E] return so far of the running episodes
    key: Array


class ChunkStats(NamedTuple, Generic[learning.ArrayT]):
    """Jax arrays from the jitted chunk, numpy arrays once fetched with `jax.device_get`."""

    return_sum: learning.ArrayT  # [N] returns of the episodes that ended in the chunk
    episode_count: learning.ArrayT  # [N]
    metrics: dict[str, learning.ArrayT]  # update metrics, averaged over the chunk


class Trainer:
    """Builds the jitted programs of one configuration."""

    def __init__(self, config: TrainConfig) -> None:
        if config.algorithm != "distral":
            raise ConfigError(
                f"algorithm={config.algorithm!r}: distral train runs algorithm 'distral' "
                "(distill runs with distral distill, apex with distral launch)"
            )
        if config.env.name != "two_room":
            raise ConfigError(
                f"distral train runs pure-JAX environments (two_room); env.name="
                f"{config.env.name!r} runs with distral launch"
            )
        self.config = config
        self.experiment = experiment = make_experiment(config)
        assert experiment.env_params is not None  # two_room, checked above
        self.env_params = experiment.env_params
        self.variant = experiment.variant
        self.num_tasks = experiment.num_tasks
        self.obs_size = experiment.obs_size
        self.algorithm = experiment.algorithm
        self.network = experiment.network
        self.has_pi0 = experiment.has_pi0
        self.optimal_returns = experiment.optimal_returns
        self._init_state = init_state_fn(experiment)  # reads init_from (transfer), if any
        self.init = jax.jit(jax.vmap(self._init))
        self.run_chunk = jax.jit(jax.vmap(self._chunk))
        self.evaluate = jax.jit(jax.vmap(evaluation_fn(experiment, config.eval_episodes_per_task)))
        # Trace (no compile) once, so a config that cannot run fails here, before any file.
        jax.eval_shape(self._init, jax.random.PRNGKey(0))

    def eval_keys(self, log_step: int) -> Array:
        """Evaluation keys [seeds] of a log step: a function of each seed alone."""
        return jnp.stack([evaluation_key(s, log_step) for s in self.config.seeds])

    # THE RUN LOOP'S PARTS (`runloop.ChunkRunner`)
    progress_column = "mean_return"  # training episodes' return

    @property
    def progress_label(self) -> str:
        return self.config.variant

    def columns(self) -> list[str]:
        return rundir.metric_columns(self.num_tasks, self.experiment.metrics)

    def chunk(self, runner: RunnerState, log_step: int) -> tuple[RunnerState, Any]:
        runner, stats = self.run_chunk(runner)
        pi_i, pi_0 = self.evaluate(runner.train.params, self.eval_keys(log_step))
        return runner, jax.device_get((stats, pi_i, pi_0))

    def row_writer(self, warn: Callable[[str], None]) -> _ChunkLogger:
        return _ChunkLogger(self, warn)

    def summary_fields(self, runner: RunnerState) -> dict[str, Any]:
        return {}

    # ENVIRONMENT BATCH: [N tasks, E envs]
    def task_ids(self, num_envs: int) -> Array:
        return jnp.broadcast_to(jnp.arange(self.num_tasks)[:, None], (self.num_tasks, num_envs))

    def _reset(self, key: Array, num_envs: int) -> tuple[two_room.EnvState, Array]:
        keys = jax.random.split(key, self.num_tasks * num_envs).reshape(
            self.num_tasks, num_envs, -1
        )
        reset = jax.vmap(jax.vmap(two_room.reset, (0, None, 0)), (0, None, 0))
        return reset(keys, self.env_params, self.task_ids(num_envs))

    def _init(self, key: Array) -> RunnerState:
        k_train, k_env, k_run = jax.random.split(key, 3)
        train = self._init_state(k_train)
        env_state, obs = self._reset(k_env, self.config.num_envs_per_task)
        ret = jnp.zeros(obs.shape[:2])
        return RunnerState(train, env_state, obs, ret, k_run)

    # ROLLOUT: T steps of every environment with pi_i, auto-resetting ended episodes.
    def rollout(self, runner: RunnerState) -> tuple[RunnerState, learning.Batch, Array, Array]:
        params = runner.train.params
        E = self.config.num_envs_per_task
        task_ids = self.task_ids(E)
        step = jax.vmap(jax.vmap(two_room.step_auto_reset, (0, None, 0, 0, 0)), (0, None, 0, 0, 0))

        def one_step(carry, _):
            env_state, obs, ep_ret, ret_sum, count, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            logits = self.network.apply_tasks(params, obs).logits  # [N, E, A]
            action = jax.random.categorical(k_act, logits)
            keys = jax.random.split(k_env, self.num_tasks * E).reshape(self.num_tasks, E, -1)
            env_state, next_obs, reward, discount, done = step(
                keys, self.env_params, env_state, action, task_ids
            )
            ep_ret = ep_ret + reward
            ret_sum = ret_sum + jnp.sum(jnp.where(done, ep_ret, 0.0), axis=1)
            count = count + jnp.sum(done, axis=1)
            ep_ret = jnp.where(done, 0.0, ep_ret)
            out = (obs, action, reward, discount, logits)
            return (env_state, next_obs, ep_ret, ret_sum, count, key), out

        zeros = jnp.zeros(self.num_tasks)
        carry = (runner.env_state, runner.obs, runner.episode_return, zeros, zeros, runner.key)
        carry, (obs, action, reward, discount, logits) = jax.lax.scan(
            one_step, carry, None, length=self.config.unroll_length
        )
        env_state, last_obs, ep_ret, ret_sum, count, key = carry

        # T+1 steps, task-major [T+1, N*E, ...]; the last step's action etc. are unused.
        def with_last(x: Array, last: Array) -> Array:
            x = jnp.concatenate([x, last[None]], axis=0)
            return x.reshape((x.shape[0], self.num_tasks * E, *x.shape[3:]))

        batch = learning.Batch(
            observation=with_last(obs, last_obs),
            action=with_last(action, jnp.zeros_like(action[0])),
            reward=with_last(reward, jnp.zeros_like(reward[0])),
            discount=with_last(discount, jnp.zeros_like(discount[0])),
            behaviour_logits=with_last(logits, jnp.zeros_like(logits[0])),
            task_id=task_ids.reshape(-1),
        )
        runner = runner._replace(env_state=env_state, obs=last_obs, episode_return=ep_ret, key=key)
        return runner, batch, ret_sum, count

    # CHUNK: `log_every` x (rollout, update), scanned.
    def _chunk(self, runner: RunnerState) -> tuple[RunnerState, ChunkStats[Array]]:
        def one_update(runner, _):
            runner, batch, ret_sum, count = self.rollout(runner)
            train, metrics = self.algorithm.update_step(
                runner.train, batch, self.experiment.parts, task_grouped=True
            )
            return runner._replace(train=train), (ret_sum, count, metrics)

        runner, (ret_sum, count, metrics) = jax.lax.scan(
            one_update, runner, None, length=self.config.log_every
        )
        stats = ChunkStats(ret_sum.sum(0), count.sum(0), jax.tree.map(lambda x: x.mean(0), metrics))
        return runner, stats


# THE RUN: Python between chunks (`distral/runloop.py`).


def run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[int], None] | None = None,
    trainer: Trainer | None = None,
) -> rundir.RunResult:
    """Trains `config` into `run_dir` (resuming from its last checkpoint if `resume`).

    Without `resume`, `run_dir` must not exist or be empty: nothing is overwritten.
    """
    run_dir = Path(run_dir).absolute()
    rundir.check_run_dir(run_dir, resume=resume)
    config = rundir.inline_layout(config)
    trainer = trainer or Trainer(config)
    return runloop.run(trainer, config, run_dir, resume=resume, progress=progress, on_log=on_log)


class _ChunkLogger:
    """The metrics rows of one compiled chunk, one per seed; the collapse monitor's
    warnings go to `warn`."""

    def __init__(self, trainer: Trainer, warn: Callable[[str], None]) -> None:
        self.trainer = trainer
        experiment = trainer.experiment
        self.monitor = CollapseMonitor(
            experiment.task_names,
            experiment.floor_returns,
            trainer.config.collapse_entropy,
            warn=warn,
        )
        self.optimal = float(trainer.optimal_returns.mean())

    def rows(
        self,
        log_step: int,
        data: tuple[ChunkStats[np.ndarray], np.ndarray, np.ndarray],
        wall: float,
        seconds: float,
    ) -> list[dict[str, float]]:
        stats, pi_i, pi_0 = data
        config = self.trainer.config
        rows = []
        for j, seed in enumerate(config.seeds):
            returns = runloop.mean_returns(stats.return_sum[j], stats.episode_count[j])
            metrics = {name: value[j] for name, value in stats.metrics.items()}
            tasks = rundir.TaskStats(
                returns, pi_i[j], pi_0[j], metrics["kl_per_task"], metrics["entropy_per_task"]
            )
            head = runloop.row_head(config, self.trainer.num_tasks, seed, log_step, wall, seconds)
            env_steps = int(head["env_steps_per_task"])
            scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
            collapsed = self.monitor.check(seed, env_steps, tasks.entropy, returns)
            rows.append(
                rundir.metrics_row(
                    head,
                    tasks,
                    scalars,
                    optimal_return=self.optimal,
                    collapsed_tasks=collapsed,
                    has_kl=self.trainer.has_pi0,
                )
            )
        return rows
