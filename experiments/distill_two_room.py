"""Two-room policy distillation: students of four sizes distilled from finished a3c runs.

Trains the teachers if RUNS/teacher has none (`distral train experiments/two_room.yaml
--variant a3c`, seeds 0-4, one program; with `--teacher-set KEY=VALUE`, e.g. a hidden
layer, into RUNS/teachers/SETTINGS and their students under RUNS/students/SETTINGS), then
for each student size (the shared torso's hidden layer) and each seed s distils teacher
seed s into a student of seed s
(`experiments/two_room_distill.yaml`, KL at tau 1, the student acting), and writes the
compression table (table.md, summary.json) and the students' learning curves
(curves.png): student and teachers' parameter counts, mean returns, and the worst per-task
gap to the teacher over the 5 seeds x 8 tasks. The run directories go to RUNS. Student
and teacher are evaluated on the same episodes (the same keys): the gap is the policies'
difference, not two draws of evaluation noise.

    .venv/bin/python experiments/distill_two_room.py [--out experiments/results/distill/two_room]
        [--runs runs/distill_two_room] [--seeds 5] [--sizes 64,16,5,1] [--eval-episodes 64]
        [--set KEY=VALUE ...] [--teacher-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distral import distill, train
from distral.compare import setting_dir
from distral.config import load_config
from distral.plotting import learning_curve, plot_band, pyplot, read_metrics, save_figure

ROOT = Path(__file__).resolve().parents[1]


def settings_tag(sets: list[str] | tuple[str, ...]) -> str:
    """A directory name for `--set`-style settings (`compare.setting_dir`: hidden_sizes=[64]
    -> hidden_sizes=64, since a run's path must not hold glob characters)."""
    return setting_dir(dict(s.partition("=")[::2] for s in sets))


def teachers(runs: Path, seeds: int, sets: tuple[str, ...] = ()) -> Path:
    """The a3c teacher run with the preset's settings and `sets` (trained here unless
    RUNS/teacher, or RUNS/teachers/SETTINGS, holds a finished one)."""
    run_dir = runs / "teachers" / settings_tag(sets) if sets else runs / "teacher"
    if not (run_dir / "summary.json").is_file():
        config = load_config(
            ROOT / "experiments" / "two_room.yaml",
            list(sets),
            overrides={"variant": "a3c", "seeds": list(range(seeds))},
        )
        train.run(config, run_dir, progress=False)
    return run_dir


def student_dir(runs: Path, size: int, seed: int, tag: str = "") -> Path:
    return runs / "students" / tag / f"h{size}" / f"seed{seed}"


def student(
    runs: Path, teacher: Path, size: int, seed: int, sets: list[str], episodes: int, tag: str
):
    """summary.json of the student of hidden size `size` distilled from teacher seed `seed`."""
    run_dir = student_dir(runs, size, seed, tag)
    if not (run_dir / "summary.json").is_file():
        overrides = {
            "seeds": [seed],
            "hidden_sizes": [size],
            "eval_episodes_per_task": episodes,
            "distill": {"teachers": [str(teacher.absolute())], "teacher_seed": seed},
        }
        config = load_config(ROOT / "experiments" / "two_room_distill.yaml", sets, overrides)
        distill.run(config, run_dir, resume=run_dir.exists(), progress=False)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/distill/two_room"))
    p.add_argument("--runs", default=str(ROOT / "runs/distill_two_room"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sizes", default="64,16,5,1")
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--teacher-set", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of the teachers' a3c run (RUNS/teachers/SETTINGS)",
    )  # fmt: skip
    args = p.parse_args()
    out, run_root = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher = teachers(run_root, args.seeds, tuple(args.teacher_set))
    tag = settings_tag(args.teacher_set)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        runs = [
            student(run_root, teacher, size, s, args.set, args.eval_episodes, tag)
            for s in range(args.seeds)
        ]
        gaps = np.array(
            [
                np.subtract(r["teacher_returns_per_task"], r["student_returns_per_task"])
                for r in runs
            ]
        )  # [seeds, tasks]
        rows.append(
            {
                "hidden": size,
                "student_params": runs[0]["student_params"],
                "teacher_params": runs[0]["teacher_params"],
                "ratio": runs[0]["student_params"] / runs[0]["teacher_params"],
                "student_return": float(np.mean([r["final_mean_return"] for r in runs])),
                "teacher_return": float(np.mean([r["teacher_returns_per_task"] for r in runs])),
                "worst_gap": float(gaps.max()),
                "seeds_within_0.05": int(np.sum((gaps <= 0.05).all(axis=1))),
                "wall_seconds_per_run": float(np.mean([r["wall_seconds"] for r in runs])),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| student hidden | student params | teachers' params | ratio | student return "
        "| teacher return | worst task gap | seeds with every task within 0.05 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hidden']} | {r['student_params']:,} | {r['teacher_params']:,} "
            f"| {r['ratio']:.2f} | {r['student_return']:.3f} | {r['teacher_return']:.3f} "
            f"| {r['worst_gap']:.3f} | {r['seeds_within_0.05']}/{args.seeds} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    curves(out / "curves.png", run_root, sizes, args.seeds, rows, tag)
    summary = {
        "rows": rows,
        "seeds": args.seeds,
        "sets": args.set,
        "teacher_sets": args.teacher_set,
    }
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def curves(
    path: Path, runs: Path, sizes: list[int], seeds: int, rows: list[dict], tag: str
) -> None:
    """Students' evaluation return (mean and 95% CI over seeds) per size; the teachers'."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size, row in zip(sizes, rows, strict=True):
        tables = [read_metrics(student_dir(runs, size, s, tag)) for s in range(seeds)]
        merged = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
        x, mean, low, high, _ = learning_curve(merged, "eval_return")
        label = f"student h={size} ({row['ratio']:.2f}x teachers' parameters)"
        plot_band(ax, x, (mean, low, high), label=label)
    ax.axhline(rows[0]["teacher_return"], color="black", linestyle="--", lw=1, label="teachers")
    ax.set_xlabel("environment steps per task")
    ax.set_ylabel("evaluation return (mean over 8 tasks)")
    ax.set_ylim(bottom=-4.0)
    ax.set_title("two-room: students distilled from a3c teachers (KL, tau 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
