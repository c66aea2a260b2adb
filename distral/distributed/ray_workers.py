"""The Ray backend's actor class: one Ray actor runs the learner, an actor or the evaluator.

The bodies are the same functions the local launcher spawns (`distral.distributed.workers`); a Ray
actor is threaded (`max_concurrency`), so `stop` and `reports` answer while `run_*` works.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

from distral.config import TrainConfig
from distral.distributed import workers
from distral.distributed.learner import learner_main


@ray.remote(max_concurrency=4)
class RayWorker:
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
