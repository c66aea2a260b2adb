"""Ape-X DQN's maths against hand numbers and plain-Python loops (distral/core/apex.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distral.core import apex, networks
from distral.core.networks import make_torso


def test_epsilon_ladder_matches_the_paper_formula():
    # eps_i = 0.4 ** (1 + 7 i / (N - 1)): the first actor 0.4, the last 0.4 ** 8.
    assert apex.epsilon_ladder(3) == pytest.approx((0.4, 0.4**4.5, 0.4**8))
    ladder = apex.epsilon_ladder(8)
    assert ladder[0] == pytest.approx(0.4)
    assert ladder[-1] == pytest.approx(0.00065536)
    assert ladder[1] == pytest.approx(0.4**2)  # 1 + 7 * 1/7
    assert apex.epsilon_ladder(1) == (0.4,)
    assert apex.epsilon_ladder(2, base=0.5, alpha=1.0) == pytest.approx((0.5, 0.25))
    with pytest.raises(ValueError, match=r"at least one actor, got 0"):
        apex.epsilon_ladder(0)


def test_epsilon_greedy_greedy_random_and_the_exploration_rate():
    q = jnp.tile(jnp.array([[0.0, 3.0, 1.0, -1.0]]), (20_000, 1))
    key = jax.random.PRNGKey(0)
    greedy = apex.epsilon_greedy(q, jnp.array(0.0), key)
    assert greedy.dtype == jnp.int32
    np.testing.assert_array_equal(greedy, 1)
    counts = np.bincount(np.asarray(apex.epsilon_greedy(q, jnp.array(1.0), key)), minlength=4)
    np.testing.assert_allclose(counts / 20_000, 0.25, atol=0.02)  # uniform, greedy included
    # epsilon 0.4: the greedy action w.p. 0.6 + 0.4/4 = 0.7, each other 0.1.
    counts = np.bincount(np.asarray(apex.epsilon_greedy(q, jnp.array(0.4), key)), minlength=4)
    np.testing.assert_allclose(counts / 20_000, [0.1, 0.7, 0.1, 0.1], atol=0.02)
    # Each sample takes its own argmax.
    rows = jnp.array([[0.0, 1.0], [5.0, 1.0]])
    np.testing.assert_array_equal(apex.epsilon_greedy(rows, jnp.array(0.0), key), [1, 0])


def _n_step_reference(rewards, discounts):
    total, carried = 0.0, 1.0
    for r, d in zip(rewards, discounts, strict=True):
        total += carried * r
        carried *= d
    return total, carried


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    ("rewards", "discounts"),
    [
        ([1.0, 2.0, 3.0], [0.9, 0.9, 0.9]),  # 1 + 1.8 + 2.43, G = 0.729
        ([1.0, 2.0, 3.0], [0.9, 0.0, 0.9]),  # the episode ends after the 2nd step
        ([0.5], [0.99]),
        ([-1.0, 0.0, 4.0, 2.0], [0.5, 0.8, 1.0, 0.25]),
    ],
)
def test_n_step_transition_against_a_python_loop(rewards, discounts, jit):
    fn = jax.jit(apex.n_step_transition) if jit else apex.n_step_transition
    r, g = fn(jnp.asarray(rewards, jnp.float32), jnp.asarray(discounts, jnp.float32))
    expected_r, expected_g = _n_step_reference(rewards, discounts)
    assert float(r) == pytest.approx(expected_r, rel=1e-6)
    assert float(g) == pytest.approx(expected_g, rel=1e-6)


def test_n_step_transition_hand_numbers():
    r, g = apex.n_step_transition(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.9, 0.9, 0.9]))
    assert float(r) == pytest.approx(1.0 + 0.9 * 2.0 + 0.81 * 3.0)
    assert float(g) == pytest.approx(0.729)
    r, g = apex.n_step_transition(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.9, 0.0, 0.9]))
    assert (float(r), float(g)) == pytest.approx((2.8, 0.0))
    with pytest.raises(AssertionError, match="float"):  # integer rewards would truncate
        apex.n_step_transition(jnp.array([1, 2]), jnp.array([1, 1]))


def _double_q_reference(q_tm1, a, r, g, q_target, q_online):
    best = max(range(len(q_online)), key=lambda b: q_online[b])
    return r + g * q_target[best] - q_tm1[a]


@pytest.mark.parametrize("jit", [False, True])
def test_apex_dqn_loss_double_q_target_and_priority(jit):
    q_tm1 = [1.0, 2.0, -0.5]
    q_target = [3.0, 0.5, 10.0]  # the target net's own argmax (2) is NOT the one used
    q_online = [0.1, 0.7, 0.2]  # the online net picks action 1
    fn = jax.jit(apex.apex_dqn_loss) if jit else apex.apex_dqn_loss
    loss, priority = fn(
        jnp.array(q_tm1), jnp.array(0), jnp.array(1.5), jnp.array(0.9),
        jnp.array(q_target), jnp.array(q_online), jnp.array(0.25),
    )  # fmt: skip
    td = _double_q_reference(q_tm1, 0, 1.5, 0.9, q_target, q_online)
    assert td == pytest.approx(1.5 + 0.45 - 1.0)
    assert float(priority) == pytest.approx(abs(td))
    assert float(loss) == pytest.approx(0.5 * 0.25 * td**2)


def test_apex_dqn_loss_gradient_reaches_only_the_taken_action():
    args = (jnp.array([1.0, 2.0, -0.5]), jnp.array(2), jnp.array(1.0), jnp.array(0.5),
            jnp.array([3.0, 0.5, 10.0]), jnp.array([0.1, 0.7, 0.2]), jnp.array(0.5))  # fmt: skip
    grads = jax.grad(lambda *a: apex.apex_dqn_loss(*a)[0], argnums=(0, 4, 5, 6))(*args)
    td = 1.0 + 0.5 * 0.5 - (-0.5)
    # d/dq [w (target - q_a)^2 / 2] = -w td at the taken action; nothing into the target.
    np.testing.assert_allclose(grads[0], [0.0, 0.0, -0.5 * td], rtol=1e-6)
    for g in grads[1:]:
        np.testing.assert_array_equal(g, np.zeros_like(g))


def test_apex_dqn_loss_vmapped_over_a_batch_against_python():
    rng = np.random.default_rng(3)
    q_tm1, q_t, q_o = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3))
    a = rng.integers(0, 4, size=5)
    r, g, w = (rng.uniform(size=5).astype(np.float32) for _ in range(3))
    loss, prio = jax.vmap(apex.apex_dqn_loss)(q_tm1, a, r, g, q_t, q_o, w)
    for i in range(5):
        td = _double_q_reference(q_tm1[i], a[i], r[i], g[i], q_t[i], q_o[i])
        assert float(prio[i]) == pytest.approx(abs(td), rel=1e-5)
        assert float(loss[i]) == pytest.approx(0.5 * w[i] * td**2, rel=1e-5)


def test_importance_weights_hand_numbers():
    # N = 4, P = (0.5, 0.25, 0.125): N P = (2, 1, 0.5).
    p = jnp.array([0.5, 0.25, 0.125])
    w = apex.importance_weights(p, jnp.array(4.0), jnp.array(1.0))
    np.testing.assert_allclose(w, [0.25, 0.5, 1.0], rtol=1e-6)
    w = apex.importance_weights(p, jnp.array(4.0), jnp.array(0.5))
    np.testing.assert_allclose(w, [2**-0.5 / 2**0.5, 1 / 2**0.5, 1.0], rtol=1e-6)
    # Uniform sampling (P = 1/N) gives weight 1 whatever the exponent.
    np.testing.assert_allclose(
        apex.importance_weights(jnp.full((3,), 0.1), jnp.array(10.0), jnp.array(0.4)), 1.0
    )


def test_is_exponent_anneals_linearly_to_one():
    assert float(apex.is_exponent(jnp.array(0), 100)) == pytest.approx(0.4)
    assert float(apex.is_exponent(jnp.array(50), 100)) == pytest.approx(0.7)
    assert float(apex.is_exponent(jnp.array(100), 100)) == pytest.approx(1.0)
    assert float(apex.is_exponent(jnp.array(500), 100)) == pytest.approx(1.0)
    assert float(apex.is_exponent(jnp.array(25), 100, start=0.0)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"total_steps >= 1, got 0"):
        apex.is_exponent(jnp.array(0), 0)
    assert float(apex.is_exponent(jnp.array(1), 1)) == pytest.approx(1.0)  # 1 step is valid


def test_dueling_q_hand_numbers():
    q = apex.dueling_q(jnp.array([1.0, -2.0]), jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    np.testing.assert_allclose(q, [[0.0, 1.0, 2.0], [-3.0, -3.0, 0.0]], rtol=1e-6)
    # The value is the mean of Q over actions.
    assert float(jnp.mean(q[0])) == pytest.approx(1.0)
    assert math.isclose(float(jnp.mean(q[1])), -2.0, rel_tol=1e-6)
    # One state (no batch axis), and a [B, N, A] stack: the mean is over the last axis.
    np.testing.assert_allclose(apex.dueling_q(jnp.array(1.0), jnp.array([1.0, 2.0, 3.0])),
                               [0.0, 1.0, 2.0], rtol=1e-6)  # fmt: skip
    stack = apex.dueling_q(jnp.zeros((1, 2)), jnp.array([[[1.0, 3.0], [0.0, 4.0]]]))
    np.testing.assert_allclose(stack, [[[-1.0, 1.0], [-2.0, 2.0]]], rtol=1e-6)


# ----------------------------------------------------------------------------------------
# The dueling network and the learner's update
# ----------------------------------------------------------------------------------------


def _relu(x):
    return np.maximum(x, 0.0)


def _q_reference(params, obs, task):
    """Q(s, .) of one observation by hand: linear torso (no hidden layer), task's streams."""
    f = np.asarray(obs, np.float64).reshape(-1)

    def stream(p):
        h = _relu(f @ np.asarray(p["hidden"]["w"][task]) + np.asarray(p["hidden"]["b"][task]))
        return h @ np.asarray(p["out"]["w"][task]) + np.asarray(p["out"]["b"][task])

    v, a = stream(params["value"])[0], stream(params["advantage"])
    return v + a - a.mean()


