"""Tests of the actor side: vector envs, acting, and the Actor on a real Reverb server."""

import functools
import threading

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reverb
from dm_env import specs

from distral.core import acting
from distral.core.networks import make_network, make_torso
from distral.distributed import replay
from distral.distributed.actor import Actor, ReplayWriter, VariableClient
from distral.envs import two_room
from distral.envs.vector import DmEnvVector, TwoRoomVectorEnv, VectorEnv

# A broken writer or actor shows up as a sample that never returns: fail it, don't hang.
pytestmark = pytest.mark.timeout(60)

NUM_ACTIONS = 4
NUM_TASKS = 3
TASK = 2
LENGTHS = (2, 3, 5)  # episode length of each fake env


class FakeEnv(dm_env.Environment):
    """Deterministic, action-independent: obs (env, episode, t); reward 10 * env + t."""

    def __init__(self, index: int, length: int):
        self.index, self.length = index, length
        self.episode, self.t = -1, 0

    def reset(self):
        self.episode, self.t = self.episode + 1, 0
        return dm_env.restart(self._obs())

    def step(self, action):
        assert 0 <= int(action) < NUM_ACTIONS
        self.t += 1
        reward = 10.0 * self.index + self.t
        if self.t == self.length:
            return dm_env.truncation(reward, self._obs())  # discount 1: reported as 0
        return dm_env.transition(reward, self._obs())

    def _obs(self):
        return np.array([self.index, self.episode, self.t], np.float32)

    def observation_spec(self):
        return specs.Array((3,), np.float32)

    def action_spec(self):
        return specs.DiscreteArray(NUM_ACTIONS, dtype=np.int32)


def reference_stream(num_steps):
    """The obs s_t, r_t, d_t and finished episodes of the fake envs, in plain Python."""
    obs, rewards, discounts, episodes = [], [], [], []
    state = [[0, 0] for _ in LENGTHS]  # (episode, t) per env
    returns = [0.0] * len(LENGTHS)
    for _ in range(num_steps):
        obs.append([[b, e, t] for b, (e, t) in enumerate(state)])
        r_row, d_row = [], []
        for b, length in enumerate(LENGTHS):
            e, t = state[b]
            r = 10.0 * b + t + 1
            returns[b] += r
            r_row.append(r)
            if t + 1 == length:
                d_row.append(0.0)
                episodes.append((TASK, returns[b], length))
                returns[b], state[b] = 0.0, [e + 1, 0]
            else:
                d_row.append(1.0)
                state[b] = [e, t + 1]
        rewards.append(r_row)
        discounts.append(d_row)
    return np.array(obs, np.float32), np.array(rewards), np.array(discounts), episodes


@pytest.fixture
def network():
    return make_network(
        "2col",
        num_tasks=NUM_TASKS,
        num_actions=NUM_ACTIONS,
        torso=make_torso("mlp", hidden_sizes=(8,)),
    )


def init_params(network, seed=0):
    return network.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3)))


@pytest.fixture
def server_and_client():
    servers = []

    def make(unroll_length, max_queue_size):
        sig = replay.unroll_signature(
            specs.Array((3,), np.float32), NUM_ACTIONS, unroll_length, len(LENGTHS)
        )
        server = replay.start_server(replay.make_tables(sig, max_queue_size=max_queue_size))
        servers.append(server)
        return reverb.Client(replay.server_address(server))

    yield make
    for server in servers:
        server.stop()


def sample_items(client, n):
    samples = client.sample(
        replay.TRAJECTORIES, num_samples=n, emit_timesteps=False, unpack_as_table_signature=True
    )
    return [s.data for s in samples]


# VECTOR ENVIRONMENTS


