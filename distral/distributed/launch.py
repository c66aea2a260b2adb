"""`distral launch`: the distributed run, on this machine (`local`) or a Ray cluster (`ray`).

One learner process (it hosts the Reverb server, the evaluator and the run directory),
`actors_per_task` actor processes per task (DESIGN.md section 3, in the IMPALA layout of
Espeholt et al., 2018, arXiv:1802.01561) and, with `distributed.evaluator: process`, an
evaluator process. The launcher supervises them:

- a dead actor is restarted with a new seed, at most `max_actor_restarts` times per slot
  (the evaluator likewise, with the same seed);
- a dead learner stops the run with an error; its last checkpoint resumes it;
- Ctrl-C or SIGTERM stops every process within `SHUTDOWN_SECONDS`: the learner writes a
  last log row and a checkpoint, stragglers are killed, no child outlives the launcher
  (children also die with it if the launcher is killed: PR_SET_PDEATHSIG).

Everything that can be checked is checked before any process starts (`preflight`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distral.config import ConfigError, TrainConfig
from distral.distributed.workers import actor_seed

SHUTDOWN_SECONDS = 10.0
ACTOR_GRACE_SECONDS = 2.0  # then actors get SIGTERM (they die at once)
# A learner that reached its budget still writes its last row, checkpoint, summary and plot
# after asking the actors to stop; on a loaded machine that can take longer than an
# interrupt's 10 s, and killing it then would lose the run's end.
LEARNER_FINISH_SECONDS = 300.0
LEARNER_READY_SECONDS = 300.0
_POLL = 0.1
EVALUATOR = "evaluator"  # the evaluator's slot; an actor's is (task, replica)

Log = Callable[[str], None]
Slot = tuple[int, int] | str


def _slot_name(slot: Slot) -> str:
    return EVALUATOR if slot == EVALUATOR else f"actor task {slot[0]} replica {slot[1]}"


def _started(config: TrainConfig, num_tasks: int, what: str) -> str:
    d = config.distributed
    line = f"{num_tasks * d.actors_per_task} {what} started ({d.actors_per_task} per task)"
    return line + (" and the evaluator" if d.evaluator == "process" else "")


def _slots(config: TrainConfig, num_tasks: int) -> list[Slot]:
    """The processes besides the learner: every (task, replica) actor, then the evaluator."""
    d = config.distributed
    slots: list[Slot] = [(t, r) for t in range(num_tasks) for r in range(d.actors_per_task)]
    return [*slots, EVALUATOR] if d.evaluator == "process" else slots


class LaunchError(RuntimeError):
    """The run failed after it started (one line, for the CLI; exit code 1)."""


def _stderr(message: str) -> None:
    print(f"distral launch: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# CHECKS BEFORE ANYTHING STARTS
# ----------------------------------------------------------------------------------------


def check_port_free(port: int) -> None:
    """A ConfigError if something already listens on `port` (0: any port, always fine)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # only a listener is "busy"
        try:
            s.bind(("", port))
        except OSError:
            raise ConfigError(f"distributed.port={port} is busy: pick another or 0") from None