def _network(num_tasks=2, num_actions=3, hidden=4):
    torso = make_torso("mlp", hidden_sizes=())
    return apex.dueling_network(torso, num_tasks, num_actions, hidden)


def _random_biases(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)


def test_dueling_network_each_sample_uses_its_tasks_streams():
    network = _network()
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
    params = _random_biases(network.init(jax.random.PRNGKey(0), obs), 1)
    task_id = jnp.array([0, 1, 1, 0])
    q = network.apply(params, obs, task_id)
    assert q.shape == (4, 3)
    for b in range(4):
        np.testing.assert_allclose(q[b], _q_reference(params, obs[b], int(task_id[b])), rtol=1e-5)
    # The two tasks' heads differ, so the task id matters.
    other = network.apply(params, obs, 1 - task_id)
    assert not np.allclose(q, other)


def test_dueling_network_rejects_bad_sizes_and_a_per_sample_torso_shape():
    with pytest.raises(ValueError, match=r"got 0, 3, 4"):
        apex.dueling_network(make_torso("mlp", hidden_sizes=()), 0, 3, 4)
    with pytest.raises(ValueError, match=r"got 1, 3, 0"):
        apex.dueling_network(make_torso("mlp", hidden_sizes=()), 1, 3, 0)
    torso = make_torso("mlp", hidden_sizes=())
    cube = networks.Torso(init=torso.init, apply=lambda p, obs: obs)  # [B, 3, 2]: not [B, D]
    with pytest.raises(ValueError, match=r"must return \[B, D\] features, got shape \(1, 3, 2\)"):
        apex.dueling_network(cube, 1, 3, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 2)))
    # One action and one hidden unit are valid sizes.
    one = apex.dueling_network(torso, 1, 1, 1)
    q = one.apply(
        one.init(jax.random.PRNGKey(0), jnp.ones((2, 5))), jnp.ones((2, 5)), jnp.zeros(2, int)
    )
    assert q.shape == (2, 1)


