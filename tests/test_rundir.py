"""The run directory API: key-path checkpoints, the metrics row and summary every runner
writes, `load_run`, and the algorithm registry behind the `algorithm` config key."""

from __future__ import annotations

import csv
import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from small_runs import RUNS, tiny_config

from distral import config as cfg
from distral import rundir
from distral.checkpoint import Checkpoints, from_named, to_named
from distral.core import algorithm
from distral.train import Trainer


class _State(NamedTuple):
    params: dict
    opt_state: tuple
    step: jax.Array


def _state(offset: float) -> _State:
    params = {"tasks": {"w": jnp.arange(6.0).reshape(2, 3) + offset}, "b": jnp.ones(2) * offset}
    return _State(params, (jnp.zeros(3) + offset, ()), jnp.asarray(7, jnp.int32))


def test_checkpoints_are_named_by_key_path_and_restore_exactly(tmp_path):
    ckpt = Checkpoints(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, {"train": _state(step), "wall_seconds": np.asarray(1.5 * step)})
    raw, step = ckpt.restore_raw()
    assert step == 3
    np.testing.assert_array_equal(
        raw["train"]["params"]["tasks"]["w"], np.arange(6.0).reshape(2, 3) + 3
    )
    np.testing.assert_array_equal(raw["train"]["opt_state"]["0"], np.full(3, 3.0))
    assert float(raw["wall_seconds"]) == 4.5
    parts, step = ckpt.restore({"train": _state(0), "wall_seconds": np.asarray(0.0)})
    assert step == 3 and isinstance(parts["train"], _State)
    np.testing.assert_array_equal(parts["train"].params["b"], [3.0, 3.0])
    assert int(parts["train"].step) == 7
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]  # keep=2
    ckpt.close()


def test_a_path_with_a_glob_character_is_refused_because_orbax_loses_its_checkpoints(
    tmp_path,
):
    """Why `check_globless` exists: under "a[1]" orbax saves a checkpoint and then lists
    none (it globs the directory). If orbax fixes that, this test fails and the check can
    go."""
    ckpt = Checkpoints(tmp_path / "a[1]" / "checkpoints")
    ckpt.save(1, {"train": _state(1)})
    ckpt.close()
    assert (tmp_path / "a[1]" / "checkpoints" / "1").is_dir()
    assert Checkpoints(tmp_path / "a[1]" / "checkpoints").latest_step() is None  # a reader
    for name in ("a[1]", "b*", "c?"):
        with pytest.raises(cfg.ConfigError, match=r"^--out .* must not contain [\[\]*?]"):
            rundir.check_run_dir(tmp_path / name, resume=False)
    with pytest.raises(cfg.ConfigError, match=r"^run .*a\[1\].* must not contain \[ \]"):
        (tmp_path / "a[1]" / "config.yaml").write_text("{}")
        rundir.load_run(tmp_path / "a[1]")
    rundir.check_run_dir(tmp_path / "plain=1,x", resume=False)  # = and , are fine


def test_a_checkpoint_in_the_earlier_flat_layout_still_restores(tmp_path):
    """Before key paths, a part's leaves were stored in order as `state_0000`, ..."""
    like = _state(0)
    leaves = jax.tree.leaves(_state(5))
    flat = {f"state_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
    flat["wall_seconds"] = np.asarray(2.0)
    manager = ocp.CheckpointManager(
        tmp_path / "checkpoints",
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
    )
    manager.save(4, args=ocp.args.StandardSave(flat))
    manager.close()
    parts, step = Checkpoints(tmp_path / "checkpoints").restore(
        {"train": like, "wall_seconds": np.asarray(0.0)}
    )
    assert step == 4 and float(parts["wall_seconds"]) == 2.0
    np.testing.assert_array_equal(
        parts["train"].params["tasks"]["w"], np.arange(6.0).reshape(2, 3) + 5
    )


def test_named_tree_round_trip_and_a_missing_array_is_named():
    named = to_named(_state(1))
    assert sorted(named) == ["opt_state", "params", "step"]
    back = from_named(named, _state(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), back, _state(1)))
    del named["params"]["tasks"]["w"]
    with pytest.raises(KeyError, match="params/tasks/w"):
        from_named(named, _state(0))


def test_metrics_row_by_hand():
    tasks = rundir.TaskStats(
        training_return=np.array([1.0, np.nan, 3.0]),
        eval_return=np.array([0.5, 1.0, 1.5]),
        pi0_eval_return=np.array([np.nan, 2.0, 4.0]),
        kl=np.array([0.1, 0.2, 0.3]),
        entropy=np.array([1.0, 1.1, 1.2]),
    )
    head = {"seed": 3, "log_step": 2, "queue_size": 5.0}
    scalars = {"loss": 0.25, "queue_size": 99.0, "kl": 0.2}
    row = rundir.metrics_row(
        head, tasks, scalars, optimal_return=0.3, collapsed_tasks=1, has_kl=True
    )
    assert row["mean_return"] == 2.0  # mean over the tasks with an ended episode
    assert row["eval_return"] == 1.0 and row["pi0_eval_return"] == 3.0
    assert row["queue_size"] == 5.0  # the head wins over a scalar of the same name
    assert row["loss"] == 0.25 and row["kl"] == 0.2 and row["collapsed_tasks"] == 1
    assert row["kl_task_2"] == pytest.approx(0.3) and row["entropy_task_0"] == 1.0
    assert math.isnan(row["return_task_1"]) and row["pi0_eval_return_task_2"] == 4.0
    no_pi0 = rundir.metrics_row(
        head, tasks, scalars, optimal_return=0.3, collapsed_tasks=0, has_kl=False
    )
    assert math.isnan(no_pi0["kl"]) and math.isnan(no_pi0["kl_task_0"])
    assert math.isnan(no_pi0["distilled_entropy"]) and no_pi0["entropy_task_0"] == 1.0


