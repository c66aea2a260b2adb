"""Ape-X's prioritised replay (distral/distributed/prioritized.py) on real Reverb servers."""

from __future__ import annotations

from pathlib import Path

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reverb
from dm_env import specs

from distral import config as cfg
from distral.core import apex
from distral.core.networks import make_torso
from distral.distributed import prioritized, replay
from distral.distributed.actor import Actor, ReplayWriter, VariableClient
from distral.envs.vector import DmEnvVector
from distral.experiment import make_experiment

ROOT = Path(__file__).resolve().parents[1]
OBS_SPEC = specs.Array((2,), np.float32)


# ----------------------------------------------------------------------------------------
# n-step transitions
# ----------------------------------------------------------------------------------------


def _reference_transitions(steps, n, gamma, b):
    """Env b's transitions by a plain loop: entry t -> (t, R, G, next index, priority)."""
    out = []
    for t in range(len(steps) - n):
        r_sum, carried = 0.0, 1.0
        for k in range(n):
            r_sum += carried * steps[t + k]["reward"][b]
            carried *= gamma * steps[t + k]["discount"][b]
        q_next = steps[t + n]["q"][b]
        q_taken = steps[t]["q"][b][steps[t]["action"][b]]
        out.append((t, r_sum, carried, t + n, abs(r_sum + carried * max(q_next) - q_taken)))
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_n_step_accumulator_against_a_python_loop_across_episode_ends(n):
    rng = np.random.default_rng(n)
    gamma, num_envs, num_steps = 0.9, 2, 12
    steps = []
    for t in range(num_steps):
        discount = np.ones(num_envs, np.float32)
        if t in (2, 7):  # env 0's episodes end after steps 2 and 7, env 1's after 5
            discount[0] = 0.0
        if t == 5:
            discount[1] = 0.0
        steps.append({
            "observation": rng.normal(size=(num_envs, 2)).astype(np.float32),
            "action": rng.integers(0, 3, size=num_envs),
            "reward": rng.normal(size=num_envs).astype(np.float32),
            "discount": discount,
            "q": rng.normal(size=(num_envs, 3)).astype(np.float32),
            "params_step": np.full(num_envs, 10 + t, np.int64),
        })  # fmt: skip
    acc = prioritized.NStepAccumulator(n, gamma)
    emitted = []
    for s in steps:
        out = acc.append(
            s["observation"], s["action"], s["reward"], s["discount"], s["q"], s["params_step"]
        )
        emitted.append(out)
    assert all(e is None for e in emitted[:n])
    for b in range(num_envs):
        for t, r_sum, carried, nxt, priority in _reference_transitions(steps, n, gamma, b):
            got = emitted[nxt]
            np.testing.assert_array_equal(got.observation[b], steps[t]["observation"][b])
            np.testing.assert_array_equal(got.next_observation[b], steps[nxt]["observation"][b])
            assert got.action[b] == steps[t]["action"][b]
            assert got.params_step[b] == 10 + t
            assert got.reward[b] == pytest.approx(r_sum, rel=1e-5)
            assert got.discount[b] == pytest.approx(carried, rel=1e-6)
            assert got.priority[b] == pytest.approx(priority, rel=1e-5)
    # Env 0's episode ended at step 2: the transition that begins there has G = 0.
    assert emitted[2 + n].discount[0] == 0.0


def test_n_step_accumulator_hand_numbers():
    acc = prioritized.NStepAccumulator(2, 0.5)
    obs = np.zeros((1, 2), np.float32)
    q = np.array([[1.0, 4.0]], np.float32)
    assert (
        acc.append(obs, np.array([1]), np.array([1.0]), np.array([1.0]), q, np.array([0])) is None
    )
    assert (
        acc.append(obs, np.array([0]), np.array([2.0]), np.array([1.0]), q, np.array([1])) is None
    )
    out = acc.append(obs + 1, np.array([0]), np.array([9.0]), np.array([1.0]), q, np.array([2]))
    # R = 1 + 0.5 * 2 = 2, G = 0.25, priority = |2 + 0.25 * 4 - Q(s_0, a=1) = 4| = 1.
    assert (out.reward[0], out.discount[0], out.priority[0]) == pytest.approx((2.0, 0.25, 1.0))
    np.testing.assert_array_equal(out.next_observation, obs + 1)


