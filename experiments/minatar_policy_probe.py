"""What a MinAtar run's task policy does in one game: the diagnostic behind the MinAtar
preset's beta (BUILD_NOTES.md, "Games").

Loads the latest checkpoint of `distral launch experiments/minatar_5games.yaml` run
directories, plays GAME with each run's task policy pi_i (sampled, as the evaluator does)
and prints per episode the return, the length, pi_i's mean entropy and its action
frequencies; for Seaquest also the share of steps the submarine spends at the surface,
where MinAtar's Seaquest uses no oxygen: a policy that idles there lives to the
10,000-step limit without scoring.

    .venv/bin/python experiments/minatar_policy_probe.py RUN_DIR [RUN_DIR ...]
        [--game seaquest] [--episodes 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from distral.core import acting
from distral.rundir import load_run


def probe(run_dir: Path, game_name: str, episodes: int) -> None:
    run = load_run(run_dir)
    experiment = run.experiment
    task = experiment.task_names.index(game_name)
    column = experiment.network.task_params(run.params, task)
    key = jax.random.PRNGKey(1)
    steps_done = int(run.metrics["env_steps_per_task"][-1])
    print(f"{run_dir}: beta {experiment.variant.beta}, {steps_done:,} env steps per game")
    actions = experiment.network.num_actions
    for episode in range(episodes):
        env = experiment.make_env(task, 100 + episode)
        ts = env.reset()
        total, steps, surface, entropy = 0.0, 0, 0, 0.0
        counts = np.zeros(actions, int)
        while not ts.last():
            key, sub = jax.random.split(key)
            obs = np.asarray(ts.observation)[None]
            action, logits = acting.select_action(
                column, obs, np.int32(0), sub, network=experiment.network
            )
            log_p = jax.nn.log_softmax(np.asarray(logits)[0])
            entropy -= float(np.sum(np.exp(log_p) * log_p))
            a = int(np.asarray(action)[0])
            counts[a] += 1
            ts = env.step(a)
            total += float(ts.reward)
            steps += 1
            surface += int(getattr(env.game_state, "sub_y", 1) == 0)  # Seaquest's surface row
        line = (
            f"  episode {episode}: return {total:.0f}, length {steps}, entropy "
            f"{entropy / steps:.2f}, actions {np.round(counts / steps, 2).tolist()}"
        )
        if game_name == "seaquest":
            line += f", at the surface {surface / steps:.0%} of the steps"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--game", default="seaquest", help="a MinAtar game of the runs")
    p.add_argument("--episodes", type=int, default=4)
    args = p.parse_args()
    for run_dir in args.run_dirs:
        probe(run_dir, args.game, args.episodes)


if __name__ == "__main__":
    main()
