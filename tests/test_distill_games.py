"""The distributed student (`algorithm: distill` on the games, through `distral launch`'s
processes): the per-task teacher-sample tables and their rate limiter against hand-computed
bounds, the learner's task-major batches and the actor's teacher labels, against a real
in-process Reverb server. `distral distill` on MinAtar end to end, from a real `distral
launch` teacher run, is in tests/test_launch.py (the tests that start processes)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reverb
import tensorflow as tf
from dm_env import specs
from small_runs import write_launch_run

from distral import config as cfg
from distral import distill, rundir, teachers
from distral.distributed import replay
from distral.distributed.actor import Actor, ReplayWriter, VariableClient
from distral.envs.minatar import RANDOM_SCORES
from distral.evaluator import _teacher_policy
from distral.experiment import make_experiment

ROOT = Path(__file__).resolve().parents[1]
GAMES = ["breakout", "asterix"]


def _config(**overrides):
    """A 2-game student: items of B = 2 states, k = 2 items per game and step, T = 4 actor
    steps per step: samples_per_insert 2 / 4 = 0.5, a first sample after 4 items."""
    base = {
        "algorithm": "distill",
        "torso": "minatar_cnn",
        "unroll_length": 4,
        "env": {"name": "minatar", "games": GAMES},
        "distributed": {"envs_per_actor": 2},
        "distill": {"batch_per_task": 4, "replay_per_task": 100},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return cfg.load_config(None, overrides=base)


def _step(experiment, task, t, b=2):
    """Actor step t of game `task`: every observation cell and teacher output holds
    100 * task + t, so a sampled row names its game and step."""
    value = 100.0 * task + t
    return {
        "observation": np.full((b, *experiment.obs_shape), value, np.float32),
        "teacher_outputs": np.full((b, experiment.network.num_actions), value, np.float32),
        "teacher_features": np.zeros((b, 1), np.float32),
        "params_step": np.int64(t),
        "reward": np.zeros(b, np.float32),  # an actor's other fields are not kept
    }


@pytest.fixture
def served():
    experiment = make_experiment(_config())
    server = replay.start_server(replay.make_replay_tables(experiment))
    client = reverb.Client(replay.server_address(server))
    yield experiment, client
    server.stop()


def test_replay_sizes_and_the_rate_limiters_bounds(served):
    experiment, client = served
    sizes = replay.distill_replay(experiment.config)
    assert sizes == replay.DistillReplay(2, 50, 0.5, 4)
    info = client.server_info()
    assert sorted(k for k in info if k.startswith("teacher_samples_")) == [
        "teacher_samples_0",
        "teacher_samples_1",
    ]
    limiter = info["teacher_samples_0"].rate_limiter_info
    # offset = 0.5 x 4 = 2; slack = 4 k + 2 max(1, 0.5) = 10
    assert (limiter.min_diff, limiter.max_diff, info["teacher_samples_0"].max_size) == (-8, 12, 50)
    writer = replay.SampleWriter(client, 0)
    for t in range(3):
        writer.append(_step(experiment, 0, t), timeout_ms=2000)
    writer.flush()  # an append may leave one item in flight
    assert not replay.can_sample(client.server_info()["teacher_samples_0"], 1)  # 3 < 4 items
    writer.append(_step(experiment, 0, 3), timeout_ms=2000)
    writer.flush()
    info = client.server_info()["teacher_samples_0"]
    # 4 x 0.5 - 0 samples - (k + 1 ahead) >= -8  <=>  k <= 9
    assert replay.can_sample(info, 9) and not replay.can_sample(info, 10)
    # Actors are held back at max_diff: n x 0.5 <= 12 lets 24 items in, then appends wait;
    # the writer runs one item ahead, so the 26th append is the one that waits.
    appended = 4
    with pytest.raises(reverb.errors.DeadlineExceededError):
        for t in range(4, 30):
            assert writer.append(_step(experiment, 0, t), timeout_ms=300) is True
            appended += 1
    assert replay.table_size(client, "teacher_samples_0") == 24 and appended == 25
    assert writer.num_items == 26  # the one that waits was created (the actor waits on it)
    writer.close()


def test_item_layout_sizes_and_slack_with_features_and_a_high_replay_ratio():
    """Integer item counts; an Atari-like uint8 observation stays uint8; Actor-Mimic's
    features are as wide as the widest teacher's; and the slack at samples_per_insert 2:
    k = 4 items (8 / 2), T = 2: spi 4 / 2 = 2, offset 2 x 4 = 8, slack 4 x 4 + 2 x 2 = 20."""
    config = _config(unroll_length=2, distill={"batch_per_task": 8, "loss": "actor_mimic"})
    sizes = replay.distill_replay(config)
    assert sizes == replay.DistillReplay(4, 50, 2.0, 4)
    assert all(type(n) is int for n in (sizes.items_per_update, sizes.max_items, sizes.min_items))
    experiment = make_experiment(config)
    experiment = distill.student_experiment(
        experiment, [_teacher(experiment, 3), _teacher(experiment, 5)]
    )
    server = replay.start_server(replay.make_replay_tables(experiment))
    try:
        info = reverb.Client(replay.server_address(server)).server_info()["teacher_samples_1"]
        limiter = info.rate_limiter_info
        assert (limiter.min_diff, limiter.max_diff) == (-12, 28)
        assert info.signature["teacher_features"].shape.as_list() == [2, 5]
        assert info.signature["params_step"].dtype == tf.int64
    finally:
        server.stop()
    uint8 = specs.Array((84, 84, 4), np.uint8)
    signature = replay.teacher_sample_signature(uint8, 18, 1, 8)
    assert signature["observation"].dtype == tf.uint8
    assert signature["observation"].shape.as_list() == [8, 84, 84, 4]
    for bad in ((0, 1, 8), (18, 0, 8), (18, 1, 0)):
        want = r"need num_actions, feature_size, num_envs >= 1, got " + ", ".join(map(str, bad))
        with pytest.raises(ValueError, match=want):
            replay.teacher_sample_signature(uint8, *bad)


def test_a_table_without_a_signature_is_named():
    table = reverb.Table.queue("teacher_samples_0", max_size=4)  # no signature
    server = replay.start_server([table])
    try:
        client = reverb.Client(replay.server_address(server))
        with pytest.raises(ValueError, match=r"'teacher_samples_0' has no signature; pass"):
            replay.SampleWriter(client, 0)
    finally:
        server.stop()


def test_samples_are_task_major_whole_items_with_the_frames_written(served):
    experiment, client = served
    writers = [replay.SampleWriter(client, task) for task in (0, 1)]
    for task, writer in enumerate(writers):
        for t in range(6):
            writer.append(_step(experiment, task, t), timeout_ms=2000)
        writer.flush()
    sampler = replay.TeacherSampler(client, 2, items_per_update=2)
    assert sampler.size() == 0.0  # nothing seen before the first wait
    assert sampler.wait(lambda: False)
    batch, params_step, frames = sampler.sample()
    assert (batch.task_id.dtype, params_step.dtype, frames.dtype) == (np.int32, np.int64, np.int64)
    np.testing.assert_array_equal(batch.task_id, [0, 0, 0, 0, 1, 1, 1, 1])
    assert batch.teacher_features.shape == (8, 1) and not batch.teacher_features.any()
    values = batch.observation.reshape(8, -1)
    assert (values == values[:, :1]).all()  # no row mixes two states
    value = values[:, 0]
    np.testing.assert_array_equal(value // 100, batch.task_id)  # each row from its game
    np.testing.assert_array_equal(batch.teacher_outputs[:, 0], value)  # with its labels
    np.testing.assert_array_equal(value[0::2], value[1::2])  # the B = 2 states of an item
    np.testing.assert_array_equal(params_step, value[0::2] % 100)
    np.testing.assert_array_equal(frames, [12, 12])  # 6 items of 2 states per game
    assert sampler.size() == 6.0
    writers[1].append(_step(experiment, 1, 6), timeout_ms=2000)
    writers[1].flush()
    assert sampler.wait(lambda: False)
    np.testing.assert_array_equal(sampler.sample()[2], [0, 2])  # only what is new
    for writer in writers:
        writer.close()


def test_the_sampler_sees_a_stop_and_checks_its_sizes(served):
    _, client = served
    for bad in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match=rf"num_tasks={bad[0]}, items_per_update={bad[1]}"):
            replay.TeacherSampler(client, *bad)
    sampler = replay.TeacherSampler(client, 1, 1)  # one task, one item: valid
    calls = []

    def stop_at_the_second_look() -> bool:
        calls.append(1)
        return len(calls) >= 2

    assert sampler.wait(stop_at_the_second_look) is False  # empty tables: never ready
    assert len(calls) == 2  # it polled (and slept) once before the stop


def test_can_sample_follows_reverbs_rule_on_known_counters():
    """10 inserts x 0.5 - 3 samples - (k + 1) >= -2  <=>  k <= 3; a table under its
    minimum size gives nothing."""
    from types import SimpleNamespace as NS

    def info(size, inserts, samples):
        stats = NS(insert_stats=NS(completed=inserts), sample_stats=NS(completed=samples))
        limiter = NS(min_size_to_sample=4, samples_per_insert=0.5, min_diff=-2, **vars(stats))
        return NS(current_size=size, rate_limiter_info=limiter)

    assert replay.can_sample(info(10, 10, 3), 3) and not replay.can_sample(info(10, 10, 3), 4)
    assert replay.can_sample(info(4, 10, 3), 3) and not replay.can_sample(info(3, 10, 3), 1)


def test_a_sample_writer_flush_gives_up_when_the_server_is_gone():
    """An actor stopping flushes with a timeout: a gone server costs it that, no hang."""
    experiment = make_experiment(_config())
    server = replay.start_server(replay.make_replay_tables(experiment))
    writer = replay.SampleWriter(reverb.Client(replay.server_address(server)), 0)
    writer.append(_step(experiment, 0, 0), timeout_ms=2000)
    writer.flush(timeout_ms=2000)
    server.stop()
    errors = []

    def flush():
        writer.append(_step(experiment, 0, 1), timeout_ms=300)
        try:
            writer.flush(timeout_ms=300)
        except reverb.errors.DeadlineExceededError as e:
            errors.append(e)

    thread = threading.Thread(target=flush, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive() and len(errors) == 1


def test_a_step_missing_a_field_is_named():
    experiment = make_experiment(_config())
    server = replay.start_server(replay.make_replay_tables(experiment))
    client = reverb.Client(replay.server_address(server))
    try:
        writer = replay.SampleWriter(client, 1)
        step = _step(experiment, 1, 0)
        del step["teacher_outputs"]
        with pytest.raises(ValueError, match=r"'teacher_samples_1' lacks the fields \['teacher"):
            writer.append(step)
        step = _step(experiment, 1, 0, b=3)
        with pytest.raises(ValueError, match=r"has shape \(3, .*'teacher_samples_1' table expects"):
            writer.append(step)
    finally:
        server.stop()


class _Record:
    """An `ExperienceWriter` that keeps every step."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def append(self, step, stop_event) -> bool:
        self.steps.append(step)
        return True

    def episode(self, *args) -> None:
        pass

    def flush_unrolls(self, stop_event) -> None:
        pass

    def flush_episodes(self, stopping) -> None:
        pass

    def close(self) -> None:
        pass


