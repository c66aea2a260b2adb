"""Two-room distillation losses compared: NLL, MSE, KL at tau 0.01 / 0.1 / 1, Actor-Mimic
with and without feature regression, and KL with the teacher acting instead of the student.

Each setting is one `distral distill` run of `experiments/two_room_distill.yaml` with 5
seeds (vmapped) from the same a3c teacher (seed 0 of RUNS/teacher, trained here if
missing, as experiments/distill_two_room.py does), at a short budget (32K steps per task)
so that the speed of learning shows. Scores per setting, with 95% stratified-bootstrap CIs
(rliable, `distral.stats`) over seeds x tasks: the IQM of the student's evaluation return
averaged over the run (a normalised area under the curve), the IQM of its final return,
and the mean final gap to the teacher on the same episodes. Writes table.md, summary.json
and curves.png to OUT.

    .venv/bin/python experiments/distill_losses.py [--out experiments/results/distill/losses]
        [--runs runs/distill_two_room] [--seeds 5] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from distill_two_room import teachers  # the same teacher run (this script's directory)

from distral import distill
from distral.compare import iqm_with_ci
from distral.config import load_config
from distral.plotting import learning_curve, plot_band, pyplot, read_metrics, save_figure

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {  # name -> distill section overrides
    "nll": {"loss": "nll"},
    "mse": {"loss": "mse"},
    "kl tau 0.01": {"loss": "kl", "tau": 0.01},
    "kl tau 0.1": {"loss": "kl", "tau": 0.1},
    "kl tau 1": {"loss": "kl", "tau": 1.0},
    "actor_mimic": {"loss": "actor_mimic", "tau": 1.0, "feature_cost": 0.01},
    "actor_mimic no features": {"loss": "actor_mimic", "tau": 1.0, "feature_cost": 0.0},
    "kl tau 1, teacher acts": {"loss": "kl", "tau": 1.0, "behaviour": "teacher"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/distill/losses"))
    p.add_argument("--runs", default=str(ROOT / "runs/distill_two_room"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher = teachers(runs, seeds=5)
    sets = ["env_steps_per_task=32000", "log_every=20", *args.set]
    auc, final, gap, run_dirs = {}, {}, {}, {}
    for name, section in SETTINGS.items():
        run_dir = runs / "losses" / name.replace(" ", "_").replace(",", "")
        if not (run_dir / "summary.json").is_file():
            overrides = {
                "seeds": list(range(args.seeds)),
                "distill": {**section, "teachers": [str(teacher.absolute())], "teacher_seed": 0},
            }
            config = load_config(ROOT / "experiments/two_room_distill.yaml", sets, overrides)
            distill.run(config, run_dir, resume=run_dir.exists(), progress=False)
        m = read_metrics(run_dir)
        tasks = sorted(k for k in m if k.startswith("eval_return_task_"))
        seeds = np.unique(m["seed"])
        per_seed = [np.stack([m[k][m["seed"] == s] for k in tasks], axis=1) for s in seeds]
        curves = np.stack(per_seed)  # [seeds, rows, tasks]
        auc[name], final[name] = curves.mean(axis=1), curves[:, -1]
        summary = json.loads((run_dir / "summary.json").read_text())
        gap[name] = float(
            np.mean(summary["teacher_returns_per_task"])
            - np.mean(summary["student_returns_per_task"])
        )
        run_dirs[name] = run_dir
        print(name, f"auc {auc[name].mean():.3f} final {final[name].mean():.3f}", flush=True)
    auc_ci, final_ci = iqm_with_ci(auc), iqm_with_ci(final)  # (IQM, low, high) per setting
    lines = [
        "| setting | IQM return over the run (AUC) [95% CI] | IQM final return [95% CI] "
        "| final gap to teacher |",
        "|---|---|---|---|",
    ]
    rows = []
    for name in SETTINGS:
        a, f = auc_ci[name], final_ci[name]
        rows.append(
            {
                "setting": name,
                "auc_iqm": a[0],
                "auc_low": a[1],
                "auc_high": a[2],
                "final_iqm": f[0],
                "final_low": f[1],
                "final_high": f[2],
                "gap_to_teacher": gap[name],
            }
        )
        lines.append(
            f"| {name} | {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] "
            f"| {f[0]:.3f} [{f[1]:.3f}, {f[2]:.3f}] | {gap[name]:.3f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    summary = {"rows": rows, "seeds": args.seeds, "sets": sets}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run_dir in run_dirs.items():
        x, mean, low, high, _ = learning_curve(read_metrics(run_dir), "eval_return")
        plot_band(ax, x, (mean, low, high), label=name)
    ax.set_xlabel("environment steps per task")
    ax.set_ylabel("student evaluation return (mean over 8 tasks)")
    ax.set_ylim(bottom=-2.0)
    ax.set_title("two-room: distillation losses (a3c teacher, 5 seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