def test_dueling_streams_shapes_and_their_lecun_initialisation():
    """Each stream: hidden [N, D, H] and out [N, H, O] (O = 1 for the value, A for the
    advantages), weights truncated-normal with variance 1 / fan-in, biases 0. The fan-in is
    D (or H), not N x D: the task axis is a batch axis (it was not, before 2026-12-03)."""
    network = apex.dueling_network(make_torso("mlp", hidden_sizes=()), 2, 3, 512)
    p = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 400)))
    for name, out in (("value", 1), ("advantage", 3)):
        assert p[name]["hidden"]["w"].shape == (2, 400, 512)
        assert p[name]["out"]["w"].shape == (2, 512, out)
        assert not np.any(p[name]["hidden"]["b"]) and not np.any(p[name]["out"]["b"])
        # flax's truncated normal keeps the variance: std sqrt(1 / fan_in)
        assert np.std(p[name]["hidden"]["w"]) == pytest.approx(np.sqrt(1 / 400), rel=0.02)
    assert np.std(p["advantage"]["out"]["w"]) == pytest.approx(np.sqrt(1 / 512), rel=0.1)


def _batch(rng, n=6, obs_dim=5):
    obs, nxt = (jnp.asarray(rng.normal(size=(n, obs_dim)), jnp.float32) for _ in range(2))
    return apex.Batch(
        observation=obs,
        action=jnp.asarray(rng.integers(0, 3, size=n), jnp.int32),
        reward=jnp.asarray(rng.normal(size=n), jnp.float32),
        discount=jnp.asarray([0.9, 0.0, 0.9, 0.729, 0.9, 0.0], jnp.float32)[:n],
        next_observation=nxt,
        task_id=jnp.asarray(rng.integers(0, 2, size=n), jnp.int32),
        probability=jnp.asarray(rng.uniform(0.01, 0.2, size=n), jnp.float32),
        table_size=jnp.full((n,), 50.0, jnp.float32),
    )