class _Fixed(VariableClient):
    """An actor's parameters (a student's one-task slice) at a fixed step, no server."""

    def __init__(self, params, step) -> None:
        self.params, self.step = params, step

    def refresh(self, timeout=None) -> None:
        pass

    def update(self) -> None:
        pass


def _teacher(experiment, dim):
    """A hand-made teacher: logits favour action 2 by 30 nats; features = the first `dim`
    observation cells (x 3)."""
    bias = jnp.zeros(experiment.network.num_actions).at[2].set(30.0)

    def apply(params, obs):
        flat = obs.reshape(obs.shape[0], -1)
        return jnp.broadcast_to(params["bias"], (obs.shape[0], bias.shape[0])), 3 * flat[:, :dim]

    name = experiment.task_names[0]
    return teachers.Teacher(name, "hand-made", {"bias": bias}, apply, "logits", 6, dim)


@pytest.mark.parametrize(
    ("distill_section", "all_twos"),
    [
        ({"behaviour": "teacher"}, True),
        ({"behaviour": "mixture", "teacher_prob": 1.0}, True),
        ({"behaviour": "student", "loss": "actor_mimic"}, False),
    ],
)
def test_the_actor_acts_as_told_and_writes_its_teachers_labels(distill_section, all_twos):
    experiment = make_experiment(_config(distill=distill_section))
    hand_made = [_teacher(experiment, 3), _teacher(experiment, 5)]
    experiment = distill.student_experiment(experiment, hand_made)
    params = experiment.network.init(jax.random.PRNGKey(0), experiment.example_obs)

    record = _Record()
    actor = Actor(
        experiment.make_vector_env(0, 16, seed=0),
        0,
        experiment.network,
        _Fixed(experiment.network.task_params(params, 0), 7),
        record,
        seed=0,
        policy=distill.actor_policy(experiment, hand_made[0]),
    )
    actor.run(max_steps=4)
    actions = np.concatenate([s["action"] for s in record.steps])
    assert (actions == 2).all() == all_twos  # near-uniform student: 64 actions not all 2
    for s in record.steps:
        np.testing.assert_array_equal(s["teacher_outputs"][:, 2], 30.0)
        flat = s["observation"].reshape(16, -1)
        if distill_section.get("loss") == "actor_mimic":  # features padded to the widest
            np.testing.assert_allclose(s["teacher_features"][:, :3], 3 * flat[:, :3])
            np.testing.assert_array_equal(s["teacher_features"][:, 3:], 0.0)
        else:
            assert s["teacher_features"].shape == (16, 1) and not s["teacher_features"].any()
        assert s["params_step"] == 7


