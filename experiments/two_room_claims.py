"""The paper's speed claims as paired per-seed differences, from `distral compare` run dirs.

For each pair of variants (A, B) and each directory set, prints the mean over seeds of
AUC(A) - AUC(B) and of steps-to-threshold(A) - steps(B), with 95% CIs and how many seeds A
wins on; seed s of A is paired with seed s of B. The CI is `distral.stats.mean_ci` of the
per-seed differences, rliable's bootstrap over seeds like every CI of distral: resampling
the differences (not A's and B's seeds separately) keeps each seed's pair together.

    .venv/bin/python experiments/two_room_claims.py NAME=RUNS_DIR [NAME=RUNS_DIR ...]
        [--out FILE.md]

RUNS_DIR is a `distral compare` output's runs/ directory (or benchmarks/robustness.py's
RUNS/SETTING/runs), holding VARIANT/default/ run directories.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distral import compare
from distral.stats import mean_ci

PAIRS = (
    ("kl_2col", "kl_1col"),
    ("kl_ent_2col", "kl_ent_1col"),
    ("kl_2col", "a3c"),
    ("kl_ent_2col", "a3c"),
    ("kl_1col", "a3c"),
    ("kl_ent_1col", "a3c"),
    ("a3c_2col", "a3c"),
    ("kl_2col", "kl_ent_2col"),
    ("kl_1col", "kl_ent_1col"),
)


def paired(d: np.ndarray) -> tuple[float, float, float]:
    """Mean of the paired differences `d` [seeds] and its 95% CI over seeds."""
    mean, low, high = mean_ci(d)
    return float(mean), float(low), float(high)


def table(runs: Path) -> list[str]:
    names = sorted({v for pair in PAIRS for v in pair})
    auc, steps = {}, {}
    for v in names:
        c = compare.read_curves([runs / v / "default"])
        threshold = c.optimal - compare.THRESHOLD_MARGIN
        auc[v] = np.array([compare.auc(c.x, y) for y in c.y])
        steps[v] = np.array([compare.steps_to_threshold(c.x, y, threshold) for y in c.y])
    lines = [
        "| A - B | AUC difference [95% CI] | seeds A > B | env steps to threshold, "
        "difference [95% CI] |",
        "|---|---|---|---|",
    ]
    for v in names:
        if len(auc[v]) != len(auc[names[0]]):
            raise SystemExit(
                f"{runs}: {v} has {len(auc[v])} seeds, {names[0]} {len(auc[names[0]])}"
            )
    for a, b in PAIRS:
        d = auc[a] - auc[b]
        m, lo, hi = paired(d)
        s = steps[a] - steps[b]  # NaN (never reached) propagates: shown as n/a
        sm, slo, shi = paired(s) if np.all(np.isfinite(s)) else (np.nan,) * 3
        lines.append(
            f"| {a} - {b} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {int(np.sum(d > 0))}/{len(d)} | "
            + (
                f"{sm / 1e3:+.1f}K [{slo / 1e3:+.1f}K, {shi / 1e3:+.1f}K] |"
                if np.isfinite(sm)
                else "n/a |"
            )
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", metavar="NAME=RUNS_DIR")
    parser.add_argument("--out", help="also write the tables here (markdown)")
    args = parser.parse_args()
    lines = []
    for item in args.sets:
        name, _, path = item.partition("=")
        lines += [f"### {name}", "", *table(Path(path)), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
