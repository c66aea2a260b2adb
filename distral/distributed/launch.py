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

Everything that can be checked is checked before any process starts (`preflight`). The
supervision is one state machine (`Supervisor`) over two small backends: `LocalBackend`
(spawned processes) and `distral.distributed.ray_workers.RayBackend` (Ray actors).
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
from typing import Any, Protocol

from distral.config import APEX_FAMILIES, ConfigError, TrainConfig
from distral.distributed import workers

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


def slot_name(slot: Slot) -> str:
    """How the log names a slot: "actor task 1 replica 0", "evaluator"."""
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


def check_distill(config: TrainConfig) -> None:
    """A distillation student's launch: a game environment, replay sizes in whole items of
    envs_per_actor samples, and teachers that can teach it (read here, before any process
    starts: a bad one is a one-line error naming it)."""
    from distral.distributed.replay import distill_replay

    if config.env.name == "two_room":
        raise ConfigError(
            "algorithm 'distill' on two_room runs in one jitted program: use distral distill "
            "(the distributed student is for the games, env.name minatar or atari)"
        )
    d, s = config.distributed, config.distill
    for name, value in (
        ("batch_per_task", s.batch_per_task),
        ("replay_per_task", s.replay_per_task),
    ):
        if value % d.envs_per_actor:
            raise ConfigError(
                f"distill.{name}={value} is not a multiple of distributed.envs_per_actor="
                f"{d.envs_per_actor} (replay items hold one actor step of its environments)"
            )
    sizes = distill_replay(config)
    if sizes.max_items < sizes.min_items + sizes.items_per_update:
        raise ConfigError(
            f"distill.replay_per_task={s.replay_per_task} holds {sizes.max_items} items of "
            f"{d.envs_per_actor} samples; the first sample needs {sizes.min_items} and a step "
            f"{sizes.items_per_update} more: raise it"
        )
    from distral.distill import experiment_and_teachers

    experiment_and_teachers(config)


def preflight(config: TrainConfig, *, backend: str, ray_address: str | None) -> int:
    """Checks a launch before anything starts; returns the number of tasks. It reads the
    tasks without building the algorithm: the launcher never imports rlax, whose
    tensorflow_probability imports TensorFlow (seconds to load, seconds more at exit),
    except for a distillation student, whose teachers are read here (`check_distill`)."""
    from distral.experiment import task_spec

    if config.algorithm == "distill":
        check_distill(config)
    elif config.algorithm in APEX_FAMILIES and config.env.name == "two_room":
        raise ConfigError(
            f"algorithm={config.algorithm!r} runs on the games (env.name: minatar or atari); "
            "its evaluator plays dm_env episodes"
        )
    elif config.algorithm not in ("distral", *APEX_FAMILIES):
        raise ConfigError(
            f"algorithm={config.algorithm!r}: distral launch runs algorithm 'distral', "
            "'apex', 'apex_distill', or 'distill' (on the games)"
        )
    if config.algorithm == "apex_distill":  # its teachers, read here: a bad one is one line
        from distral.distill import experiment_and_teachers

        experiment_and_teachers(config)
    if len(config.seeds) != 1:
        raise ConfigError(
            f"seeds={list(config.seeds)!r}: distral launch runs one seed; launch one run per seed"
        )
    if config.init_from is not None and not (Path(config.init_from) / "config.yaml").is_file():
        # The learner process checks its shapes; a missing run is refused before it starts.
        raise ConfigError(f"init_from {config.init_from!r} is not a run directory")
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
    return int(task_spec(config)[1])


# ----------------------------------------------------------------------------------------
# SUPERVISION: one state machine, whatever runs the processes
# ----------------------------------------------------------------------------------------


class Backend(Protocol):
    """What runs the learner and the slots (actors, the evaluator) of a launch.

    A status says how a process ended, for the log: "exit code -9", "ActorDiedError: ...".
    The learner reports ("ready", reverb_address, learner_step), ("done", summary) or
    ("error", one_line) (`distral.distributed.workers`).
    """

    what: str  # what the slots are, for the log: "actors", "Ray actors"

    def start_learner(self) -> str | None:
        """Starts the learner; returns where it runs, for the log ("pid 12"), if known."""
        ...

    def reports(self, timeout: float) -> list[tuple]:
        """The learner's reports since the last call; waits up to `timeout` s for one."""
        ...

    def learner_exit(self) -> str | None:
        """None while the learner runs (as of the last `reports`), else its status."""
        ...

    def start_slot(self, slot: Slot, address: str, seed: int) -> str | None:
        """(Re)starts a slot's process; returns where it runs, for the log, if known."""
        ...

    def exited_slots(self) -> dict[Slot, str]:
        """The started slots whose process ended, with their status."""
        ...

    def stop_requested(self) -> bool:
        """True once the learner asked everyone to stop (its budget is spent)."""
        ...

    def request_stop(self) -> None:
        """Asks every process to stop (the learner writes its last row and checkpoint)."""
        ...

    def alive(self) -> bool:
        """True while any process runs."""
        ...

    def terminate_slots(self) -> None:
        """Ends the slots now (they hold nothing worth saving, and may be blocked)."""
        ...

    def kill_stragglers(self) -> list[str]:
        """Kills whatever still runs; returns the names of the processes killed."""
        ...

    def close(self) -> None:
        """Releases what the backend holds (queues, its Ray instance)."""
        ...


