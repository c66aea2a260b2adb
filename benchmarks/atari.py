"""Atari throughput: raw environment frames/s against actor frames/s on the same games.

In one run, on the same cores, K processes (one per game, default Pong and Breakout) each
step B Atari environments of their game on ale-py's vectorised C++ environment
(distral.envs.atari.AtariVectorEnv: frame skip 4, 84x84 grey, 4-frame stack, sticky
actions), as the actors do:
  (raw)    random actions, nothing else: the environments' own cost;
  (actors) `Actor`s of the preset `experiments/atari_4games.yaml` (policy inference with the
           Nature CNN, pi_i of the variant) writing unrolls to a real Reverb server whose
           queue never fills (no learner).
Ratio = actors / raw (target: at least 80%). Figures are ALE frames per second (4 per agent
step), summed over the K processes.

    .venv/bin/python benchmarks/atari.py [--games Pong,Breakout] [--envs 8] [--steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "atari_4games.yaml"


def _config(games: list[str], envs: int, queue: int):
    from distral.config import load_config

    config = load_config(PRESET, [f"env.games={games}"])
    d = dataclasses.replace(config.distributed, envs_per_actor=envs, queue_size=queue)
    return dataclasses.replace(config, distributed=d)


def _raw_child(config, task, steps, results) -> None:
    from distral.experiment import make_experiment

    env = make_experiment(config).make_vector_env(task, config.distributed.envs_per_actor, task)
    env.reset(0)
    rng = np.random.default_rng(task)
    actions = lambda: rng.integers(0, env.num_actions, env.num_envs)  # noqa: E731
    for _ in range(20):
        env.step(actions())
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(actions())
    results.put(4 * steps * env.num_envs / (time.perf_counter() - t0))


def _actor_child(config, address, task, steps, results) -> None:
    from distral.distributed import workers

    actor = workers.make_actor(config, address, task, seed=task)
    actor.run(max_steps=20)  # compile the policy, fill the pipes
    t0 = time.perf_counter()
    actor.run(max_steps=steps)
    results.put(4 * steps * config.distributed.envs_per_actor / (time.perf_counter() - t0))


def _run(target, args_of, count: int) -> float:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of(k), results)) for k in range(count)]
    for p in procs:
        p.start()
    rates = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return float(np.sum(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", default="Pong,Breakout")
    parser.add_argument("--envs", type=int, default=8, help="environments per process")
    parser.add_argument("--steps", type=int, default=300, help="timed agent steps per process")
    args = parser.parse_args()
    games = args.games.split(",")
    k = len(games)
    queue = k * (args.steps + 100) // 20 + 10  # never fills during the measurement
    config = _config(games, args.envs, queue)

    import jax
    import reverb

    from distral.distributed import replay
    from distral.experiment import make_experiment

    raw = _run(_raw_child, lambda t: (config, t, args.steps), k)
    experiment = make_experiment(config)
    server = replay.start_server(replay.make_replay_tables(experiment))
    address = f"localhost:{server.port}"
    params = experiment.network.init(jax.random.PRNGKey(0), experiment.example_obs)
    replay.publish_params(reverb.Client(address), params, 0)
    actors = _run(_actor_child, lambda t: (config, address, t, args.steps), k)
    server.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; games {games}, one process "
        f"per game, {args.envs} envs each, {args.steps} timed agent steps; variant "
        f"{config.variant}, torso {config.torso}"
    )
    print(f"raw env frames/s:   {raw:12,.0f}")
    print(f"actor frames/s:     {actors:12,.0f}  (policy + Reverb writes)")
    print(f"ratio actors / raw: {actors / raw:12.0%}  (target >= 80%)")


if __name__ == "__main__":
    main()
