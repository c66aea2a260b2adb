"""Tests of distral.replay on a real in-process Reverb server (no mocks)."""

import socket
import threading

import jax
import numpy as np
import pytest
import reverb
from dm_env import specs

from distral.config import DistributedConfig, EnvConfig, TrainConfig
from distral.distributed import replay
from distral.experiment import make_experiment

# A broken writer or actor shows up as a sample that never returns: fail it, don't hang.
pytestmark = pytest.mark.timeout(60)

T, B, D, A = 3, 2, 5, 4


@pytest.fixture
def make_server():
    """Starts servers with the three tables; every one is stopped after the test."""
    servers = []

    def make(max_queue_size=100, num_envs=B, variables_signature=None):
        sig = replay.unroll_signature(specs.Array((D,), np.float32), A, T, num_envs)
        tables = replay.make_tables(
            sig, max_queue_size=max_queue_size, variables_signature=variables_signature
        )
        server = replay.start_server(tables)
        servers.append(server)
        return server, reverb.Client(replay.server_address(server)), sig

    yield make
    for server in servers:
        server.stop()


def known_step(i, task=3, num_envs=B, params_step=None):
    """Step i of an actor of `task`: every value encodes (task, i, env)."""
    env = np.arange(num_envs)
    code = 1000 * task + 10 * i + env  # [B]
    return {
        "observation": (code[:, None] + np.arange(D) / 10).astype(np.float32),
        "action": (code % A).astype(np.int32),
        "reward": code.astype(np.float32) / 7,
        "discount": np.where(env == i % num_envs, 0.0, 1.0).astype(np.float32),
        "behaviour_logits": (code[:, None] - np.arange(A)).astype(np.float32),
        "task_id": np.int32(task),
        "params_step": np.int64(100 + i if params_step is None else params_step),
    }


def sample_all(client, n):
    return [
        s.data
        for s in client.sample(
            replay.TRAJECTORIES, num_samples=n, emit_timesteps=False, unpack_as_table_signature=True
        )
    ]


def test_signature_shapes():
    sig = replay.unroll_signature(specs.Array((7, 2), np.uint8), 6, unroll_length=20, num_envs=8)
    assert sig["observation"].shape == (21, 8, 7, 2) and sig["observation"].dtype == "uint8"
    assert sig["behaviour_logits"].shape == (21, 8, 6)
    assert sig["task_id"].shape == (21,) and sig["params_step"].dtype == "int64"
    assert sig["task_id"].dtype == sig["action"].dtype == "int32"
    for name in ("behaviour_logits", "reward", "discount"):
        assert sig[name].dtype == "float32", name
    one = replay.unroll_signature(specs.Array((3,), np.float32), 1, unroll_length=1, num_envs=1)
    assert one["behaviour_logits"].shape == (2, 1, 1)  # one step, env and action are valid
    for sizes in ((0, 8, 6), (20, 0, 6), (20, 8, 0)):
        length, envs, actions = sizes
        with pytest.raises(
            ValueError,
            match=rf"^need unroll_length, num_envs, num_actions >= 1, got {length}, {envs}, "
            rf"{actions}$",
        ):
            replay.unroll_signature(specs.Array((3,), np.float32), actions, length, envs)


def test_the_queues_tables_one_task_by_default_and_a_queue_of_one():
    """`make_tables` with no task count sizes evaluations for one task; the step slot holds
    one int64 scalar; `start_server` listens on the port it is given."""
    sig = replay.unroll_signature(specs.Array((3,), np.float32), 2, unroll_length=4, num_envs=2)
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    server = replay.start_server(replay.make_tables(sig, max_queue_size=1), port=port)
    try:
        assert server.port == port and replay.server_address(server) == f"localhost:{port}"
        info = reverb.Client(replay.server_address(server)).server_info()
        assert info[replay.TRAJECTORIES].max_size == 1
        (step,) = info[replay.VARIABLES_STEP].signature
        assert (step.shape.as_list(), step.dtype.name) == ([], "int64")
        evaluation = info[replay.EVALUATIONS].signature
        shapes = {k: (v.shape.as_list(), v.dtype.name) for k, v in evaluation.items()}
        assert shapes == {
            "learner_step": ([], "int64"),
            "pi_i": ([1], "float64"),
            "pi_0": ([1], "float64"),
        }
    finally:
        server.stop()
    with pytest.raises(ValueError, match=r"^max_queue_size must be >= 1, got 0$"):
        replay.make_tables(sig, max_queue_size=0)


