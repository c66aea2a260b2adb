"""`distral distill` (distral.distill): the per-task replays against a plain-Python ring
buffer, a student that learns hand-made teachers, and the CLI end to end on a real teacher
run (run directory, resume, a student that teaches in its turn, bad teachers)."""

from __future__ import annotations

import csv
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from distral import config as cfg
from distral import distill, rundir, teachers
from distral.core import distillation
from distral.experiment import make_experiment

SMALL = dict(
    algorithm="distill", hidden_sizes=[16], num_envs_per_task=2, unroll_length=3,
    log_every=5, eval_episodes_per_task=4, env_steps_per_task=60, learning_rate=0.01,
    env={"num_tasks": 3, "max_steps": 20},
)  # fmt: skip


def _linear_teachers(experiment, scale=3.0, feature_dims=(4, 2, 3)):
    """Hand-made policy teachers of the student's tasks: logits = scale * obs W_i with a
    fixed random W_i; features = obs V_i (D_i = feature_dims[i])."""
    rng = np.random.default_rng(0)
    D, A = experiment.obs_size, experiment.network.num_actions
    found = []
    for i, name in enumerate(experiment.task_names):
        params = {
            "w": jnp.asarray(rng.normal(size=(D, A)) * scale, jnp.float32),
            "v": jnp.asarray(rng.normal(size=(D, feature_dims[i])), jnp.float32),
        }

        def apply(p, obs):
            return obs @ p["w"], obs @ p["v"]

        found.append(
            teachers.Teacher(name, f"linear {i}", params, apply, "logits", 0, feature_dims[i])
        )
    return found


def _config(**overrides):
    merged = {**SMALL, **overrides}
    merged["distill"] = {**SMALL.get("distill", {}), **overrides.get("distill", {})}
    return cfg.load_config(None, overrides=merged)


def test_the_config_names_are_the_cores():
    assert cfg.DISTILL_LOSSES == distillation.DISTILL_LOSSES
    assert cfg.STUDENT_HEADS == distillation.STUDENT_HEADS
    with pytest.raises(cfg.ConfigError, match=r"distill\.behaviour='x'; valid choices"):
        _config(distill={"behaviour": "x"})
    with pytest.raises(cfg.ConfigError, match=r"distill\.teacher_prob=1\.5 is outside"):
        _config(distill={"teacher_prob": 1.5})


