"""Where a MinAtar run's Seaquest policy spends its time: the diagnostic behind the MinAtar
preset's beta (BUILD_NOTES.md, "Games").

Loads the latest checkpoint of `distral launch experiments/minatar_5games.yaml` run
directories, plays Seaquest with each run's task policy pi_i (sampled, as the evaluator
does) and prints per episode the return, the length and the share of steps the submarine
spends at the surface, where MinAtar's Seaquest uses no oxygen: a policy that idles there
lives to the 10,000-step limit without scoring.

    .venv/bin/python experiments/minatar_seaquest_probe.py RUN_DIR [RUN_DIR ...] [--episodes 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from distral import acting, learning
from distral.config import load_config
from distral.experiment import make_experiment
from distral.workers import restore_checkpoint


def probe(run_dir: Path, episodes: int) -> None:
    config = load_config(run_dir / "config.yaml")
    experiment = make_experiment(config)
    state = learning.init_training_state(
        jax.random.PRNGKey(0), experiment.network, experiment.optimizer, experiment.example_obs
    )
    manager = ocp.CheckpointManager(run_dir.absolute() / "checkpoints")
    state, frames, _ = restore_checkpoint(manager, state, experiment.num_tasks)
    task = experiment.task_names.index("seaquest")
    column = experiment.network.task_params(state.params, task)
    key = jax.random.PRNGKey(1)
    print(f"{run_dir}: beta {experiment.variant.beta}, {int(frames[task]):,} env steps per game")
    for episode in range(episodes):
        env = experiment.make_env(task, 100 + episode)
        game = env._env.env  # MinAtar's Seaquest: sub_y == 0 is the surface row
        ts = env.reset()
        total, steps, surface = 0.0, 0, 0
        while not ts.last():
            key, sub = jax.random.split(key)
            obs = np.asarray(ts.observation)[None]
            action, _ = acting.select_action(
                column, obs, np.int32(0), sub, network=experiment.network
            )
            ts = env.step(int(np.asarray(action)[0]))
            total += float(ts.reward)
            steps += 1
            surface += int(game.sub_y == 0)
        print(
            f"  episode {episode}: return {total:.0f}, length {steps}, "
            f"at the surface {surface / steps:.0%} of the steps"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--episodes", type=int, default=4)
    args = p.parse_args()
    for run_dir in args.run_dirs:
        probe(run_dir, args.episodes)


if __name__ == "__main__":
    main()
