"""The Ray backend of `distral launch`: the same workers as Ray actors.

`RayWorker` is one Ray actor that runs the learner, an actor or the evaluator: the bodies
are the functions the local launcher spawns (`distral.distributed.workers`); a Ray actor is
threaded (`max_concurrency`), so `stop` and `reports` answer while `run_*` works.
`RayBackend` is what `launch.Supervisor` drives: the learner is pinned to this node (it owns
the run directory), the slots go anywhere. Restarts are the supervisor's, not Ray's
(`max_restarts` would re-create a worker, not re-run its slot with a new seed).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distral.config import TrainConfig
from distral.distributed import workers
from distral.distributed.launch import Slot, slot_name
from distral.distributed.learner import learner_main


class RayWorker:
    """What one Ray actor of a run does: the learner, an actor slot or the evaluator,
    with its stop flag and the learner's reports (`RemoteWorker` is its Ray actor class;
    Ray names the worker processes after this class: "ray::RayWorker.run_actor")."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._reports: list[tuple] = []
        self._lock = threading.Lock()

    def _report(self, message: tuple) -> None:
        with self._lock:
            self._reports.append(message)

    def run_learner(self, config: TrainConfig, run_dir: str, resume: bool) -> dict[str, Any]:
        host = ray.util.get_node_ip_address()
        return learner_main(
            config, run_dir, resume, self._stop.is_set, self._stop.set, self._report, host=host
        )

    def run_actor(self, config: TrainConfig, address: str, task_id: int, seed: int) -> None:
        workers.actor_main(config, address, task_id, seed, self._stop.is_set)

    def run_evaluator(self, config: TrainConfig, address: str, seed: int) -> None:
        workers.evaluator_main(config, address, seed, self._stop.is_set)

    def stop(self) -> None:
        self._stop.set()

    def reports(self) -> list[tuple]:
        with self._lock:
            out, self._reports = self._reports, []
        return out


# Ray's stubs know neither `max_concurrency` nor the `.options` of a decorated class.
RemoteWorker: Any = ray.remote(max_concurrency=4)(RayWorker)  # type: ignore[call-overload]


def error_status(error: BaseException) -> str:
    """One line for how a Ray task ended in `error`: the worker's own exception (a task's
    error), or Ray's account of a dead worker (its last line says why it died)."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        error = cause
    lines = [x.strip() for x in str(error).strip().splitlines() if x.strip()]
    if not lines:
        return type(error).__name__
    detail = lines[-1] if isinstance(error, ray.exceptions.RayActorError) else lines[0]
    return f"{type(error).__name__}: {detail}"


def _ended(ref: ray.ObjectRef) -> tuple[Any, str]:
    """(result or None, status) of a finished task."""
    try:
        return ray.get(ref), "returned"
    except Exception as e:
        return None, error_status(e)


def cpu_shares(cluster_cpus: float, num_slots: int) -> tuple[float, float]:
    """(the learner's, each actor or evaluator slot's) Ray CPU request. Ray schedules by
    these numbers, so every process of the run must fit in the cluster's CPUs or a slot
    waits forever (2 CPUs, 2 actors and the evaluator at 0.5 beside the learner's 1 left
    the evaluator unscheduled). The learner gets up to one CPU, the slots share the rest,
    at most half a CPU each."""
    learner = min(1.0, cluster_cpus / 2)
    return learner, min(0.5, (cluster_cpus - learner) / max(num_slots, 1))


class RayBackend:
    """`launch.Backend` on Ray: this machine's Ray instance, or the cluster at `ray_address`."""

    what = "Ray actors"

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        resume: bool,
        ray_address: str | None,
        num_slots: int,
    ) -> None:
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(
                address=ray_address,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self._learner_cpus, self._slot_cpus = cpu_shares(cpus, num_slots)
        self._config = config
        self._learner_args = (config, str(run_dir), resume)
        self._learner: Any = None
        self._learner_run: Any = None  # its ObjectRef, once started
        self._learner_status: str | None = None
        self._workers: dict[Slot, Any] = {}
        self._runs: dict[Slot, ray.ObjectRef] = {}

    def start_learner(self) -> None:
        node = ray.get_runtime_context().get_node_id()
        self._learner = RemoteWorker.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
            num_cpus=self._learner_cpus,
        ).remote()
        self._learner_run = self._learner.run_learner.remote(*self._learner_args)

    def reports(self, timeout: float) -> list[tuple]:
        try:
            out = list(ray.get(self._learner.reports.remote()))
        except ray.exceptions.RayError:  # its worker is gone: `learner_exit` says how
            out = []
        if self._learner_status is None:
            done, _ = ray.wait([self._learner_run], timeout=0 if out else timeout)
            if done:
                summary, self._learner_status = _ended(self._learner_run)
                out += [] if summary is None else [("done", summary)]
        elif not out:
            time.sleep(timeout)
        return out

    def learner_exit(self) -> str | None:
        return self._learner_status

    def start_slot(self, slot: Slot, address: str, seed: int) -> None:
        if slot in self._workers:  # a failed task leaves its worker idle: free it
            ray.kill(self._workers[slot], no_restart=True)
        worker = self._workers[slot] = RemoteWorker.options(num_cpus=self._slot_cpus).remote()
        if isinstance(slot, str):  # the evaluator
            self._runs[slot] = worker.run_evaluator.remote(self._config, address, seed)
        else:
            self._runs[slot] = worker.run_actor.remote(self._config, address, slot[0], seed)

    def _finished(self) -> list[ray.ObjectRef]:
        refs = [r for r in (self._learner_run, *self._runs.values()) if r is not None]
        return ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []

    def exited_slots(self) -> dict[Slot, str]:
        finished = set(self._finished())
        return {slot: _ended(ref)[1] for slot, ref in self._runs.items() if ref in finished}

    def stop_requested(self) -> bool:
        return False  # the learner's own stop flag: its run then returns the summary

    def request_stop(self) -> None:
        for worker in [self._learner, *self._workers.values()]:  # the learner first
            if worker is not None:
                worker.stop.remote()

    def alive(self) -> bool:
        return len(self._finished()) < len(self._runs) + (self._learner_run is not None)

    def terminate_slots(self) -> None:
        finished = set(self._finished())
        for slot, worker in self._workers.items():
            if self._runs[slot] not in finished:
                ray.kill(worker, no_restart=True)

    def kill_stragglers(self) -> list[str]:
        finished = set(self._finished())
        running = [("learner", self._learner, self._learner_run)] + [
            (slot_name(slot), self._workers[slot], ref) for slot, ref in self._runs.items()
        ]
        for _, worker, _ in running:
            if worker is not None:
                ray.kill(worker, no_restart=True)
        return [name for name, _, ref in running if ref is not None and ref not in finished]

    def close(self) -> None:
        if self._started_here:
            ray.shutdown()