def _reference_loss(params, target_params, batch, exponent):
    """The Ape-X loss by hand: weights (N P)^-b / max, double-Q n-step targets."""
    n = batch.action.shape[0]
    w = (np.asarray(batch.table_size) * np.asarray(batch.probability)) ** -exponent
    w = w / w.max()
    losses, tds = [], []
    for i in range(n):
        task = int(batch.task_id[i])
        q = _q_reference(params, batch.observation[i], task)
        q_next_online = _q_reference(params, batch.next_observation[i], task)
        q_next_target = _q_reference(target_params, batch.next_observation[i], task)
        best = int(np.argmax(q_next_online))
        target = float(batch.reward[i]) + float(batch.discount[i]) * q_next_target[best]
        td = target - q[int(batch.action[i])]
        tds.append(td)
        losses.append(0.5 * w[i] * td**2)
    return float(np.mean(losses)), np.abs(tds), w


def _assert_sgd_step(params, new_params, ref, lr, eps=1e-3):
    """new_params moved by -lr x the gradient of the hand loss `ref`, taken by finite
    differences on a few parameters, not through the learner's code."""
    for path in (("advantage", "out", "b"), ("value", "hidden", "w")):
        leaf = params[path[0]][path[1]][path[2]]
        index = (1, 0) if leaf.ndim == 2 else (0, 2, 1)
        bumped = jax.tree.map(lambda x: x, params)
        up = np.asarray(leaf).copy()
        up[index] += eps
        down = np.asarray(leaf).copy()
        down[index] -= eps
        bumped[path[0]][path[1]][path[2]] = jnp.asarray(up)
        f_up = ref(bumped)
        bumped[path[0]][path[1]][path[2]] = jnp.asarray(down)
        f_down = ref(bumped)
        grad = (f_up - f_down) / (2 * eps)
        moved = float(new_params[path[0]][path[1]][path[2]][index]) - float(leaf[index])
        assert moved == pytest.approx(-lr * grad, rel=2e-2, abs=1e-5)