def test_summary_takes_each_seeds_last_row_and_the_last_finished_evaluation(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = [
        [
            "seed",
            "log_step",
            "env_steps_per_task",
            "eval_return",
            "pi0_eval_return",
            "mean_return",
            "collapsed_tasks",
        ],
        [0, 1, 100, 0.1, 0.0, 0.0, 0],
        [1, 1, 100, 0.3, 0.1, 0.2, 0],
        [0, 2, 200, 0.2, 0.1, 0.1, 1],
        [1, 2, 200, "", "", 0.4, ""],  # an evaluation a stop cut short
    ]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    config = cfg.load_config(None, overrides={"seeds": [0, 1]})
    summary = rundir.summarise(
        path, config, np.array([0.5, 0.7]), ["a", "b"], seeds=[0, 1], wall_seconds=3.0
    )
    assert summary["final_mean_return_per_seed"] == {"0": 0.2, "1": 0.3}
    assert summary["final_mean_return"] == pytest.approx(0.25)
    assert summary["final_pi0_return"] == pytest.approx(0.1)
    assert summary["final_training_return"] == pytest.approx(0.25)
    assert summary["optimal_mean_return"] == pytest.approx(0.6)
    assert summary["env_steps_per_task"] == 200 and summary["wall_seconds"] == 3.0
    assert summary["collapsed_tasks_per_seed"] == {"0": 1, "1": None}
    assert summary["algorithm"] == "distral" and summary["tasks"] == ["a", "b"]


def test_load_run_gives_each_seeds_final_parameters(small_run):
    """A finished kl_ent_2col run of seeds 2 and 5 (tests/small_runs.py), and the same
    training again in memory: the checkpoint holds seed 5's parameters at index 1."""
    config = tiny_config(**RUNS["2col"])
    assert config.seeds == (2, 5)
    trainer = Trainer(config)
    runner = trainer.init(jnp.stack([jax.random.PRNGKey(s) for s in config.seeds]))
    for _ in range(config.num_log_steps):  # the run again, in memory: same program
        runner, _ = trainer.run_chunk(runner)
    loaded = rundir.load_run(small_run("2col"), seed=5)
    assert loaded.seed == 5 and loaded.log_step == config.num_log_steps
    expected = jax.tree.map(lambda x: x[1], runner.train.params)
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), loaded.params, expected)
    assert jax.tree.all(same)
    assert (
        loaded.summary is not None and list(loaded.metrics["seed"]) == [2, 5] * config.num_log_steps
    )
    with pytest.raises(cfg.ConfigError, match="seed 4 is not a seed"):
        rundir.load_run(small_run("2col"), seed=4)


def test_the_algorithm_key_names_a_registered_family():
    assert cfg.ALGORITHMS == tuple(algorithm.ALGORITHMS)
    assert cfg.load_config(None).algorithm == "distral"
    with pytest.raises(cfg.ConfigError, match="algorithm='gated'; valid choices: distral"):
        cfg.load_config(None, overrides={"algorithm": "gated"})
    distral = algorithm.get_algorithm("distral")
    columns = rundir.metric_columns(2, distral.metrics)
    assert columns[10:12] == ["loss", "policy_loss"] and "collapsed_tasks" in columns


def test_finished_needs_a_summary_and_a_launchs_spent_budget(tmp_path):
    """A launch stopped by a signal writes summary.json too: only a spent learner budget
    makes it finished; a `distral train` summary (no budget) is written at the end only.
    `distral compare` resumes a stopped launch instead of skipping it."""
    from distral.compare import _state

    def run(summary: dict | None):
        d = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "config.yaml").write_text(cfg.dump_yaml(rundir.inline_layout(tiny_config())))
        if summary is not None:
            (d / "summary.json").write_text(json.dumps(summary))
        return d

    stopped = run({"learner_steps": 30, "learner_budget": 625})
    spent = run({"learner_steps": 625, "learner_budget": 625})
    trained = run({"final_mean_return": 0.2})
    unended = run(None)
    assert [rundir.finished(d) for d in (stopped, spent, trained, unended)] == [
        False, True, True, False,
    ]  # fmt: skip
    states = [_state(d, tiny_config()) for d in (stopped, spent, trained, unended)]
    assert states == ["resume", "done", "done", "resume"]