def test_replays_are_ring_buffers_and_batches_are_task_major():
    """Writes of 6 samples per task into a replay of 10: positions wrap as a Python ring
    buffer's; a batch draws only filled slots, `batch_per_task` per task, in task order."""
    config = _config(distill={"replay_per_task": 10, "batch_per_task": 7, "loss": "actor_mimic"})
    experiment = make_experiment(config)
    d = distill.Distiller(config, _linear_teachers(experiment))
    runner = d._init(jax.random.PRNGKey(0))
    replay, reference = runner.replay, [[] for _ in range(3)]
    rng = np.random.default_rng(1)
    for write in range(3):
        obs = jnp.asarray(rng.normal(size=(3, 6, experiment.obs_size)), jnp.float32)
        out, feat = d.teach(d.teacher_params, obs)
        assert feat.shape == (3, 6, 4)  # padded to the largest teacher's D = 4
        np.testing.assert_array_equal(feat[1, :, 2:], 0.0)
        replay = d.write(replay, (obs, out, feat))
        for i in range(3):
            reference[i] = (reference[i] + list(np.asarray(obs[i])))[-10:]
        assert int(replay.size) == min(6 * (write + 1), 10)
        assert int(replay.cursor) == 6 * (write + 1) % 10
    for i in range(3):  # slot (cursor + k) % 10 holds the k-th oldest of the last 10
        order = (int(replay.cursor) + np.arange(10)) % 10
        np.testing.assert_array_equal(replay.observation[i][order], np.asarray(reference[i]))
    batch = d.sample(replay._replace(size=jnp.int32(4)), jax.random.PRNGKey(2))
    np.testing.assert_array_equal(batch.task_id, np.repeat([0, 1, 2], 7))
    for b in range(21):
        i = int(batch.task_id[b])
        slot = [k for k in range(4) if np.allclose(replay.observation[i, k], batch.observation[b])]
        assert slot, "a sample from outside the first `size` slots"
        np.testing.assert_allclose(batch.teacher_outputs[b], replay.teacher_outputs[i, slot[0]])
        # The sample's labels are its own observation's: teacher i's outputs and features.
        obs, p = np.asarray(batch.observation[b]), d.teacher_params[i]
        np.testing.assert_allclose(batch.teacher_outputs[b], obs @ p["w"], rtol=1e-5, atol=1e-5)
        dim = (4, 2, 3)[i]
        np.testing.assert_allclose(
            batch.teacher_features[b, :dim], obs @ p["v"], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_array_equal(batch.teacher_features[b, dim:], 0.0)
    small = _config(distill={"replay_per_task": 5})  # a rollout writes 2 x 3 = 6 per task
    with pytest.raises(cfg.ConfigError, match="replay_per_task=5 holds less than one"):
        distill.Distiller(small, _linear_teachers(make_experiment(small)))


@pytest.mark.parametrize("behaviour", ["student", "mixture"])
def test_a_student_learns_hand_made_teachers(behaviour):
    """One chunk of 400 updates: KL(teacher || student) on the replay falls below 0.05 and
    the student agrees with the teacher's argmax on > 90% of samples (the student acting,
    or a per-step mixture with the teacher)."""
    config = _config(env_steps_per_task=2400, log_every=400, distill={"behaviour": behaviour})
    experiment = make_experiment(config)
    d = distill.Distiller(config, _linear_teachers(experiment))
    runner, _ = d.run_chunk(d.init(jnp.stack([jax.random.PRNGKey(0)])), d.teacher_params)
    one = jax.tree.map(lambda x: x[0], runner)
    assert int(one.train.step) == 400 and int(one.replay.size) == 2400
    batch = d.sample(one.replay, jax.random.PRNGKey(9))
    trainable = (one.train.params, one.train.regression)
    learner = d.parts.learner_config
    _, before = distillation.batch_loss(
        (d.parts.network.init(jax.random.PRNGKey(1), batch.observation[:1]), {}), batch,
        d.network, learner,
    )  # fmt: skip
    _, after = distillation.batch_loss(trainable, batch, d.network, learner)
    assert float(before["kl"]) > 0.5 and float(after["kl"]) < 0.05, (before["kl"], after["kl"])
    assert float(after["agreement"]) > 0.9
    student, teacher = d.evaluate(runner.train.params, d.teacher_params, d.eval_keys(1))
    assert student.shape == teacher.shape == (1, 3)


def test_a_stopped_run_resumes_as_if_it_had_not_stopped(tmp_path):
    """One log step, then resumed to two, against two in a row: the same rows (but the
    clocks) and the same final parameters, bit for bit (replay, keys and Adam restored)."""
    config = _config(env_steps_per_task=60, distill={"loss": "actor_mimic"})
    found = _linear_teachers(make_experiment(config))
    first = dataclasses.replace(config, env_steps_per_task=30)
    distill.run(first, tmp_path / "a", progress=False, distiller=distill.Distiller(first, found))
    d = distill.Distiller(config, found)  # both runs' config: traced and compiled once
    for name, resume in (("a", True), ("b", False)):
        distill.run(config, tmp_path / name, resume=resume, progress=False, distiller=d)
    rows = {}
    for name in "ab":
        with open(tmp_path / name / "metrics.csv") as f:
            rows[name] = [
                {k: v for k, v in r.items() if k not in ("wall_seconds", "steps_per_second")}
                for r in csv.DictReader(f)
            ]
    assert len(rows["a"]) == 2 and rows["a"] == rows["b"]
    a, b = (rundir.load_run(tmp_path / name).params for name in "ab")
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


@pytest.fixture
def teacher(small_run):
    """A real a3c run of the student's 3 two-room tasks (tests/small_runs.py), the teacher."""
    return small_run("a3c")


# The student of the CLI test is one of the compare test's settings (actor_mimic at tau 0.5,
# 2 seeds): one compiled program for both (tests/conftest.py's compilation cache).
AM_TAU = {"loss": "actor_mimic", "tau": 0.5}


def test_cli_distils_resumes_and_the_student_teaches_in_turn(distral, teacher, tmp_path):
    preset = tmp_path / "student.yaml"
    preset.write_text(yaml.safe_dump({k: v for k, v in SMALL.items() if k != "algorithm"}))
    out = tmp_path / "student"
    p = distral(
        "distill", preset, "--teacher", teacher, "--loss", AM_TAU["loss"], "--tau",
        AM_TAU["tau"], "--seeds", "0,1", "--out", out, "--quiet",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    config = cfg.load_run_config(out)
    assert config.algorithm == "distill" and config.distill.loss == "actor_mimic"
    assert config.distill.tau == 0.5 and config.distill.teachers == (str(teacher),)
    assert config.seeds == (0, 1)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["log_step"]), int(r["seed"])) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    last = rows[-2:]  # log step 2 of seeds 0 and 1
    for r in last:
        assert float(r["feature_loss"]) > 0 and float(r["kl"]) >= 0
        assert r["pi0_eval_return"] == "nan" or r["pi0_eval_return"] == ""
    assert (out / "curves.png").is_file()  # distral plot's figure of the run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "distill" and len(summary["teacher_returns_per_task"]) == 3
    assert summary["student_params"] > 0 and summary["teacher_params"] > 0
    # The final evaluation in the summary is the last rows' (same keys, same parameters),
    # per task its mean over the seeds.
    want = [np.mean([float(r[f"eval_return_task_{i}"]) for r in last]) for i in range(3)]
    np.testing.assert_allclose(summary["student_returns_per_task"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.mean(summary["teacher_returns_per_task"]),
        np.mean([float(r["teacher_eval_return"]) for r in last]), rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    # --resume continues the run as configured (tests/test_distill.py's in-process resume
    # checks the state it restores): a setting beside it is refused before anything runs.
    p = distral("distill", "--resume", out, "--loss", "nll")
    assert p.returncode == 2 and "--resume DIR continues that run as configured" in p.stderr
    # The student is a run like any other: it teaches its 3 tasks.
    student = make_experiment(_config())
    found = teachers.load_teachers([out], student)
    assert [t.task_name for t in found] == list(student.task_names)
    assert found[0].outputs == "logits" and found[0].feature_dim == 16


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--teacher", "/nonexistent/run"], "'/nonexistent/run' is not a run directory"),
        (["--teacher", "TEACHER", "--set", "env.goal_seed=5"], "no teacher for task 'goal ("),
    ],
)
def test_cli_bad_teachers_are_one_line_errors_before_any_file(
    distral, teacher, tmp_path, args, fragment
):
    preset = tmp_path / "student.yaml"
    preset.write_text(yaml.safe_dump({k: v for k, v in SMALL.items() if k != "algorithm"}))
    args = [str(teacher) if a == "TEACHER" else a for a in args]
    out = tmp_path / "out"
    p = distral("distill", preset, *args, "--out", out, "--quiet")
    lines = [x for x in p.stderr.splitlines() if x.startswith("distral: error")]
    assert p.returncode == 2 and len(lines) == 1 and fragment in lines[0], p.stderr
    assert not out.exists()


