"""The distributed Distral learner (Teh et al., 2017, arXiv:1707.04175): a thin shell.

It takes batches of unrolls from the Reverb `trajectories` queue, runs the same jitted
`learning.update_step` as `distral train` (with V-trace targets by default, since actors
act with parameters that lag the learner's), publishes the new parameters to the
`variables` table, and reports what a distributed run needs to watch: updates/s, env
frames/s, queue size and parameter lag (learner step minus the step of the parameters
that generated a batch). Checkpointing and the evaluator belong to the launcher.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import reverb

from distral import rundir
from distral.collapse import CollapseMonitor
from distral.config import APEX_FAMILIES, STUDENT_FAMILIES, TrainConfig
from distral.core import learning
from distral.core.algorithm import Algorithm, Parts
from distral.distill import experiment_and_teachers
from distral.distributed import replay
from distral.evaluator import make_evaluator
from distral.experiment import Experiment
from distral.guard import NanGuard
from distral.transfer import init_state_fn


class Learner:
    """Batches from Reverb -> `update_step` -> published parameters.

    `sampler` is the learner's side of the family's replay (`algorithm.replay_table`):
    `replay.UnrollSampler` (the queue of unrolls) by default, `replay.TeacherSampler`
    (per-task teacher samples) for `distill`."""

    def __init__(
        self,
        algorithm: Algorithm,
        parts: Parts,
        client: reverb.Client,
        *,
        batch_size: int,
        example_obs: np.ndarray,
        seed: int = 0,
        publish_every: int = 1,
        state: Any = None,
        sampler: Any = None,
    ) -> None:
        if batch_size < 1 or publish_every < 1:
            raise ValueError(f"batch_size={batch_size}, publish_every={publish_every}: need >= 1")
        self._algorithm = algorithm
        self._parts = parts
        self._num_tasks = parts.network.num_tasks
        self._client = client
        self.sampler: Any = sampler or replay.UnrollSampler(client, self._num_tasks, batch_size)
        self._publish_every = publish_every
        self.state = state or algorithm.init_state(jax.random.PRNGKey(seed), parts, example_obs)
        self._frames = 0
        self._updates = 0
        self._t_start = time.perf_counter()
        self.publish()

    @property
    def step(self) -> int:
        return int(self.state.step)

    def publish(self) -> None:
        """Makes the current parameters (and their step) the ones actors fetch."""
        replay.publish_params(self._client, self.state.params, self.step)

    def update(self) -> dict[str, Any]:
        """One learner step on a batch from the replay (blocks until it exists)."""
        t0 = time.perf_counter()
        batch, params_step, frames_per_task = self.sampler.sample()
        t_sampled = time.perf_counter()
        lag = self.step - params_step
        batch = jax.tree.map(np.asarray, batch)
        self.state, metrics = self._algorithm.update_step(self.state, batch, self._parts)
        metrics = jax.device_get(metrics)
        if "priority" in metrics:  # Ape-X: the batch's new priorities go back to the replay
            self.sampler.update_priorities(metrics.pop("priority"))
        if self.step % self._publish_every == 0:
            self.publish()
        t_done = time.perf_counter()
        self._frames += int(np.sum(frames_per_task))
        self._updates += 1
        elapsed = t_done - self._t_start
        out: dict[str, Any] = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        out.update(
            learner_step=self.step,
            frames_per_task=frames_per_task,
            # the per-task metrics' weights: unrolls (distral) or samples (distill) per task
            items_per_task=np.bincount(batch.task_id, minlength=self._num_tasks),
            **{k: np.asarray(v) for k, v in metrics.items() if k.endswith("_per_task")},
            parameter_lag_mean=float(np.mean(lag)),
            parameter_lag_max=int(np.max(lag)),
            queue_size=self.sampler.size(),
            sample_seconds=t_sampled - t0,
            update_seconds=t_done - t_sampled,
            updates_per_second=self._updates / elapsed if elapsed > 0 else 0.0,
            env_frames_per_second=self._frames / elapsed if elapsed > 0 else 0.0,
        )
        return out


# THE LEARNER PROCESS: the replay server, the Learner, the evaluator and the run directory.

DISTRIBUTED_COLUMNS = [
    "updates_per_second",
    "queue_size",
    "parameter_lag_mean",
    "parameter_lag_max",
    "episodes",
    "eval_learner_step",  # the learner step of the parameters the row's evaluation ran
]


def learner_budget(config: TrainConfig, num_tasks: int) -> int:
    """Learner steps of the run: `max_learner_steps`, or as many as consume the env-step
    budget (env_steps_per_task x tasks frames) in batches of batch_size x B x T frames.
    A distillation student's step is matched with T actor steps of each of its task's
    actors (`replay.distill_replay`): env_steps_per_task / (actors x B x T) steps. An
    Ape-X step samples batch_per_task transitions of each task, at samples_per_insert
    samples per inserted one: env_steps_per_task x samples_per_insert / batch_per_task."""
    d = config.distributed
    if d.max_learner_steps is not None:
        return d.max_learner_steps
    if config.algorithm == "distill":
        per_task = d.actors_per_task * d.envs_per_actor * config.unroll_length
        return -(-config.env_steps_per_task // per_task)
    if config.algorithm in APEX_FAMILIES:  # k samples per task and step, spi per insert
        s = config.apex
        return math.ceil(config.env_steps_per_task * s.samples_per_insert / s.batch_per_task)
    frames_per_step = d.batch_size * d.envs_per_actor * config.unroll_length
    return -(-config.env_steps_per_task * num_tasks // frames_per_step)


def checkpoint_parts(
    state: learning.TrainingState, frames_per_task: np.ndarray, wall_seconds: float
) -> dict[str, Any]:
    """What a `distral launch` checkpoint holds (`rundir.load_run` reads `train/params`)."""
    return {
        "train": state,
        "frames_per_task": np.asarray(frames_per_task, np.int64),
        "wall_seconds": np.asarray(wall_seconds, np.float64),
    }


def metric_columns(experiment: Experiment) -> list[str]:
    scalars = list(experiment.metrics)
    if experiment.config.algorithm in STUDENT_FAMILIES:  # the teachers', same episodes
        scalars.append("teacher_eval_return")
    columns = rundir.metric_columns(experiment.num_tasks, scalars) + DISTRIBUTED_COLUMNS
    if experiment.config.env.name == "atari":  # human-normalised scores (Mnih et al., 2015)
        columns += ["eval_hns", *(f"eval_hns_task_{i}" for i in range(experiment.num_tasks))]
    return columns


class Window:
    """What happened since the last log row: update metrics, frames, lag and episodes."""

    def __init__(self, num_tasks: int, per_task_metrics: Sequence[str]) -> None:
        self.sums: dict[str, float] = {}
        self.task_sums = {name: np.zeros(num_tasks) for name in per_task_metrics}
        self.task_unrolls = np.zeros(num_tasks)
        self.episode_sums = np.zeros(num_tasks)
        self.episode_counts = np.zeros(num_tasks)
        self.updates = 0
        self.frames = 0
        self.lag_mean = 0.0
        self.lag_max = 0
        self.t_start = time.perf_counter()

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, float):
                self.sums[k] = self.sums.get(k, 0.0) + v
        unrolls = metrics["items_per_task"]
        for name, total in self.task_sums.items():  # NaN (task absent) counts 0 unrolls
            total += np.nan_to_num(metrics[f"{name}_per_task"]) * unrolls
        self.task_unrolls += unrolls
        self.updates += 1
        self.frames += int(np.sum(metrics["frames_per_task"]))
        self.lag_mean += metrics["parameter_lag_mean"]
        self.lag_max = max(self.lag_max, metrics["parameter_lag_max"])

    def add_episodes(self, episodes: list[tuple[int, float, int, int]]) -> None:
        for task, ret, _, _ in episodes:
            self.episode_sums[task] += ret
            self.episode_counts[task] += 1

    def mean(self, key: str) -> float:
        return self.sums.get(key, math.nan) / max(self.updates, 1)

    def task_mean(self, name: str) -> np.ndarray:
        """[N] mean of a per-task metric over the window's unrolls of each task (NaN: none,
        or a metric the family does not report per task)."""
        if name not in self.task_sums:
            return np.full(len(self.task_unrolls), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.task_unrolls > 0, self.task_sums[name] / self.task_unrolls, np.nan)

    def returns(self) -> np.ndarray:
        """[N] mean return of the episodes that ended in the window (NaN: none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = self.episode_sums / self.episode_counts
        return np.where(self.episode_counts > 0, ratio, np.nan)

    def head(self) -> dict[str, float]:
        """The distributed columns of the row (rates over the window's wall time)."""
        dt = max(time.perf_counter() - self.t_start, 1e-9)
        return {
            "steps_per_second": round(self.frames / dt, 1),
            "updates_per_second": round(self.updates / dt, 2),
            "queue_size": self.mean("queue_size"),
            "parameter_lag_mean": self.lag_mean / max(self.updates, 1),
            "parameter_lag_max": self.lag_max,
            "episodes": int(self.episode_counts.sum()),
        }


def serve_replay(experiment: Experiment, host: str) -> tuple[Any, str, reverb.Client]:
    """(our own Reverb server or None, its address, a client): the run's tables on a new
    server, or an external `distral replay-server` at `distributed.replay_address`."""
    d = experiment.config.distributed
    server = None
    if d.replay_address is None:
        server = replay.start_server(replay.make_replay_tables(experiment), port=d.port or None)
        address = f"{host}:{server.port}"
    else:
        address = d.replay_address
    client = reverb.Client(address)
    try:
        client.server_info(timeout=10)
    except Exception:
        if server is not None:
            server.stop()
        raise RuntimeError(f"no Reverb server answers at {address}") from None
    return server, address, client


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LearnerRun:
    """The learner process's run: the `Learner`, its evaluation, rows and checkpoints."""

    def __init__(
        self,
        experiment: Experiment,
        run_dir: Path,
        resume: bool,
        client: Any,
        teachers: Sequence[Any] | None = None,
    ) -> None:
        config = self.config = experiment.config
        self.experiment = experiment
        self.teachers = teachers  # a distillation student's: evaluated beside it
        self.client = client
        self.seed = config.seeds[0]
        N = experiment.num_tasks
        state = init_state_fn(experiment)(jax.random.PRNGKey(self.seed))  # with init_from's h
        self.log, restored, self.log_step = rundir.open_log(
            run_dir,
            config,
            metric_columns(experiment),
            checkpoint_parts(state, np.zeros(N, np.int64), 0.0),
            resume=resume,
            seeds=[self.seed],
        )
        self.frames_per_task, self.wall_before = np.zeros(N, np.int64), 0.0
        if restored is not None:
            state = restored["train"]
            self.frames_per_task = np.asarray(restored["frames_per_task"], np.int64)
            self.wall_before = float(restored["wall_seconds"])
        d = config.distributed
        self.learner = Learner(
            experiment.algorithm,
            experiment.parts,
            client,
            batch_size=d.batch_size,
            example_obs=experiment.example_obs,
            publish_every=d.publish_every,
            state=state,
            sampler=self._sampler(),
        )
        self.last_evaluation: tuple[np.ndarray, np.ndarray] | None = None
        self.monitor = CollapseMonitor(
            experiment.task_names,
            experiment.floor_returns,
            config.collapse_entropy,
            warn=_stderr_line,
        )
        self.window = Window(N, experiment.algorithm.per_task_metrics)
        self.guard = NanGuard(config.halt_on_nan, _stderr_line)
        self.saved_at = self.log_step
        self.t0 = time.perf_counter()
        self.evaluate: Any = None  # set by `start_evaluator`

    def _sampler(self) -> Any:
        """The learner's side of the replay: per-task teacher samples for a student, per-task
        transitions for Ape-X, else the unroll queue (`Learner`'s default)."""
        table = self.experiment.algorithm.replay_table
        if table == "prioritized":
            from distral.distributed.prioritized import TransitionSampler

            k = self.config.apex.batch_per_task
            return TransitionSampler(self.client, self.experiment.num_tasks, k)
        if table != "uniform":
            return None
        sizes = replay.distill_replay(self.config)
        return replay.TeacherSampler(self.client, self.experiment.num_tasks, sizes.items_per_update)

    def start_evaluator(self, should_stop: Callable[[], bool]) -> None:
        self.evaluate = make_evaluator(
            self.experiment,
            self.config.eval_episodes_per_task,
            self.seed,
            should_stop,
            teachers=self.teachers,
        )

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def evaluation(self, final: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """(learner step of the parameters, pi_i returns, pi_0 returns) for this row: the
        learner's own evaluation, or the evaluator process's newest result; the last row
        evaluates the final parameters here when it can (a game's is cut by the stop)."""
        separate = self.config.distributed.evaluator == "process"
        newest = None
        if separate:
            results = replay.drain_evaluations(self.client)
            newest = max(results, key=lambda r: r[0]) if results else None
        if not separate or final:
            pi_i, pi_0 = self.evaluate(self.learner.state.params, self.log_step)
            if np.all(np.isfinite(pi_i)) or newest is None:
                return self.learner.step, pi_i, pi_0
        if newest is None:
            nan = np.full(self.experiment.num_tasks, math.nan)
            return math.nan, nan, nan
        return newest

    def write_row(self, final: bool = False) -> None:
        window = self.window
        window.add_episodes(replay.drain_episodes(self.client))
        self.log_step += 1
        eval_step, pi_i, pi_0 = self.evaluation(final)
        scalars = {k: window.mean(k) for k in window.sums if k in self.log.columns}
        if self.teachers is not None:  # a student's row: the teachers' returns as a scalar
            scalars["teacher_eval_return"] = rundir.nanmean(pi_0)
            if np.all(np.isfinite(pi_i)):
                self.last_evaluation = pi_i, pi_0
            pi_0 = np.full_like(pi_0, math.nan)
        returns = window.returns()
        env_steps = int(self.frames_per_task.mean())
        head = {
            "seed": self.seed,
            "log_step": self.log_step,
            "updates": self.learner.step,
            "env_steps_per_task": env_steps,
            "wall_seconds": round(self.wall(), 3),
            **window.head(),
            "eval_learner_step": eval_step if np.all(np.isfinite(pi_i)) else math.nan,
        }
        tasks = rundir.TaskStats(
            returns, pi_i, pi_0, window.task_mean("kl"), window.task_mean("entropy")
        )
        row = rundir.metrics_row(
            head,
            tasks,
            scalars,
            optimal_return=float(self.experiment.optimal_returns.mean()),
            collapsed_tasks=self.monitor.check(self.seed, env_steps, tasks.entropy, returns),
            has_kl=self.experiment.has_pi0 or self.teachers is not None,
        )
        if self.config.env.name == "atari":
            row.update(human_normalised_columns(self.experiment.task_names, pi_i))
        self.log.write([row])
        self.window = Window(self.experiment.num_tasks, self.experiment.algorithm.per_task_metrics)

    def save(self) -> None:
        parts = checkpoint_parts(self.learner.state, self.frames_per_task, self.wall())
        self.log.save(self.log_step, parts)
        self.saved_at = self.log_step

    def train(self, budget: int, should_stop: Callable[[], bool]) -> None:
        """Waits for a batch, updates, publishes; a log row every `log_every` steps."""
        config = self.config
        while self.learner.step < budget and not should_stop():
            if not self.learner.sampler.wait(should_stop):
                break
            metrics = self.learner.update()
            self.guard.check(f"learner step {self.learner.step}", metrics)
            self.frames_per_task += metrics["frames_per_task"]
            self.window.add(metrics)
            if self.learner.step % config.log_every == 0:
                self.write_row(final=self.learner.step >= budget)
                where = f"learner step {self.learner.step}"
                self.guard.check(where, {}, self.learner.state.params)
                if self.log_step % config.checkpoint_every == 0:
                    self.save()

    def end(self) -> None:
        """The last row (if the window holds updates) and checkpoint."""
        if self.window.updates > 0:
            self.write_row(final=True)
        if self.saved_at != self.log_step or self.log.checkpoints.latest_step() is None:
            self.save()


def human_normalised_columns(games: Sequence[str], returns: np.ndarray) -> dict[str, float]:
    """eval_hns and eval_hns_task_i: human-normalised evaluation scores (Mnih et al., 2015)."""
    from distral.envs.atari import human_normalised_score

    hns = [human_normalised_score(g, float(r)) for g, r in zip(games, returns, strict=True)]
    return {
        "eval_hns": rundir.nanmean(np.asarray(hns)),
        **{f"eval_hns_task_{i}": h for i, h in enumerate(hns)},
    }


def learner_main(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool,
    should_stop: Callable[[], bool],
    request_stop: Callable[[], None],
    report: Callable[[tuple], None],
    host: str = "localhost",
) -> dict[str, Any]:
    """Runs the learner until its budget or `should_stop()`; returns the summary.

    It reports ("ready", reverb_address, learner_step) once actors may start. At the end
    (budget or stop) it calls `request_stop()` first, so the actors wind down while it
    writes a last log row, a checkpoint and the summary.
    """
    experiment, teachers = experiment_and_teachers(config)
    budget = learner_budget(config, experiment.num_tasks)
    if config.algorithm in APEX_FAMILIES:  # the IS exponent reaches 1 at the last step
        experiment = experiment.with_learner_config(is_exponent_steps=budget)
    server, address, client = serve_replay(experiment, host)
    try:
        run = LearnerRun(experiment, Path(run_dir), resume, client, teachers)
        try:
            run.start_evaluator(should_stop)
            report(("ready", address, run.learner.step))
            run.train(budget, should_stop)
            request_stop()
            run.end()
        finally:
            run.log.close()
    finally:
        if server is not None:
            server.stop()
    summary = rundir.summarise(
        run.log.metrics_path,
        config,
        experiment.optimal_returns,
        experiment.task_names,
        seeds=[run.seed],
        wall_seconds=round(run.wall(), 2),
        env_steps_per_task=int(run.frames_per_task.mean()),
        learner_steps=run.learner.step,
        learner_budget=budget,
        actors_per_task=config.distributed.actors_per_task,
        reverb_address=address,
        **({} if teachers is None else student_summary(run, teachers)),
    )
    return run.log.finish(summary, plot=run.learner.step >= budget)


def student_summary(run: LearnerRun, teachers: Sequence[Any]) -> dict[str, Any]:
    """A distillation student's summary entries, from its last complete evaluation."""
    from distral.distill import student_fields
    from distral.teachers import num_params

    nan = np.full(run.experiment.num_tasks, math.nan)
    student, teacher = run.last_evaluation or (nan, nan)
    params = num_params(run.learner.state.params)
    return student_fields(run.config, student, teacher, params, teachers)