def test_launch_refuses_replays_not_in_whole_items():
    from distral.distributed.launch import preflight

    with pytest.raises(cfg.ConfigError, match=r"distill.batch_per_task=5 is not a multiple of"):
        preflight(_config(distill={"batch_per_task": 5}), backend="local", ray_address=None)
    with pytest.raises(cfg.ConfigError, match=r"replay_per_task=8 holds 4 items of 2 samples"):
        preflight(_config(distill={"replay_per_task": 8}), backend="local", ray_address=None)


def test_a_students_service_tables_and_a_timed_out_append(served):
    """The student's run has the parameter slot of its network and per-task evaluation
    rows (`make_replay_tables`' shared tables); an append given a timeout raises when the
    rate limiter holds the actor back, instead of waiting for ever."""
    experiment, client = served
    info = client.server_info()
    leaves = jax.tree.leaves(experiment.params_template())
    slot = info[replay.VARIABLES].signature
    assert [s.shape.as_list() for s in slot[1:]] == [list(x.shape) for x in leaves]
    assert info[replay.EVALUATIONS].signature["pi_i"].shape.as_list() == [2]
    writer = replay.SampleWriter(client, 0)
    with pytest.raises(reverb.errors.DeadlineExceededError):
        for t in range(30):  # 24 items fill the limiter's slack (test above)
            writer.append(_step(experiment, 0, t), timeout_ms=200)
    writer.close()