def test_update_step_against_a_hand_computed_loss_gradient_and_target_copy():
    rng = np.random.default_rng(4)
    network = _network()
    batch = _batch(rng)
    params = _random_biases(network.init(jax.random.PRNGKey(1), batch.observation), 2)
    target = _random_biases(params, 3)  # a target network that differs from the online one
    lr = 0.1
    optimizer = optax.sgd(lr)
    config = apex.LearnerConfig(target_update_period=2, is_exponent_steps=10)
    state = apex.ApexState(params, target, optimizer.init(params), jnp.array(0, jnp.int32))

    new_state, priority, metrics = apex.update_step(
        state, batch, network=network, optimizer=optimizer, config=config
    )
    loss, tds, w = _reference_loss(params, target, batch, exponent=0.4)
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-4)
    np.testing.assert_allclose(priority, tds, rtol=1e-4, atol=1e-6)
    assert float(metrics["is_exponent"]) == pytest.approx(0.4)
    assert float(metrics["is_weight_min"]) == pytest.approx(w.min(), rel=1e-5)

    # SGD's step is -lr x the gradient of the hand loss (finite differences).
    _assert_sgd_step(
        params, new_state.params, lambda p: _reference_loss(p, target, batch, 0.4)[0], lr
    )

    # The target is copied at step 2 (period 2), not at step 1.
    assert int(new_state.step) == 1
    unchanged = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state.target_params, target)
    assert all(jax.tree.leaves(unchanged))
    state2, _, metrics2 = apex.update_step(
        new_state, batch, network=network, optimizer=optimizer, config=config
    )
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state2.target_params, state2.params)
    assert all(jax.tree.leaves(same))
    assert float(metrics2["is_exponent"]) == pytest.approx(0.4 + 0.6 * 1 / 10)


def test_learner_config_rejects_zero_periods():
    with pytest.raises(ValueError, match=r"target_update_period must be >= 1, got 0"):
        apex.LearnerConfig(target_update_period=0)
    with pytest.raises(ValueError, match=r"is_exponent_steps must be >= 1, got 0"):
        apex.LearnerConfig(is_exponent_steps=0)
    with pytest.raises(ValueError, match=r"distill_tau must be > 0, got 0.0"):
        apex.LearnerConfig(distill_tau=0.0)
    with pytest.raises(ValueError, match=r"dqn_cost=0.0 leaves no loss"):
        apex.LearnerConfig(dqn_cost=0.0)  # plain Ape-X DQN without its loss
    with pytest.raises(ValueError, match=r"dqn_cost=-1.0 leaves no loss \(or is negative\)"):
        apex.LearnerConfig(distill_tau=1.0, dqn_cost=-1.0)


def _kl_reference(q_s, q_t, tau):
    """KL(softmax(q_t / tau) || softmax(q_s)) in float64 numpy."""
    q_t = np.asarray(q_t, np.float64) / tau
    p = np.exp(q_t - q_t.max())
    p /= p.sum()
    q_s = np.asarray(q_s, np.float64)
    log_s = q_s - q_s.max() - np.log(np.exp(q_s - q_s.max()).sum())
    return float(np.sum(p * (np.log(p) - log_s)))


