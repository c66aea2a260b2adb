"""The seven variants x N seeds at the preset's budget: final returns and wall time.

Each variant is one `distral train` program with its seeds vmapped. Prints a table (and
writes it as markdown with --out) of the final pi_i evaluation return per variant (mean
over seeds, worst seed), the optimum, and the wall time; then the sweep's total time.

    .venv/bin/python benchmarks/sweep_variants.py [--config experiments/two_room.yaml]
        [--seeds 0,1,2,3,4] [--variants all] [--runs-dir runs/sweep] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from distral.config import load_config
from distral.core.variants import VARIANTS
from distral.train import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/two_room.yaml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variants", default="all")
    parser.add_argument("--runs-dir", default="runs/sweep")
    parser.add_argument("--out", help="also write the table here (markdown)")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")

    lines = [
        "| variant | final return (mean over seeds) | worst seed | optimal | "
        "within 0.3 (seeds) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    t0 = time.perf_counter()
    for name in names:
        config = load_config(args.config, args.set, {"variant": name, "seeds": seeds})
        out = Path(args.runs_dir) / name
        if (out / "summary.json").exists():
            raise SystemExit(f"{out} already holds a run; pick another --runs-dir")
        summary = run(config, out, progress=False).summary
        per_seed = np.array(list(summary["final_mean_return_per_seed"].values()))
        opt = summary["optimal_mean_return"]
        ok = int(np.sum(per_seed >= opt - 0.3))
        line = (
            f"| {name} | {per_seed.mean():.3f} | {per_seed.min():.3f} | {opt:.3f} | "
            f"{ok}/{len(seeds)} | {summary['wall_seconds']:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)
    total = time.perf_counter() - t0
    footer = (
        f"\n{len(names)} variants x {len(seeds)} seeds, "
        f"{config.env_steps_per_task:,} env steps per task each: {total / 60:.1f} min "
        f"({platform.machine()}, CPU)"
    )
    print("\n".join(lines) + footer)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