def _dueling_q(params, h, k):
    """Task k's dueling head on torso features h [B, D], in numpy: value + advantage - mean
    advantage, each stream relu(h W1 + b1) W2 + b2."""

    def stream(p):
        hidden = np.maximum(
            h @ np.asarray(p["hidden"]["w"][k]) + np.asarray(p["hidden"]["b"][k]), 0
        )
        return hidden @ np.asarray(p["out"]["w"][k]) + np.asarray(p["out"]["b"][k])

    advantage = stream(params["advantage"])
    return stream(params["value"]) + advantage - advantage.mean(-1, keepdims=True)


def test_an_apex_run_teaches_its_q_values_and_acts_near_greedily(tmp_path):
    config = cfg.load_config(
        ROOT / "experiments" / "minatar_apex_dqn.yaml", ["env.games=[asterix,breakout]"]
    )
    run = rundir.load_run(write_launch_run(tmp_path / "apex", config))
    student = make_experiment(_config(distill={"behaviour": "teacher"}))  # breakout, asterix
    found = teachers.load_teachers([run.path], student)
    assert [t.task_name for t in found] == GAMES  # matched by name, not by run order
    obs = jax.random.bernoulli(jax.random.PRNGKey(3), 0.3, (64, *student.obs_shape))
    obs = obs.astype(jnp.float32)
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    torso, streams = (
        size(run.params["torso"]),
        size(run.params["value"]) + size(run.params["advantage"]),
    )
    for t, k in zip(found, (1, 0), strict=True):  # breakout is the run's task 1
        assert t.outputs == "q_values" and t.source == f"{run.path}, task {k}"
        q, h = t(obs)
        assert h.shape == (64, 128) and t.feature_dim == 128  # minatar_cnn's 128 units
        np.testing.assert_allclose(
            q, _dueling_q(run.params, np.asarray(h), k), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            q, run.experiment.network.apply(run.params, obs, jnp.full(64, k)), rtol=1e-5
        )
        assert t.num_params == torso + streams // 2 and t.shared_params == torso
    assert teachers.total_params(found) == torso + streams  # the run's parameters, once
    # It acts near-greedily (epsilon 0.001), as the actor's teacher and in evaluations.
    greedy = np.argmax(np.asarray(found[0](obs)[0]), -1)
    assert len(set(greedy.tolist())) > 1  # a test of argmax, not of one constant action
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(_teacher_policy(found[0])(obs, key), greedy)
    experiment = distill.student_experiment(student, found)
    params = experiment.network.init(jax.random.PRNGKey(0), experiment.example_obs)
    policy = distill.actor_policy(experiment, found[0])
    action, labels = policy(experiment.network.task_params(params, 0), obs, key)
    np.testing.assert_array_equal(action, greedy)
    np.testing.assert_allclose(labels["teacher_outputs"], found[0](obs)[0], rtol=1e-6)