def test_writer_makes_overlapping_unrolls(make_server):
    _, client, sig = make_server()
    writer = replay.UnrollWriter(client, T)
    created = [writer.append(known_step(i)) for i in range(2 * T + 1)]
    writer.flush()
    assert writer.num_items == 2  # what an actor watches to send its episodes along
    # Items after T+1 appends, then every T: steps 0..T and T..2T.
    assert created == [False] * T + [True] + [False] * (T - 1) + [True]
    assert replay.table_size(client, replay.TRAJECTORIES) == 2
    first, second = sample_all(client, 2)  # FIFO: written order
    for item in (first, second):
        for name, spec in sig.items():
            assert item[name].shape == tuple(spec.shape), name
            assert item[name].dtype == spec.dtype.as_numpy_dtype, name
    for name in sig:
        np.testing.assert_array_equal(first[name][-1], second[name][0])  # overlap by one
        for t in range(T + 1):
            np.testing.assert_array_equal(first[name][t], known_step(t)[name])
            np.testing.assert_array_equal(second[name][t], known_step(T + t)[name])
    np.testing.assert_array_equal(second["task_id"], np.full(T + 1, 3))
    np.testing.assert_array_equal(second["params_step"], 100 + np.arange(T, 2 * T + 1))
    writer.close()


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("observation", np.zeros((B, D + 1), np.float32), "'observation' has shape"),
        ("observation", np.zeros((B + 1, D), np.float32), "'observation' has shape"),
        ("action", np.zeros(B, np.float32), "'action' has shape .* dtype float32"),
        ("task_id", np.zeros(B, np.int32), "'task_id' has shape"),
    ],
)
def test_wrong_append_is_rejected(make_server, field, value, match):
    _, client, _ = make_server()
    writer = replay.UnrollWriter(client, T)
    writer.append(known_step(0))
    step = known_step(1)
    step[field] = value
    with pytest.raises(ValueError, match=match):
        writer.append(step)
    missing = known_step(1)
    del missing["reward"]
    with pytest.raises(ValueError, match="exactly the fields"):
        writer.append(missing)
    writer.close()


def test_writer_checks_unroll_length_and_signature(make_server):
    _, client, _ = make_server()
    with pytest.raises(
        ValueError, match=r"^unroll_length=4 needs items of 5 steps; the signature has \[4\]$"
    ):
        replay.UnrollWriter(client, T + 1)
    bare = replay.start_server([reverb.Table.queue(replay.TRAJECTORIES, max_size=2)])
    try:
        with pytest.raises(ValueError, match="table 'trajectories' has no signature; pass"):
            replay.UnrollWriter(reverb.Client(replay.server_address(bare)), T)
    finally:
        bare.stop()


def test_writer_casts_same_kind_dtypes(make_server):
    """float64 observations (what numpy gives by default) are cast to the table's float32."""
    _, client, _ = make_server()
    writer = replay.UnrollWriter(client, T)
    for i in range(T + 1):
        step = known_step(i)
        step["observation"] = step["observation"].astype(np.float64)
        writer.append(step)
    writer.flush()
    (item,) = sample_all(client, 1)
    assert item["observation"].dtype == np.float32
    writer.close()


def nested_params(scale):
    return {
        "distilled": {"policy": {"w": scale * np.arange(6.0).reshape(2, 3), "b": np.ones(3)}},
        "tasks": (np.full((2, 2), scale, np.float32), {"z": np.array(7 * scale, np.int32)}),
    }


