"""Tests for distral.tabular: hand-computed numbers and plain-Python references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64

from distral.core import tabular

S, A, GAMMA = 5, 3, 0.9

# Jitted once and shared: compilation, not arithmetic, dominates this file's run time.
soft_vi = jax.jit(tabular.soft_value_iteration)
policy_value = jax.jit(tabular.policy_value)
occupancy = jax.jit(tabular.discounted_occupancy)


@functools.partial(jax.jit, static_argnames=("shape",))
def _random_policy(key, shape):
    """Rows ~ Dirichlet(1): normalised exponentials, in the default float dtype."""
    x = jax.random.exponential(key, shape)
    return x / x.sum(axis=-1, keepdims=True)


def _random_log_pi0(key, num_states=S, num_actions=A):
    return jnp.log(_random_policy(key, (num_states, num_actions)))


def _uniform_log_pi0(num_states=S, num_actions=A, dtype=jnp.float64):
    return jnp.full((num_states, num_actions), -math.log(num_actions), dtype)


def _bandit(rewards):
    """One state, g = 0: Q = R exactly."""
    rewards = jnp.asarray([rewards])
    return tabular.make_mdp(jnp.ones((1, rewards.shape[1], 1)), rewards, jnp.ones(1), 0.0)


def _occupancy_power_series(mdp, pi, steps=500):
    """Plain-Python sum_t g^t mu_t(s) pi(a|s), episodes killed on entering terminal states."""
    p, mu, pi = np.asarray(mdp.transitions), np.asarray(mdp.initial), np.asarray(pi)
    keep = 1.0 - np.asarray(mdp.terminal, dtype=np.float64)
    g = float(mdp.discount)
    dist, total = mu * keep, np.zeros_like(pi)
    for t in range(steps):
        total += g**t * dist[:, None] * pi
        nxt = np.zeros_like(dist)
        for s in range(len(dist)):
            for a in range(pi.shape[1]):
                nxt += dist[s] * pi[s, a] * p[s, a]
        dist = nxt * keep
    return total


def _task(mdps, i):
    return jax.tree_util.tree_map(lambda x: x[i], mdps)


# SOFT BACKUP AND SOFT VALUE ITERATION


def test_bandit_hand_computed():
    # g = 0, R = [1, 0], uniform pi_0, alpha = beta = 1.
    mdp = _bandit([1.0, 0.0])
    log_pi0 = jnp.log(jnp.full((1, 2), 0.5))
    e = math.e
    for v, pi in [
        tabular.soft_backup(mdp.rewards, log_pi0, 1.0, 1.0),
        soft_vi(mdp, log_pi0, 1.0, 1.0)[1:],
    ]:
        np.testing.assert_allclose(v, [math.log((e + 1.0) / 2.0)], rtol=1e-6)
        np.testing.assert_allclose(pi, [[e / (e + 1.0), 1.0 / (e + 1.0)]], rtol=1e-6)


def test_alpha_zero_is_entropy_regularised_logsumexp():
    # alpha = 0 ignores pi_0 (even a zero in it): V = (1/beta) log(e^{beta r1} + e^{beta r2}).
    r1, r2, beta = 0.3, -0.2, 2.5
    mdp = _bandit([r1, r2])
    expected = math.log(math.exp(beta * r1) + math.exp(beta * r2)) / beta
    for log_pi0 in [jnp.log(jnp.array([[0.9, 0.1]])), jnp.log(jnp.array([[1.0, 0.0]]))]:
        values = soft_vi(mdp, log_pi0, 0.0, beta)
        np.testing.assert_allclose(values.v, [expected], rtol=1e-6)
        np.testing.assert_allclose(values.pi.sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.3, 1.0])
@pytest.mark.parametrize("beta", [0.5, 5.0])
def test_soft_value_iteration_satisfies_soft_bellman(alpha, beta):
    with enable_x64():
        key_mdp, key_pi0 = jax.random.split(jax.random.PRNGKey(0))
        mdp = tabular.random_mdp(key_mdp, S, A, GAMMA, dtype=jnp.float64)
        log_pi0 = _random_log_pi0(key_pi0)
        q, v, pi = soft_vi(mdp, log_pi0, alpha, beta)
        q, v, pi, pi0 = map(np.asarray, (q, v, pi, jnp.exp(log_pi0)))
        p, r = np.asarray(mdp.transitions), np.asarray(mdp.rewards)
        # Q = R + g P V and V = (1/beta) log sum_a pi_0^alpha exp(beta Q), in plain numpy.
        np.testing.assert_allclose(q, r + GAMMA * p @ v, atol=1e-6)
        v_ref = np.log(np.sum(pi0**alpha * np.exp(beta * q), axis=1)) / beta
        np.testing.assert_allclose(v, v_ref, atol=1e-6)
        np.testing.assert_allclose(pi.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(pi, pi0**alpha * np.exp(beta * (q - v[:, None])), atol=1e-6)


def test_large_beta_approaches_value_iteration_without_overflow():
    # float32 on purpose: beta * Q ~ 1e5 must not overflow.
    mdp = tabular.random_mdp(jax.random.PRNGKey(1), S, A, GAMMA, dtype=jnp.float32)
    log_pi0 = _uniform_log_pi0(dtype=jnp.float32)
    q_soft, v_soft, pi = soft_vi(mdp, log_pi0, 0.5, 1e4)
    q_hard, v_hard = jax.jit(tabular.value_iteration)(mdp)
    assert np.all(np.isfinite(pi)) and np.all(np.isfinite(v_soft))
    # Expected gap ~ (alpha/beta) log(1/A) / (1 - g) = -5.5e-4 (pi_0^alpha < 1 on the greedy
    # action); measured V_soft - V_hard = -5.4e-4, max|Q_soft - Q_hard| = 4.9e-4.
    np.testing.assert_allclose(v_soft, v_hard, atol=1e-3)
    np.testing.assert_allclose(q_soft, q_hard, atol=1e-3)
    np.testing.assert_array_equal(np.argmax(pi, axis=1), np.argmax(q_hard, axis=1))
    # The hard optimum really is one: Q_hard = R + g P max Q_hard.
    np.testing.assert_allclose(q_hard, mdp.rewards + GAMMA * mdp.transitions @ v_hard, atol=1e-5)


# OCCUPANCY AND POLICY VALUE


@pytest.mark.parametrize("with_terminal", [False, True])
def test_discounted_occupancy_matches_power_series(with_terminal):
    with enable_x64():
        key_mdp, key_pi = jax.random.split(jax.random.PRNGKey(2))
        mdp = tabular.random_mdp(key_mdp, S, A, GAMMA, dtype=jnp.float64)
        if with_terminal:
            mdp = mdp._replace(terminal=jnp.arange(S) == S - 1)
        pi = _random_policy(key_pi, (S, A))
        d = occupancy(mdp, pi)
        np.testing.assert_allclose(d, _occupancy_power_series(mdp, pi), atol=1e-12)
        if with_terminal:
            assert float(d.sum()) < 1.0 / (1.0 - GAMMA) - 0.1
            np.testing.assert_array_equal(d[S - 1], 0.0)
        else:
            np.testing.assert_allclose(d.sum(), 1.0 / (1.0 - GAMMA), rtol=1e-12)


@pytest.mark.parametrize("with_terminal", [False, True])
def test_policy_value_of_soft_optimum(with_terminal):
    alpha, beta = 0.5, 2.0
    with enable_x64():
        keys = jax.random.split(jax.random.PRNGKey(3), 3)
        mdp = tabular.random_mdp(keys[0], S, A, GAMMA, dtype=jnp.float64)
        if with_terminal:
            mdp = mdp._replace(terminal=jnp.arange(S) == 0)
        log_pi0 = _random_log_pi0(keys[1])
        _, v, pi_star = soft_vi(mdp, log_pi0, alpha, beta)
        best = policy_value(mdp, pi_star, log_pi0, alpha, beta)
        np.testing.assert_allclose(best, mdp.initial @ v, atol=1e-9)
        others = _random_policy(keys[2], (50, S, A))
        near = 0.99 * pi_star + 0.01 * others[:5]  # small perturbations of the optimum
        values = jax.jit(jax.vmap(tabular.policy_value, in_axes=(None, 0, None, None, None)))(
            mdp, jnp.concatenate([others, near]), log_pi0, alpha, beta
        )
        assert np.all(values < best), float(values.max() - best)


# DISTILLATION


def _hand_transitions():
    """2 tasks x 1 rollout x 3 steps; task 0's last step is invalid, state 2 is never visited."""
    return tabular.Transitions(
        state=jnp.array([[[0, 1, 0]], [[1, 1, 0]]]),
        action=jnp.array([[[1, 0, 1]], [[1, 1, 0]]]),
        reward=jnp.zeros((2, 1, 3)),
        next_state=jnp.array([[[1, 0, 0]], [[1, 0, 0]]]),
        done=jnp.array([[[False, True, True]], [[False, False, False]]]),
        t=jnp.broadcast_to(jnp.arange(3), (2, 1, 3)),
        valid=jnp.array([[[True, True, False]], [[True, True, True]]]),
    )