@pytest.mark.parametrize("behaviour", ["teacher", "student"])
def test_an_apex_distillation_actor_acts_epsilon_greedily_and_writes_the_kl(behaviour):
    """Ape-X distillation's actor policy: the ladder's epsilon-greedy actions on the
    teacher's outputs or the student's Q-values; it writes the student's Q-values, the
    teacher's outputs and KL(softmax(teacher / tau) || softmax(Q)) at each state."""
    from distral.distributed.workers import apex_distill_policy

    config = cfg.load_config(
        ROOT / "experiments" / "minatar_apex_distill.yaml",
        ["env.games=[breakout,asterix]", "distributed.envs_per_actor=8",
         f"distill.behaviour={behaviour}", "distill.tau=20.0"],
    )  # fmt: skip
    experiment = make_experiment(config)
    teacher = _teacher(experiment, 3)  # logits favour action 2 by 30 (10 x 3 at tau 20)
    params = _random_heads(experiment.network.init(jax.random.PRNGKey(0), experiment.example_obs))
    obs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (8, *experiment.obs_shape))
    obs = np.asarray(obs, np.float32)
    policy = apex_distill_policy(experiment, teacher)
    action, extras = policy(experiment.network.task_params(params, 1), obs, jax.random.PRNGKey(2))
    q = np.asarray(experiment.network.apply(params, obs, jnp.ones(8, jnp.int32)))  # asterix's head
    np.testing.assert_allclose(extras["q_values"], q, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(extras["teacher_outputs"][:, 2], 30.0)
    p = np.exp(np.asarray(teacher.params["bias"], np.float64) / 20.0)
    p /= p.sum()
    log_s = q - q.max(-1, keepdims=True)
    log_s -= np.log(np.exp(log_s).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        extras["distill_priority"], (p * (np.log(p) - log_s)).sum(-1), rtol=1e-4
    )
    # Environments 4-7 of the ladder explore with epsilon <= 0.4 ** 5 = 0.01: greedy here.
    want = np.full(4, 2) if behaviour == "teacher" else q[4:].argmax(-1)
    np.testing.assert_array_equal(np.asarray(action)[4:], want)
    assert behaviour == "teacher" or set(q.argmax(-1)) != {2}  # the two policies differ


def _random_heads(params):
    """Random stream biases (fresh ones are 0, which would leave Q equal across actions)."""
    rng = np.random.default_rng(7)
    heads = {k: jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params[k])
             for k in ("value", "advantage")}  # fmt: skip
    return {**params, **heads}


