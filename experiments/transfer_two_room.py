"""Two-room transfer: new goals learned from scratch, from a finished run's pi_0, or under it.

For each layout (default, distral_public): a source kl_ent_2col run on the preset's 8 goals
(goal_seed 0, seed 0, the preset's budget), then 5 seeds (vmapped) of kl_ent_2col on 8
held-out goals in three settings (`TARGET_GOAL_SEEDS`: the first goal seeds whose 8 goals
share no cell with the source's): from scratch; `--init-from` the source (h,
pi_0, starts as the source's and keeps learning at the preset's rate); and the source's pi_0
as a frozen prior (`freeze_distilled`). Per setting: environment steps per task to the
threshold (optimum - 0.3, `distral compare`'s) and to optimum - 0.05, and the return
averaged over the run (AUC), each a mean over seeds with a 95% stratified-bootstrap CI.
A slowdown is reported as plainly as a speed-up. Writes table.md, summary.json, curves.png.

    .venv/bin/python experiments/transfer_two_room.py [--out experiments/results/distill/transfer]
        [--runs runs/transfer_two_room] [--seeds 5] [--steps 100000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distral import train
from distral.compare import auc, read_curves, steps_to_threshold
from distral.config import load_config
from distral.plotting import plot_band, pyplot, save_figure
from distral.stats import ci_text, mean_ci

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "two_room.yaml"
TARGET_GOAL_SEEDS = {"default": 7, "distral_public": 45}
SETTINGS = {
    "scratch": {},
    "init from pi_0": {"init_from": "SOURCE"},
    "frozen pi_0 prior": {"init_from": "SOURCE", "freeze_distilled": True},
}


def run_once(run_dir: Path, overrides: dict) -> Path:
    if not (run_dir / "summary.json").is_file():
        config = load_config(PRESET, overrides={"variant": "kl_ent_2col", **overrides})
        train.run(config, run_dir, resume=run_dir.exists(), progress=False)
    return run_dir


def finite(values: np.ndarray) -> list[float | None]:
    """JSON-ready: None where a seed never got there."""
    return [float(v) if np.isfinite(v) else None for v in values]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/distill/transfer"))
    p.add_argument("--runs", default=str(ROOT / "runs/transfer_two_room"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100_000)
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = [
        "| layout | setting | steps to optimum - 0.3 [95% CI] | steps to optimum - 0.05 "
        "| return over the run (AUC) | final return |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, layout in zip(axes, ("default", "distral_public"), strict=True):
        env = {"layout": layout, "goal_seed": 0}
        source = run_once(runs / layout / "source", {"env": env, "seeds": [0]})
        for name, extra in SETTINGS.items():
            overrides = {k: str(source) if v == "SOURCE" else v for k, v in extra.items()}
            overrides |= {
                "env": {"layout": layout, "goal_seed": TARGET_GOAL_SEEDS[layout]},
                "seeds": list(range(args.seeds)),
                "env_steps_per_task": args.steps,
                "log_every": 10,
            }
            target = f"goals{TARGET_GOAL_SEEDS[layout]}_{name.replace(' ', '_')}"
            run_dir = run_once(runs / layout / target, overrides)
            curves = read_curves([run_dir])
            low_bar, high_bar = curves.optimal - 0.3, curves.optimal - 0.05
            first = np.array([steps_to_threshold(curves.x, y, low_bar) for y in curves.y])
            near = np.array([steps_to_threshold(curves.x, y, high_bar) for y in curves.y])
            areas = np.array([auc(curves.x, y) for y in curves.y])
            finals = curves.y[:, -1]
            rows.append(
                {
                    "layout": layout,
                    "setting": name,
                    "optimal": curves.optimal,
                    "steps_to_optimum_minus_0.3": finite(first),
                    "steps_to_optimum_minus_0.05": finite(near),
                    "auc": finite(areas),
                    "final": finite(finals),
                }
            )
            lines.append(
                f"| {layout} | {name} | {ci_text(first, ',.0f')} | {ci_text(near, ',.0f')} "
                f"| {ci_text(areas, '.3f')} | {ci_text(finals, '.3f')} |"
            )
            ok = np.all(np.isfinite(curves.y), axis=0)
            plot_band(ax, curves.x[ok], mean_ci(curves.y[:, ok]), label=name)
            print(lines[-1], flush=True)
        ax.axhline(curves.optimal, color="black", linestyle="--", lw=1, label="optimal")
        ax.set_ylim(bottom=-3.0)
        ax.set_title(f"{layout}: 8 held-out goals (goal_seed {TARGET_GOAL_SEEDS[layout]})")
        ax.set_xlabel("environment steps per task")
        ax.set_ylabel("evaluation return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {"rows": rows, "seeds": args.seeds, "steps": args.steps}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
