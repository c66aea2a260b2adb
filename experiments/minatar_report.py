"""The MinAtar results: per-game curves and a table against the uniform-random scores.

Reads `distral launch experiments/minatar_5games.yaml` run directories and the random
scores of `experiments/minatar_random.py`, and writes into OUT:

    <label>/config.yaml, metrics.csv, summary.json   copies of each run's record (label:
                            the variant, with the run directory's name if variants repeat)
    eval_per_game.png       pi_i's evaluation return per game (evaluator, every log row)
    training_per_game.png   the actors' training-episode return per game
    table.md                per game: random, and per run the late training and evaluation
                            returns (means over the last K log rows) and "above random"

"Clearly above random" here: the late training return (the actors' episodes, dozens per
game) exceeds the random mean by more than 3 of the random score's standard errors.

    .venv/bin/python experiments/minatar_report.py RUN_DIR [RUN_DIR ...]
        [--random experiments/results/minatar/random.json] [--out experiments/results/minatar]
        [--last 5]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np

from distral.plotting import plot_per_task, read_metrics, run_labels, task_names

ROOT = Path(__file__).resolve().parents[1]


def late_mean(metrics: dict[str, np.ndarray], column: str, last: int) -> float:
    """Mean of the last `last` finite values of `column`."""
    values = metrics[column][np.isfinite(metrics[column])]
    return float(values[-last:].mean()) if values.size else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--random", type=Path, default=ROOT / "experiments/results/minatar/random.json")
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/minatar")
    p.add_argument("--last", type=int, default=5, help="log rows averaged for 'late' figures")
    args = p.parse_args()
    random = json.loads(args.random.read_text())["games"]
    args.out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(args.run_dirs)  # the variant, plus the directory name if shared
    for run, label in zip(args.run_dirs, labels, strict=True):
        dest = args.out / re.sub(r"[^\w.-]+", "_", label).strip("_")
        dest.mkdir(exist_ok=True)
        for name in ("config.yaml", "metrics.csv", "summary.json"):
            if (run / name).is_file():
                shutil.copyfile(run / name, dest / name)
    references = {game: r["mean"] for game, r in random.items()}
    for column, name in (("eval_return", "eval_per_game"), ("return", "training_per_game")):
        plot_per_task(
            args.run_dirs,
            args.out / f"{name}.png",
            column=column,
            labels=labels,
            references=references,
            reference_label="uniform random",
            title=f"MinAtar, 5 games as 5 tasks: {column.replace('_', ' ')} per game",
        )
    all_metrics = [read_metrics(d) for d in args.run_dirs]
    games = task_names(args.run_dirs[0], len(random))
    head = "| game | random (s.e.) |"
    rule = "|---|---|"
    for label in labels:
        head += f" {label} training | {label} eval | above random |"
        rule += "---|---|---|"
    lines = [head, rule]
    for i, game in enumerate(games):
        r = random[game]
        line = f"| {game} | {r['mean']:.2f} ({r['stderr']:.2f}) |"
        for metrics in all_metrics:
            train = late_mean(metrics, f"return_task_{i}", args.last)
            ev = late_mean(metrics, f"eval_return_task_{i}", args.last)
            above = "yes" if train > r["mean"] + 3 * r["stderr"] else "no"
            line += f" {train:.2f} | {ev:.2f} | {above} |"
        lines.append(line)
    for label, metrics in zip(labels, all_metrics, strict=True):
        lines.append("")
        lines.append(
            f"{label}: {int(np.nanmax(metrics['updates']))} learner steps, "
            f"{int(np.nanmax(metrics['env_steps_per_task'])):,} env steps per game, "
            f"{np.nanmax(metrics['wall_seconds']) / 60:.1f} min of learner wall time"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table, end="")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
