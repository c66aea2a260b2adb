"""MinAtar transfer: a held-out game learned from scratch or from a four-game run's pi_0.

A source kl_ent_2col `distral launch` run of `experiments/minatar_5games.yaml` on four
games (all but `--held-out`, the preset's budget and beta), then `--seeds` seeds of
kl_ent_2col on the held-out game alone, two actors, `--steps` env steps: from scratch, and
`--init-from` the source (h, the distilled policy pi_0, starts as the source's and keeps
learning). Per setting: env steps to the threshold, a stated fraction (`--fraction`,
default 0.8) of the scratch runs' mean final training return (mean of their last 5 log
rows), on each run's training-return curve (`mean_return`: the evaluator's 4 episodes are
too few to time a threshold), and the return averaged over the run (AUC), each a mean
over seeds with a 95% stratified-bootstrap CI. A slowdown is reported as plainly as a
speed-up. Writes table.md, summary.json and curves.png to OUT.

    .venv/bin/python experiments/transfer_minatar.py [--runs runs/transfer_minatar]
        [--out experiments/results/distill/transfer_minatar] [--held-out breakout]
        [--seeds 3] [--steps 500000] [--fraction 0.8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from transfer_two_room import ci_text, finite  # the same reporting (this directory)

from distral.compare import auc, read_curves, steps_to_threshold
from distral.config import load_config
from distral.distributed.launch import launch
from distral.plotting import plot_band, pyplot, save_figure
from distral.stats import mean_ci

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "minatar_5games.yaml"
GAMES = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")


def launch_once(run_dir: Path, overrides: dict) -> Path:
    if not (run_dir / "summary.json").is_file():
        config = load_config(PRESET, (), {"variant": "kl_ent_2col", **overrides})
        launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return run_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/distill/transfer_minatar"))
    p.add_argument("--runs", default=str(ROOT / "runs/transfer_minatar"))
    p.add_argument("--held-out", default="breakout", choices=GAMES)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--fraction", type=float, default=0.8)
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sources = [g for g in GAMES if g != args.held_out]
    source = launch_once(runs / "source", {"env": {"games": sources}})
    settings = {"scratch": {}, "init from pi_0": {"init_from": str(source.absolute())}}
    curves = {}
    for name, extra in settings.items():
        dirs = []
        for seed in range(args.seeds):
            overrides = {
                **extra,
                "seeds": [seed],
                "env": {"games": [args.held_out]},
                "env_steps_per_task": args.steps,
                "log_every": 10,
                "distributed": {"actors_per_task": 2},
            }
            run_dir = runs / args.held_out / name.replace(" ", "_") / f"seed{seed}"
            dirs.append(launch_once(run_dir, overrides))
        curves[name] = read_curves(dirs, column="mean_return")
    scratch_final = float(np.nanmean(curves["scratch"].y[:, -5:]))
    threshold = args.fraction * scratch_final
    lines = [
        f"| setting | env steps to {args.fraction:g} x scratch's final return "
        f"({threshold:.2f}) [95% CI] | return over the run (AUC) | final return (last 5 rows) |",
        "|---|---|---|---|",
    ]
    rows = []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        steps = np.array([steps_to_threshold(c.x, y, threshold) for y in c.y])
        areas = np.array([auc(c.x, y) for y in c.y])
        finals = np.nanmean(c.y[:, -5:], axis=1)
        rows.append(
            {
                "setting": name,
                "steps_to_threshold": finite(steps),
                "auc": finite(areas),
                "final": finite(finals),
            }
        )
        lines.append(
            f"| {name} | {ci_text(steps, ',.0f')} | {ci_text(areas, '.2f')} "
            f"| {ci_text(finals, '.2f')} |"
        )
        ok = np.all(np.isfinite(c.y), axis=0)
        plot_band(ax, c.x[ok], mean_ci(c.y[:, ok]), label=name)
    ax.axhline(threshold, color="black", linestyle="--", lw=1, label="threshold")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training return")
    ax.set_title(f"MinAtar {args.held_out}, held out of the source's {len(sources)} games")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {
        "rows": rows,
        "held_out": args.held_out,
        "source_games": sources,
        "seeds": args.seeds,
        "steps": args.steps,
        "fraction": args.fraction,
        "scratch_final": scratch_final,
        "threshold": threshold,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