def test_dm_env_vector_auto_resets():
    env = DmEnvVector([FakeEnv(b, n) for b, n in enumerate(LENGTHS)])
    assert isinstance(env, VectorEnv) and env.num_envs == 3 and env.num_actions == NUM_ACTIONS
    ref_obs, ref_r, ref_d, _ = reference_stream(7)
    obs = env.reset(0)
    for t in range(7):
        np.testing.assert_array_equal(obs, ref_obs[t])
        obs, reward, discount, done = env.step(np.zeros(3, np.int32))
        assert reward.dtype == np.float32 and discount.dtype == np.float32 and done.dtype == bool
        np.testing.assert_array_equal(reward, ref_r[t])
        np.testing.assert_array_equal(discount, ref_d[t])
        np.testing.assert_array_equal(done, ref_d[t] == 0)


def test_two_room_vector_env_matches_step_auto_reset():
    params = two_room.make_params("default", num_tasks=2, max_steps=6)
    B, task = 4, 1
    env = TwoRoomVectorEnv(params, task, num_envs=B, seed=3)
    assert env.observation_spec().shape == (two_room.observation_size(params),)
    task_ids = jnp.full((B,), task)
    key, sub = jax.random.split(jax.random.PRNGKey(3))
    state, ref_obs = jax.vmap(two_room.reset, (0, None, 0))(
        jax.random.split(sub, B), params, task_ids
    )
    obs = env.reset(3)
    np.testing.assert_array_equal(obs, ref_obs)
    step = jax.vmap(two_room.step_auto_reset, (0, None, 0, 0, 0))
    rng = np.random.default_rng(0)
    num_done = 0
    for _ in range(20):
        actions = rng.integers(0, 4, B).astype(np.int32)
        key, sub = jax.random.split(key)
        state, ref_obs, ref_r, ref_d, ref_done = step(
            jax.random.split(sub, B), params, state, jnp.asarray(actions), task_ids
        )
        obs, reward, discount, done = env.step(actions)
        np.testing.assert_array_equal(obs, ref_obs)
        np.testing.assert_array_equal(reward, ref_r)
        np.testing.assert_array_equal(discount, ref_d)
        np.testing.assert_array_equal(done, ref_done)
        # The env's rules: rewards, discount 0 exactly at episode ends, a fresh first obs.
        assert np.all(np.isclose(reward[:, None], [-0.1, -0.6, 0.9]).any(-1))
        np.testing.assert_array_equal(discount == 0, done)
        prev_action = obs[:, -6:-1].argmax(-1)
        assert np.all(prev_action[done] == two_room.NO_ACTION)
        num_done += int(done.sum())
    assert num_done >= B * 2  # max_steps=6 forces resets within 20 steps


# ACTING


def test_select_action_samples_the_task_and_distilled_policies(network):
    params = init_params(network)
    obs = jnp.arange(12.0).reshape(4, 3)
    task_id = jnp.array([0, 2, 1, 2])
    out = network.apply(params, obs, task_id)
    key = jax.random.PRNGKey(1)
    action, logits = acting.select_action(params, obs, task_id, key, network=network)
    assert action.shape == (4,) and action.dtype == jnp.int32
    np.testing.assert_allclose(logits, out.logits, rtol=1e-6)
    np.testing.assert_array_equal(action, jax.random.categorical(key, out.logits))
    action0, logits0 = acting.select_action_pi0(params, obs, task_id, key, network=network)
    np.testing.assert_allclose(logits0, out.distilled_logits, rtol=1e-6)
    assert action0.dtype == jnp.int32
    # A scalar task id (an actor's batch): only that column runs, same logits and draws.
    for i in range(3):
        mixed = acting.select_action(params, obs, jnp.full(4, i), key, network=network)
        single = acting.select_action(params, obs, jnp.int32(i), key, network=network)
        np.testing.assert_allclose(single[1], mixed[1], rtol=1e-6)
        np.testing.assert_array_equal(single[0], mixed[0])
        single0 = acting.select_action_pi0(params, obs, jnp.int32(i), key, network=network)
        np.testing.assert_allclose(single0[1], out.distilled_logits, rtol=1e-6)
    # Sampling follows the logits: near one-hot policies pick their actions, pi_0 (h peaked
    # on 1) its own and pi_i (h + f_i, f_i peaked three times as high on 3) the task's.
    peaked = jax.tree.map(lambda x: x, params)
    peaked["distilled"]["policy"]["b"] = peaked["distilled"]["policy"]["b"].at[1].set(1e4)
    peaked["tasks"]["policy"]["b"] = peaked["tasks"]["policy"]["b"].at[:, 3].set(3e4)
    for task in (task_id, jnp.int32(2)):
        action, _ = acting.select_action(peaked, obs, task, key, network=network)
        np.testing.assert_array_equal(action, 3)
        action0, _ = acting.select_action_pi0(peaked, obs, task, key, network=network)
        np.testing.assert_array_equal(action0, 1)