def check_reachable(address: str, what: str, timeout: float = 3.0) -> None:
    """A ConfigError unless a TCP connection to host:port succeeds within `timeout`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what} {address!r} must look like host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {address!r} is unreachable: {e.strerror or e}") from None


def preflight(config: TrainConfig, *, backend: str, ray_address: str | None) -> int:
    """Checks a launch before anything starts; returns the number of tasks."""
    from distral.experiment import make_experiment

    if len(config.seeds) != 1:
        raise ConfigError(
            f"seeds={list(config.seeds)!r}: distral launch runs one seed; launch one run per seed"
        )
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend {backend!r}; valid choices: local, ray")
    if ray_address is not None and backend != "ray":
        raise ConfigError("--ray-address needs --backend ray")
    d = config.distributed
    if d.replay_address is not None:
        check_reachable(d.replay_address, "distributed.replay_address")
    else:
        check_port_free(d.port)
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--backend ray needs Ray: pip install 'distral[ray]' (or the dev lock)"
            ) from None
        if ray_address is not None and ray_address != "auto":
            check_reachable(ray_address, "--ray-address")
    return make_experiment(config).num_tasks


# ----------------------------------------------------------------------------------------
# LOCAL: spawned processes on this machine
# ----------------------------------------------------------------------------------------


class _Signals:
    """Turns SIGINT/SIGTERM into a flag while the launcher runs (restored afterwards)."""

    def __init__(self, on_signal: Callable[[], None]) -> None:
        self.received: int | None = None
        self._on_signal = on_signal
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum
        self._on_signal()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run_local(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    num_tasks: int,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Runs the learner and the actors as spawned processes; returns the summary.

    Raises LaunchError if the learner dies or an actor slot exhausts its restarts, and
    KeyboardInterrupt after a clean stop on Ctrl-C / SIGTERM.
    """
    from distral.distributed import workers

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    reports: Any = ctx.Queue()
    d = config.distributed
    parent = os.getpid()
    learner = ctx.Process(
        target=workers.learner_process,
        args=(config, str(run_dir), resume, stop, reports, parent),
        name="distral-learner",
    )
    actors: dict[Slot, Any] = {}  # and the evaluator: every child but the learner
    attempts: dict[Slot, int] = {}
    seed = config.seeds[0]

    def start_actor(slot: Slot, address: str) -> None:
        if slot == EVALUATOR:
            target, args = workers.evaluator_process, (config, address, seed, stop, parent)
            name = "distral-evaluator"
        else:
            task, replica = slot
            s = actor_seed(seed, task, replica, attempts.get(slot, 0))
            target, args = workers.actor_process, (config, address, task, s, stop, parent)
            name = f"distral-actor-{task}-{replica}"
        p = ctx.Process(target=target, args=args, name=name)
        p.start()
        actors[slot] = p
        log(f"{_slot_name(slot)}: pid {p.pid}")

    summary: dict[str, Any] | None = None
    failure: str | None = None
    with _Signals(stop.set) as signals:
        try:
            learner.start()
            log(f"learner: pid {learner.pid}")
            # READY: the learner has its Reverb server up and its first parameters published.
            address = None
            deadline = time.monotonic() + LEARNER_READY_SECONDS
            while address is None and not stop.is_set():
                try:
                    msg = reports.get(timeout=_POLL)
                except queue.Empty:
                    if not learner.is_alive():
                        raise LaunchError(
                            f"the learner exited during start-up (exit code {learner.exitcode})"
                        ) from None
                    if time.monotonic() > deadline:
                        raise LaunchError("the learner did not start in time") from None
                    continue
                if msg[0] == "error":
                    raise LaunchError(msg[1])
                address = msg[1]
                log(
                    f"Reverb server at {address}; learner at step {msg[2]}; run directory {run_dir}"
                )
            if address is not None:
                for slot in _slots(config, num_tasks):
                    start_actor(slot, address)
                log(_started(config, num_tasks, "actors"))
            # SUPERVISE
            while not stop.is_set():
                try:
                    msg = reports.get(timeout=_POLL)
                except queue.Empty:
                    msg = None
                if msg is not None and msg[0] == "done":
                    summary = msg[1]
                    break
                if msg is not None and msg[0] == "error":
                    failure = msg[1]
                    break
                if not learner.is_alive():
                    failure = f"the learner died (exit code {learner.exitcode})"
                    break
                for slot, p in list(actors.items()):
                    if p.is_alive() or stop.is_set():
                        continue
                    attempts[slot] = attempts.get(slot, 0) + 1
                    if attempts[slot] > d.max_actor_restarts:
                        failure = (
                            f"{_slot_name(slot)} died {attempts[slot]} times "
                            f"(exit code {p.exitcode}); stopping the run"
                        )
                        break
                    log(
                        f"{_slot_name(slot)} died (exit code {p.exitcode}); "
                        f"restart {attempts[slot]}/{d.max_actor_restarts}"
                    )
                    start_actor(slot, address)
                if failure:
                    break
        finally:
            stop.set()
            urgent = lambda: failure is not None or signals.received is not None  # noqa: E731
            summary = _shutdown(learner, list(actors.values()), reports, summary, log, urgent)
            reports.close()
            reports.join_thread()
    return _outcome(failure, signals.received is not None, summary, run_dir)


def _outcome(
    failure: str | None, interrupted: bool, summary: dict[str, Any] | None, run_dir: Path
) -> dict[str, Any]:
    """The summary of a run that ended well, else the LaunchError / KeyboardInterrupt."""
    if failure is not None:
        raise LaunchError(f"{failure}; resume with: distral launch --resume {run_dir}")
    if interrupted:
        raise KeyboardInterrupt
    if summary is None:
        raise LaunchError(f"the learner ended without a summary; see {run_dir}")
    return summary


def _shutdown(
    learner: Any,
    actors: list[Any],
    reports: Any,
    summary: Any,
    log: Log,
    urgent: Callable[[], bool] = lambda: True,
) -> dict[str, Any] | None:
    """Waits for every child (the stop event is set), killing stragglers at the deadline.

    The deadline is SHUTDOWN_SECONDS after the stop when `urgent()` (Ctrl-C, SIGTERM, a
    failure), else LEARNER_FINISH_SECONDS: the learner reached its budget and is finishing.
    """
    t0 = time.monotonic()
    everyone = [learner, *actors]
    terminated = False

    def deadline() -> float:
        return t0 + (SHUTDOWN_SECONDS - 1.5 if urgent() else LEARNER_FINISH_SECONDS)

    while time.monotonic() < deadline() and any(p.is_alive() for p in everyone if p.pid):
        if not terminated and time.monotonic() > t0 + ACTOR_GRACE_SECONDS:
            for p in actors:  # an actor blocked inside Reverb cannot see the stop event
                if p.pid and p.is_alive():
                    p.terminate()
            terminated = True
        try:  # keep draining: a full queue would block the learner's last report
            msg = reports.get(timeout=_POLL)
            if msg[0] == "done":
                summary = msg[1]
        except queue.Empty:
            pass
    while True:  # the learner's report may arrive just as it exits
        try:
            msg = reports.get_nowait()
        except queue.Empty:
            break
        if msg[0] == "done":
            summary = msg[1]
    for p in everyone:
        if p.pid and p.is_alive():
            log(f"{p.name} did not stop in time; killing it")
            p.kill()
    for p in everyone:
        if p.pid:
            p.join(timeout=1.0)
    return summary