def test_n_step_accumulator_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"n_step must be >= 1, got 0"):
        prioritized.NStepAccumulator(0, 0.9)
    with pytest.raises(ValueError, match=r"discount must be in \[0, 1\], got 1.5"):
        prioritized.NStepAccumulator(3, 1.5)


# ----------------------------------------------------------------------------------------
# Tables, writer, sampler (real Reverb)
# ----------------------------------------------------------------------------------------


@pytest.fixture
def make_server():
    servers = []

    def make(**kwargs):
        kwargs.setdefault("max_size", 100)
        kwargs.setdefault("min_size", 1)
        tables = prioritized.transition_tables(OBS_SPEC, kwargs.pop("num_tasks", 1), **kwargs)
        server = replay.start_server(tables)
        servers.append(server)
        return reverb.Client(replay.server_address(server))

    yield make
    for server in servers:
        server.stop()


def _transitions(rewards, priorities):
    n = len(rewards)
    return prioritized.Transitions(
        observation=np.tile(np.asarray(rewards, np.float32)[:, None], (1, 2)),
        action=np.arange(n, dtype=np.int32) % 2,
        reward=np.asarray(rewards, np.float32),
        discount=np.full(n, 0.9, np.float32),
        next_observation=np.zeros((n, 2), np.float32),
        params_step=np.arange(n, dtype=np.int64),
        priority=np.asarray(priorities, np.float64),
    )


def _probability_by_reward(sampler, draws=20):
    """reward -> the probability Reverb reported for that item (the same at every draw)."""
    seen = {}
    for _ in range(draws):
        sampled = sampler.sample()
        for r, p, size in zip(
            sampled.batch.reward, sampled.batch.probability, sampled.batch.table_size, strict=True
        ):
            seen.setdefault(float(r), set()).add((round(float(p), 6), int(size)))
    return seen


def test_actor_priorities_then_learner_updates_are_what_the_next_sample_sees(make_server):
    client = make_server(priority_exponent=1.0)
    writer = prioritized.TransitionWriter(client, 0)
    assert writer.write(_transitions([1.0, 2.0], [1.0, 3.0])) == 2
    writer.flush()
    sampler = prioritized.PrioritizedSampler(client, 1, 1)
    # Exponent 1: P = p / sum p = 1/4 and 3/4, reported with each sample.
    assert _probability_by_reward(sampler) == {1.0: {(0.25, 2)}, 2.0: {(0.75, 2)}}

    # The learner writes new priorities for one sampled item: the next draws see them.
    sampled = sampler.sample()
    sampler.update_priorities(sampled.keys, np.array([6.0 if sampled.batch.reward[0] == 1 else 2]))
    # Whichever item was drawn, the item of reward 1 now has 6 (or the other 2): P = 6/9 or
    # 1/3 for reward 1's item.
    expected_one = 6.0 / 9.0 if sampled.batch.reward[0] == 1.0 else 1.0 / 3.0
    seen = _probability_by_reward(sampler)
    assert seen[1.0] == {(round(expected_one, 6), 2)}
    assert seen[2.0] == {(round(1.0 - expected_one, 6), 2)}
    writer.close()


def test_the_priority_exponent_and_the_uniform_selector(make_server):
    client = make_server(priority_exponent=0.6)
    writer = prioritized.TransitionWriter(client, 0)
    writer.write(_transitions([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]))
    writer.flush()
    seen = _probability_by_reward(prioritized.PrioritizedSampler(client, 1, 3), draws=10)
    weights = np.array([1.0, 2.0, 4.0]) ** 0.6
    for r, w in zip((1.0, 2.0, 3.0), weights / weights.sum(), strict=True):
        assert seen[r] == {(round(w, 6), 3)}
    writer.close()

    client = make_server(selector="uniform")
    writer = prioritized.TransitionWriter(client, 0)
    writer.write(_transitions([1.0, 2.0, 3.0, 4.0], [1.0, 100.0, 1.0, 1.0]))
    writer.flush()
    seen = _probability_by_reward(prioritized.PrioritizedSampler(client, 1, 4), draws=10)
    assert all(v == {(0.25, 4)} for v in seen.values())
    writer.close()


