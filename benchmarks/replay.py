"""Reverb prioritised vs uniform transition tables (Ape-X's replay) on this machine.

For each selector, an in-process Reverb server with one table of n-step transitions of the
MinAtar observation (float32 [10, 10, 10], binary like MinAtar's) and:

(a) inserts/s: `TransitionWriter` writing B = 8 transitions per call with random
    priorities, until the table holds `--fill` items;
(b) samples/s: `PrioritizedSampler` drawing `--batch` items per call;
(c) priority updates/s: `update_priorities` of a sampled batch's keys;
(d) learner steps/s: sample, jitted `apex.update_step` of the dueling MinAtar network,
    priority update (the uniform table takes the same updates, which change nothing).

    .venv/bin/python benchmarks/replay.py [--fill 20000] [--batch 64] [--repeats 200]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import reverb

from distral.core import apex
from distral.core.networks import make_torso
from distral.distributed import prioritized, replay
from distral.envs import minatar

B = 8  # transitions per actor write: one actor step of its environments


def _transitions(rng: np.random.Generator, obs_shape: tuple[int, ...]) -> prioritized.Transitions:
    obs = (rng.random((B, *obs_shape)) < 0.1).astype(np.float32)
    return prioritized.Transitions(
        observation=obs,
        action=rng.integers(0, minatar.NUM_ACTIONS, size=B).astype(np.int32),
        reward=rng.normal(size=B).astype(np.float32),
        discount=np.full(B, 0.97, np.float32),
        next_observation=obs,
        params_step=np.zeros(B, np.int64),
        priority=rng.uniform(0.01, 2.0, size=B),
    )


def bench(selector: str, args: argparse.Namespace) -> dict[str, float]:
    spec = minatar.observation_spec()
    tables = prioritized.transition_tables(
        spec, 1, max_size=args.fill, min_size=args.batch, selector=selector
    )
    server = replay.start_server(tables)
    client = reverb.Client(replay.server_address(server))
    rng = np.random.default_rng(0)
    batches = [_transitions(rng, spec.shape) for _ in range(64)]
    try:
        writer = prioritized.TransitionWriter(client, 0)
        t = time.perf_counter()
        for i in range(args.fill // B):
            writer.write(batches[i % len(batches)])
        writer.flush()
        inserts = args.fill // B * B / (time.perf_counter() - t)
        writer.close()

        sampler = prioritized.PrioritizedSampler(client, 1, args.batch)
        sampler.sample()
        t = time.perf_counter()
        sampled = [sampler.sample() for _ in range(args.repeats)]
        samples = args.repeats * args.batch / (time.perf_counter() - t)

        t = time.perf_counter()
        for s in sampled:
            sampler.update_priorities(s.keys, rng.uniform(0.01, 2.0, size=args.batch))
        updates = args.repeats * args.batch / (time.perf_counter() - t)

        network = apex.dueling_network(make_torso("minatar_cnn"), 1, minatar.NUM_ACTIONS, 128)
        optimizer = optax.adam(1e-4)
        config = apex.LearnerConfig(target_update_period=100, is_exponent_steps=10_000)
        state = apex.init_state(
            jax.random.PRNGKey(0), network, optimizer, jnp.zeros((1, *spec.shape))
        )

        def learner_step(state: apex.ApexState) -> apex.ApexState:
            s = sampler.sample()
            state, priority, _ = apex.update_step(
                state, jax.tree.map(jnp.asarray, s.batch),
                network=network, optimizer=optimizer, config=config,
            )  # fmt: skip
            sampler.update_priorities(s.keys, np.asarray(priority))
            return state

        state = learner_step(state)  # compile
        t = time.perf_counter()
        for _ in range(args.repeats):
            state = learner_step(state)
        jax.block_until_ready(state.params)
        steps = args.repeats / (time.perf_counter() - t)
    finally:
        server.stop()
    return {"inserts/s": inserts, "samples/s": samples, "updates/s": updates, "steps/s": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=20_000, help="transitions in the table")
    parser.add_argument("--batch", type=int, default=64, help="transitions per learner step")
    parser.add_argument("--repeats", type=int, default=200, help="timed sample calls")
    args = parser.parse_args()
    if args.fill < args.batch or args.batch < 1 or args.repeats < 1:
        parser.error(f"need fill >= batch >= 1 and repeats >= 1, got {vars(args)}")
    print(
        f"# {platform.node()} {os.cpu_count()} cores, jax {jax.__version__} "
        f"{jax.default_backend()}, dm-reverb {importlib.metadata.version('dm-reverb')}; "
        "MinAtar items "
        f"(float32 [10, 10, 10] x 2), table of {args.fill}, batch {args.batch}"
    )
    print(f"{'selector':<12} {'inserts/s':>10} {'samples/s':>10} {'updates/s':>10} {'steps/s':>8}")
    for selector in prioritized.SELECTORS:
        r = bench(selector, args)
        print(
            f"{selector:<12} {r['inserts/s']:>10.0f} {r['samples/s']:>10.0f} "
            f"{r['updates/s']:>10.0f} {r['steps/s']:>8.1f}"
        )


if __name__ == "__main__":
    main()
