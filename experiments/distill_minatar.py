"""MinAtar policy distillation: one student learns the five games from five one-game teachers.

1. Teachers: one `distral launch` run of a3c per game (`experiments/minatar_5games.yaml
   --variant a3c --set env.games=[GAME]`, 2 actors, the preset's 1M env steps, and any
   `--teacher-set`), into RUNS/teachers/TEACHERS/GAME, unless a finished one is there.
2. Students: for each setting (`distill_losses.SETTINGS`' names; default `kl tau 1`) and
   seed, `distral distill experiments/minatar_distill.yaml` (actors with the student and
   their game's teacher, Reverb, the learner) into RUNS/students/TEACHERS/SETTING/seedS,
   where TEACHERS names the teachers' `--teacher-set` settings ("preset" without).
3. Scores: each finished student, then the teachers, play `--eval-episodes` more episodes
   per game on the same environments (the run's own 8-episode evaluations are too few to
   compare two policies), and each game's student score is reported as a fraction of its
   teacher's, raw and normalised by the uniform-random score (`minatar.RANDOM_SCORES`):
   (student - random) / (teacher - random).

Writes table.md and summary.json to OUT.

    .venv/bin/python experiments/distill_minatar.py [--out experiments/results/distill/minatar]
        [--runs runs/distill_minatar] [--seeds 1] [--settings "kl tau 1,nll"]
        [--eval-episodes 100] [--set KEY=VALUE ...] [--teacher-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from distill_losses import SETTINGS  # the two-room comparison's settings (this directory)

from distral import rundir
from distral.config import load_config
from distral.distributed.launch import launch
from distral.envs.minatar import RANDOM_SCORES
from distral.evaluator import GameEvaluator
from distral.teachers import load_teachers

ROOT = Path(__file__).resolve().parents[1]
GAMES = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")


def teachers(runs: Path, sets: list[str]) -> list[Path]:
    """The five one-game a3c runs (launched here unless finished), with the preset's
    settings and `sets` (e.g. a3c's learning rate), into a directory named by `sets`."""
    out = []
    tag = ",".join(sets) or "preset"
    for game in GAMES:
        run_dir = runs / "teachers" / tag / game
        if not (run_dir / "summary.json").is_file():
            overrides = {
                "variant": "a3c",
                "env": {"games": [game]},
                "distributed": {"actors_per_task": 2},
            }
            preset = ROOT / "experiments" / "minatar_5games.yaml"
            config = load_config(preset, sets, overrides)
            launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
        out.append(run_dir)
    return out


def student(runs: Path, teacher_dirs: list[Path], setting: str, seed: int, sets: list[str]):
    """The run directory of the student of `setting` and `seed` (distilled here unless
    finished), beside the other students of the same teachers."""
    name = setting.replace(" ", "_").replace(",", "")
    run_dir = runs / "students" / teacher_dirs[0].parent.name / name / f"seed{seed}"
    if not (run_dir / "summary.json").is_file():
        distill = {**SETTINGS[setting], "teachers": [str(t.absolute()) for t in teacher_dirs]}
        overrides = {"seeds": [seed], "distill": distill}
        config = load_config(ROOT / "experiments" / "minatar_distill.yaml", sets, overrides)
        launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return run_dir


def scores(run_dir: Path, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(student, teachers) mean returns per game over `episodes` episodes each, played one
    after the other on the same environments."""
    run = rundir.load_run(run_dir)
    config = run.experiment.config
    found = load_teachers(config.distill.teachers, run.experiment, config.distill.teacher_seed)
    evaluate = GameEvaluator(run.experiment, episodes, 10_000 + config.seeds[0], teachers=found)
    return evaluate(run.params, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/distill/minatar"))
    p.add_argument("--runs", default=str(ROOT / "runs/distill_minatar"))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--settings", default="kl tau 1")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--teacher-set", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of the teachers' a3c runs (RUNS/teachers/SETTINGS/GAME)",
    )  # fmt: skip
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    settings = [s.strip() for s in args.settings.split(",")]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"--settings: unknown {unknown[0]!r}; valid: {', '.join(SETTINGS)}")
    t0 = time.perf_counter()
    teacher_dirs = teachers(runs, args.teacher_set)
    random = np.array([RANDOM_SCORES[g] for g in GAMES])
    rows = []
    for setting in settings:
        for seed in range(args.seeds):
            run_dir = student(runs, teacher_dirs, setting, seed, args.set)
            s, t = scores(run_dir, args.eval_episodes)
            summary = json.loads((run_dir / "summary.json").read_text())
            rows.append(
                {
                    "setting": setting,
                    "seed": seed,
                    "student": s.tolist(),
                    "teacher": t.tolist(),
                    "fraction": (s / t).tolist(),
                    # NaN where the teacher is no better than random (nothing to keep)
                    "normalised": [
                        (a - r) / (b - r) if b > r else None
                        for a, b, r in zip(s, t, random, strict=True)
                    ],
                    "wall_seconds": summary["wall_seconds"],
                    "student_params": summary["student_params"],
                    "teacher_params": summary["teacher_params"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| setting | seed | " + " | ".join(GAMES) + " | every game >= 90% |",
        "|---|---|" + "---|" * len(GAMES) + "---|",
    ]
    for r in rows:
        cells = [
            f"{s:.2f} / {t:.2f} ({f:.0%})"
            for s, t, f in zip(r["student"], r["teacher"], r["fraction"], strict=True)
        ]
        ok = "yes" if min(r["fraction"]) >= 0.9 else "no"
        lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(cells) + f" | {ok} |")
    lines.append("")
    lines.append(
        f"Cells: student / teacher mean return over {args.eval_episodes} episodes per game "
        "(the same environments), and the student's fraction of the teacher's."
    )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {
        "rows": rows,
        "games": list(GAMES),
        "random": random.tolist(),
        "eval_episodes": args.eval_episodes,
        "sets": args.set,
        "teacher_sets": args.teacher_set,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
