"""Distributed throughput: end to end with 1, 2 and 4 actors, and the cost of Reverb writes.

In one run, on the same machine and the same network (the distributed two-room preset):
  (a) end to end: `distral launch`'s local backend (learner + K actor processes, K = 1, 2, 4),
      env frames/s consumed by the learner and learner updates/s (rows after the first,
      which includes compilation);
  (b) K actor processes writing unrolls to a Reverb server with a queue that never fills
      (no learner): env frames/s produced;
  (c) the same K actors with a writer that drops every step (`DropWriter`): acting and
      stepping only.
Reverb overhead = 1 - (b)/(c) (target: at most 30%).

The runs use one task with K actors on it, so the network and the learner's cost stay the
same while K varies (with K tasks the mixed-task forward pass would grow with K too).

    .venv/bin/python benchmarks/distributed.py [--actors 1,2,4] [--learner-steps 300]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from distral.config import load_config
from distral.distributed import workers

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "two_room_distributed.yaml"


def _config(num_actors: int, learner_steps: int):
    config = load_config(PRESET, ["env.num_tasks=1", "log_every=20", "checkpoint_every=1000"])
    d = dataclasses.replace(
        config.distributed, actors_per_task=num_actors, max_learner_steps=learner_steps
    )
    return dataclasses.replace(config, distributed=d)


# (a) END TO END


def end_to_end(num_actors: int, learner_steps: int) -> tuple[float, float]:
    from distral.distributed.launch import launch

    config = _config(num_actors, learner_steps)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        launch(config, run_dir, log=lambda _: None)
        with (run_dir / "metrics.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))[1:]  # the first row includes compilation
    frames = float(np.mean([float(r["steps_per_second"]) for r in rows]))
    updates = float(np.mean([float(r["updates_per_second"]) for r in rows]))
    return frames, updates


# (b), (c) ACTORS ALONE


class DropWriter:
    """An `ExperienceWriter` that drops every step and episode: the actor without Reverb."""

    def append(self, step, stop_event) -> bool:
        return True

    def episode(self, task_id, episode_return, length, params_step) -> None:
        pass

    def flush_unrolls(self, stop_event) -> None:
        pass

    def flush_episodes(self, stopping) -> None:
        pass

    def close(self) -> None:
        pass


def _actor_child(config, address, replica, write, warmup, steps, results, parent) -> None:
    workers.die_with_parent(parent)
    writer = None if write else DropWriter()
    actor = workers.make_actor(config, address, 0, seed=replica, writer=writer)
    actor.run(max_steps=warmup)  # compile and fill the pipes
    t0 = time.perf_counter()
    actor.run(max_steps=steps)
    dt = time.perf_counter() - t0
    results.put(steps * config.distributed.envs_per_actor / dt)


def actors_alone(num_actors: int, write: bool, steps: int) -> float:
    """Total env frames/s of `num_actors` processes, each timing `steps` actor steps."""
    import jax

    from distral.distributed import replay
    from distral.experiment import make_experiment

    config = _config(num_actors, 1)
    # A queue that never fills during the measurement: no learner needed.
    total_items = num_actors * (steps + 100) // config.unroll_length + 10
    config = dataclasses.replace(
        config, distributed=dataclasses.replace(config.distributed, queue_size=total_items)
    )
    experiment = make_experiment(config)
    server = replay.start_server(replay.make_replay_tables(experiment))
    address = f"localhost:{server.port}"
    import reverb

    client = reverb.Client(address)
    params = experiment.network.init(jax.random.PRNGKey(0), experiment.example_obs)
    replay.publish_params(client, params, 0)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_actor_child,
            args=(config, address, r, write, 50, steps, results, os.getpid()),
        )
        for r in range(num_actors)
    ]
    for p in procs:
        p.start()
    rates = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    server.stop()
    return float(np.sum(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--learner-steps", type=int, default=300)
    parser.add_argument("--actor-steps", type=int, default=1000)
    args = parser.parse_args()
    counts = [int(x) for x in args.actors.split(",")]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; preset {PRESET.name} with one "
        "task (B = 16 envs per actor, T = 20, batch 8 unrolls)"
    )
    print(
        "actors | (a) e2e frames/s | learner updates/s | (b) write frames/s | "
        "(c) no-write frames/s | overhead 1-(b)/(c)"
    )
    for k in counts:
        e2e, ups = end_to_end(k, args.learner_steps)
        on = actors_alone(k, True, args.actor_steps)
        off = actors_alone(k, False, args.actor_steps)
        print(
            f"{k:6d} | {e2e:16,.0f} | {ups:17.2f} | {on:18,.0f} | {off:21,.0f} | "
            f"{1 - on / off:.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