def test_train_and_launch_refuse_the_distill_family():
    from distral.distributed.launch import preflight
    from distral.train import Trainer

    config = _config()
    with pytest.raises(cfg.ConfigError, match="distral train runs algorithm 'distral'"):
        Trainer(config)
    with pytest.raises(cfg.ConfigError, match="on two_room runs in one jitted program"):
        preflight(config, backend="local", ray_address=None)
    with pytest.raises(cfg.ConfigError, match="distral distill runs algorithm 'distill'"):
        distill.Distiller(cfg.load_config(None))


def test_cli_teacher_flags_add_to_the_files_teachers(distral, teacher, tmp_path):
    """The preset's teachers plus --teacher's: the same run twice teaches its tasks twice."""
    preset = tmp_path / "student.yaml"
    section = {"distill": {"teachers": [str(teacher)]}}
    student = {k: v for k, v in SMALL.items() if k != "algorithm"}
    preset.write_text(yaml.safe_dump({**student, **section}))
    out = tmp_path / "out"
    p = distral("distill", preset, "--teacher", teacher, "--out", out)
    assert p.returncode == 2 and "has two teachers" in p.stderr, p.stderr
    assert not out.exists()


def test_cli_compare_runs_each_distillation_setting_as_a_method(distral, teacher, tmp_path):
    preset = tmp_path / "student.yaml"
    teacher_dir = str(teacher)
    distill_section = {"teachers": [teacher_dir], "tau": AM_TAU["tau"]}
    preset.write_text(yaml.safe_dump({**SMALL, "distill": distill_section}))
    out = tmp_path / "compare"
    args = ["compare", preset, "--seeds", "2", "--out", out, "--quiet"]
    grid = f"distill.loss=nll,{AM_TAU['loss']}"
    p = distral(*args, "--grid", grid)
    assert p.returncode == 0, p.stderr
    with open(out / "table.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"distill.loss=nll", "distill.loss=actor_mimic"}
    assert all(r["seeds"] == "2" for r in rows.values())
    for loss in ("nll", "actor_mimic"):
        config = cfg.load_run_config(out / "runs" / "distill" / f"distill.loss={loss}")
        assert config.distill.loss == loss and config.distill.teachers == (teacher_dir,)
        assert config.seeds == (0, 1)
    p = distral(*args, "--grid", grid)  # a re-run skips what is finished
    assert p.returncode == 0 and p.stdout.count("done, skipped") == 2, p.stdout
    for extra, fragment in (
        (["--variants", "a3c"], "a distill config compares the settings of its --grid"),
        (["--grid"], "a distill config needs its settings, e.g. --grid distill.loss="),
    ):
        p = distral(*args, *extra)
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert p.returncode == 2 and len(lines) == 1 and fragment in lines[0], p.stderr
