"""Uniform-random scores of the five MinAtar games, the bar of "clearly above random".

Plays EPISODES episodes per game with uniformly random actions through the framework's own
`MinAtarEnv` (the same sticky actions, 0.1, and step limit as the runs), and writes the mean
return, its standard error and the episode lengths per game to OUT (JSON) and the terminal.

    .venv/bin/python experiments/minatar_random.py [--episodes 100] [--seed 0]
        [--out experiments/results/minatar/random.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distral.envs.minatar import GAMES, NUM_ACTIONS, MinAtarEnv

ROOT = Path(__file__).resolve().parents[1]


def random_returns(game: str, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of `episodes` uniform-random episodes of `game`."""
    env = MinAtarEnv(game, seed)
    rng = np.random.default_rng(seed)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, np.int64)
    for e in range(episodes):
        ts = env.reset()
        while not ts.last():
            ts = env.step(int(rng.integers(NUM_ACTIONS)))
            returns[e] += float(ts.reward)
            lengths[e] += 1
    return returns, lengths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/minatar/random.json")
    args = p.parse_args()
    if args.episodes < 2:
        p.error(f"--episodes must be >= 2, got {args.episodes}")
    t0 = time.perf_counter()
    out = {"episodes": args.episodes, "seed": args.seed, "games": {}}
    print(f"{'game':<16}{'mean':>8}{'s.e.':>8}{'length':>8}")
    for game in GAMES:
        returns, lengths = random_returns(game, args.episodes, args.seed)
        se = float(returns.std(ddof=1) / np.sqrt(len(returns)))
        out["games"][game] = {
            "mean": float(returns.mean()),
            "stderr": se,
            "mean_length": float(lengths.mean()),
        }
        print(f"{game:<16}{returns.mean():8.3f}{se:8.3f}{lengths.mean():8.0f}")
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"{out['wall_seconds']} s; written {args.out}")


if __name__ == "__main__":
    main()