def test_distil_from_counts_hand_computed():
    g = 0.5
    transitions = _hand_transitions()
    # By hand: (0,1): g^0 from task 0; (1,0): g^1 from task 0 (its (0,1) at t=2 is invalid);
    # task 1: (1,1) at t=0 and t=1 -> 1 + 0.5, (0,0) at t=2 -> 0.25.
    counts = np.array([[0.25, 1.0], [0.5, 1.5], [0.0, 0.0]])
    # Plain-Python reference.
    ref = np.zeros((3, 2))
    for index in np.ndindex(transitions.state.shape):
        if transitions.valid[index]:
            s, a = int(transitions.state[index]), int(transitions.action[index])
            ref[s, a] += g ** int(transitions.t[index])
    np.testing.assert_allclose(ref, counts)
    np.testing.assert_allclose(tabular.discounted_counts(transitions, g, 3, 2), counts)
    pi0 = np.exp(tabular.distil_from_counts(transitions, g, 3, 2))
    np.testing.assert_allclose(pi0, [[0.2, 0.8], [0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    pi0 = np.exp(tabular.distil_from_counts(transitions, g, 3, 2, prior_counts=1.0))
    expected = [[1.25 / 3.25, 2.0 / 3.25], [1.5 / 4.0, 2.5 / 4.0], [0.5, 0.5]]
    np.testing.assert_allclose(pi0, expected, rtol=1e-6)


def test_distil_exact_hand_computed():
    occupancies = jnp.array(
        [[[1.0, 3.0], [0.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 0.0], [0.0, 2.0]]]
    )
    pi0 = np.exp(tabular.distil_exact(occupancies))
    np.testing.assert_allclose(pi0, [[1 / 3, 2 / 3], [0.5, 0.5], [0.5, 0.5]], rtol=1e-6)


# SAMPLING AND SOFT Q-LEARNING

rollout = jax.jit(tabular.rollout, static_argnames=("num_rollouts", "length"))


def test_rollout_semantics_and_monte_carlo_occupancy():
    with enable_x64():
        key_mdp, key_pi, key_roll = jax.random.split(jax.random.PRNGKey(4), 3)
        mdp = tabular.random_mdp(key_mdp, S, A, 0.8, dtype=jnp.float64)
        initial = mdp.initial.at[S - 1].set(0.0)
        mdp = mdp._replace(terminal=jnp.arange(S) == S - 1, initial=initial / initial.sum())
        pi = _random_policy(key_pi, (S, A))
        num_rollouts, length = 4000, 60
        tr = tabular.Transitions(*map(np.asarray, rollout(key_roll, mdp, pi, num_rollouts, length)))
        assert tr.state.shape == (num_rollouts, length)
        np.testing.assert_array_equal(tr.t, np.broadcast_to(np.arange(length), tr.t.shape))
        assert tr.valid[:, 0].all()
        valid_next = tr.valid[:, 1:]
        # An episode is valid up to and including the step that reaches the terminal state.
        np.testing.assert_array_equal(valid_next, tr.valid[:, :-1] & ~tr.done[:, :-1])
        np.testing.assert_array_equal(tr.done[~tr.valid], True)
        np.testing.assert_array_equal(
            tr.next_state[:, :-1][valid_next], tr.state[:, 1:][valid_next]
        )
        rewards = np.asarray(mdp.rewards)[tr.state, tr.action]
        np.testing.assert_array_equal(tr.reward, np.where(tr.valid, rewards, 0.0))
        np.testing.assert_array_equal(tr.done[tr.valid], tr.next_state[tr.valid] == S - 1)
        lengths = tr.valid.sum(axis=1)
        assert lengths.min() == 1 and len(np.unique(lengths)) > 20  # episodes end at varied times
        # Monte Carlo discounted counts ~ exact occupancy (g^60 ~ 1e-6 is cut off). Measured
        # max error over 10 seeds: 0.009 to 0.017 with 4000 rollouts, entries up to 0.96.
        mc = tabular.discounted_counts(tr, mdp.discount, S, A) / num_rollouts
        np.testing.assert_allclose(mc, occupancy(mdp, pi), atol=0.06)


def test_soft_q_learning_matches_plain_python_loop():
    alpha, beta, g, lr = 0.5, 2.0, 0.8, 0.3
    with enable_x64():
        keys = jax.random.split(jax.random.PRNGKey(5), 4)
        mdp = tabular.random_mdp(keys[0], S, A, g, dtype=jnp.float64)
        mdp = mdp._replace(terminal=jnp.arange(S) == S - 1)
        log_pi0 = _random_log_pi0(keys[1])
        q0 = jax.random.normal(keys[2], (S, A), jnp.float64)
        tr = rollout(keys[3], mdp, jnp.full((S, A), 1.0 / A), 3, 12)
        assert not tr.valid.all()  # the invalid-step path is exercised
        q = jax.jit(tabular.soft_q_learning)(q0, tr, log_pi0, alpha, beta, g, lr)
        ref, pi0 = np.array(q0), np.exp(np.asarray(log_pi0))
        for i, j in np.ndindex(tr.state.shape):  # rollout-major order
            if not tr.valid[i, j]:
                continue
            s, a, s2 = int(tr.state[i, j]), int(tr.action[i, j]), int(tr.next_state[i, j])
            v2 = np.log(np.sum(pi0[s2] ** alpha * np.exp(beta * ref[s2]))) / beta
            target = float(tr.reward[i, j]) + g * (0.0 if tr.done[i, j] else v2)
            ref[s, a] += lr * (target - ref[s, a])
        np.testing.assert_allclose(q, ref, atol=1e-12)
        assert np.abs(ref - np.asarray(q0)).max() > 0.1


def test_soft_q_learning_converges_to_exact_soft_q():
    # A uniform behaviour policy on a small MDP; the learning rate decays over 6 stages of
    # 400 rollouts x 50 steps (10^4 updates per stage, ~2500 per state-action pair). At the
    # last rate 0.001 the stationary noise is about sqrt(lr / 2) * std(target) ~ 0.007.
    # Measured max|Q - Q*| over 30 seeds: max 0.0063, mean 0.0032 (|Q*| <= 2.44). The
    # tolerance 0.015 stays well below the distance to the wrong answers checked at the end
    # (hard Q*: 0.061 away, soft Q* with alpha = 1: 0.42 away).
    num_states, num_actions, g, alpha, beta = 4, 2, 0.7, 0.5, 2.0
    mdp = tabular.random_mdp(jax.random.PRNGKey(3), num_states, num_actions, g)
    mdp = mdp._replace(initial=jnp.full(num_states, 1.0 / num_states))
    log_pi0 = _random_log_pi0(jax.random.PRNGKey(9), num_states, num_actions)
    exact = soft_vi(mdp, log_pi0, alpha, beta).q
    behaviour = jnp.full((num_states, num_actions), 1.0 / num_actions)
    learning_rates = jnp.array([0.3, 0.1, 0.03, 0.01, 0.003, 0.001])

    @jax.jit
    def learn(key):
        def stage(q, xs):
            key, lr = xs
            batch = tabular.rollout(key, mdp, behaviour, 400, 50)
            return tabular.soft_q_learning(q, batch, log_pi0, alpha, beta, g, lr), None

        keys = jax.random.split(key, len(learning_rates))
        return jax.lax.scan(stage, jnp.zeros_like(exact), (keys, learning_rates))[0]

    q = learn(jax.random.PRNGKey(0))
    tol = 0.015
    assert np.abs(q - exact).max() < tol
    assert np.abs(q - jax.jit(tabular.value_iteration)(mdp)[0]).max() > 2 * tol
    assert np.abs(q - soft_vi(mdp, log_pi0, 1.0, beta).q).max() > 2 * tol


# ALTERNATING DISTRAL


def _shared_dynamics_tasks(key, num_tasks, g, dtype):
    base = tabular.random_mdp(key, S, A, g, dtype=dtype)
    rewards = jax.random.uniform(jax.random.fold_in(key, 1), (num_tasks, S, A), dtype)
    return tabular.stack_mdps([base._replace(rewards=r) for r in rewards])


def test_exact_distral_is_coordinate_ascent():
    alpha, beta = 0.5, 5.0
    with enable_x64():
        mdps = _shared_dynamics_tasks(jax.random.PRNGKey(6), 3, GAMMA, jnp.float64)
        step = jax.jit(tabular.exact_distral_iteration)
        log_pi0 = _uniform_log_pi0()
        objectives = []
        for _ in range(10):
            log_pi0, pis, objective = step(log_pi0, mdps, alpha, beta)
            objectives.append(float(objective))
        assert np.all(np.diff(objectives) >= -1e-10), np.diff(objectives)
        assert objectives[-1] > objectives[0] + 1e-2  # it does climb
        # Restated from the definitions: pi_0 is the normalised sum of the tasks' occupancies
        # and J the sum of the tasks' regularised values.
        total = sum(np.asarray(occupancy(_task(mdps, i), pis[i])) for i in range(3))
        np.testing.assert_allclose(np.exp(log_pi0), total / total.sum(1, keepdims=True))
        values = [policy_value(_task(mdps, i), pis[i], log_pi0, alpha, beta) for i in range(3)]
        np.testing.assert_allclose(sum(values), objectives[-1], rtol=1e-10)


def test_sample_based_distral_and_separately_baseline():
    num_tasks, g, num_rollouts, length, prior = 3, 0.9, 16, 30, 0.1
    mdps = _shared_dynamics_tasks(jax.random.PRNGKey(7), num_tasks, g, jnp.float32)
    # `separately` traced: one compilation serves both arms.
    step = jax.jit(tabular.distral_iteration, static_argnames=("num_rollouts", "length"))
    uniform = _uniform_log_pi0(dtype=jnp.float32)
    for separately in (False, True):
        state = tabular.init_distral_state(num_tasks, S, A)
        for i in range(25):
            state, metrics = step(
                state,
                jax.random.PRNGKey(i),
                mdps,
                0.5,
                5.0,
                0.1,
                num_rollouts,
                length,
                separately=separately,
                prior_counts=prior,
            )
            if i == 0:
                first = metrics["mean_return"]
        assert metrics["mean_return"].shape == (num_tasks,)
        assert np.all(metrics["mean_return"] > first + 0.5), (first, metrics)  # both learn
        np.testing.assert_allclose(metrics["mean_length"], length)  # no terminal states
        if separately:
            np.testing.assert_array_equal(state.log_pi0, uniform)
            np.testing.assert_array_equal(state.counts, 0.0)
        else:
            assert np.abs(state.log_pi0 - uniform).max() > 0.1  # pi_0 was re-distilled
            expected = tabular.counts_to_log_policy(prior + state.counts)
            np.testing.assert_allclose(state.log_pi0, expected, rtol=1e-6)
            total = num_tasks * num_rollouts * (1 - g**length) / (1 - g)  # sum of g^t weights
            np.testing.assert_allclose(state.counts.sum(), total, rtol=1e-5)


def test_jit_and_vmap_over_tasks_match_per_task_loop():
    alpha, beta = 0.5, 2.0
    mdps = tabular.stack_mdps(
        [tabular.random_mdp(jax.random.PRNGKey(10 + i), S, A, 0.5 + 0.1 * i) for i in range(4)]
    )
    log_pi0 = _random_log_pi0(jax.random.PRNGKey(11))

    def solve(mdp):
        return tabular.soft_value_iteration(mdp, log_pi0, alpha, beta)

    batched = jax.jit(jax.vmap(solve))(mdps)
    for i in range(4):
        for single in (solve(_task(mdps, i)), soft_vi(_task(mdps, i), log_pi0, alpha, beta)):
            for got, want in zip(batched, single, strict=True):
                np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