def test_samples_are_task_major_and_their_weights_follow_the_formula(make_server):
    client = make_server(num_tasks=2, priority_exponent=1.0)
    for task, rewards in ((0, [1.0, 2.0]), (1, [10.0, 20.0, 30.0])):
        writer = prioritized.TransitionWriter(client, task)
        writer.write(_transitions(rewards, [1.0] * len(rewards)))
        writer.flush()
        writer.close()
    sampled = prioritized.PrioritizedSampler(client, 2, 2).sample()
    np.testing.assert_array_equal(sampled.batch.task_id, [0, 0, 1, 1])
    assert set(sampled.batch.reward[:2]) <= {1.0, 2.0}
    assert set(sampled.batch.reward[2:]) <= {10.0, 20.0, 30.0}
    np.testing.assert_allclose(sampled.batch.probability, [0.5, 0.5, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(sampled.batch.table_size, [2, 2, 3, 3])
    # Each item's observation is its own (the writer kept fields together).
    np.testing.assert_array_equal(sampled.batch.observation[:, 0], sampled.batch.reward)
    # IS weights (N P)^-1 / max: task 0's items 1, task 1's items 1: uniform within a task.
    w = apex.importance_weights(sampled.batch.probability, sampled.batch.table_size, 1.0)
    np.testing.assert_allclose(w, 1.0, rtol=1e-6)
    assert len(sampled.keys) == 2 and all(k.shape == (2,) for k in sampled.keys)


def test_the_oldest_transition_leaves_a_full_table(make_server):
    client = make_server(max_size=3)
    writer = prioritized.TransitionWriter(client, 0)
    writer.write(_transitions([1.0, 2.0, 3.0, 4.0], [1.0] * 4))
    writer.flush()
    seen = _probability_by_reward(prioritized.PrioritizedSampler(client, 1, 3), draws=10)
    assert set(seen) == {2.0, 3.0, 4.0}
    writer.close()


def test_bad_tables_and_steps_are_errors_naming_the_value(make_server):
    with pytest.raises(ValueError, match=r"unknown replay selector 'fifo'"):
        prioritized.transition_tables(OBS_SPEC, 1, max_size=10, min_size=1, selector="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got 11 and 10"):
        prioritized.transition_tables(OBS_SPEC, 1, max_size=10, min_size=11)
    with pytest.raises(ValueError, match=r"num_tasks must be >= 1, got 0"):
        prioritized.transition_tables(OBS_SPEC, 0, max_size=10, min_size=1)
    client = make_server()
    writer = prioritized.TransitionWriter(client, 0)
    bad = _transitions([1.0], [1.0])._replace(observation=np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"'observation' has shape \(1, 3\)"):
        writer.write(bad)
    writer.close()


def _actor_step(t, **extra):
    """Actor step t of 2 environments with Q-values [[1, 4], [0, 2]] (actions 1 and 0) and
    rewards 1, 2, 9 (env 0) and 0 (env 1) at t = 0, 1, 2."""
    return {
        "observation": np.full((2, 2), t, np.float32),
        "action": np.array([1, 0]),
        "reward": np.asarray([(1.0, 2.0, 9.0)[t], 0.0], np.float32),
        "discount": np.ones(2, np.float32),
        "q_values": np.array([[1.0, 4.0], [0.0, 2.0]], np.float32),
        "params_step": np.int64(7),
        "task_id": np.int32(0),
        **extra,
    }


def test_an_actors_steps_become_prioritised_items(make_server):
    client = make_server(priority_exponent=1.0)
    writer = prioritized.NStepWriter(client, 0, n_step=2, discount=0.5)
    written = [writer.append(_actor_step(t)) for t in range(3)]
    assert written == [False, False, True]
    writer.flush()
    assert writer.num_items == 2
    # Env 0: R = 1 + 0.5 * 2 = 2, G = 0.25, priority |2 + 0.25 * 4 - 4| = 1; env 1: R = 0,
    # priority |0 + 0.25 * 2 - 0| = 0.5. Probabilities 1/1.5 and 0.5/1.5.
    seen = _probability_by_reward(prioritized.PrioritizedSampler(client, 1, 1))
    assert seen == {2.0: {(round(2 / 3, 6), 2)}, 0.0: {(round(1 / 3, 6), 2)}}
    writer.close()


def test_an_apex_distillation_actors_items_carry_the_teacher_and_the_kl_priority(make_server):
    """Ape-X distillation: each transition keeps the teacher's outputs at s_t, and its
    priority is the KL at s_t (the actor's `distill_priority`) plus lambda |td|."""
    client = make_server(priority_exponent=1.0, teacher_actions=2)
    writer = prioritized.NStepWriter(client, 0, n_step=2, discount=0.5, td_weight=0.5)
    for t in range(3):
        teacher = np.array([[t, 10.0 + t], [-t, 0.5]], np.float32)
        kl = np.array([1.0 + t, 0.25 + t])
        writer.append(_actor_step(t, teacher_outputs=teacher, distill_priority=kl))
    writer.flush()
    # |td| as in the Ape-X test above: 1 (env 0) and 0.5 (env 1); the KLs of step 0: 1 and
    # 0.25. Priorities 0.5 x 1 + 1 = 1.5 and 0.5 x 0.5 + 0.25 = 0.5: P = 3/4 and 1/4.
    sampler = prioritized.PrioritizedSampler(client, 1, 1)
    # 100 draws: the P = 1/4 item is missed by all of them with probability 0.75^100.
    assert _probability_by_reward(sampler, 100) == {2.0: {(0.75, 2)}, 0.0: {(0.25, 2)}}
    for _ in range(10):  # each item keeps its own teacher outputs, those of step 0
        batch = sampler.sample().batch
        want = [0.0, 10.0] if batch.reward[0] == 2.0 else [0.0, 0.5]
        np.testing.assert_array_equal(batch.teacher_outputs, [want])
    with pytest.raises(ValueError, match="teacher_outputs"):
        for t in range(3):  # the table wants teacher outputs; a plain Ape-X step has none
            writer.append(_actor_step(t))
    writer.close()


# ----------------------------------------------------------------------------------------
# Actor -> prioritised table -> learner -> priorities back (real Reverb, real Actor)
# ----------------------------------------------------------------------------------------


class ChainEnv(dm_env.Environment):
    """Obs (env, t); reward 1 for action 1, else 0; episodes of 4 steps (termination)."""

    def __init__(self, index: int):
        self.index, self.t = index, 0

    def reset(self):
        self.t = 0
        return dm_env.restart(self._obs())

    def step(self, action):
        self.t += 1
        reward = float(int(action) == 1)
        if self.t == 4:
            return dm_env.termination(reward, self._obs())
        return dm_env.transition(reward, self._obs())

    def _obs(self):
        return np.array([self.index, self.t], np.float32)

    def observation_spec(self):
        return OBS_SPEC

    def action_spec(self):
        return specs.DiscreteArray(2, dtype=np.int32)


def _ratios(seen_probability, priority_of):
    """P(i) / priority(i) of every item seen: one constant (1 / sum of priorities)."""
    return [seen_probability[k] / priority_of[k] for k in seen_probability]


def test_actor_table_learner_round_trip_keeps_priorities_consistent():
    network = apex.dueling_network(make_torso("mlp", hidden_sizes=(8,)), 1, 2, 8)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
    tables = prioritized.transition_tables(
        OBS_SPEC, 1, max_size=1000, min_size=1, priority_exponent=1.0
    )
    params_np = jax.tree.map(np.asarray, params)
    server = replay.start_server(
        tables + replay.service_tables(replay.variables_signature(params_np), 1)
    )
    client = reverb.Client(replay.server_address(server))
    try:
        replay.publish_params(client, params_np, 0)

        def policy(p, obs, key):
            action, q = apex.select_action(p, obs, 0, 0.5, key, network=network)
            return action, {"q_values": q}

        actor = Actor(
            DmEnvVector([ChainEnv(b) for b in range(2)]),
            0,
            network,  # type: ignore[arg-type]  # a QNetwork has what the actor checks
            VariableClient(client, params_np, refresh_every=100),
            ReplayWriter(client, prioritized.NStepWriter(client, 0, n_step=3, discount=0.9)),
            seed=0,
            first_fetch_timeout=30,
            policy=policy,
        )
        actor.run(max_steps=12)
        assert replay.table_size(client, prioritized.transition_table(0)) == (12 - 3) * 2

        def q(obs):
            return np.asarray(network.apply(params, jnp.asarray(obs)[None], jnp.zeros(1, int)))[0]

        sampler = prioritized.PrioritizedSampler(client, 1, 18)
        priority_of, data = {}, {}

        def draw(times):
            """key -> P reported, over `times` draws of 18; each new item's |td| by hand."""
            seen = {}
            for _ in range(times):
                s = sampler.sample()
                for key, i in zip(s.keys[0], range(18), strict=True):
                    b, key = s.batch, int(key)
                    if key not in data:
                        td = b.reward[i] + b.discount[i] * q(b.next_observation[i]).max()
                        priority_of[key] = abs(td - q(b.observation[i])[b.action[i]])
                        data[key] = (b.observation[i], b.next_observation[i], float(b.discount[i]))
                    seen[key] = float(b.probability[i])
            return seen

        seen = draw(5)
        ratios = _ratios(seen, priority_of)
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
        # An episode ends on the step from t = 3: the 3 steps from t = 1, 2, 3 include it
        # (G = 0); only t = 0 bootstraps, from t = 3.
        starts = {float(obs[1]) for obs, _, _ in data.values()}
        assert 0.0 in starts and starts & {1.0, 2.0, 3.0} and starts <= {0.0, 1.0, 2.0, 3.0}
        for obs, next_obs, discount in data.values():
            ended = obs[1] >= 1
            assert discount == (0.0 if ended else pytest.approx(0.9**3))
            if not ended:
                assert next_obs[1] == obs[1] + 3

        # The learner's step: its new priorities are what the next samples see.
        optimizer = optax.sgd(0.01)
        state = apex.ApexState(params, params, optimizer.init(params), jnp.zeros((), jnp.int32))
        s = sampler.sample()
        _, new_priority, _ = apex.update_step(
            state,
            jax.tree.map(jnp.asarray, s.batch),
            network=network,
            optimizer=optimizer,
            config=apex.LearnerConfig(target_update_period=1, is_exponent_steps=10),
        )
        sampler.update_priorities(s.keys, np.asarray(new_priority))
        for key, p in zip(s.keys[0], np.asarray(new_priority), strict=True):
            data.setdefault(int(key), None)  # known now: its priority is the learner's
            priority_of[int(key)] = float(p)
        ratios = _ratios(draw(5), priority_of)
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
        actor.close()
    finally:
        server.stop()


@pytest.mark.parametrize("preset", ["minatar_apex_dqn", "minatar_apex_distill"])
def test_the_tables_of_an_apex_configuration(preset):
    """`replay.make_replay_tables` of an Ape-X run: a prioritised transition table per game
    with the config's sizes (teacher outputs [A] only for distillation), the parameter slot
    of the run's dueling network, and evaluation rows of one entry per game."""
    sets = ["env.games=[breakout,asterix]", "apex.replay_per_task=3000"]
    sets.append("apex.min_replay_per_task=100")
    experiment = make_experiment(cfg.load_config(ROOT / "experiments" / f"{preset}.yaml", sets))
    server = replay.start_server(replay.make_replay_tables(experiment))
    try:
        info = reverb.Client(replay.server_address(server)).server_info()
        names = [prioritized.transition_table(k) for k in range(2)]
        service = [replay.VARIABLES, replay.VARIABLES_STEP, replay.EPISODES, replay.EVALUATIONS]
        assert sorted(info) == sorted([*names, *service])
        for name in names:
            assert info[name].max_size == 3000
            assert info[name].rate_limiter_info.min_size_to_sample == 100
            assert info[name].sampler_options.prioritized.priority_exponent == pytest.approx(0.6)
            fields = info[name].signature
            teacher = fields.get("teacher_outputs")
            if preset == "minatar_apex_distill":  # the 2 games' union of actions: 6
                assert teacher is not None and teacher.shape.as_list() == [6]
            else:
                assert teacher is None
        leaves = jax.tree.leaves(experiment.params_template())
        slot = info[replay.VARIABLES].signature
        assert [s.shape.as_list() for s in slot[1:]] == [list(x.shape) for x in leaves]
        assert info[replay.EVALUATIONS].signature["pi_i"].shape.as_list() == [2]
    finally:
        server.stop()