class _Signals:
    """Records SIGINT/SIGTERM while the launcher runs (handlers restored afterwards)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Supervisor:
    """Runs a launch on a backend: the learner, then (once it is ready) every slot; then

    - a dead slot is restarted (an actor with a new seed, the evaluator with the same) at
      most `max_actor_restarts` times, after which the run stops with an error;
    - a dead learner, or one that reports an error, stops the run with an error;
    - the learner's budget, Ctrl-C or SIGTERM stop the run: see `_shutdown`.
    """

    def __init__(
        self,
        backend: Backend,
        config: TrainConfig,
        num_tasks: int,
        run_dir: Path,
        log: Log = _stderr,
    ) -> None:
        self._backend = backend
        self._slots = _slots(config, num_tasks)
        self._started = _started(config, num_tasks, backend.what)
        self._max_restarts = config.distributed.max_actor_restarts
        self._seed = config.seeds[0]
        self._run_dir = run_dir
        self._log = log
        self.restarts: dict[Slot, int] = {}  # deaths per slot so far
        self._address: str | None = None  # the Reverb server's, once the learner is ready
        self._failure: str | None = None
        self._summary: dict[str, Any] | None = None
        self._signals = _Signals()

    def run(self) -> dict[str, Any]:
        """The run's summary; raises LaunchError if it failed, KeyboardInterrupt after a
        clean stop on Ctrl-C / SIGTERM."""
        with self._signals:
            try:
                self._log_where("learner", self._backend.start_learner())
                if self._wait_ready():
                    for slot in self._slots:
                        self._start(slot)
                    self._log(self._started)
                    self._supervise()
            finally:
                self._shutdown()
        return _outcome(
            self._failure, self._signals.received is not None, self._summary, self._run_dir
        )

    def _stopping(self) -> bool:
        return self._signals.received is not None or self._backend.stop_requested()

    def _log_where(self, name: str, where: str | None) -> None:
        if where is not None:
            self._log(f"{name}: {where}")

    def _read_reports(self, timeout: float) -> str | None:
        """Takes the learner's reports (keeps its summary); returns its error line, if any."""
        error = None
        for msg in self._backend.reports(timeout):
            if msg[0] == "done":
                self._summary = msg[1]
            elif msg[0] == "error":
                error = msg[1]
            elif msg[0] == "ready":
                self._address = msg[1]
                self._log(
                    f"Reverb server at {msg[1]}; learner at step {msg[2]}; "
                    f"run directory {self._run_dir}"
                )
        return error

    def _wait_ready(self) -> bool:
        """READY (True): the learner's Reverb server is up, its first parameters published.
        False: stopped before."""
        deadline = time.monotonic() + LEARNER_READY_SECONDS
        while not self._stopping():
            error = self._read_reports(_POLL)
            if error is not None:
                raise LaunchError(error)
            if self._address is not None:
                return True
            status = self._backend.learner_exit()
            if status is not None:
                raise LaunchError(f"the learner exited during start-up ({status})")
            if time.monotonic() > deadline:
                raise LaunchError("the learner did not start in time")
        return False

    def _supervise(self) -> None:
        """SUPERVISE until the learner ends (its summary or a failure) or a stop."""
        while not self._stopping():
            error = self._read_reports(_POLL)
            if error is not None or self._summary is not None:
                self._failure = error
                return
            status = self._backend.learner_exit()
            if status is not None:
                error = self._read_reports(0)  # a report sent just before it exited
                if self._summary is None:
                    self._failure = error or f"the learner died ({status})"
                return
            for slot, status in self._backend.exited_slots().items():
                if self._stopping() or not self._restart(slot, status):
                    return

    def _start(self, slot: Slot) -> None:
        """Starts a slot: an actor with a new seed per attempt, the evaluator with the run's."""
        assert self._address is not None  # slots start once the learner is ready
        if isinstance(slot, str):
            seed = self._seed
        else:
            task, replica = slot
            seed = workers.actor_seed(self._seed, task, replica, self.restarts.get(slot, 0))
        self._log_where(slot_name(slot), self._backend.start_slot(slot, self._address, seed))

    def _restart(self, slot: Slot, status: str) -> bool:
        """Restarts a dead slot, or records the run's failure (-> False) past the limit."""
        died = self.restarts[slot] = self.restarts.get(slot, 0) + 1
        if died > self._max_restarts:
            self._failure = f"{slot_name(slot)} died {died} times ({status}); stopping the run"
            return False
        self._log(f"{slot_name(slot)} died ({status}); restart {died}/{self._max_restarts}")
        self._start(slot)
        return True

    def _shutdown(self) -> None:
        """STOP: asks everyone to stop, waits, kills stragglers at the deadline.

        The deadline is SHUTDOWN_SECONDS after the stop when it is urgent (Ctrl-C, SIGTERM,
        a failure, a learner that never got ready), else LEARNER_FINISH_SECONDS: the learner
        reached its budget and is finishing. The slots get ACTOR_GRACE_SECONDS, then end.
        """
        backend = self._backend
        backend.request_stop()
        t0 = time.monotonic()
        terminated = False

        def deadline() -> float:
            urgent = self._failure is not None or self._signals.received is not None
            urgent = urgent or self._address is None
            return t0 + (SHUTDOWN_SECONDS - 1.5 if urgent else LEARNER_FINISH_SECONDS)

        try:
            while time.monotonic() < deadline() and backend.alive():
                if not terminated and time.monotonic() > t0 + ACTOR_GRACE_SECONDS:
                    backend.terminate_slots()
                    terminated = True
                self._read_reports(_POLL)  # keep draining: a full queue blocks the learner
            self._read_reports(0)  # its last report may arrive just as it exits
            for name in backend.kill_stragglers():
                self._log(f"{name} did not stop in time; killing it")
        finally:
            backend.close()


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


