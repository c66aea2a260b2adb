"""Two-room ablation of the gated sub-policies (`gated_task`): each part off in turn.

Settings, each 5 seeds (vmapped) of `gated_task` at the preset's budget on its 8 tasks:
everything on; activation-scaled learning rates off (`gated.lr_scaling`); the sparsity
loss off (`gated.sparsity_cost: 0`); the temporal-consistency loss off
(`gated.temporal_cost: 0`). Per setting: the final pi_i evaluation return (mean over
tasks) and the environment steps per task to `distral compare`'s threshold (optimum -
0.3), each a mean over seeds with a 95% bootstrap CI; and, over the last quarter of the
run's rows, the mean gate activation and the gate switching rate (the quantities the
sparsity and temporal losses act on). Writes table.md and summary.json.

    .venv/bin/python experiments/gated_two_room.py [--out experiments/results/gated/two_room]
        [--runs runs/gated_two_room] [--seeds 5] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from distral import train
from distral.compare import steps_to_threshold
from distral.config import load_config
from distral.stats import ci_text

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "two_room.yaml"
SETTINGS = {
    "all on": {},
    "no lr scaling": {"gated": {"lr_scaling": False}},
    "no sparsity loss": {"gated": {"sparsity_cost": 0.0}},
    "no temporal loss": {"gated": {"temporal_cost": 0.0}},
}


def run_once(run_dir: Path, overrides: dict, sets: list[str]) -> Path:
    if not (run_dir / "summary.json").is_file():
        config = load_config(PRESET, sets, overrides={"variant": "gated_task", **overrides})
        train.run(config, run_dir, resume=run_dir.exists(), progress=False)
    return run_dir


def per_seed_rows(run_dir: Path) -> dict[int, list[dict[str, str]]]:
    rows: dict[int, list[dict[str, str]]] = {}
    with (run_dir / "metrics.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(int(r["seed"]), []).append(r)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "experiments/results/gated/two_room"))
    parser.add_argument("--runs", default="runs/gated_two_room")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    seeds = list(range(args.seeds))
    summary: dict = {"seeds": seeds, "sets": args.set, "settings": {}}
    lines = [
        "| setting | final return [95% CI] | env steps to threshold | gate activation "
        "| switching rate |",
        "|---|---|---|---|---|",
    ]
    for name, overrides in SETTINGS.items():
        run_dir = run_once(runs / name.replace(" ", "_"), {**overrides, "seeds": seeds}, args.set)
        config = load_config(run_dir / "config.yaml")
        optimal = json.loads((run_dir / "summary.json").read_text())["optimal_mean_return"]
        finals, to_threshold, activation, switching = [], [], [], []
        for rows in per_seed_rows(run_dir).values():
            x = np.array([float(r["env_steps_per_task"]) for r in rows])
            y = np.array([float(r["eval_return"]) for r in rows])
            finals.append(y[-1])
            to_threshold.append(steps_to_threshold(x, y, optimal - 0.3))
            late = rows[-max(1, len(rows) // 4) :]
            activation.append(np.mean([float(r["gate_activation"]) for r in late]))
            switching.append(np.nanmean([float(r["gate_switching"]) for r in late]))
        finals_a, steps_a = np.array(finals), np.array(to_threshold)
        act_a, switch_a = np.array(activation), np.array(switching)
        lines.append(
            f"| {name} | {ci_text(finals_a, '.3f')} | {ci_text(steps_a, ',.0f')} "
            f"| {ci_text(act_a, '.3f')} | {ci_text(switch_a, '.4f')} |"
        )
        summary["settings"][name] = {
            "overrides": overrides,
            "final_return": finals,
            "steps_to_threshold": [float(v) if np.isfinite(v) else None for v in to_threshold],
            "gate_activation": activation,
            "switching_rate": switching,
            "num_subpolicies": config.gated.num_subpolicies,
        }
    summary["optimal_mean_return"] = optimal
    out.mkdir(parents=True, exist_ok=True)
    note = (
        f"\n`gated_task`, 8 two-room tasks, {len(seeds)} seeds, the preset's budget; gate "
        "activation and switching rate over the last quarter of the rows. Optimum "
        f"{optimal:.3f}; threshold {optimal - 0.3:.3f}.\n"
    )
    (out / "table.md").write_text("\n".join(lines) + "\n" + note)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines) + "\n" + note)


if __name__ == "__main__":
    main()
