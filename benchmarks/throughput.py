"""Throughput of the single-process two-room trainer, three ways in one run.

(a) env only: the JAX grid world stepping random actions, [tasks x envs] vmapped, scanned;
(b) learner only: `update_step` on a fixed batch of the trainer's shape (samples/s, where
    a sample is one agent step of one environment);
(c) end to end: `distral train`'s compiled chunk (rollouts with the network + updates).
Same network, batch shape and chunk length for all three, and all three vmapped over
`--seeds` independent runs as `distral train --seeds` runs them (default 1). Target: (c)
>= 70% of (b).

    .venv/bin/python benchmarks/throughput.py [--config experiments/two_room.yaml]
        [--variant kl_ent_2col] [--seeds 1] [--repeats 5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp

from distral.config import load_config
from distral.envs import two_room
from distral.train import Trainer


def timed(fn, *args, repeats: int) -> float:
    """Best wall time of `repeats` calls after a compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/two_room.yaml")
    parser.add_argument("--variant", default="kl_ent_2col")
    parser.add_argument("--seeds", type=int, default=1, help="runs vmapped together")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} must be >= 1")
    seeds = list(range(args.seeds))
    config = load_config(args.config, args.set, {"variant": args.variant, "seeds": seeds})
    trainer = Trainer(config)
    N, E, T, K = trainer.num_tasks, config.num_envs_per_task, config.unroll_length, config.log_every
    steps_per_chunk = len(seeds) * N * E * T * K  # agent steps, all tasks and seeds
    runner = trainer.init(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))

    # (a) ENV ONLY
    task_ids = trainer.task_ids(E)
    step = jax.vmap(jax.vmap(two_room.step_auto_reset, (0, None, 0, 0, 0)), (0, None, 0, 0, 0))

    @jax.jit
    @jax.vmap
    def env_only(env_state, key):
        def one(carry, key):
            k_act, k_env = jax.random.split(key)
            action = jax.random.randint(k_act, (N, E), 0, two_room.NUM_ACTIONS)
            keys = jax.random.split(k_env, N * E).reshape(N, E, -1)
            state, obs, reward, _, _ = step(keys, trainer.env_params, carry, action, task_ids)
            return state, reward.sum() + obs.sum()

        return jax.lax.scan(one, env_state, jax.random.split(key, T * K))

    env_keys = jax.random.split(jax.random.PRNGKey(1), len(seeds))
    t_env = timed(env_only, runner.env_state, env_keys, repeats=args.repeats)

    # (b) LEARNER ONLY: K updates on a fixed batch of the trainer's shape.
    _, batch, _, _ = jax.jit(jax.vmap(trainer.rollout))(runner)

    @jax.jit
    @jax.vmap
    def learner_only(state, batch):
        def one(state, _):
            parts = trainer.experiment.parts
            state, metrics = trainer.algorithm.update_step(state, batch, parts, task_grouped=True)
            return state, metrics["loss"]

        return jax.lax.scan(one, state, None, length=K)

    t_learn = timed(learner_only, runner.train, batch, repeats=args.repeats)

    # (c) END TO END: the trainer's own compiled chunk, vmapped over the seeds.
    t_e2e = timed(trainer.run_chunk, runner, repeats=args.repeats)

    a, b, c = steps_per_chunk / t_env, steps_per_chunk / t_learn, steps_per_chunk / t_e2e
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}"
    )
    print(
        f"config: {args.config} variant={config.variant} seeds={len(seeds)} tasks={N} "
        f"envs/task={E} unroll={T} updates/chunk={K} "
        f"torso={config.torso}{list(config.hidden_sizes)}"
    )
    print(f"(a) env only          {a:>12,.0f} env steps/s")
    print(f"(b) learner only      {b:>12,.0f} samples/s")
    print(f"(c) end-to-end train  {c:>12,.0f} env steps/s")
    print(f"(c)/(b) = {c / b:.0%}   (target >= 70%)")


if __name__ == "__main__":
    main()