def test_publish_and_fetch_round_trip(make_server):
    template = nested_params(0)
    _, client, _ = make_server(variables_signature=replay.variables_signature(template))
    source = replay.VariableSource(client, template)
    with pytest.raises(
        TimeoutError, match=r"^no parameters published in 'variables' after 0.05 s$"
    ):
        source.fetch(timeout=0.05)
    for step, scale in [(5, 1), (9, 3)]:
        replay.publish_params(client, nested_params(scale), step)
        params, got_step = source.fetch(timeout=5)
        assert got_step == step
        assert replay.table_size(client, replay.VARIABLES) == 1  # the second replaced the first
        expected = nested_params(scale)
        np.testing.assert_array_equal(
            params["distilled"]["policy"]["w"], expected["distilled"]["policy"]["w"]
        )
        np.testing.assert_array_equal(
            params["distilled"]["policy"]["b"], expected["distilled"]["policy"]["b"]
        )
        np.testing.assert_array_equal(params["tasks"][0], expected["tasks"][0])
        np.testing.assert_array_equal(params["tasks"][1]["z"], expected["tasks"][1]["z"])
        assert params["tasks"][0].dtype == np.float32 and params["tasks"][1]["z"].dtype == np.int32
    with pytest.raises(
        ValueError,
        match=r"do not match the template: leaf shapes "
        r"\[\(3,\), \(2, 3\), \(2, 2\), \(\)\] vs \[\(3,\)\]",
    ):
        replay.VariableSource(client, {"w": np.zeros(3)}).fetch(timeout=5)
    with pytest.raises(ValueError, match=r"^min_step needs allow_stale=True \(the stale-by-one"):
        replay.VariableSource(client, {"w": np.zeros(3)}).fetch(timeout=5, min_step=2)


def test_fetch_sees_every_publication_and_a_stale_fetch_lags_by_at_most_one(make_server):
    template = nested_params(0)
    _, client, _ = make_server(variables_signature=replay.variables_signature(template))
    source = replay.VariableSource(client, template)
    stale = replay.VariableSource(client, template)
    for step in range(40):
        replay.publish_params(client, nested_params(step), step)
        assert source.fetch(timeout=5)[1] == step  # read after the publication: never stale
        first = stale.fetch(timeout=5, allow_stale=True)[1]
        assert first in (step - 1, step) if step else first == 0
        assert stale.fetch(timeout=5, allow_stale=True)[1] == step  # one fetch later: current
        params, _ = stale.fetch(timeout=5, allow_stale=True)  # nothing new: not re-read
        assert stale.fetch(timeout=5, allow_stale=True)[0] is params
    assert replay.table_size(client, replay.VARIABLES_STEP) == 1


