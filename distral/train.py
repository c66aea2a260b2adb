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

import csv
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from distral import rundir
from distral.collapse import CollapseMonitor
from distral.config import ConfigError, TrainConfig
from distral.core import learning
from distral.envs import two_room
from distral.evaluator import evaluation_fn, evaluation_key
from distral.experiment import make_experiment

Array = jax.Array


class RunnerState(NamedTuple):
    """Everything the jitted loop carries for one seed."""

    train: learning.TrainingState
    env_state: two_room.EnvState  # [N, E]
    obs: Array  # [N, E, D]
    episode_return: Array  # [N, E] return so far of the running episodes
    key: Array


class ChunkStats(NamedTuple):
    return_sum: Array  # [N] returns of the episodes that ended in the chunk
    episode_count: Array  # [N]
    metrics: dict[str, Array]  # update metrics, averaged over the chunk


class Trainer:
    """Builds the jitted programs of one configuration."""

    def __init__(self, config: TrainConfig) -> None:
        if config.env.name != "two_room":
            raise ConfigError(
                f"distral train runs pure-JAX environments (two_room); env.name="
                f"{config.env.name!r} runs with distral launch"
            )
        self.config = config
        self.experiment = experiment = make_experiment(config)
        self.env_params = experiment.env_params
        self.variant = experiment.variant
        self.num_tasks = experiment.num_tasks
        self.obs_size = experiment.obs_size
        self.network = experiment.network
        self.optimizer = experiment.optimizer
        self.loss_config = experiment.loss_config
        self.has_pi0 = experiment.has_pi0
        self.optimal_returns = experiment.optimal_returns
        self.init = jax.jit(jax.vmap(self._init))
        self.run_chunk = jax.jit(jax.vmap(self._chunk))
        self.evaluate = jax.jit(jax.vmap(evaluation_fn(experiment, config.eval_episodes_per_task)))
        # Trace (no compile) once, so a config that cannot run fails here, before any file.
        jax.eval_shape(self._init, jax.random.PRNGKey(0))

    def eval_keys(self, log_step: int) -> Array:
        """Evaluation keys [seeds] of a log step: a function of each seed alone."""
        return jnp.stack([evaluation_key(s, log_step) for s in self.config.seeds])

    # ENVIRONMENT BATCH: [N tasks, E envs]
    def _task_ids(self, num_envs: int) -> Array:
        return jnp.broadcast_to(jnp.arange(self.num_tasks)[:, None], (self.num_tasks, num_envs))

    def _reset(self, key: Array, num_envs: int) -> tuple[two_room.EnvState, Array]:
        keys = jax.random.split(key, self.num_tasks * num_envs).reshape(
            self.num_tasks, num_envs, -1
        )
        reset = jax.vmap(jax.vmap(two_room.reset, (0, None, 0)), (0, None, 0))
        return reset(keys, self.env_params, self._task_ids(num_envs))

    def _init(self, key: Array) -> RunnerState:
        k_train, k_env, k_run = jax.random.split(key, 3)
        train = learning.init_training_state(
            k_train, self.network, self.optimizer, jnp.zeros((1, self.obs_size))
        )
        env_state, obs = self._reset(k_env, self.config.num_envs_per_task)
        ret = jnp.zeros(obs.shape[:2])
        return RunnerState(train, env_state, obs, ret, k_run)

    # ROLLOUT: T steps of every environment with pi_i, auto-resetting ended episodes.
    def _rollout(self, runner: RunnerState) -> tuple[RunnerState, learning.Batch, Array, Array]:
        params = runner.train.params
        E = self.config.num_envs_per_task
        task_ids = self._task_ids(E)
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
    def _chunk(self, runner: RunnerState) -> tuple[RunnerState, ChunkStats]:
        def one_update(runner, _):
            runner, batch, ret_sum, count = self._rollout(runner)
            train, metrics = learning.update_step(
                runner.train,
                batch,
                network=self.network,
                optimizer=self.optimizer,
                config=self.loss_config,
                task_grouped=True,
            )
            return runner._replace(train=train), (ret_sum, count, metrics)

        runner, (ret_sum, count, metrics) = jax.lax.scan(
            one_update, runner, None, length=self.config.log_every
        )
        stats = ChunkStats(ret_sum.sum(0), count.sum(0), jax.tree.map(lambda x: x.mean(0), metrics))
        return runner, stats


# THE RUN: Python between chunks.


