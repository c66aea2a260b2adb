"""What runs inside each process of a distributed Distral run (DESIGN.md section 3).

- `learner_main`: the Reverb server (unless the run uses an external one), the `Learner`,
  the evaluator (pi_i on its task, pi_0 on every task, every log row), metrics, TensorBoard,
  checkpoints and the summary: the run directory of `distral train`.
- `actor_main`: one `Actor` for one (task, replica) slot.
- `evaluator_main`: with `distributed.evaluator: process`, the evaluations in their own
  process (the learner then only drains their results).

The launchers (`distral.distributed.launch`) start these with spawn (local) or as Ray
actors. A worker stops when `should_stop()` turns true; it reports through `report(message)`:
("ready", reverb_address, learner_step), ("done", summary) or ("error", one_line).
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distral.collapse import CollapseMonitor
from distral.config import ConfigError, TrainConfig

Report = Callable[[tuple], None]
ShouldStop = Callable[[], bool]

DISTRIBUTED_COLUMNS = [
    "updates_per_second",
    "queue_size",
    "parameter_lag_mean",
    "parameter_lag_max",
    "episodes",
    "eval_learner_step",  # the learner step of the parameters the row's evaluation ran
]


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies (no orphans, even after a SIGKILL)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def child_setup(parent_pid: int, stop_event: Any, *, clean_sigterm: bool) -> None:
    """In a spawned child: die with the parent; Ctrl-C is the parent's to handle (it sets
    the stop event). With `clean_sigterm` (the learner), SIGTERM also just sets the stop
    event, so the learner still writes its checkpoint; an actor dies on SIGTERM at once
    (it holds nothing worth saving, and may be blocked inside Reverb)."""
    die_with_parent(parent_pid)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TF/Reverb load: less noise
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if clean_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: stop_event.set())


def actor_seed(seed: int, task_id: int, replica: int, attempt: int) -> int:
    """A distinct seed per (run seed, task, replica, restart), in [0, 2**31)."""
    state = np.random.SeedSequence([seed, task_id, replica, attempt]).generate_state(1)
    return int(state[0] % 2**31)


# ----------------------------------------------------------------------------------------
# ACTOR
# ----------------------------------------------------------------------------------------


def make_actor(
    config: TrainConfig, address: str, task_id: int, seed: int, *, writer: Any = None
) -> Any:
    """The `Actor` of one slot: task `task_id`'s B environments, pi_i's column of the
    parameters published on the server at `address`, and `writer` (None: a `ReplayWriter`
    to that server; benchmarks/distributed.py passes one that drops everything)."""
    import reverb

    from distral.distributed.actor import Actor, ReplayWriter, VariableClient
    from distral.experiment import make_experiment

    experiment = make_experiment(config)
    d = config.distributed
    client = reverb.Client(address)
    variables = VariableClient(
        client,
        experiment.params_template(),
        refresh_every=d.refresh_every,
        refresh_lag=d.refresh_lag,
        select=lambda params: experiment.network.task_params(params, task_id),
    )
    return Actor(
        experiment.make_vector_env(task_id, d.envs_per_actor, seed),
        task_id,
        experiment.network,
        variables,
        ReplayWriter(client, config.unroll_length) if writer is None else writer,
        seed=seed,
    )


class _StopFlag:
    """An Event-like view of a `should_stop()` callable (what `Actor.run` polls)."""

    def __init__(self, should_stop: ShouldStop) -> None:
        self.is_set = should_stop


def actor_main(
    config: TrainConfig,
    address: str,
    task_id: int,
    seed: int,
    should_stop: ShouldStop,
    max_steps: int | None = None,
) -> None:
    """Acts on task `task_id` with pi_i, writing to the Reverb server at `address`."""
    actor = make_actor(config, address, task_id, seed)
    actor.run(max_steps=max_steps, stop_event=_StopFlag(should_stop))
    if not should_stop():  # closing flushes, which could wait on a server that is gone
        actor.close()


def _run_child(what: str, body: Callable[[], None], stop_event: Any, parent: int) -> None:
    """The body of a spawned actor or evaluator: it dies with its parent and on SIGTERM;
    an error is one line on stderr and exit code 1 (the launcher restarts the slot)."""
    child_setup(parent, stop_event, clean_sigterm=False)
    try:
        body()
    except Exception as e:
        if stop_event.is_set():  # the server went away during shutdown: not a fault
            return
        print(f"distral: {what} failed: {e!r}", file=sys.stderr, flush=True)
        sys.exit(1)


def actor_process(
    config: TrainConfig, address: str, task_id: int, seed: int, stop_event: Any, parent: int
) -> None:
    """Entry point of a spawned actor process."""
    body = lambda: actor_main(config, address, task_id, seed, stop_event.is_set)  # noqa: E731
    _run_child(f"actor (task {task_id})", body, stop_event, parent)


# ----------------------------------------------------------------------------------------
# EVALUATOR (distributed.evaluator: process)
# ----------------------------------------------------------------------------------------


def evaluator_main(
    config: TrainConfig,
    address: str,
    seed: int,
    should_stop: ShouldStop,
    poll_seconds: float = 0.2,
) -> None:
    """Evaluates the newest published parameters whenever the learner has moved on by
    `log_every` steps since the last evaluation, and logs each result in `evaluations`.

    The evaluation key depends on the seed and the parameters' learner step alone, so the
    same parameters always get the same evaluation (`distral.evaluator`).
    """
    import reverb

    from distral.distributed import replay
    from distral.evaluator import make_evaluator
    from distral.experiment import make_experiment

    experiment = make_experiment(config)
    client = reverb.Client(address)
    source = replay.VariableSource(client, experiment.params_template())
    evaluate = make_evaluator(experiment, config.eval_episodes_per_task, seed, should_stop)
    last: int | None = None
    while not should_stop():
        params, step = source.fetch(allow_stale=True)
        if last is not None and step < last + config.log_every:
            time.sleep(poll_seconds)
            continue
        pi_i, pi_0 = evaluate(params, step)
        if should_stop():  # a game evaluation cut short returns NaN: not a result
            break
        replay.write_evaluation(client, step, pi_i, pi_0)
        last = step


def evaluator_process(
    config: TrainConfig, address: str, seed: int, stop_event: Any, parent: int
) -> None:
    """Entry point of the spawned evaluator process."""
    body = lambda: evaluator_main(config, address, seed, stop_event.is_set)  # noqa: E731
    _run_child("evaluator", body, stop_event, parent)


# ----------------------------------------------------------------------------------------
# LEARNER (+ replay server, evaluator, run directory)
# ----------------------------------------------------------------------------------------


def learner_budget(config: TrainConfig, num_tasks: int) -> int:
    """Learner steps of the run: `max_learner_steps`, or as many as consume the env-step
    budget (env_steps_per_task x tasks frames) in batches of batch_size x B x T frames."""
    d = config.distributed
    if d.max_learner_steps is not None:
        return d.max_learner_steps
    frames_per_step = d.batch_size * d.envs_per_actor * config.unroll_length
    return -(-config.env_steps_per_task * num_tasks // frames_per_step)


def make_replay_tables(experiment: Any) -> list:
    """The Reverb tables of a configuration (signatures from its environment spec)."""
    import jax

    from distral.distributed import replay

    config = experiment.config
    d = config.distributed
    obs_spec = experiment.observation_spec
    signature = replay.unroll_signature(
        obs_spec, experiment.network.num_actions, config.unroll_length, d.envs_per_actor
    )
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), experiment.params_template())
    return replay.make_tables(
        signature,
        max_queue_size=d.queue_size,
        variables_signature=replay.variables_signature(params),
        num_tasks=experiment.num_tasks,
    )


class _Window:
    """What happened since the last log row."""

    def __init__(self, num_tasks: int) -> None:
        from distral.core.learning import PER_TASK_METRICS

        self.sums: dict[str, float] = {}
        self.task_sums = {name: np.zeros(num_tasks) for name in PER_TASK_METRICS}
        self.task_unrolls = np.zeros(num_tasks)
        self.updates = 0
        self.frames = 0
        self.lag_mean = 0.0
        self.lag_max = 0
        self.t_start = time.perf_counter()

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, float):
                self.sums[k] = self.sums.get(k, 0.0) + v
        unrolls = metrics["unrolls_per_task"]
        for name, total in self.task_sums.items():  # NaN (task absent) counts 0 unrolls
            total += np.nan_to_num(metrics[f"{name}_per_task"]) * unrolls
        self.task_unrolls += unrolls
        self.updates += 1
        self.frames += int(np.sum(metrics["frames_per_task"]))
        self.lag_mean += metrics["parameter_lag_mean"]
        self.lag_max = max(self.lag_max, metrics["parameter_lag_max"])

    def mean(self, key: str) -> float:
        return self.sums.get(key, math.nan) / max(self.updates, 1)

    def task_mean(self, name: str) -> np.ndarray:
        """[N] mean of a per-task metric over the window's unrolls of each task (NaN: none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.task_unrolls > 0, self.task_sums[name] / self.task_unrolls, np.nan)


