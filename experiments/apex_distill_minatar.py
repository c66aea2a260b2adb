"""Ape-X policy distillation on MinAtar (issue 18): prioritised against uniform replay.

1. Teachers: one a3c `distral launch` run per game (`experiments/minatar_5games.yaml
   --variant a3c --set env.games=[GAME]`, 2 actors, the preset's 1M env steps, Adam 2e-3 by
   default: the teachers that learned in BUILD_NOTES "Distillation"), into
   RUNS/teachers/GAME unless a finished one is there.
2. Students (`experiments/minatar_apex_distill.yaml`: the KL alone, the student acting):
   per game, replay selector (prioritized, uniform) and seed, one single-game student; then
   at the same budget, seed 0, the combined objective (`distill.dqn_cost=1`) per game and
   one two-game student (both teachers, a head per game, prioritised).
3. Each student's row evaluations pair it with its teacher on the same episodes. The
   teacher's score is the mean of its evaluations over the run; a student "reaches 90%"
   at the first row whose 3-row moving mean of its evaluation is >= 0.9 x that score
   (a row's few episodes are noisy; a single lucky row does not count). Reported per game
   and selector: the learner steps to that point (mean and 95% CI over the seeds; a seed
   that never reaches it counts as the run's last step plus one row, and is flagged),
   and the last rows' fraction of the teacher.

Writes table.md, summary.json and curves.png (the students' evaluations as a fraction of
the teacher's, by selector) to OUT.

    .venv/bin/python experiments/apex_distill_minatar.py
        [--out experiments/results/apex/distill] [--runs runs/apex_distill]
        [--games breakout,space_invaders] [--seeds 3] [--set KEY=VALUE ...]
        [--teacher-set KEY=VALUE ...] [--skip-extras]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from apex_dqn_minatar import held_from  # the moving-mean bar (this directory)

from distral.config import load_config
from distral.distributed.launch import launch
from distral.plotting import plot_seed_curves, pyplot, read_metrics, save_figure
from distral.stats import ci_text, mean_ci

ROOT = Path(__file__).resolve().parents[1]
SELECTORS = ("prioritized", "uniform")
SMOOTH = 3  # rows in the moving mean that must reach 90%
BAR = 0.9


def teacher(runs: Path, game: str, sets: list[str]) -> Path:
    """The a3c run of `game` (launched here unless finished)."""
    run_dir = runs / "teachers" / game
    if not (run_dir / "summary.json").is_file():
        overrides = {
            "variant": "a3c",
            "env": {"games": [game]},
            "distributed": {"actors_per_task": 2},
        }
        config = load_config(ROOT / "experiments" / "minatar_5games.yaml", sets, overrides)
        launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return run_dir


def student(runs: Path, name: str, teachers: list[Path], games: list[str], seed: int,
            sets: list[str]) -> Path:  # fmt: skip
    """The student run `name`/seedS of `games` from `teachers` (launched unless finished)."""
    run_dir = runs / "students" / name / f"seed{seed}"
    if not (run_dir / "summary.json").is_file():
        overrides = {
            "seeds": [seed],
            "env": {"games": games},
            "distill": {"teachers": [str(t.absolute()) for t in teachers]},
        }
        preset = ROOT / "experiments" / "minatar_apex_distill.yaml"
        config = load_config(preset, sets, overrides)
        launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return run_dir


def reach(run_dir: Path, task: int = 0) -> dict:
    """When the student of task `task` first holds 90% of its teacher (module docstring),
    and its last rows' fraction of the teacher. A two-game run's rows hold the teachers'
    mean over the games: there the teacher's score is the per-game return of the final
    summary instead."""
    m = read_metrics(run_dir)
    student = m[f"eval_return_task_{task}"]
    evaluated = np.isfinite(student)  # the row a run ends on has no evaluation
    steps, student = m["updates"][evaluated], student[evaluated]
    summary = json.loads((run_dir / "summary.json").read_text())
    teachers = summary["teacher_returns_per_task"]
    target = float(np.nanmean(m["teacher_eval_return"])) if len(teachers) == 1 else teachers[task]
    step = held_from(steps, student, BAR * target, SMOOTH)
    reached = np.isfinite(step)
    if not reached:  # counted one row past the end
        step = float(steps[-1] + np.diff(steps)[-1])
    last = float(np.mean(student[-SMOOTH:]))
    return {
        "run": str(run_dir),
        "teacher": target,
        "student_last": last,
        "fraction_last": last / target if target else float("nan"),
        "steps_to_90": step,
        "reached": bool(reached),
        "learner_steps": int(steps[-1]),
        "wall_seconds": summary["wall_seconds"],
    }


def plot_fractions(rows: list[dict], games: list[str], out: Path) -> None:
    """Per game, the student's evaluation as a fraction of its teacher's against learner
    steps: each selector's mean over seeds with its 95% CI band."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(games), figsize=(5.5 * len(games), 4), squeeze=False)
    for ax, game in zip(axes[0], games, strict=True):
        for selector in SELECTORS:
            group = [r for r in rows if r["game"] == game and r["setting"] == selector]
            curves = []
            for r in group:
                m = read_metrics(r["run"])
                curves.append(m["eval_return_task_0"] / r["teacher"])
            size = min(len(c) for c in curves)
            plot_seed_curves(ax, m["updates"][:size], np.stack([c[:size] for c in curves]),
                             label=f"{selector} ({len(group)} seeds)")  # fmt: skip
        ax.axhline(BAR, color="k", ls="--", lw=1, label="90% of the teacher")
        ax.set_title(game)
        ax.set_xlabel("learner steps")
    axes[0][0].set_ylabel("student evaluation / teacher's")
    axes[0][-1].legend()
    save_figure(fig, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/apex/distill"))
    p.add_argument("--runs", default=str(ROOT / "runs/apex_distill"))
    p.add_argument("--games", default="breakout,space_invaders")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of every student")  # fmt: skip
    p.add_argument("--teacher-set", action="append", default=["learning_rate=0.002"],
                   metavar="KEY=VALUE", help="a setting of the teachers' a3c runs")  # fmt: skip
    p.add_argument("--skip-extras", action="store_true",
                   help="no combined-objective or two-game students")  # fmt: skip
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    games = [g.strip() for g in args.games.split(",")]
    t0 = time.perf_counter()
    teachers = {g: teacher(runs, g, args.teacher_set) for g in games}
    rows = []
    for game in games:
        for selector in SELECTORS:
            for seed in range(args.seeds):
                sets = [*args.set, f"apex.selector={selector}"]
                run_dir = student(runs, f"{game}_{selector}", [teachers[game]], [game], seed, sets)
                rows.append({"game": game, "setting": selector, "seed": seed, **reach(run_dir)})
                print(json.dumps(rows[-1]), flush=True)
    if not args.skip_extras:
        for game in games:
            sets = [*args.set, "distill.dqn_cost=1.0"]
            run_dir = student(runs, f"{game}_combined", [teachers[game]], [game], 0, sets)
            rows.append({"game": game, "setting": "combined (lambda 1)", "seed": 0,
                         **reach(run_dir)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        run_dir = student(runs, "two_games", [teachers[g] for g in games], games, 0, args.set)
        for task, game in enumerate(games):
            rows.append({"game": game, "setting": f"{len(games)}-game student", "seed": 0,
                         **reach(run_dir, task)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| game | setting | seeds | learner steps to 90% (mean [95% CI]) | not reached | "
        "last rows / teacher, % (mean [95% CI]) |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["game"], r["setting"]), []).append(r)
    faster = {}
    for (game, setting), group in groups.items():
        steps = np.array([r["steps_to_90"] for r in group])
        mean, lo, hi = (float(x) for x in mean_ci(steps))
        fraction = ci_text(np.array([100 * r["fraction_last"] for r in group]), ".0f")
        missed = sum(not r["reached"] for r in group)
        lines.append(
            f"| {game} | {setting} | {len(group)} | {mean:,.0f} [{lo:,.0f}, {hi:,.0f}] | "
            f"{missed} | {fraction} |"
        )
        faster[(game, setting)] = (mean, lo, hi)
    lines.append("")
    for game in games:
        (pm, plo, phi), (um, ulo, uhi) = (faster[(game, s)] for s in SELECTORS)
        if phi < ulo:
            verdict = "prioritised replay is faster"
        elif uhi < plo:
            verdict = "uniform replay is faster"
        else:
            verdict = "neither is faster: the 95% CIs overlap"
        lines.append(f"- {game}: {verdict} ({pm:,.0f} vs {um:,.0f} learner steps to 90%).")
    lines.append("")
    lines.append(
        f"A student reaches 90% at the first row whose {SMOOTH}-row moving mean of its "
        "evaluation (paired with its teacher's on the same episodes) is >= 0.9 x its teacher's "
        "mean evaluation over the run; a seed that never does counts one row past its end. "
        f"Last rows: the mean of its last {SMOOTH} evaluated rows."
    )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot_fractions(rows, games, out / "curves.png")
    summary = {
        "rows": rows,
        "games": games,
        "sets": args.set,
        "teacher_sets": args.teacher_set,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
