"""A non-finite loss, gradient norm or parameter stops a run before it is checkpointed
(`distral.guard`), in `distral train` and `distral launch`; `halt_on_nan: false` warns.

The NaN is real, not injected by a patch: a learning rate of 1e38 sends Adam's first steps
to float32 overflow, and the loss is NaN within the first updates.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_runs import RUNS, tiny_config

from distral.checkpoint import Checkpoints
from distral.guard import DivergenceError, NanGuard, non_finite
from distral.train import Trainer, run

ROOT = Path(__file__).resolve().parents[1]
DIVERGING = 1e38  # learning rate


def test_non_finite_names_the_first_bad_metric_or_parameter():
    params = {"distilled": {"w": jnp.ones(3)}, "tasks": {"w": jnp.array([1.0, jnp.inf])}}
    assert non_finite({"loss": 1.0, "grad_norm": 2.0, "kl": math.nan}) is None  # kl unguarded
    assert non_finite({"loss": math.nan, "grad_norm": 2.0}) == "loss=nan"
    assert non_finite({"loss": 1.0, "grad_norm": math.inf}) == "grad_norm=inf"
    assert non_finite({"loss": 1.0}, params) == "parameter ['tasks']['w']"
    assert non_finite({}, {"w": np.zeros(2)}) is None


def test_guard_halts_or_warns_once():
    warnings: list[str] = []
    guard = NanGuard(halt=False, warn=warnings.append)
    guard.check("log step 1", {"loss": math.nan})
    guard.check("log step 2", {"loss": math.nan})
    assert warnings == ["warning: non-finite loss=nan at log step 1; going on (halt_on_nan: false)"]
    with pytest.raises(DivergenceError, match=r"^non-finite grad_norm=inf at log step 7; no "):
        NanGuard(halt=True, warn=warnings.append).check("log step 7", {"grad_norm": math.inf})


def _config(**kw):
    """tests/small_runs.py's kl_ent_2col run (seeds 2 and 5), 40 env steps per task per
    log row, 3 rows: its program is the shared run's."""
    small = dict(env_steps_per_task=120, checkpoint_every=1, keep_checkpoints=5)
    return tiny_config(**RUNS["2col"], **{**small, **kw})


def test_train_stops_at_a_nan_keeps_the_good_checkpoints_resumes_or_only_warns(tmp_path, capsys):
    """Two programs are compiled (a run's program depends on its learning rate, not on its
    budget or `halt_on_nan`), and each serves two runs."""
    good, bad = _config(), _config(learning_rate=DIVERGING)
    trainer_good, trainer_bad = Trainer(good), Trainer(bad)
    out = tmp_path / "run"
    run(_config(env_steps_per_task=80), out, progress=False, trainer=trainer_good)  # 2 rows
    with pytest.raises(
        DivergenceError, match=r"non-finite (loss|grad_norm)=nan at seed 2, log step 3"
    ):
        run(bad, out, resume=True, progress=False, trainer=trainer_bad)
    raw, step = Checkpoints(out / "checkpoints").restore_raw()
    assert step == 2  # the NaN state of log step 3 was never written
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(raw["runner"]["train"]["params"]))
    result = run(good, out, resume=True, progress=False, trainer=trainer_good)  # the last good
    assert math.isfinite(result.summary["final_mean_return"])
    steps = [int(r.split(",")[1]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [s for s in range(1, good.num_log_steps + 1) for _ in (0, 1)]

    capsys.readouterr()
    warn_only = _config(learning_rate=DIVERGING, halt_on_nan=False, env_steps_per_task=80)
    result = run(warn_only, tmp_path / "warn", progress=True, trainer=trainer_bad)
    err = capsys.readouterr().err
    assert err.count("warning: non-finite") == 1 and "halt_on_nan: false" in err
    assert result.summary["env_steps_per_task"] == 80  # both rows ran, NaN and all


def test_launch_stops_at_a_nan_with_one_line_and_no_checkpoint(tmp_path):
    out = tmp_path / "run"
    sets = [
        "env.num_tasks=1", "unroll_length=5", "distributed.envs_per_actor=4",
        "distributed.batch_size=1", "distributed.queue_size=2", "log_every=5",
        "checkpoint_every=1", "eval_episodes_per_task=2", f"learning_rate={DIVERGING}",
    ]  # fmt: skip
    args = [sys.executable, "-m", "distral.cli", "launch"]
    args += [str(ROOT / "experiments" / "two_room_distributed.yaml"), "--out", str(out)]
    args += ["--max-learner-steps", "200", *(a for s in sets for a in ("--set", s))]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [x for x in result.stderr.splitlines() if x.startswith("distral launch: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "learner stopped: non-finite" in errors[0] and "at learner step" in errors[0]
    assert f"resume with: distral launch --resume {out}" in errors[0]
    assert "Traceback" not in result.stderr
    assert not [p for p in (out / "checkpoints").glob("*") if p.name.isdigit()]