# ----------------------------------------------------------------------------------------
# LOCAL: spawned processes on this machine
# ----------------------------------------------------------------------------------------


class LocalBackend:
    """The learner and the slots as processes of this machine, started with spawn (a
    forked child would inherit JAX's and Reverb's threads in whatever state they were).

    The children share one stop event and die with the launcher (PR_SET_PDEATHSIG); the
    learner reports through a queue. The entry points are `distral.distributed.workers`'
    unless given (tests give stand-ins with the same arguments).
    """

    what = "actors"

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        resume: bool,
        learner: Callable[..., None] = workers.learner_process,
        actor: Callable[..., None] = workers.actor_process,
        evaluator: Callable[..., None] = workers.evaluator_process,
    ) -> None:
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._queue: Any = self._ctx.Queue()
        self._config = config
        self._learner_args = (config, str(run_dir), resume, self._stop, self._queue)
        self._entry_points = learner, actor, evaluator
        self._parent = os.getpid()
        self._learner: Any = None
        self._processes: dict[Slot, Any] = {}

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> Any:
        p = self._ctx.Process(target=target, args=(*args, self._parent), name=name)
        p.start()
        return p

    def start_learner(self) -> str:
        self._learner = self._spawn("distral-learner", self._entry_points[0], *self._learner_args)
        return f"pid {self._learner.pid}"

    def start_slot(self, slot: Slot, address: str, seed: int) -> str:
        _, actor, evaluator = self._entry_points
        c, stop = self._config, self._stop
        if isinstance(slot, str):  # the evaluator
            p = self._spawn("distral-evaluator", evaluator, c, address, seed, stop)
        else:
            task, replica = slot
            p = self._spawn(f"distral-actor-{task}-{replica}", actor, c, address, task, seed, stop)
        self._processes[slot] = p
        return f"pid {p.pid}"

    def reports(self, timeout: float) -> list[tuple]:
        out = []
        try:
            out.append(self._queue.get(timeout=timeout))
            while True:
                out.append(self._queue.get_nowait())
        except queue.Empty:
            return out

    def learner_exit(self) -> str | None:
        return None if self._learner.is_alive() else f"exit code {self._learner.exitcode}"

    def exited_slots(self) -> dict[Slot, str]:
        return {
            s: f"exit code {p.exitcode}" for s, p in self._processes.items() if not p.is_alive()
        }

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def _everyone(self) -> list[Any]:
        started = [] if self._learner is None else [self._learner]
        return started + list(self._processes.values())

    def alive(self) -> bool:
        return any(p.is_alive() for p in self._everyone())

    def terminate_slots(self) -> None:
        for p in self._processes.values():  # an actor blocked inside Reverb cannot see the stop
            if p.is_alive():
                p.terminate()

    def kill_stragglers(self) -> list[str]:
        killed = [p.name for p in self._everyone() if p.is_alive()]
        for p in self._everyone():
            if p.is_alive():
                p.kill()
        for p in self._everyone():
            p.join(timeout=1.0)
        return killed

    def close(self) -> None:
        self._queue.close()
        self._queue.join_thread()


def launch(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Checks, then runs, a distributed run; returns its summary (see `Supervisor.run`)."""
    from distral import rundir

    run_dir = Path(run_dir).absolute()
    rundir.check_run_dir(run_dir, resume=resume)
    config = rundir.inline_layout(config)
    num_tasks = preflight(config, backend=backend, ray_address=ray_address)
    if backend == "ray":
        from distral.distributed.ray_workers import RayBackend

        num_slots = len(_slots(config, num_tasks))
        runner: Backend = RayBackend(
            config, run_dir, resume=resume, ray_address=ray_address, num_slots=num_slots
        )
    else:
        runner = LocalBackend(config, run_dir, resume=resume)
    return Supervisor(runner, config, num_tasks, run_dir, log).run()