class RunResult(NamedTuple):
    run_dir: Path
    summary: dict[str, Any]


def run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[int], None] | None = None,
    trainer: Trainer | None = None,
) -> RunResult:
    """Trains `config` into `run_dir` (resuming from its last checkpoint if `resume`).

    Without `resume`, `run_dir` must not exist or be empty: nothing is overwritten.
    """
    import orbax.checkpoint as ocp
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    run_dir = Path(run_dir).absolute()
    rundir.check_run_dir(run_dir, resume=resume)
    config = rundir.inline_layout(config)
    trainer = trainer or Trainer(config)
    seeds = list(config.seeds)
    N = trainer.num_tasks
    steps_per_chunk = config.steps_per_update * config.log_every
    columns = rundir.metric_columns(N)
    optimal = float(trainer.optimal_returns.mean())

    manager = rundir.open_run(run_dir, config)

    runner = trainer.init(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
    start_log, wall_before = 0, 0.0
    if resume and manager.latest_step() is not None:
        runner, wall_before, start_log = restore_runner(manager, runner)
    if resume:
        rundir.truncate_metrics(run_dir / "metrics.csv", start_log)

    metrics_path = run_dir / "metrics.csv"
    new_file = not metrics_path.exists() or metrics_path.stat().st_size == 0
    columns = rundir.prepare_metrics(metrics_path, columns)  # a resumed older run: migrated
    # On resume, TensorBoard drops events logged after the checkpoint.
    purge = start_log * steps_per_chunk + 1 if resume else None
    writers = {s: SummaryWriter(str(run_dir / "tb" / f"seed_{s}"), purge_step=purge) for s in seeds}
    desc = f"{config.variant} x{len(seeds)} seeds"
    interactive = progress and sys.stderr.isatty()  # a file or a pipe gets plain lines
    bar = tqdm(
        total=config.num_log_steps * steps_per_chunk,
        initial=start_log * steps_per_chunk,
        unit="step",
        unit_scale=True,
        desc=desc,
        disable=not interactive,
        dynamic_ncols=True,
    )
    monitor = CollapseMonitor(
        trainer.experiment.task_names,
        trainer.experiment.floor_returns,
        config.collapse_entropy,
        warn=lambda line: tqdm.write(line, file=sys.stderr),
    )
    last_rows: dict[int, dict[str, float]] = {}
    t0 = time.perf_counter()
    fh = metrics_path.open("a", newline="")
    try:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if new_file:
            writer.writeheader()
        for log_step in range(start_log, config.num_log_steps):
            t_chunk = time.perf_counter()
            runner, stats = trainer.run_chunk(runner)
            pi_i_ret, pi_0_ret = trainer.evaluate(
                runner.train.params, trainer.eval_keys(log_step + 1)
            )
            stats, pi_i_ret, pi_0_ret = jax.device_get((stats, pi_i_ret, pi_0_ret))
            dt = time.perf_counter() - t_chunk
            wall = wall_before + time.perf_counter() - t0
            env_steps = (log_step + 1) * steps_per_chunk
            for j, seed in enumerate(seeds):
                with np.errstate(invalid="ignore", divide="ignore"):
                    per_task = stats.return_sum[j] / stats.episode_count[j]
                per_task = np.where(stats.episode_count[j] > 0, per_task, np.nan)
                row: dict[str, float] = {
                    "seed": seed,
                    "log_step": log_step + 1,
                    "updates": (log_step + 1) * config.log_every,
                    "env_steps_per_task": env_steps,
                    "wall_seconds": round(wall, 3),
                    "steps_per_second": round(steps_per_chunk * N * len(seeds) / dt, 1),
                    "mean_return": rundir.nanmean(per_task),
                    "eval_return": float(np.mean(pi_i_ret[j])),
                    "pi0_eval_return": rundir.nanmean(pi_0_ret[j]),
                    "optimal_return": optimal,
                }
                for name, value in stats.metrics.items():
                    if np.ndim(value[j]) == 0:
                        row[name] = float(value[j])
                entropy = stats.metrics["entropy_per_task"][j]
                row["collapsed_tasks"] = monitor.check(seed, env_steps, entropy, per_task)
                for i in range(N):
                    row[f"return_task_{i}"] = float(per_task[i])
                    row[f"eval_return_task_{i}"] = float(pi_i_ret[j][i])
                    row[f"pi0_eval_return_task_{i}"] = float(pi_0_ret[j][i])
                    row[f"kl_task_{i}"] = float(stats.metrics["kl_per_task"][j][i])
                    row[f"entropy_task_{i}"] = float(entropy[i])
                if not trainer.has_pi0:  # no pi_0: KL and pi_0's entropy do not exist
                    for name in ("kl", "distilled_entropy", *(f"kl_task_{i}" for i in range(N))):
                        row[name] = math.nan
                writer.writerow({c: row.get(c, "") for c in columns})
                for name in (
                    "mean_return",
                    "eval_return",
                    "pi0_eval_return",
                    "loss",
                    "kl",
                    "entropy",
                ):
                    if not math.isnan(row[name]):
                        writers[seed].add_scalar(name, row[name], env_steps)
                last_rows[seed] = row
            fh.flush()
            bar.update(steps_per_chunk)
            mean_ret = rundir.nanmean(np.array([r["mean_return"] for r in last_rows.values()]))
            sps = steps_per_chunk * N * len(seeds) / dt
            bar.set_postfix(ret=f"{mean_ret:.2f}", opt=f"{optimal:.2f}", sps=f"{sps:,.0f}")
            if progress and not interactive:  # one line per log row (CI, nohup, a file)
                print(
                    f"{desc}: {env_steps:,}/{config.num_log_steps * steps_per_chunk:,} env "
                    f"steps per task, return {mean_ret:.2f} (optimum {optimal:.2f}), "
                    f"{sps:,.0f} env steps/s",
                    file=sys.stderr,
                    flush=True,
                )
            done = log_step + 1 == config.num_log_steps
            if (log_step + 1) % config.checkpoint_every == 0 or done:
                state = jax.device_get(_checkpoint_tree(runner, wall))
                manager.save(log_step + 1, args=ocp.args.StandardSave(state))
            if on_log is not None:
                on_log(log_step + 1)
    finally:
        fh.close()
        bar.close()
        manager.wait_until_finished()
        manager.close()
        for w in writers.values():
            w.close()

    if last_rows:
        wall = wall_before + time.perf_counter() - t0
    else:  # resumed a run that had finished: summarise it from its metrics
        last_rows = rundir.last_rows(metrics_path)
        wall = max(float(r["wall_seconds"]) for r in last_rows.values())

    def final(column: str) -> float:
        """Mean over seeds of the column in each seed's last row."""
        return rundir.nanmean(np.array([r[column] for r in last_rows.values()]))

    summary = {
        "variant": config.variant,
        "seeds": seeds,
        "final_mean_return": final("eval_return"),
        "final_mean_return_per_seed": {str(s): r["eval_return"] for s, r in last_rows.items()},
        "final_training_return": final("mean_return"),
        "final_pi0_return": final("pi0_eval_return"),
        "optimal_mean_return": optimal,
        "optimal_returns": trainer.optimal_returns.tolist(),
        "env_steps_per_task": int(final("env_steps_per_task")),
        "collapsed_tasks_per_seed": {
            str(s): rundir.count_or_none(r.get("collapsed_tasks")) for s, r in last_rows.items()
        },
        "wall_seconds": round(wall, 2),
    }
    rundir.atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    from distral.plotting import plot_run

    plot_run(run_dir)
    return RunResult(run_dir, summary)


def _checkpoint_tree(runner: RunnerState, wall: float) -> dict[str, Any]:
    """A flat, ordered mapping of arrays (no pickle; orbax writes it atomically)."""
    leaves = jax.tree.leaves(runner)
    tree: dict[str, Any] = {f"runner_{i:04d}": leaf for i, leaf in enumerate(leaves)}
    tree["wall_seconds"] = np.asarray(wall, np.float64)
    return tree


def restore_runner(manager: Any, like: RunnerState) -> tuple[RunnerState, float, int]:
    """The latest checkpoint of an orbax CheckpointManager of a `distral train` run, in the
    layout of `like` (`Trainer.init` of the run's config): (runner, wall seconds, log step)."""
    restored, step = rundir.restore_latest(manager, _checkpoint_tree(like, 0.0))
    runner, wall = _from_checkpoint_tree(restored, like)
    return runner, wall, step


def _from_checkpoint_tree(tree: dict[str, Any], like: RunnerState) -> tuple[RunnerState, float]:
    treedef = jax.tree.structure(like)
    leaves = [jnp.asarray(tree[f"runner_{i:04d}"]) for i in range(treedef.num_leaves)]
    return jax.tree.unflatten(treedef, leaves), float(tree["wall_seconds"])