def learner_main(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool,
    should_stop: ShouldStop,
    request_stop: Callable[[], None],
    report: Report,
    host: str = "localhost",
) -> dict[str, Any]:
    """Runs the learner until its budget or `should_stop()`; returns the summary.

    At the end (budget or stop) it writes a last log row, a checkpoint and the summary,
    and calls `request_stop()` first so the actors wind down meanwhile.
    """
    import csv
    import json

    import jax
    import orbax.checkpoint as ocp
    import reverb
    from tensorboardX import SummaryWriter

    from distral import rundir
    from distral.core import learning
    from distral.distributed import replay
    from distral.distributed.learner import Learner
    from distral.evaluator import make_evaluator
    from distral.experiment import make_experiment

    run_dir = Path(run_dir)
    experiment = make_experiment(config)
    d, N = config.distributed, experiment.num_tasks
    seed = config.seeds[0]
    budget = learner_budget(config, N)
    optimal = float(experiment.optimal_returns.mean())

    # REPLAY: our own server, or an external `distral replay-server`.
    server = None
    if d.replay_address is None:
        server = replay.start_server(make_replay_tables(experiment), port=d.port or None)
        address = f"{host}:{server.port}"
    else:
        address = d.replay_address
    client = reverb.Client(address)
    try:
        client.server_info(timeout=10)
    except Exception:
        raise RuntimeError(f"no Reverb server answers at {address}") from None

    # STATE: fresh, or the latest checkpoint.
    manager = rundir.open_run(run_dir, config)
    state = learning.init_training_state(
        jax.random.PRNGKey(seed), experiment.network, experiment.optimizer, experiment.example_obs
    )
    log_step, wall_before = 0, 0.0
    frames_per_task = np.zeros(N, np.int64)
    if resume and manager.latest_step() is not None:
        state, frames_per_task, wall_before, log_step = restore_checkpoint(manager, state, N)
    if resume:
        rundir.truncate_metrics(run_dir / "metrics.csv", log_step)

    learner = Learner(
        experiment.network,
        experiment.optimizer,
        experiment.loss_config,
        client,
        batch_size=d.batch_size,
        example_obs=experiment.example_obs,
        publish_every=d.publish_every,
        state=state,
    )
    evaluate = make_evaluator(experiment, config.eval_episodes_per_task, seed, should_stop)
    separate_evaluator = d.evaluator == "process"
    report(("ready", address, learner.step))

    columns = rundir.metric_columns(N) + DISTRIBUTED_COLUMNS
    atari = config.env.name == "atari"
    if atari:  # human-normalised evaluation scores (Mnih et al., 2015)
        from distral.envs.atari import human_normalised_score

        columns += ["eval_hns", *(f"eval_hns_task_{i}" for i in range(N))]
    metrics_path = run_dir / "metrics.csv"
    new_file = not metrics_path.exists() or metrics_path.stat().st_size == 0
    columns = rundir.prepare_metrics(metrics_path, columns)  # a resumed older run: migrated
    tb = SummaryWriter(
        str(run_dir / "tb" / f"seed_{seed}"),
        purge_step=int(frames_per_task.mean()) + 1 if resume else None,
    )
    monitor = CollapseMonitor(
        experiment.task_names,
        experiment.floor_returns,
        config.collapse_entropy,
        warn=lambda line: print(line, file=sys.stderr, flush=True),
    )
    t0 = time.perf_counter()
    last_row: dict[str, Any] | None = None
    saved_at = log_step
    window = _Window(N)
    episode_sums, episode_counts = np.zeros(N), np.zeros(N)

    def evaluation(final: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """(learner step of the parameters, pi_i returns, pi_0 returns) for this row: the
        learner's own evaluation, or the evaluator process's newest result; the last row
        evaluates the final parameters here when it can (a game's is cut by the stop)."""
        newest = None
        if separate_evaluator:
            results = replay.drain_evaluations(client)
            newest = max(results, key=lambda r: r[0]) if results else None
        if not separate_evaluator or final:
            pi_i, pi_0 = evaluate(learner.state.params, log_step)  # NaN if a stop cut it
            if np.all(np.isfinite(pi_i)) or newest is None:
                return learner.step, pi_i, pi_0
        if newest is None:
            return math.nan, np.full(N, math.nan), np.full(N, math.nan)
        return newest

    def write_row(final: bool = False) -> None:
        nonlocal log_step, window, last_row, episode_sums, episode_counts
        for task, ret, _, _ in replay.drain_episodes(client):
            episode_sums[task] += ret
            episode_counts[task] += 1
        log_step += 1
        eval_step, pi_i, pi_0 = evaluation(final)
        wall = wall_before + time.perf_counter() - t0
        dt = max(time.perf_counter() - window.t_start, 1e-9)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_task = np.where(episode_counts > 0, episode_sums / episode_counts, np.nan)
        env_steps = int(frames_per_task.mean())
        row: dict[str, Any] = {
            "seed": seed,
            "log_step": log_step,
            "updates": learner.step,
            "env_steps_per_task": env_steps,
            "wall_seconds": round(wall, 3),
            "steps_per_second": round(window.frames / dt, 1),
            "mean_return": rundir.nanmean(per_task),
            "eval_return": float(np.mean(pi_i)),
            "pi0_eval_return": rundir.nanmean(pi_0),
            "optimal_return": optimal,
            "updates_per_second": round(window.updates / dt, 2),
            "queue_size": window.mean("queue_size"),
            "parameter_lag_mean": window.lag_mean / max(window.updates, 1),
            "parameter_lag_max": window.lag_max,
            "episodes": int(episode_counts.sum()),
            "eval_learner_step": eval_step if np.all(np.isfinite(pi_i)) else math.nan,
        }
        for name in window.sums:  # loss terms etc.: means over the window's updates
            if name in columns and name not in row:
                row[name] = window.mean(name)
        kl, entropy = window.task_mean("kl"), window.task_mean("entropy")
        row["collapsed_tasks"] = monitor.check(seed, env_steps, entropy, per_task)
        for i in range(N):
            row[f"return_task_{i}"] = float(per_task[i])
            row[f"eval_return_task_{i}"] = float(pi_i[i])
            row[f"pi0_eval_return_task_{i}"] = float(pi_0[i])
            row[f"kl_task_{i}"] = float(kl[i])
            row[f"entropy_task_{i}"] = float(entropy[i])
        if not experiment.has_pi0:
            for name in ("kl", "distilled_entropy", *(f"kl_task_{i}" for i in range(N))):
                row[name] = math.nan
        if atari:
            games = zip(experiment.task_names, pi_i, strict=True)
            hns = [human_normalised_score(g, float(r)) for g, r in games]
            row["eval_hns"] = rundir.nanmean(np.asarray(hns))
            row.update({f"eval_hns_task_{i}": h for i, h in enumerate(hns)})
        writer.writerow({c: row.get(c, "") for c in columns})
        fh.flush()
        for name in ("mean_return", "eval_return", "pi0_eval_return", "loss", "kl", "entropy"):
            value = row.get(name, math.nan)
            if not math.isnan(value):
                tb.add_scalar(name, value, env_steps)
        last_row = row
        window = _Window(N)
        episode_sums, episode_counts = np.zeros(N), np.zeros(N)

    def save() -> None:
        nonlocal saved_at
        wall = wall_before + time.perf_counter() - t0
        tree = jax.device_get(_checkpoint_tree(learner.state, frames_per_task, wall))
        manager.save(log_step, args=ocp.args.StandardSave(tree))
        saved_at = log_step

    fh = metrics_path.open("a", newline="")
    try:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if new_file:
            writer.writeheader()
        # THE LOOP: wait for a batch, update, publish; a log row every `log_every` steps.
        while learner.step < budget and not should_stop():
            if not replay.wait_for_items(client, replay.TRAJECTORIES, d.batch_size, should_stop):
                break
            metrics = learner.update()
            frames_per_task += metrics["frames_per_task"]
            window.add(metrics)
            if learner.step % config.log_every == 0:
                write_row(final=learner.step >= budget)
                if log_step % config.checkpoint_every == 0:
                    save()
        # THE END (budget reached or asked to stop): actors may go; last row and checkpoint.
        request_stop()
        if window.updates > 0:
            write_row(final=True)
        if saved_at != log_step or manager.latest_step() is None:
            save()
    finally:
        fh.close()
        tb.close()
        manager.wait_until_finished()
        manager.close()
        if server is not None:
            server.stop()

    try:
        row = rundir.last_rows(metrics_path).get(seed, {})
    except ConfigError:  # stopped before the first log row
        row = {}
    if row and math.isnan(row["eval_return"]):  # a stop cut the evaluation: the last one
        evaluated = rundir.last_rows(metrics_path, finite="eval_return").get(seed, {})
        row = {**row, **{k: evaluated[k] for k in ("eval_return", "pi0_eval_return") if evaluated}}
    summary = {
        "variant": config.variant,
        "seeds": [seed],
        "final_mean_return": row.get("eval_return", math.nan),
        "final_mean_return_per_seed": {str(seed): row.get("eval_return", math.nan)},
        "final_training_return": row.get("mean_return", math.nan),
        "final_pi0_return": row.get("pi0_eval_return", math.nan),
        "optimal_mean_return": optimal,
        "optimal_returns": [
            None if math.isnan(v) else v for v in experiment.optimal_returns.tolist()
        ],
        "tasks": list(experiment.task_names),
        "env_steps_per_task": int(frames_per_task.mean()),
        "wall_seconds": round(wall_before + time.perf_counter() - t0, 2),
        "learner_steps": learner.step,
        "learner_budget": budget,
        "actors_per_task": d.actors_per_task,
        "reverb_address": address,
    }
    summary = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    summary["final_mean_return_per_seed"] = {str(seed): summary["final_mean_return"]}
    summary["collapsed_tasks_per_seed"] = {
        str(seed): rundir.count_or_none(row.get("collapsed_tasks"))
    }
    rundir.atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    if row:
        from distral.plotting import plot_run

        plot_run(run_dir)
    return summary


def restore_checkpoint(
    manager: Any, like: Any, num_tasks: int
) -> tuple[Any, np.ndarray, float, int]:
    """(learner TrainingState, env frames consumed per task, wall seconds, log step) of the
    latest checkpoint of a `distral launch` run: `manager` is an orbax CheckpointManager on
    its checkpoints/ directory, `like` a TrainingState of the run's network (the structure)."""
    from distral import rundir

    tree = _checkpoint_tree(like, np.zeros(num_tasks, np.int64), 0.0)
    restored, step = rundir.restore_latest(manager, tree)
    return (*_from_checkpoint_tree(restored, like), step)


def _checkpoint_tree(state: Any, frames_per_task: np.ndarray, wall: float) -> dict[str, Any]:
    import jax

    tree: dict[str, Any] = {f"state_{i:04d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}
    tree["frames_per_task"] = np.asarray(frames_per_task, np.int64)
    tree["wall_seconds"] = np.asarray(wall, np.float64)
    return tree


def _from_checkpoint_tree(tree: dict[str, Any], like: Any) -> tuple[Any, np.ndarray, float]:
    import jax
    import jax.numpy as jnp

    treedef = jax.tree.structure(like)
    leaves = [jnp.asarray(tree[f"state_{i:04d}"]) for i in range(treedef.num_leaves)]
    state = jax.tree.unflatten(treedef, leaves)
    return state, np.asarray(tree["frames_per_task"], np.int64), float(tree["wall_seconds"])


def learner_process(
    config: TrainConfig, run_dir: str, resume: bool, stop_event: Any, reports: Any, parent: int
) -> None:
    """Entry point of the spawned learner process (it hosts the Reverb server)."""
    child_setup(parent, stop_event, clean_sigterm=True)
    try:
        summary = learner_main(
            config, run_dir, resume, stop_event.is_set, stop_event.set, reports.put
        )
    except Exception as e:
        traceback.print_exc()
        reports.put(("error", f"learner failed: {type(e).__name__}: {e}".splitlines()[0]))
        sys.exit(1)
    reports.put(("done", summary))