# ACTOR


def make_actor(network, client, unroll_length, refresh_every, writer=None, refresh_lag=1):
    env = DmEnvVector([FakeEnv(b, n) for b, n in enumerate(LENGTHS)])
    variables = VariableClient(
        client,
        init_params(network),
        refresh_every=refresh_every,
        refresh_lag=refresh_lag,
        select=functools.partial(network.task_params, task_id=TASK),
    )
    return Actor(
        env,
        TASK,
        network,
        variables,
        ReplayWriter(client, replay.UnrollWriter(client, unroll_length))
        if writer is None
        else writer,
        seed=0,
        first_fetch_timeout=30,
    )


class ListWriter:
    """An `ExperienceWriter` that keeps everything in lists (no Reverb)."""

    def __init__(self):
        self.steps, self.episodes, self.flushes = [], [], 0

    def append(self, step, stop_event):
        self.steps.append(step)
        return True

    def episode(self, task_id, episode_return, length, params_step):
        self.episodes.append((task_id, episode_return, length, params_step))

    def flush_unrolls(self, stop_event):
        self.flushes += 1

    def flush_episodes(self, stopping):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("first_run", [None, 5])
def test_actor_writes_the_env_stream_as_overlapping_unrolls(network, server_and_client, first_run):
    """One run, or two (the second continues the first's episodes and unrolls)."""
    T, num_items = 4, 3
    client = server_and_client(T, max_queue_size=100)
    params = init_params(network, seed=1)
    replay.publish_params(client, params, 7)
    actor = make_actor(network, client, T, refresh_every=100)
    num_steps = num_items * T + 1
    if first_run:
        actor.run(max_steps=first_run)
    actor.run(max_steps=num_steps - (first_run or 0))
    assert replay.table_size(client, replay.TRAJECTORIES) == num_items
    items = sample_items(client, num_items)
    ref_obs, ref_r, ref_d, ref_episodes = reference_stream(num_steps)
    for k, item in enumerate(items):
        steps = slice(k * T, k * T + T + 1)  # consecutive unrolls overlap by one step
        np.testing.assert_array_equal(item["observation"], ref_obs[steps])
        np.testing.assert_array_equal(item["reward"], ref_r[steps])
        np.testing.assert_array_equal(item["discount"], ref_d[steps])
        np.testing.assert_array_equal(item["task_id"], TASK)
        np.testing.assert_array_equal(item["params_step"], 7)
        # Behaviour logits are pi_i's at s_t, for the task of the actor.
        out = network.apply(params, jnp.asarray(item["observation"]), jnp.full((T + 1, 3), TASK))
        np.testing.assert_allclose(item["behaviour_logits"], out.logits, rtol=1e-5, atol=1e-6)
        assert np.all((item["action"] >= 0) & (item["action"] < NUM_ACTIONS))
    episodes = replay.drain_episodes(client)
    assert [(t, r, n) for t, r, n, _ in episodes] == ref_episodes
    assert all(p == 7 for *_, p in episodes)
    assert actor.num_episodes == len(ref_episodes) > 0
    actor.close()


