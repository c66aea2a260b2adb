"""MinAtar policy distillation: one student learns the five games from five one-game teachers.

1. Teachers: one `distral launch` run of a3c per game (`experiments/minatar_5games.yaml
   --variant a3c --set env.games=[GAME]`, 2 actors, the preset's 1M env steps, and any
   `--teacher-set`), into RUNS/teachers/TEACHERS/GAME, unless a finished one is there;
   or, with `--teachers DIR`, the finished runs DIR/GAME (e.g. the five teachers kept in
   experiments/results/distill/minatar_lr2e-3/teachers, so that students made on other machines
   or days learn from the same teachers).
2. Students: for each setting (`distill_losses.SETTINGS`' names; default `kl tau 1`) and
   seed, `distral distill experiments/minatar_distill.yaml` (actors with the student and
   their game's teacher, Reverb, the learner) into RUNS/students/TEACHERS/SETTING/seedS,
   where TEACHERS names the teachers' `--teacher-set` settings ("preset" without), or is
   the name of `--teachers`' directory.
3. Scores: each finished student plays `--eval-episodes` more episodes per game, and its
   teachers play the same episodes (`GameEvaluator`'s pairing: the same environment
   seeds and action noise; the run's own 8-episode evaluations are too few to compare two
   policies). Each game's student score is reported as a fraction of its teacher's with a
   95% CI (`stats.ratio_ci`, the pairs resampled), and normalised by the uniform-random
   score (`minatar.RANDOM_SCORES`): (student - random) / (teacher - random). A student
   passes when its fraction is at least 90% on every game.
4. With more than one setting, a comparison of them: per seed and game, the student's
   in-run evaluation returns as fractions of the teacher's score (the teachers' scores of
   every scoring pooled) averaged over the run (AUC), and the scoring's fraction at the
   end, with the IQM and its 95% CI over seeds x games (rliable), and the curves.

Writes table.md and summary.json (and, comparing, comparison.md and curves.png) to OUT,
and per student OUT/run_SETTING_seedS.json (its scores and in-run evaluations) with
OUT/episodes_SETTING_seedS.npz (the scoring's episodes). A student whose record is in OUT
is not distilled or scored again (it must have the same `--set`s, teachers and
`--eval-episodes`), so an experiment resumes from its results directory, on another
machine too.

    .venv/bin/python experiments/distill_minatar.py [--out experiments/results/distill/minatar]
        [--runs runs/distill_minatar] [--seeds 1] [--settings "kl tau 1,nll" | all]
        [--eval-episodes 1000] [--set KEY=VALUE ...]
        [--teacher-set KEY=VALUE ... | --teachers DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from distill_losses import SETTINGS  # the two-room comparison's settings (this directory)
from distill_two_room import settings_tag

from distral import rundir
from distral.compare import iqm_with_ci, probability_of_improvement
from distral.config import load_config, load_run_config
from distral.distributed.launch import launch
from distral.envs.minatar import RANDOM_SCORES
from distral.evaluator import GameEvaluator
from distral.plotting import plot_band, pyplot, read_metrics, save_figure
from distral.stats import mean_ci, ratio_ci
from distral.teachers import load_teachers

ROOT = Path(__file__).resolve().parents[1]
GAMES = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")


def teachers(runs: Path, sets: list[str]) -> list[Path]:
    """The five one-game a3c runs (launched here unless finished), with the preset's
    settings and `sets` (e.g. a3c's learning rate), into a directory named by `sets`."""
    out = []
    tag = settings_tag(sets) or "preset"
    for game in GAMES:
        run_dir = runs / "teachers" / tag / game
        if not rundir.finished(run_dir):
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


def tag(setting: str) -> str:
    """A setting's name in file and directory names: "kl tau 1, teacher acts" ->
    kl_tau_1_teacher_acts."""
    return setting.replace(" ", "_").replace(",", "")


def student(runs: Path, teacher_dirs: list[Path], setting: str, seed: int, sets: list[str]):
    """The run directory of the student of `setting` and `seed` (distilled here unless
    finished), beside the other students of the same teachers."""
    run_dir = runs / "students" / teacher_dirs[0].parent.name / tag(setting) / f"seed{seed}"
    distill = {**SETTINGS[setting], "teachers": [str(t.absolute()) for t in teacher_dirs]}
    overrides = {"seeds": [seed], "distill": distill}
    config = load_config(ROOT / "experiments" / "minatar_distill.yaml", sets, overrides)
    if (run_dir / "config.yaml").is_file():
        check_settings(run_dir, config, sets)
    if not rundir.finished(run_dir):
        launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return run_dir


def check_settings(run_dir: Path, config: Any, sets: list[str]) -> None:
    """Stops (a one-line error) if the run in `run_dir` was made with other `--set` values
    than `config`'s: the directory names the setting and seed, not the `--set`s."""

    def value(c: Any, key: str) -> Any:
        for part in key.split("."):
            c = getattr(c, part)
        return c

    stored = load_run_config(run_dir)
    for key in dict.fromkeys(s.partition("=")[0] for s in sets):
        if value(stored, key) != value(config, key):
            raise SystemExit(
                f"{run_dir} holds a student with {key}={value(stored, key)!r}, not "
                f"{value(config, key)!r}: give another --runs"
            )


def scores(run_dir: Path, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(student, teachers) returns [games, episodes], the teachers' episodes paired with
    the student's (the same seeds and action noise)."""
    run = rundir.load_run(run_dir)
    config = run.experiment.config
    found = load_teachers(config.distill.teachers, run.experiment, config.distill.teacher_seed)
    evaluate = GameEvaluator(run.experiment, episodes, 10_000 + config.seeds[0], teachers=found)
    return evaluate.episode_returns(run.params, 0)


def teachers_id(teacher_dirs: list[Path]) -> dict[str, float]:
    """What names a set of teachers wherever it is kept: each game's final training return
    (a float of the run's own; copies of the runs keep it, other teachers differ)."""
    summaries = [json.loads((t / "summary.json").read_text()) for t in teacher_dirs]
    return {g: s["final_training_return"] for g, s in zip(GAMES, summaries, strict=True)}


def record(setting: str, seed: int, run_dir: Path, episodes: int, out: Path, name: str) -> dict:
    """A finished student's record: its scoring (`episodes` per game, paired with its
    teachers; the episodes saved to OUT/episodes_NAME.npz) and its in-run evaluations."""
    s_eps, t_eps = scores(run_dir, episodes)
    np.savez(out / f"episodes_{name}.npz", student=s_eps, teacher=t_eps, games=GAMES)
    s, t = s_eps.mean(axis=1), t_eps.mean(axis=1)
    ci = [ratio_ci(a, b) for a, b in zip(s_eps, t_eps, strict=True)]
    random = np.array([RANDOM_SCORES[g] for g in GAMES])
    summary = json.loads((run_dir / "summary.json").read_text())
    m = read_metrics(run_dir)
    done = np.isfinite(m["eval_learner_step"])  # rows with an evaluation
    returns = np.stack([m[f"eval_return_task_{g}"][done] for g in range(len(GAMES))], 1)
    row = {
        "setting": setting,
        "seed": seed,
        "student": s.tolist(),
        "teacher": t.tolist(),
        "fraction": (s / t).tolist(),
        "fraction_low": [float(c.low) for c in ci],
        "fraction_high": [float(c.high) for c in ci],
        # None where the teacher is no better than random (nothing to keep)
        "normalised": [
            (a - r) / (b - r) if b > r else None for a, b, r in zip(s, t, random, strict=True)
        ],
        "wall_seconds": summary["wall_seconds"],
        "student_params": summary["student_params"],
        "teacher_params": summary["teacher_params"],
    }
    return {
        "row": row,
        "eval_steps": m["env_steps_per_task"][done].tolist(),
        "eval_returns": returns.tolist(),  # [evaluations, games]
    }


# The papers' claims, as pairs (X, Y) that claim X beats Y: a small tau beats tau 1, every
# other output loss beats MSE (NLL and the sharpest KL: the two-room's worst besides
# MSE), the student acting beats the teacher acting.
CLAIMS = [
    ("kl tau 0.01", "kl tau 1"),
    ("kl tau 0.1", "kl tau 1"),
    ("nll", "mse"),
    ("kl tau 0.01", "mse"),
    ("kl tau 1", "kl tau 1, teacher acts"),
]


def compare(records: list[dict], rows: list[dict], out: Path) -> list[str]:
    """The settings side by side (step 4): comparison.md lines, curves.png. The in-run
    evaluations are divided by the teachers' scores of every scoring pooled (a teacher's
    episodes depend on the seed, not on the student, so there are `seeds` samples); the
    final fractions are the scorings' paired ones."""
    teacher = np.mean([r["teacher"] for r in rows], axis=0)
    settings = list(dict.fromkeys(r["row"]["setting"] for r in records))
    curves: dict[str, np.ndarray] = {}
    steps: dict[str, np.ndarray] = {}
    for setting in settings:
        per_seed = []
        for r in records:
            if r["row"]["setting"] == setting:
                per_seed.append(np.array(r["eval_returns"]) / teacher)
                steps[setting] = np.array(r["eval_steps"])
        n = min(len(c) for c in per_seed)
        curves[setting] = np.stack([c[:n] for c in per_seed])  # [seeds, rows, games]
    auc = {k: c.mean(axis=1) for k, c in curves.items()}
    final = {k: np.array([r["fraction"] for r in rows if r["setting"] == k]) for k in settings}
    auc_ci, final_ci = iqm_with_ci(auc), iqm_with_ci(final)
    lines = [
        "| setting | AUC: IQM fraction of teacher over the run [95% CI] "
        "| final: IQM fraction [95% CI] | seeds with every game >= 90% |",
        "|---|---|---|---|",
    ]
    for k in settings:
        a, f = auc_ci[k], final_ci[k]
        ok = sum(min(r["fraction"]) >= 0.9 for r in rows if r["setting"] == k)
        lines.append(
            f"| {k} | {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] "
            f"| {f[0]:.3f} [{f[1]:.3f}, {f[2]:.3f}] | {ok}/{len(final[k])} |"
        )
    lines += [
        "",
        "Fractions of the teacher's score per seed and game: over the run, the student's "
        "in-run evaluations (8 episodes a row) over the teachers' scores of every scoring "
        "pooled; final, the scoring's paired fraction. IQM and 95% CI over seeds x games "
        "(rliable).",
    ]
    pairs = [(x, y) for x, y in CLAIMS if x in auc and y in auc]
    if pairs:
        lines += [
            "",
            "The papers' claims as probabilities of improvement, P(X > Y) (rliable: per "
            "game over the seeds' pairs, averaged over games):",
            "",
            "| X | Y | P(X > Y) over the run | P(X > Y) final |",
            "|---|---|---|---|",
        ]
        over_run, at_end = probability_of_improvement(auc), probability_of_improvement(final)
        for x, y in pairs:
            lines.append(f"| {x} | {y} | {over_run[x][y]:.2f} | {at_end[x][y]:.2f} |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, c in curves.items():
        band = mean_ci(c.mean(axis=2))  # the mean over games, a band over seeds
        plot_band(ax, steps[k][: c.shape[1]], tuple(band), label=k)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("environment steps per game")
    ax.set_ylabel("student return / teacher score (mean over 5 games)")
    ax.set_title(f"MinAtar: distillation losses ({len(next(iter(auc.values())))} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)
    return lines


def table(rows: list[dict], episodes: int) -> list[str]:
    """table.md's lines: per setting and seed, student / teacher and the fraction per game."""
    lines = [
        "| setting | seed | " + " | ".join(GAMES) + " | every game >= 90% |",
        "|---|---|" + "---|" * len(GAMES) + "---|",
    ]
    for r in rows:
        cells = [
            f"{s:.2f} / {t:.2f} ({f:.1%} [{lo:.0%}, {hi:.0%}])"
            for s, t, f, lo, hi in zip(
                r["student"], r["teacher"], r["fraction"], r["fraction_low"],
                r["fraction_high"], strict=True,
            )
        ]  # fmt: skip
        ok = "yes" if min(r["fraction"]) >= 0.9 else "no"
        lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(cells) + f" | {ok} |")
    lines.append("")
    lines.append(
        f"Cells: student / teacher mean return over {episodes} episodes per game "
        "(paired: the same environment seeds and action noise), and the student's fraction "
        "of the teacher's with its 95% CI (the pairs resampled)."
    )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/distill/minatar"))
    p.add_argument("--runs", default=str(ROOT / "runs/distill_minatar"))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--settings", default="kl tau 1")
    p.add_argument("--eval-episodes", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--teacher-set", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of the teachers' a3c runs (RUNS/teachers/SETTINGS/GAME)",
    )  # fmt: skip
    p.add_argument(
        "--teachers", metavar="DIR",
        help="finished one-game teacher runs DIR/GAME, used instead of training teachers",
    )  # fmt: skip
    args = p.parse_args()
    if args.teachers and args.teacher_set:
        p.error("--teachers and --teacher-set: give one (--teacher-set makes new teachers)")
    given = [Path(args.teachers) / game for game in GAMES] if args.teachers else []
    unfinished = [t for t in given if not rundir.finished(t)]
    if unfinished:
        p.error(f"--teachers: {unfinished[0]} is not a finished run (learner budget unspent)")
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    # comma-separated names; a comma followed by a space is part of a name
    settings = [s.strip() for s in re.split(r",(?! )", args.settings)]
    settings = list(SETTINGS) if settings == ["all"] else settings
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"--settings: unknown {unknown[0]!r}; valid: {', '.join(SETTINGS)}")
    t0 = time.perf_counter()
    teacher_dirs = given or teachers(runs, args.teacher_set)
    ident = {
        "sets": args.set,
        "teachers": teachers_id(teacher_dirs),
        "eval_episodes": args.eval_episodes,
    }
    rows, records = [], []
    for setting in settings:
        for seed in range(args.seeds):
            name = f"{tag(setting)}_seed{seed}"
            path = out / f"run_{name}.json"
            if path.is_file():
                rec = json.loads(path.read_text())
                for key, value in ident.items():
                    if rec.get(key) != value:
                        p.error(f"{path} has {key} {rec.get(key)}, not {value}: another --out?")
            else:
                run_dir = student(runs, teacher_dirs, setting, seed, args.set)
                rec = {**ident, **record(setting, seed, run_dir, args.eval_episodes, out, name)}
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(rec) + "\n")
                tmp.replace(path)  # whole or absent
            records.append(rec)
            rows.append(rec["row"])
            print(json.dumps(rows[-1]), flush=True)
    lines = table(rows, args.eval_episodes)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {
        "rows": rows,
        "games": list(GAMES),
        "random": [RANDOM_SCORES[g] for g in GAMES],
        "eval_episodes": args.eval_episodes,
        "sets": args.set,
        "teacher_sets": args.teacher_set,
        "teachers": ident["teachers"],
    }
    if len(settings) > 1:
        compared = compare(records, rows, out)
        (out / "comparison.md").write_text("\n".join(compared) + "\n")
        lines += ["", *compared]
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
