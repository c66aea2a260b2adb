"""Ape-X DQN on MinAtar Breakout within a wall-clock budget (issue 18's acceptance).

Launches `distral launch experiments/minatar_apex_dqn.yaml --seed S` (4 actors, prioritised
replay, the preset's 1M env steps) once per seed into RUNS/seedS, unless RUNS/seedS already
has rows, and stops it with Ctrl-C (SIGINT: the launcher's own stop, which writes a last
checkpoint) when it reaches `--minutes` of wall time. The bar is `--times` x the game's
uniform-random score (`experiments/results/minatar/random.json`). Per seed: the training
return (all actors' episodes, the epsilon ladder's exploration included) and the
near-greedy evaluation return (epsilon 0.001) over the last `--last` rows, and the wall
minutes at which the `--last`-row moving mean of each first reaches the bar; over seeds,
the mean with its 95% bootstrap CI.

Writes table.md, summary.json and curves.png to OUT; run it on an otherwise idle machine
(the bar is a wall-clock one).

    .venv/bin/python experiments/apex_dqn_minatar.py [--out experiments/results/apex/breakout]
        [--runs runs/apex_breakout] [--seeds 3] [--minutes 30] [--game breakout]
        [--times 5] [--last 5] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from distral.compare import steps_to_threshold
from distral.plotting import pyplot, read_metrics, save_figure
from distral.stats import ci_text

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "minatar_apex_dqn.yaml"
STOP_GRACE = 300  # seconds for the launcher's Ctrl-C stop (checkpoint, children) to end


def run_capped(run_dir: Path, seed: int, game: str, minutes: float, sets: list[str]) -> None:
    """One launch of the preset, stopped by SIGINT after `minutes` of wall time."""
    cli = Path(sys.executable).with_name("distral")
    cmd = [str(cli), "launch", str(PRESET), "--seed", str(seed), "--out", str(run_dir),
           "--set", f"env.games=[{game}]"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    with open(run_dir.with_suffix(".log"), "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def held_from(x: np.ndarray, values: np.ndarray, bar: float, window: int) -> float:
    """x at the first row whose `window`-row moving mean of the finite `values` is >= bar
    (the window's last row; NaN if none)."""
    ok = np.isfinite(values)
    x, values = x[ok], values[ok]
    if values.size < window:
        return float("nan")
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")  # ends at row i+w-1
    return steps_to_threshold(x[window - 1 :], smooth, bar)


def seed_row(run_dir: Path, bar: float, last: int, minutes_cap: float) -> dict:
    m = read_metrics(run_dir)
    minutes = m["wall_seconds"] / 60.0
    inside = minutes <= minutes_cap + 0.5  # the row the stop wrote may end a little late
    train, evals = m["mean_return"][inside], m["eval_return"][inside]
    minutes = minutes[inside]
    return {
        "run": str(run_dir),
        "rows": int(minutes.size),
        "minutes": float(minutes[-1]),
        "learner_steps": int(m["updates"][inside][-1]),
        "env_steps": int(m["env_steps_per_task"][inside][-1]),
        "train_last": float(np.mean(train[np.isfinite(train)][-last:])),
        "eval_last": float(np.mean(evals[np.isfinite(evals)][-last:])),
        "minutes_to_bar_train": held_from(minutes, train, bar, last),
        "minutes_to_bar_eval": held_from(minutes, evals, bar, last),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/apex/breakout"))
    p.add_argument("--runs", default=str(ROOT / "runs/apex_breakout"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--game", default="breakout")
    p.add_argument("--times", type=float, default=5.0, help="the bar, in random scores")
    p.add_argument("--last", type=int, default=5, help="rows in the moving mean")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    random_score = json.loads((ROOT / "experiments/results/minatar/random.json").read_text())
    bar = args.times * random_score["games"][args.game]["mean"]
    rows = []
    for seed in range(args.seeds):
        run_dir = runs / f"seed{seed}"
        if not (run_dir / "metrics.csv").is_file():
            run_capped(run_dir, seed, args.game, args.minutes, args.set)
        rows.append({"seed": seed, **seed_row(run_dir, bar, args.last, args.minutes)})
        print(json.dumps(rows[-1]), flush=True)

    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    met = all(r["train_last"] >= bar and r["eval_last"] >= bar for r in rows)
    random_mean = random_score["games"][args.game]["mean"]
    lines = [
        f"Ape-X DQN on MinAtar {args.game}, {len(rows)} seeds, each given at most "
        f"{args.minutes:g} wall minutes; bar {args.times:g} x random ({random_mean:.2f}) "
        f"= {bar:.2f}.",
        "",
        "| seed | minutes | learner steps | env steps | training return (last rows) | "
        "evaluation return (last rows) | x random (eval) | minutes to bar (training) | "
        "minutes to bar (eval) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['minutes']:.1f} | {r['learner_steps']:,} | {r['env_steps']:,} "
            f"| {r['train_last']:.2f} | {r['eval_last']:.2f} | "
            f"{r['eval_last'] / random_mean:.1f} | {r['minutes_to_bar_train']:.1f} | "
            f"{r['minutes_to_bar_eval']:.1f} |"
        )
    lines += [
        f"| mean [95% CI] | | | | {ci_text(column('train_last'), '.2f')} | "
        f"{ci_text(column('eval_last'), '.2f')} | | "
        f"{ci_text(column('minutes_to_bar_train'), '.1f')} | "
        f"{ci_text(column('minutes_to_bar_eval'), '.1f')} |",
        "",
        f"Last rows: the mean of the last {args.last} rows with a value (the row a run "
        "ends on has no evaluation). Minutes to bar: "
        f"the first row whose {args.last}-row moving mean is >= the bar (nan: never). "
        f"Every seed at or above the bar on both returns at the end: {'yes' if met else 'no'}.",
    ]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {"game": args.game, "random": random_mean, "bar": bar, "minutes": args.minutes,
               "sets": args.set, "met": met, "rows": rows}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = (("mean_return", "training (epsilon ladder)"), ("eval_return", "evaluation (0.001)"))
    for ax, (column_name, title) in zip(axes, panels, strict=True):
        for r in rows:
            m = read_metrics(r["run"])
            ax.plot(m["wall_seconds"] / 60.0, m[column_name], label=f"seed {r['seed']}")
        ax.axhline(bar, color="k", ls="--", lw=1, label=f"{args.times:g} x random")
        ax.axhline(random_mean, color="grey", ls=":", lw=1, label="random")
        ax.set_xlabel("wall minutes (2 cores)")
        ax.set_title(title)
    axes[0].set_ylabel(f"{args.game} return")
    axes[1].legend()
    save_figure(fig, out / "curves.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