def test_actor_hands_every_step_to_its_writer_and_nothing_to_reverb(network, server_and_client):
    """Another writer (benchmarks/distributed.py drops everything): the same acting and
    stepping, every step and episode reach that writer, and nothing is written to Reverb."""
    client = server_and_client(4, max_queue_size=100)
    params = init_params(network, seed=2)
    replay.publish_params(client, params, 3)
    writer = ListWriter()
    actor = make_actor(network, client, 4, refresh_every=100, writer=writer)
    actor.run(max_steps=13)
    assert actor.num_steps == 13 and actor.params_step == 3 and writer.flushes == 1
    assert replay.table_size(client, replay.TRAJECTORIES) == 0
    assert replay.drain_episodes(client) == []
    ref_obs, ref_r, ref_d, ref_episodes = reference_stream(13)
    for name, ref in (("observation", ref_obs), ("reward", ref_r), ("discount", ref_d)):
        np.testing.assert_array_equal([s[name] for s in writer.steps], ref)
    assert {int(s["params_step"]) for s in writer.steps} == {3}
    assert {int(s["task_id"]) for s in writer.steps} == {TASK}
    obs = jnp.asarray(ref_obs.reshape(-1, 3))
    logits = network.apply(params, obs, jnp.full(obs.shape[0], TASK)).logits
    np.testing.assert_allclose(
        np.concatenate([s["behaviour_logits"] for s in writer.steps]), logits, rtol=1e-5, atol=1e-6
    )
    assert [(t, r, n) for t, r, n, _ in writer.episodes] == ref_episodes
    assert actor.num_episodes == len(ref_episodes) > 0


def test_actor_refreshes_params_and_blocks_on_a_full_queue(network, server_and_client):
    T = 2
    client = server_and_client(T, max_queue_size=1)
    stop = threading.Event()
    actor = make_actor(network, client, T, refresh_every=2)
    errors = []

    def run():
        try:
            actor.run(stop_event=stop)
        except Exception as e:  # surfaced in the main thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()  # blocks on the first fetch until something is published
    try:
        replay.publish_params(client, init_params(network, 0), 0)
        first = sample_items(client, 2)
        steps_before = actor.num_steps
        replay.publish_params(client, init_params(network, 1), 5)
        later = sample_items(client, 6)  # the refresh after next sees step 5 (stale fetch)
        assert steps_before < 6 * T + 1  # a full queue of size 1 held the actor back
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and not errors
    assert first[0]["params_step"][0] == 0
    steps = np.concatenate([item["params_step"] for item in first + later])
    assert np.all(np.diff(steps) >= 0) and steps[-1] == 5  # the new params reached the actor
    actor.close()


def test_actor_takes_parameters_only_refresh_lag_learner_steps_newer(network, server_and_client):
    """refresh_lag=8: published steps 5 and 7 are ignored after step 0, step 8 is taken,
    then 12 is ignored and 16 taken. (A fetch may lag one publication: 2 actor steps.)"""
    client = server_and_client(2, max_queue_size=1000)
    actor = make_actor(network, client, 2, refresh_every=1, refresh_lag=8)
    held = []
    for step in (0, 5, 7, 8, 12, 16):
        replay.publish_params(client, init_params(network, step), step)
        actor.run(max_steps=3)
        held.append(actor.params_step)
    assert held == [0, 0, 0, 8, 8, 16], held
    # The items written carry the step that acted: only 0, 8 and 16.
    steps = np.concatenate([item["params_step"] for item in sample_items(client, 8)])
    assert set(steps.tolist()) == {0, 8, 16}
    # A learner resumed from an older checkpoint publishes a lower step: taken at once
    # (the lag then counts from it: 11 is not new enough).
    for step in (10, 11):
        replay.publish_params(client, init_params(network, step), step)
        actor.run(max_steps=3)
        held.append(actor.params_step)
    assert held[-2:] == [10, 10], held
    actor.close()