# ----------------------------------------------------------------------------------------
# RAY: the same workers as Ray actors
# ----------------------------------------------------------------------------------------


def run_ray(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    num_tasks: int,
    ray_address: str | None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """The learner is pinned to this node (it owns the run directory); actors go anywhere."""
    import ray

    from distral.distributed.ray_workers import RayWorker

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=ray_address,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    d = config.distributed
    node = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    learner = RayWorker.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        num_cpus=1,
        name=None,
    ).remote()
    actors: dict[Slot, Any] = {}
    runs: dict[Slot, Any] = {}
    attempts: dict[Slot, int] = {}
    stopping = threading.Event()
    seed = config.seeds[0]
    failure: str | None = None
    summary: dict[str, Any] | None = None

    def start_actor(slot: Slot, address: str) -> None:
        worker = RayWorker.options(num_cpus=0.5).remote()
        actors[slot] = worker
        if slot == EVALUATOR:
            runs[slot] = worker.run_evaluator.remote(config, address, seed)
            return
        task, replica = slot
        s = actor_seed(seed, task, replica, attempts.get(slot, 0))
        runs[slot] = worker.run_actor.remote(config, address, task, s)

    with _Signals(stopping.set) as signals:
        try:
            learner_run = learner.run_learner.remote(config, str(run_dir), resume)
            address = None
            deadline = time.monotonic() + LEARNER_READY_SECONDS
            while address is None and not stopping.is_set():
                msgs = ray.get(learner.reports.remote())
                for msg in msgs:
                    if msg[0] == "error":
                        raise LaunchError(msg[1])
                    if msg[0] == "ready":
                        address = msg[1]
                        log(f"Reverb server at {address}; learner at step {msg[2]}")
                done, _ = ray.wait([learner_run], timeout=0)
                if done and address is None:
                    ray.get(learner_run)  # raises the learner's error
                    raise LaunchError("the learner exited during start-up")
                if time.monotonic() > deadline:
                    raise LaunchError("the learner did not start in time")
                time.sleep(_POLL)
            if address is not None:
                for slot in _slots(config, num_tasks):
                    start_actor(slot, address)
                log(_started(config, num_tasks, "Ray actors"))
            while not stopping.is_set():
                done, _ = ray.wait([learner_run], timeout=_POLL)
                if done:
                    try:
                        summary = ray.get(learner_run)
                    except Exception as e:
                        failure = f"the learner died: {str(e).splitlines()[0]}"
                    break
                for slot, ref in list(runs.items()):
                    finished, _ = ray.wait([ref], timeout=0)
                    if not finished:
                        continue
                    try:
                        ray.get(ref)
                        code = "returned"
                    except Exception as e:
                        code = type(e).__name__
                    attempts[slot] = attempts.get(slot, 0) + 1
                    if attempts[slot] > d.max_actor_restarts:
                        failure = f"{_slot_name(slot)} died {attempts[slot]} times"
                        break
                    log(f"{_slot_name(slot)} ended ({code}); restart")
                    start_actor(slot, address)
                if failure:
                    break
        finally:
            # STOP: the learner first (it writes its checkpoint), then the actors.
            for worker in [learner, *actors.values()]:
                try:
                    worker.stop.remote()
                except Exception:
                    pass
            try:
                if summary is None:
                    summary = ray.get(learner_run, timeout=SHUTDOWN_SECONDS - 1)
            except Exception:
                pass
            for worker in [learner, *actors.values()]:
                ray.kill(worker, no_restart=True)
            if started_here:
                ray.shutdown()
    return _outcome(failure, signals.received is not None, summary, run_dir)


def launch(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Checks, then runs, a distributed run; returns its summary (see `run_local`)."""
    from distral import rundir

    run_dir = Path(run_dir).absolute()
    rundir.check_run_dir(run_dir, resume=resume)
    config = rundir.inline_layout(config)
    num_tasks = preflight(config, backend=backend, ray_address=ray_address)
    if backend == "ray":
        return run_ray(
            config, run_dir, resume=resume, num_tasks=num_tasks, ray_address=ray_address, log=log
        )
    return run_local(config, run_dir, resume=resume, num_tasks=num_tasks, log=log)