def test_kl_reference_hand_numbers():
    # Teacher [0, ln 3] at tau 1: p = (1/4, 3/4); a uniform student: KL = ln 2 - H(p).
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert _kl_reference([5.0, 5.0], [0.0, math.log(3)], 1.0) == pytest.approx(math.log(2) - h)
    assert _kl_reference([1.0, 2.0], [1.0, 2.0], 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dqn_cost", [0.0, 0.5])
def test_apex_distillation_update_against_the_weighted_kl_beside_lambda_dqn(dqn_cost):
    """Ape-X distillation's loss: mean_i w_i KL_i + lambda x the double-Q loss; priorities
    KL_i + lambda |td_i|; the KL's mean and per-task means as metrics."""
    rng = np.random.default_rng(5)
    network = _network()
    teacher = jnp.asarray(3.0 * rng.normal(size=(6, 3)), jnp.float32)
    batch = _batch(rng)._replace(teacher_outputs=teacher)
    params = _random_biases(network.init(jax.random.PRNGKey(1), batch.observation), 2)
    target = _random_biases(params, 3)
    tau, lr = 0.5, 0.1
    optimizer = optax.sgd(lr)
    config = apex.LearnerConfig(
        target_update_period=5, is_exponent_steps=10, distill_tau=tau, dqn_cost=dqn_cost
    )
    state = apex.ApexState(params, target, optimizer.init(params), jnp.array(0, jnp.int32))
    new_state, priority, metrics = apex.update_step(
        state, batch, network=network, optimizer=optimizer, config=config
    )

    def ref(p):
        dqn, tds, w = _reference_loss(p, target, batch, exponent=0.4)
        q = [_q_reference(p, batch.observation[i], int(batch.task_id[i])) for i in range(6)]
        kls = np.array([_kl_reference(q[i], teacher[i], tau) for i in range(6)])
        return dqn_cost * dqn + float(np.mean(w * kls)), kls, tds

    loss, kls, tds = ref(params)
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-4)
    np.testing.assert_allclose(priority, kls + dqn_cost * tds, rtol=1e-4, atol=1e-6)
    assert float(metrics["kl"]) == pytest.approx(kls.mean(), rel=1e-4)
    tasks = np.asarray(batch.task_id)
    per_task = [kls[tasks == k].mean() for k in (0, 1)]
    np.testing.assert_allclose(metrics["kl_per_task"], per_task, rtol=1e-4)
    if dqn_cost:
        assert float(metrics["td_abs"]) == pytest.approx(tds.mean(), rel=1e-4)
    else:
        assert math.isnan(float(metrics["td_abs"]))  # no double-Q term: no TD error
    _assert_sgd_step(params, new_state.params, lambda p: ref(p)[0], lr)
    with pytest.raises(ValueError, match="needs a batch with teacher_outputs"):
        apex.update_step(
            state, batch._replace(teacher_outputs=None), network=network, optimizer=optimizer,
            config=config,
        )  # fmt: skip


def test_init_state_target_equals_online():
    """The network's own initial parameters (from the key as given), the target a copy of
    them, the optimiser's state of those parameters, and an int32 step 0."""
    network, obs = _network(), jnp.zeros((2, 5))
    state = apex.init_state(jax.random.PRNGKey(0), network, optax.adam(1e-3), obs)
    want = network.init(jax.random.PRNGKey(0), obs)
    for tree in (state.params, state.target_params):
        assert jax.tree.structure(tree) == jax.tree.structure(want)
        for got, leaf in zip(jax.tree.leaves(tree), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(got, leaf)
    adam = state.opt_state[0]
    assert int(adam.count) == 0
    assert jax.tree.structure(adam.mu) == jax.tree.structure(want)
    assert state.step.dtype == jnp.int32 and int(state.step) == 0


def test_task_params_are_one_tasks_streams_applied_as_task_zero():
    """`QNetwork.task_params(p, i)`: the shared torso and task i's streams with a task axis
    of 1, what an actor of task i holds; applied with task id 0 they give task i's Q."""
    network = _network(num_tasks=3)
    obs = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)
    params = _random_biases(network.init(jax.random.PRNGKey(0), obs), 3)
    for i in range(3):
        one = network.task_params(params, i)
        assert one["value"]["out"]["w"].shape[0] == one["advantage"]["hidden"]["b"].shape[0] == 1
        got = network.apply(one, obs, jnp.zeros(4, jnp.int32))
        np.testing.assert_allclose(got, network.apply(params, obs, jnp.full(4, i)), rtol=1e-6)
        for b in range(4):
            np.testing.assert_allclose(got[b], _q_reference(params, obs[b], i), rtol=1e-5)
