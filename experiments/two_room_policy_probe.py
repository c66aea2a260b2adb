"""Where a two-room run's task policies fail: the diagnostic behind the preset's
`distilled_lr_scale` (BUILD_NOTES.md, "Learning results at the preset budget").

Loads the latest checkpoint of a `distral train` run directory and, for one of its seeds,
plays every task's policy pi_i (sampled, as the evaluator does) from every free cell of the
map. Prints one map per task: the goal G, walls #, on each start cell the greedy action of
pi_i at the episode's first step (^ v < >), or x where pi_i reaches the goal in fewer than
half of the episodes started there; then the task's mean return over the start cells (the
exact optimum beside it) and pi_i's mean entropy at the first step.

    .venv/bin/python experiments/two_room_policy_probe.py RUN_DIR [--seed S] [--episodes 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distral.config import ConfigError
from distral.envs import two_room
from distral.rundir import load_run

ARROWS = "^v<>"  # two_room's actions: up, down, left, right


def probe(run_dir: Path, seed: int | None, episodes: int) -> None:
    try:
        run = load_run(run_dir, seed)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    experiment, params, seed, log_step = run.experiment, run.params, run.seed, run.log_step
    env, network, tasks = experiment.env_params, experiment.network, experiment.num_tasks
    cells = jnp.arange(two_room.num_free_cells(env))

    def start(cell: jax.Array, task: int) -> two_room.EnvState:
        state, _ = two_room.reset(jax.random.PRNGKey(0), env, task)
        return state._replace(cell=cell, pos=env.free_cells[cell])

    def logits(obs: jax.Array, task: int) -> jax.Array:
        rows = jnp.broadcast_to(obs, (tasks, 1, obs.shape[-1]))  # every column, one row
        return network.apply_tasks(params, rows).logits[task, 0]

    def episode(key: jax.Array, cell: jax.Array, task: int) -> tuple[jax.Array, jax.Array]:
        def step(carry, k):
            state, ret, done, reached = carry
            action = jax.random.categorical(k, logits(two_room.observation(env, state), task))
            state, _, reward, discount = two_room.step(env, state, action, task)
            ret = ret + jnp.where(done, 0.0, reward)
            reached = reached | (~done & (reward > 0))
            return (state, ret, done | (discount == 0), reached), None

        keys = jax.random.split(key, env.max_steps)
        init = (start(cell, task), jnp.float32(0.0), False, False)
        (_, ret, _, reached), _ = jax.lax.scan(step, init, keys)
        return ret, reached

    play = jax.jit(jax.vmap(jax.vmap(episode, (0, None, None)), (None, 0, None)), static_argnums=2)
    first = jax.jit(
        jax.vmap(lambda c, t: logits(two_room.observation(env, start(c, t)), t), (0, None)),
        static_argnums=1,
    )
    print(f"{run_dir}: {run.config.variant}, seed {seed}, checkpoint at log step {log_step}")
    keys = jax.random.split(jax.random.PRNGKey(1), episodes)
    walls, free = np.asarray(env.walls), np.asarray(env.free_cells)
    for task in range(tasks):
        ret, reached = (np.asarray(x) for x in play(keys, cells, task))  # [cells, episodes]
        pi = np.asarray(jax.nn.softmax(first(cells, task)))
        entropy = -np.sum(pi * np.log(np.maximum(pi, 1e-12)), axis=-1)
        rows = [["#" if w else " " for w in row] for row in walls]
        for c, (r, col) in enumerate(free):
            rows[r][col] = "x" if reached[c].mean() < 0.5 else ARROWS[int(pi[c].argmax())]
        goal = np.asarray(env.goals[task])
        rows[goal[0]][goal[1]] = "G"
        starts = np.arange(len(free)) != int(env.goal_index[task])  # episodes never start at G
        failing = int(np.sum(reached[starts].mean(1) < 0.5))
        print(
            f"task {task}: mean return {ret[starts].mean():.2f} over the start cells (optimum "
            f"{experiment.optimal_returns[task]:.2f}), {failing} failing"
            f" start cells, pi_i entropy {entropy.mean():.2f} at the first step"
        )
        print("\n".join("".join(row) for row in rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--seed", type=int, default=None, help="one of the run's seeds (default: first)")
    p.add_argument("--episodes", type=int, default=8, help="episodes per start cell")
    args = p.parse_args()
    probe(args.run_dir, args.seed, args.episodes)


if __name__ == "__main__":
    main()