def test_sample_batch_columns_are_the_written_unrolls(make_server):
    _, client, _ = make_server()
    tasks = (0, 5)
    for task in tasks:  # two actors' worth of data: 2 unrolls each
        writer = replay.UnrollWriter(client, T)
        for i in range(2 * T + 1):
            writer.append(known_step(i, task=task, params_step=10 * task + i // T))
        writer.flush()
        writer.close()
    assert replay.table_size(client, replay.TRAJECTORIES) == 4
    sampled = replay.sample_batch(client, 4)
    batch = sampled.batch
    assert batch.observation.shape == (T + 1, 4 * B, D)
    assert batch.behaviour_logits.shape == (T + 1, 4 * B, A)
    assert batch.task_id.shape == (4 * B,) and batch.task_id.dtype == np.int32
    assert replay.table_size(client, replay.TRAJECTORIES) == 0
    seen = []
    for k in range(4):
        cols = slice(k * B, (k + 1) * B)
        task = int(batch.task_id[k * B])
        np.testing.assert_array_equal(batch.task_id[cols], task)
        start = int(np.rint(batch.observation[0, k * B, 0])) % 1000 // 10  # first step written
        seen.append((task, start))
        for name in ("observation", "action", "reward", "discount", "behaviour_logits"):
            expected = np.stack([known_step(start + t, task=task)[name] for t in range(T + 1)])
            np.testing.assert_array_equal(getattr(batch, name)[:, cols], expected)
        assert sampled.params_step[k] == 10 * task + start // T  # oldest params in the unroll
    assert sorted(seen) == [(0, 0), (0, T), (5, 0), (5, T)]


def test_queue_samples_each_item_once_and_blocks_writers_when_full(make_server):
    _, client, _ = make_server(max_queue_size=2)
    writer = replay.UnrollWriter(client, T, max_in_flight_items=0)
    steps = iter(range(100))
    for _ in range(2):  # two items fill the queue
        while not writer.append(known_step(next(steps)), timeout_ms=2000):
            pass
    with pytest.raises(reverb.errors.DeadlineExceededError):
        while not writer.append(known_step(next(steps)), timeout_ms=300):
            pass
    assert replay.table_size(client, replay.TRAJECTORIES) == 2
    first = sample_all(client, 1)[0]  # frees a slot: the blocked item goes in
    writer.wait(timeout_ms=5000)
    rest = sample_all(client, 2)
    assert replay.table_size(client, replay.TRAJECTORIES) == 0
    starts = [int(item["params_step"][0]) - 100 for item in (first, *rest)]
    assert starts == [0, T, 2 * T]  # FIFO, and every item exactly once
    writer.close()


def test_a_writer_runs_max_in_flight_items_ahead_of_a_full_queue(make_server):
    """By default (`max_in_flight_items=1`) the item after a full queue's is left pending and
    the actor goes on; only the next one blocks it."""
    _, client, _ = make_server(max_queue_size=2)
    writer = replay.UnrollWriter(client, T)
    made = [writer.append(known_step(i), timeout_ms=2000) for i in range(3 * T + 1)]
    assert sum(made) == 3  # two items in the queue, the third pending: no wait raised
    assert replay.table_size(client, replay.TRAJECTORIES) == 2
    with pytest.raises(reverb.errors.DeadlineExceededError):
        for i in range(3 * T + 1, 4 * T + 1):  # a fourth: two pending, one too many
            writer.append(known_step(i), timeout_ms=300)
    sample_all(client, 2)  # room for both
    writer.flush(timeout_ms=5000)
    assert replay.table_size(client, replay.TRAJECTORIES) == 2
    writer.close()


def test_episodes_are_drained_without_blocking(make_server):
    _, client, _ = make_server()
    assert replay.drain_episodes(client) == []
    writer = replay.EpisodeWriter(client)
    writer.write(2, -1.5, 7, 11)
    writer.write(0, 0.25, 3, 12)
    writer.flush()
    assert replay.drain_episodes(client) == [(2, -1.5, 7, 11), (0, 0.25, 3, 12)]
    assert replay.drain_episodes(client) == []
    writer.close()


def test_flushes_give_up_after_their_timeout_when_the_server_is_gone():
    """An actor stopping flushes its episodes and unrolls with a timeout: a server that
    went away first must cost it the timeout, not hang it (without one, a flush never
    returns)."""
    sig = replay.unroll_signature(specs.Array((D,), np.float32), A, T, B)
    server = replay.start_server(replay.make_tables(sig, max_queue_size=4, num_tasks=2))
    client = reverb.Client(replay.server_address(server))
    writer = replay.EpisodeWriter(client)
    writer.write(0, 1.0, 3, 4)
    writer.flush(timeout_ms=5000)
    assert replay.drain_episodes(client) == [(0, 1.0, 3, 4)]
    unrolls = replay.UnrollWriter(client, T)
    server.stop()
    writer.write(1, 2.0, 3, 5)
    for i in range(T + 1):  # one unroll, created but not sent
        unrolls.append(known_step(i), timeout_ms=300)
    errors = []

    def flush():
        for w in (writer, unrolls):
            try:
                w.flush(timeout_ms=300)
            except reverb.errors.DeadlineExceededError as e:
                errors.append(e)

    thread = threading.Thread(target=flush, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive() and len(errors) == 2


def test_evaluations_are_logged_and_drained_in_order():
    sig = replay.unroll_signature(specs.Array((D,), np.float32), A, T, B)
    tables = replay.make_tables(sig, max_queue_size=4, num_tasks=3)
    server = replay.start_server(tables)
    client = reverb.Client(replay.server_address(server))
    try:
        assert replay.drain_evaluations(client) == []
        replay.write_evaluation(
            client, 20, np.array([0.5, -1.0, 2.25]), np.array([0.0, np.nan, 1.0])
        )
        replay.write_evaluation(client, 40, np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
        (s1, i1, z1), (s2, i2, z2) = replay.drain_evaluations(client)
        assert (s1, s2) == (20, 40)
        np.testing.assert_array_equal(i1, [0.5, -1.0, 2.25])
        np.testing.assert_array_equal(z1, [0.0, np.nan, 1.0])  # NaN (no pi_0) survives
        np.testing.assert_array_equal(i2, [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(z2, [4.0, 5.0, 6.0])
        assert replay.drain_evaluations(client) == []
        f32 = np.array([0.1, 0.2, 0.3], np.float32)  # what a jitted evaluation returns
        replay.write_evaluation(client, 60, f32, f32)
        ((s3, i3, z3),) = replay.drain_evaluations(client)
        assert s3 == 60 and i3.dtype == z3.dtype == np.float64
        np.testing.assert_array_equal(i3, f32.astype(np.float64))
        with pytest.raises(Exception, match=r"(?i)shape|signature"):
            replay.write_evaluation(client, 60, np.zeros(2), np.zeros(2))  # 2 tasks, not 3
    finally:
        server.stop()


def test_a_configurations_tables_carry_its_shapes_and_queue_size():
    """`make_replay_tables`: the queue's size and item shapes, the parameter slot's leaves
    and the evaluations' task count all come from the configuration."""
    config = TrainConfig(
        variant="kl_ent_2col",
        unroll_length=4,
        hidden_sizes=(8,),
        env=EnvConfig(layout="G..\n.#G", num_tasks=2),
        distributed=DistributedConfig(envs_per_actor=3, queue_size=5),
    )
    experiment = make_experiment(config)
    server = replay.start_server(replay.make_replay_tables(experiment))
    client = reverb.Client(replay.server_address(server))
    try:
        info = client.server_info()
        assert info[replay.TRAJECTORIES].max_size == 5
        shapes = {k: tuple(v.shape) for k, v in info[replay.TRAJECTORIES].signature.items()}
        D = experiment.observation_spec.shape[0]
        assert shapes["observation"] == (5, 3, D) and shapes["behaviour_logits"] == (5, 3, 4)
        params = experiment.network.init(jax.random.PRNGKey(1), experiment.example_obs)
        replay.publish_params(client, params, 7)
        got, step = replay.VariableSource(client, experiment.params_template()).fetch(timeout=10)
        assert step == 7
        jax.tree.map(np.testing.assert_array_equal, got, jax.device_get(params))
        leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
        with pytest.raises(Exception, match=r"(?i)shape|signature"):  # the step is a scalar
            client.insert([np.array([7, 8]), *leaves], priorities={replay.VARIABLES: 1.0})
        with pytest.raises(Exception, match=r"(?i)shape|signature"):  # so is every leaf
            wrong = [*leaves[:-1], np.zeros((*leaves[-1].shape, 2), leaves[-1].dtype)]
            client.insert([np.int64(8), *wrong], priorities={replay.VARIABLES: 1.0})
        replay.write_evaluation(client, 1, np.zeros(2), np.zeros(2))  # two tasks
        with pytest.raises(Exception, match=r"(?i)shape|signature"):
            replay.write_evaluation(client, 2, np.zeros(3), np.zeros(3))
    finally:
        server.stop()


def test_wait_for_items_returns_when_the_items_are_there_or_a_stop_is_asked(make_server):
    _, client, _ = make_server()
    polls = []

    def stop_on_third_poll():
        polls.append(1)
        return len(polls) >= 3

    assert not replay.wait_for_items(client, replay.EPISODES, 1, stop_on_third_poll)
    assert len(polls) == 3
    writer = replay.EpisodeWriter(client)
    writer.write(0, 1.0, 2, 3)
    writer.write(1, 1.0, 2, 3)
    writer.flush(timeout_ms=5000)
    assert replay.wait_for_items(client, replay.EPISODES, 2, lambda: True)  # already there
    assert not replay.wait_for_items(client, replay.EPISODES, 3, lambda: True)
    writer.close()


def test_the_unroll_sampler_waits_for_a_batch_and_counts_steps_per_task(make_server):
    """`UnrollSampler`: `wait` is True once a step's unrolls are queued, False on a stop;
    `sample` counts env steps per task for every task, those absent from the batch too."""
    _, client, _ = make_server()
    sampler = replay.UnrollSampler(client, num_tasks=3, batch_size=2)
    assert sampler.wait(lambda: True) is False  # empty queue, stop asked
    writer = replay.UnrollWriter(client, T)
    for i in range(2 * T + 1):  # 2 unrolls of task 0
        writer.append(known_step(i, task=0))
    writer.flush()
    assert sampler.wait(lambda: False) is True
    batch, _, steps = sampler.sample()
    np.testing.assert_array_equal(batch.task_id, [0] * 2 * B)
    np.testing.assert_array_equal(steps, [2 * T * B, 0, 0])  # 2 unrolls x T steps x B envs
    writer.close()
