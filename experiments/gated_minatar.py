"""MinAtar supertask (issue 19): `gated` against `a3c_multitask`, no task id to the network.

Both variants are one policy for the five games with no task id given to it (`gated`: K
gated sub-policies on a shared torso; `a3c_multitask`: one policy head), trained by the
same actor-critic loss through `distral launch experiments/minatar_5games.yaml` (the
preset's budget, 1M env steps per game), `--seeds` seeds each, into RUNS/VARIANT/seedS
unless finished. Per run and game the score is the mean of the last `--last` rows'
evaluation returns; it is normalised as (score - random) / (best - random), with random the
uniform-random score (`experiments/results/minatar/random.json`) and best the highest
score any compared run reached on that game (a game where no run beat random is left out
of the means). Per variant: the mean over games of the
normalised score, mean and 95% bootstrap CI over seeds, and the verdict. The gated runs'
gate heat maps (`distral plot --gates`) go beside the table.

Writes table.md, summary.json and gates_seedS.png to OUT.

    .venv/bin/python experiments/gated_minatar.py [--out experiments/results/gated/minatar]
        [--runs runs/gated_minatar] [--seeds 3] [--last 5] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distral.config import load_config, load_run_config
from distral.distributed.launch import launch
from distral.gates import plot_gates
from distral.plotting import read_metrics
from distral.stats import mean_ci

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("gated", "a3c_multitask")


def run_once(runs: Path, variant: str, seed: int, sets: list[str]) -> Path:
    run_dir = runs / variant / f"seed{seed}"
    if not (run_dir / "summary.json").is_file():
        overrides = {"variant": variant, "seeds": [seed]}
        config = load_config(ROOT / "experiments" / "minatar_5games.yaml", sets, overrides)
        launch(config, run_dir, resume=(run_dir / "config.yaml").is_file())
    return run_dir


def late_scores(run_dir: Path, games: list[str], last: int) -> np.ndarray:
    """Per game, the mean of the last `last` finite evaluation returns."""
    m = read_metrics(run_dir)
    out = []
    for i in range(len(games)):
        values = m[f"eval_return_task_{i}"]
        values = values[np.isfinite(values)]
        out.append(values[-last:].mean() if values.size else np.nan)
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/gated/minatar"))
    p.add_argument("--runs", default=str(ROOT / "runs/gated_minatar"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--last", type=int, default=5, help="rows averaged into a score")
    p.add_argument("--random", default=str(ROOT / "experiments/results/minatar/random.json"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs = {v: [run_once(runs, v, s, args.set) for s in range(args.seeds)] for v in VARIANTS}
    games = list(load_run_config(dirs[VARIANTS[0]][0]).env.canonical_games)
    random_scores = json.loads(Path(args.random).read_text())["games"]
    random = np.array([random_scores[g]["mean"] for g in games])
    scores = {v: np.stack([late_scores(d, games, args.last) for d in dirs[v]]) for v in VARIANTS}
    best = np.max(np.concatenate(list(scores.values())), axis=0)  # per game, any run
    # A game where no run beat random has no scale: it is left out of the means (NaN).
    scale = np.where(best > random, best - random, np.nan)
    normalised = {v: (scores[v] - random) / scale for v in VARIANTS}
    lines = [
        "| variant | seeds | " + " | ".join(games) + " | mean normalised score [95% CI] |",
        "|---|---|" + "---|" * len(games) + "---|",
    ]
    summary_rows = {}
    for v in VARIANTS:
        per_seed = np.nanmean(normalised[v], axis=1)
        mean, lo, hi = (float(x) for x in mean_ci(per_seed))
        cells = [f"{s:.2f} ({n:.2f})" for s, n in zip(scores[v].mean(0), normalised[v].mean(0),
                                                        strict=True)]  # fmt: skip
        lines.append(f"| {v} | {len(per_seed)} | " + " | ".join(cells) +
                     f" | {mean:.2f} [{lo:.2f}, {hi:.2f}] |")  # fmt: skip
        summary_rows[v] = {
            "runs": [str(d) for d in dirs[v]],
            "scores": scores[v].tolist(),
            "normalised": normalised[v].tolist(),
            "mean_normalised": [mean, lo, hi],
        }
    (gm, glo, ghi), (am, alo, ahi) = (summary_rows[v]["mean_normalised"] for v in VARIANTS)
    if glo > ahi:
        verdict = "gated wins: its CI lies above a3c_multitask's"
    elif alo > ghi:
        verdict = "a3c_multitask wins: its CI lies above gated's"
    else:
        verdict = "neither wins: the 95% CIs overlap"
    lines += [
        "",
        f"**{verdict}** ({gm:.2f} vs {am:.2f}).",
        "",
        f"Cells: the score (mean of the last {args.last} rows' evaluation returns, mean over "
        "seeds) and, in brackets, (score - random) / (best - random), best being the highest "
        "score any compared run reached on the game; a game no run beat random on has no "
        f"normalised score and is left out of the mean ({int(np.isnan(scale).sum())} here).",
    ]
    for seed, run_dir in enumerate(dirs["gated"]):
        figure = out / f"gates_seed{seed}.png"
        plot_gates(run_dir, figure)
        lines.append(f"- gate heat map, seed {seed}: {figure.name}")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {
        "variants": summary_rows,
        "games": games,
        "random": random.tolist(),
        "best": best.tolist(),
        "last": args.last,
        "sets": args.set,
        "verdict": verdict,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