def test_an_atari_student_writes_uint8_frame_stacks_with_their_teachers_labels(tmp_path):
    """The student's actor on Atari (real Pong ROM, the Nature CNN): its items in the
    game's teacher-sample table hold the 84x84x4 uint8 frame stacks as they are, and each
    sampled state's label is the teacher's output on that very state. The teacher is a real
    Atari a3c run directory (written in process), the server a real in-process Reverb."""
    preset = ROOT / "experiments" / "atari_4games.yaml"
    write_launch_run(
        tmp_path / "pong", cfg.load_config(preset, ["variant=a3c", "env.games=[Pong]"])
    )
    sets = [
        "algorithm=distill",
        "env.games=[Pong]",
        "unroll_length=2",
        "distributed.envs_per_actor=2",
        "distill.batch_per_task=4",
        "distill.replay_per_task=20",
        f"distill.teachers=[{tmp_path / 'pong'}]",
    ]
    experiment, found = distill.experiment_and_teachers(cfg.load_config(preset, sets))
    assert found is not None and experiment.observation_spec.dtype == np.uint8
    params = experiment.network.init(jax.random.PRNGKey(0), experiment.example_obs)
    server = replay.start_server(replay.make_replay_tables(experiment))
    client = reverb.Client(replay.server_address(server))
    try:
        items = replay.SampleWriter(client, 0)
        actor = Actor(
            experiment.make_vector_env(0, 2, seed=0),
            0,
            experiment.network,
            _Fixed(experiment.network.task_params(params, 0), 3),
            ReplayWriter(client, items),
            seed=0,
            policy=distill.actor_policy(experiment, found[0]),
        )
        # 8 items of 2 states. Pong's first frames barely change, and the two envs start
        # alike, so one item can hold two equal states: 4 learner steps sample 8 items
        # (within the rate limiter's slack), and some of them must differ.
        actor.run(max_steps=8)
        items.flush()
        sampler = replay.TeacherSampler(client, 1, items_per_update=2)
        labels = []
        for _ in range(4):
            assert sampler.wait(lambda: False)
            batch, params_step, _ = sampler.sample()
            assert batch.observation.dtype == np.uint8
            assert batch.observation.shape == (4, 84, 84, 4)
            assert batch.observation.any() and (params_step == 3).all()
            want, _ = found[0].apply(found[0].params, jnp.asarray(batch.observation))
            assert want.shape == (4, 18)
            np.testing.assert_allclose(batch.teacher_outputs, want, rtol=1e-5, atol=1e-6)
            labels.append(np.asarray(want))
        assert np.ptp(np.concatenate(labels), axis=0).max() > 0  # states the teacher tells apart
        items.close()
    finally:
        server.stop()


def test_the_minatar_presets_teachers_are_kept_in_the_repository(monkeypatch):
    """`distral distill experiments/minatar_distill.yaml` needs no teacher training: its five
    teachers are finished a3c runs kept in the repository (paths relative to its root), one
    per game in the preset's order, each well above uniform-random play."""
    monkeypatch.chdir(ROOT)
    config = cfg.load_config(ROOT / "experiments" / "minatar_distill.yaml")
    experiment, found = distill.experiment_and_teachers(config)
    assert [t.task_name for t in found] == list(config.env.games) == list(RANDOM_SCORES)
    for path, game in zip(config.distill.teachers, config.env.games, strict=True):
        run = cfg.load_run_config(path)  # the teacher's parameters were read above
        assert run.variant == "a3c" and list(run.env.games) == [game]
        summary = json.loads((Path(path) / "summary.json").read_text())
        assert summary["final_training_return"] > 2 * RANDOM_SCORES[game], (game, summary)
    assert experiment.config.torso_width == 512
