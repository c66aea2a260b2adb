"""The robustness grid: the six task-id variants over maps x discounts x seeds, ONE preset.

For each environment setting (two-room map x discount) and variant, one `distral train`
program with the seeds vmapped, run through `distral compare`'s runner (a re-run skips
finished runs and resumes stopped ones). Prints, and writes under --out, a table of the
final pi_i evaluation return (mean over seeds and the worst seed), the seeds within 0.3 of
the optimum, the tasks collapsed at the end (`collapsed_tasks`, summed over seeds), and
the env steps per task to reach optimum - 0.3 (mean over the seeds that reach it); a
figure with one panel of learning curves per setting; and summary.json.

    .venv/bin/python benchmarks/robustness.py [--config experiments/two_room.yaml]
        [--seeds 10] [--variants a3c,...] [--layouts default,distral_public]
        [--discounts 0.95,0.99] [--runs-dir runs/robustness]
        [--out experiments/results/two_room/robustness] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np

from distral import compare, rundir
from distral.files import atomic_write, atomic_write_json
from distral.plotting import plot_seed_curves, pyplot, save_figure

TASK_ID_VARIANTS = ("a3c", "a3c_2col", "kl_1col", "kl_2col", "kl_ent_1col", "kl_ent_2col")
MARGIN = compare.THRESHOLD_MARGIN  # "within 0.3 of the optimum"
COLUMNS = (
    "layout",
    "discount",
    "variant",
    "final_return_mean",
    "worst_seed",
    "seeds_within",
    "seeds",
    "collapsed_tasks",
    "steps_to_threshold",
    "seeds_reaching_threshold",
    "optimal",
)


def run_setting(args, layout: str, discount: float) -> list[dict]:
    """Runs (or skips, or resumes) every variant of one setting; one result row each."""
    sets = [*args.set, f"env.layout={layout}", f"discount={discount}"]
    out = Path(args.runs_dir) / f"{layout}_{discount:g}"
    specs = compare.plan(args.config, sets, args.variants, args.seeds, None, "train", out)
    compare.execute(specs, compare.check_out(specs, "train"), "train", progress=False)
    rows = []
    for spec in specs:
        curves = compare.read_curves(list(spec.run_dirs))
        summary = compare.summarise_curves(curves, curves.optimal - MARGIN)
        finals = np.array(summary["final_return_per_seed"])
        last = rundir.last_rows(spec.run_dirs[0] / "metrics.csv")
        collapsed = np.array([r.get("collapsed_tasks", math.nan) for r in last.values()])
        # NaN: the detector was off (collapse_entropy 0) or the run predates it: unknown.
        count = int(np.nansum(collapsed)) if np.isfinite(collapsed).any() else "n/a"
        rows.append(
            {
                "layout": layout,
                "discount": discount,
                "variant": spec.variant,
                "final_return_mean": float(finals.mean()),
                "worst_seed": float(finals.min()),
                "seeds_within": int(np.sum(finals >= curves.optimal - MARGIN)),
                "seeds": len(finals),
                "collapsed_tasks": count,
                "steps_to_threshold": summary["steps_to_threshold"],
                "seeds_reaching_threshold": summary["seeds_reaching_threshold"],
                "optimal": curves.optimal,
                "curves": curves,
            }
        )
    return rows


def table_markdown(rows: list[dict]) -> str:
    lines = [
        "| map | discount | variant | final return (mean) | worst seed | within 0.3 | "
        "collapsed tasks | env steps to threshold (seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = r["steps_to_threshold"]
        steps_text = "never" if not math.isfinite(steps) else f"{steps:,.0f}"
        lines.append(
            f"| {r['layout']} | {r['discount']:g} | {r['variant']} | "
            f"{r['final_return_mean']:.3f} | {r['worst_seed']:.3f} | "
            f"{r['seeds_within']}/{r['seeds']} | {r['collapsed_tasks']} | "
            f"{steps_text} ({r['seeds_reaching_threshold']}/{r['seeds']}) |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    settings = list(dict.fromkeys((r["layout"], r["discount"]) for r in rows))
    cols = min(2, len(settings))
    nrows = -(-len(settings) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.2 * nrows), squeeze=False)
    try:
        for ax, (layout, discount) in zip(axes.flat, settings, strict=False):
            for r in (r for r in rows if (r["layout"], r["discount"]) == (layout, discount)):
                c = r["curves"]
                plot_seed_curves(ax, c.x, c.y, label=r["variant"], lw=1.2, band_alpha=0.15)
                optimal = r["optimal"]
            ax.axhline(optimal, color="black", ls="--", lw=1, label="optimum")
            ax.axhline(optimal - MARGIN, color="grey", ls=":", lw=1, label="optimum - 0.3")
            ax.set_ylim(max(ax.get_ylim()[0], -12), optimal + 0.5)
            ax.set_title(f"{layout}, discount {discount:g}")
            ax.set_xlabel("env steps per task")
            ax.set_ylabel("pi_i evaluation return")
        for ax in list(axes.flat)[len(settings) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/two_room.yaml")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per run")
    parser.add_argument("--variants", default=",".join(TASK_ID_VARIANTS))
    parser.add_argument("--layouts", default="default,distral_public")
    parser.add_argument("--discounts", default="0.95,0.99")
    parser.add_argument("--runs-dir", default="runs/robustness")
    parser.add_argument("--out", help="write table.md, table.csv, summary.json, robustness.png")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the config")
    args = parser.parse_args()
    args.variants = args.variants.split(",")
    start = time.perf_counter()
    rows = []
    for layout in args.layouts.split(","):
        for discount in (float(d) for d in args.discounts.split(",")):
            rows += run_setting(args, layout, discount)
    minutes = (time.perf_counter() - start) / 60
    table = table_markdown(rows)
    footer = (
        f"\n{len(rows)} runs x {args.seeds} seeds ({args.config}"
        + "".join(f" --set {s}" for s in args.set)
        + f"): {minutes:.1f} min of runs not skipped ({platform.machine()}, CPU)\n"
    )
    print(table + footer)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "table.md", table + footer)
        csv_rows = [{k: r[k] for k in COLUMNS} for r in rows]
        atomic_write(out / "table.csv", compare.csv_text(csv_rows, COLUMNS))
        summary = {
            "config": args.config,
            "sets": args.set,
            "seeds": args.seeds,
            "rows": csv_rows,
            "minutes": minutes,
        }
        atomic_write_json(out / "summary.json", summary, indent=1)
        print(f"figure: {plot(rows, out / 'robustness.png')}")


if __name__ == "__main__":
    main()
