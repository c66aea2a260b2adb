"""Tests of distral.losses against plain-Python references and an exact gradient."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64
from reference import py_n_step_returns, py_vtrace

from distral.core import losses
from distral.core.variants import get_variant


@pytest.mark.parametrize("n", [1, 3, 7, None])
@pytest.mark.parametrize("jit", [False, True])
def test_n_step_returns_match_python_loop(n, jit):
    rng = np.random.default_rng(0)
    T = 7
    r = rng.normal(size=T).astype(np.float32)
    d = (0.9 * (rng.uniform(size=T) > 0.2)).astype(np.float32)  # some episode ends
    v = rng.normal(size=T).astype(np.float32)
    fn = jax.jit(losses.n_step_returns, static_argnums=3) if jit else losses.n_step_returns
    got = fn(jnp.asarray(r), jnp.asarray(d), jnp.asarray(v), n)
    want = py_n_step_returns(r, d, v, T if n is None else n)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip_rho, clip_pg_rho", [(1.0, 1.0), (1.5, 2.0), (2.0, 0.5)])
@pytest.mark.parametrize("jit", [False, True])
def test_distral_loss_vtrace_terms_match_the_python_loop(clip_rho, clip_pg_rho, jit):
    """A3C rows with V-trace: the value term is 0.5 mean (v_s - V(x_s))^2 and the policy
    term -mean log pi(a_s) rho_pg (r_s + g v_{s+1} - V(x_s)), from the plain-Python sum of
    IMPALA's eq. 1, with the importance weight of step s from the behaviour logits of
    step s and both clips taken from the config."""
    rng = np.random.default_rng(1)
    T, A = 9, 3
    logits = rng.normal(size=(T + 1, A)).astype(np.float32)
    mu = (2.0 * rng.normal(size=(T, A))).astype(np.float32)  # rho on both sides of 0.5..2
    v = rng.normal(size=T + 1).astype(np.float32)
    a = rng.integers(0, A, size=T)
    r = rng.normal(size=T).astype(np.float32)
    d = (rng.uniform(size=T) > 0.25).astype(np.float32)
    log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))  # noqa: E731
    lp, lmu = log_softmax(logits[:-1])[np.arange(T), a], log_softmax(mu)[np.arange(T), a]
    rho = np.exp(lp - lmu)
    assert (rho < 0.5).any() and (rho > 2.0).any() and ((rho > 1.0) & (rho < 1.5)).any()
    vs, adv = py_vtrace(v[:-1], v[1:], r, 0.95 * d, rho, clip_rho, clip_pg_rho)
    cfg = losses.LossConfig(
        discount=0.95, returns="vtrace", clip_rho=clip_rho, clip_pg_rho=clip_pg_rho
    )
    fn = jax.jit(losses.distral_loss, static_argnames="config") if jit else losses.distral_loss
    loss, m = fn(logits, np.zeros_like(logits), v, a, r, d, mu, config=cfg)
    np.testing.assert_allclose(m.value_loss, 0.5 * np.mean((vs - v[:-1]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(m.policy_loss, -np.mean(lp * adv), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        loss, -np.mean(lp * adv) + 0.25 * np.mean((vs - v[:-1]) ** 2), rtol=1e-5, atol=1e-6
    )


def test_distral_loss_vtrace_uses_the_reference_targets():
    """distral_loss's value term with V-trace equals the plain-Python V-trace targets."""
    rng = np.random.default_rng(2)
    T, A = 6, 3
    logits = rng.normal(size=(T + 1, A)).astype(np.float32)
    h = rng.normal(size=(T + 1, A)).astype(np.float32)
    mu = rng.normal(size=(T, A)).astype(np.float32)
    v = rng.normal(size=T + 1).astype(np.float32)
    a = rng.integers(0, A, size=T)
    r = rng.normal(size=T).astype(np.float32)
    d = np.ones(T, np.float32)
    d[3] = 0.0
    log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))  # noqa: E731
    lp, lp0, lmu = (log_softmax(x)[np.arange(T), a] for x in (logits[:-1], h[:-1], mu))
    p, p0 = np.exp(log_softmax(logits[:-1])), np.exp(log_softmax(h[:-1]))
    expected = np.sum(p * (0.5 * np.log(p0) - np.log(p)), -1) / 2.0  # E_a[reg], by hand
    for regulariser, r_reg in (
        ("sampled", r + 0.25 * lp0 - 0.5 * lp),  # at the action taken
        ("expected", r + expected),  # its expectation over pi_i's actions
    ):
        cfg = losses.LossConfig(
            alpha=0.5,
            beta=2.0,
            distill=True,
            discount=0.9,
            returns="vtrace",
            regulariser=regulariser,
        )
        _, m = losses.distral_loss(logits, h, v, a, r, d, mu, cfg)
        vs, _ = py_vtrace(v[:-1], v[1:], r_reg, 0.9 * d, np.exp(lp - lmu))
        np.testing.assert_allclose(m.value_loss, 0.5 * np.mean((vs - v[:-1]) ** 2), rtol=1e-5)
        np.testing.assert_allclose(m.regularised_reward, r_reg.mean(), rtol=1e-5)
        np.testing.assert_allclose(m.regulariser, (r_reg - r).mean(), rtol=1e-5, atol=1e-6)


def test_regularised_reward_by_hand():
    r = jnp.array([1.0, -0.1])
    log_pi0 = jnp.log(jnp.array([0.5, 0.25]))
    log_pi = jnp.log(jnp.array([0.25, 0.5]))
    got = losses.regularised_reward(r, log_pi0, log_pi, alpha=0.5, beta=2.0)
    # r + (0.5/2) log pi0 - (1/2) log pi
    want = [
        1.0 + 0.25 * np.log(0.5) - 0.5 * np.log(0.25),
        -0.1 + 0.25 * np.log(0.25) - 0.5 * np.log(0.5),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # A reward: no gradient flows through the log-probabilities.
    g = jax.grad(lambda lp: losses.regularised_reward(r, lp, lp, 0.5, 2.0).sum())(log_pi)
    np.testing.assert_array_equal(g, 0.0)


def test_expected_regulariser_by_hand():
    # pi_i = (0.5, 0.25, 0.25), pi_0 = (0.25, 0.25, 0.5); alpha 0.5, beta 2.
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    h = jnp.log(jnp.array([[0.25, 0.25, 0.5]]))
    got = losses.expected_regulariser(logits, h, alpha=0.5, beta=2.0)
    pi, pi0 = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    want = np.sum(pi * (0.5 * np.log(pi0) - np.log(pi))) / 2.0
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    # = ((1 - alpha) H(pi_i) - alpha KL(pi_i || pi_0)) / beta
    entropy, kl = -np.sum(pi * np.log(pi)), np.sum(pi * np.log(pi / pi0))
    np.testing.assert_allclose(got, [(0.5 * entropy - 0.5 * kl) / 2.0], rtol=1e-6)
    # pi_0 is held fixed: no gradient reaches h through it.
    g = jax.grad(lambda h_: losses.expected_regulariser(logits, h_, 0.5, 2.0).sum())(h)
    np.testing.assert_array_equal(g, 0.0)


def test_expected_regulariser_gradient_is_the_sampled_terms_expectation():
    """d/dlogits of E_a[reg(a)] equals E_{a~pi}[grad log pi(a) * reg(a)], the sampled
    regulariser's expected policy-gradient contribution (its direct part has mean 0)."""
    rng = np.random.default_rng(12)
    A, alpha, beta = 4, 0.3, 5.0
    logits = jnp.asarray(rng.normal(size=(1, A)))
    h = jnp.asarray(rng.normal(size=(1, A)))
    got = jax.grad(lambda lg: losses.expected_regulariser(lg, h, alpha, beta).sum())(logits)
    pi = np.asarray(jax.nn.softmax(logits[0]), np.float64)
    log_pi, log_pi0 = np.log(pi), np.asarray(jax.nn.log_softmax(h[0]), np.float64)
    reg = (alpha * log_pi0 - log_pi) / beta
    want = sum(pi[a] * (np.eye(A)[a] - pi) * reg[a] for a in range(A))  # grad log softmax
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-7)


def test_distillation_gradient_is_pi_minus_pi0_and_vanishes_at_the_task_average():
    rng = np.random.default_rng(3)
    T, A, alpha, beta = 4, 5, 0.5, 3.0
    h = jnp.asarray(rng.normal(size=(T, A)))
    f = [jnp.asarray(rng.normal(size=(T, A))) for _ in range(2)]
    pi0 = jax.nn.softmax(h)
    for fi in f:
        pi_i = jax.nn.softmax(alpha * h + beta * fi)  # 2col: pi_i also depends on h ...
        g = jax.grad(losses.distillation_loss, argnums=1)(alpha * h + beta * fi, h, alpha, beta)
        # ... but the loss's gradient is (alpha/beta) (pi_0 - pi_i) / T: only through log pi_0.
        np.testing.assert_allclose(g, (alpha / beta) * (pi0 - pi_i) / T, rtol=1e-5, atol=1e-7)
        # Minus the paper's ascent direction (alpha/beta) sum_a (pi_i - pi_0) grad h.
        np.testing.assert_allclose(-g * T, (alpha / beta) * (pi_i - pi0), rtol=1e-5, atol=1e-7)

    # Now pi_0 equal to the task average: the summed distillation gradient vanishes.
    pis = [jax.nn.softmax(alpha * h + beta * fi) for fi in f]
    h_avg = jnp.log((pis[0] + pis[1]) / 2)
    total = sum(
        jax.grad(
            lambda h_, fi=fi: losses.distillation_loss(alpha * h + beta * fi, h_, alpha, beta)
        )(h_avg)
        for fi in f
    )
    np.testing.assert_allclose(total, 0.0, atol=1e-7)
    assert (
        float(
            jnp.abs(
                jax.grad(
                    lambda h_: losses.distillation_loss(alpha * h + beta * f[0], h_, alpha, beta)
                )(h_avg)
            ).max()
        )
        > 1e-3
    )


# EXACT GRADIENT OF THE DISTRAL OBJECTIVE ON A TINY MDP

N_TASKS, S, A, HORIZON = 2, 3, 2, 3


def _tiny_mdp():
    rng = np.random.default_rng(7)
    P = rng.dirichlet(np.ones(S), size=(N_TASKS, S, A))  # task-specific dynamics
    R = rng.normal(size=(N_TASKS, S, A))
    mu = np.array([0.5, 0.3, 0.2])
    return P, R, mu


def _policies(params, variant):
    """Tabular logits of pi_i [N, S, A] and of pi_0 [S, A] for a 1col or 2col variant."""
    h, f = params["h"], params["f"]
    if variant.architecture == "2col":
        a, b = variant.mix
        return a * h[None] + b * f, h
    assert variant.architecture == "1col"
    return f, h


def _exact_objective(params, variant, P, R, mu):
    """J = sum_i E_{pi_i}[sum_t r + (alpha/beta) log pi_0 - (1/beta) log pi_i], by DP."""
    logits, h = _policies(params, variant)
    log_pi = jax.nn.log_softmax(logits)
    log_pi0 = jax.nn.log_softmax(h)
    alpha, beta = variant.alpha, variant.beta
    J = 0.0
    for i in range(N_TASKS):
        v = jnp.zeros(S)
        for _ in range(HORIZON):
            r_reg = R[i] + (alpha / beta) * log_pi0 - (1.0 / beta) * log_pi[i]
            q = r_reg + P[i] @ v
            v = jnp.sum(jnp.exp(log_pi[i]) * q, axis=-1)
        J = J + mu @ v
    return J


def _enumerated_loss_gradient(params, variant, P, R, mu, regulariser="expected"):
    """sum over every trajectory of P(tau) * grad[policy + distillation terms](tau)."""
    cfg = losses.LossConfig.from_variant(
        variant, discount=1.0, returns="nstep", value_cost=0.0, regulariser=regulariser
    )
    logits, _ = _policies(params, variant)
    pi = np.asarray(jax.nn.softmax(logits))
    trajs, probs, tasks = [], [], []
    for i in range(N_TASKS):
        for s0, a0, s1, a1, s2, a2 in itertools.product(
            range(S), range(A), range(S), range(A), range(S), range(A)
        ):
            p = (
                mu[s0]
                * pi[i, s0, a0]
                * P[i, s0, a0, s1]
                * pi[i, s1, a1]
                * P[i, s1, a1, s2]
                * pi[i, s2, a2]
            )
            trajs.append(((s0, s1, s2, 0), (a0, a1, a2)))
            probs.append(p)
            tasks.append(i)
    states = jnp.array([t[0] for t in trajs])  # [K, T+1]; the last state is a dummy
    actions = jnp.array([t[1] for t in trajs])  # [K, T]
    tasks = jnp.array(tasks)
    probs = jnp.array(probs)
    rewards = jnp.asarray(R)[tasks[:, None], states[:, :-1], actions]
    discounts = jnp.ones((len(trajs), HORIZON)).at[:, -1].set(0.0)  # episode ends at the horizon

    def weighted_loss(p):
        lg, hh = _policies(p, variant)

        def one(task, s, a, r, d):
            logits_t = lg[task][s]
            zeros = jnp.zeros(HORIZON + 1)  # no baseline: Monte-Carlo returns of r_reg
            loss, _ = losses.distral_loss(logits_t, hh[s], zeros, a, r, d, logits_t[:-1], cfg)
            return loss

        per_traj = jax.vmap(one)(tasks, states, actions, rewards, discounts)
        return jnp.sum(probs * per_traj)

    assert abs(float(probs.sum()) - N_TASKS) < 1e-9
    return jax.grad(weighted_loss)(params)


@pytest.mark.parametrize("name", ["kl_2col", "kl_ent_2col", "kl_1col", "kl_ent_1col"])
def test_loss_gradient_is_exact_gradient_of_distral_objective(name):
    variant = get_variant(name, beta=2.0)
    P, R, mu = _tiny_mdp()
    with enable_x64():
        rng = np.random.default_rng(11)
        params = {
            "h": jnp.asarray(rng.normal(size=(S, A))),
            "f": jnp.asarray(rng.normal(size=(N_TASKS, S, A))),
        }
        grad_J = jax.grad(_exact_objective)(params, variant, P, R, mu)
        grad_loss = _enumerated_loss_gradient(params, variant, P, R, mu)
        # Each loss term is a mean over the T steps of an unroll: E[grad loss] = -grad J / T.
        for key in ("h", "f"):
            np.testing.assert_allclose(-HORIZON * grad_loss[key], grad_J[key], rtol=1e-5, atol=1e-5)
            assert float(jnp.abs(grad_J[key]).max()) > 1e-2  # not a trivially zero gradient


@pytest.mark.parametrize("name", ["kl_2col", "kl_ent_1col"])
def test_sampled_regulariser_also_gives_the_exact_gradient(name):
    """The 'sampled' form (r_reg at the action taken) has the same expected gradient."""
    variant = get_variant(name, beta=2.0)
    P, R, mu = _tiny_mdp()
    with enable_x64():
        rng = np.random.default_rng(11)
        params = {
            "h": jnp.asarray(rng.normal(size=(S, A))),
            "f": jnp.asarray(rng.normal(size=(N_TASKS, S, A))),
        }
        grad_J = jax.grad(_exact_objective)(params, variant, P, R, mu)
        grad_loss = _enumerated_loss_gradient(params, variant, P, R, mu, regulariser="sampled")
        for key in ("h", "f"):
            np.testing.assert_allclose(-HORIZON * grad_loss[key], grad_J[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("regulariser", ["expected", "sampled"])
def test_h_gets_only_the_distillation_gradient_and_pi_i_none_from_it(regulariser):
    """The stop-gradients of the real loss: d loss / d h is (alpha/beta)(pi_0 - pi_i)/T at
    s_0..s_{T-1} and 0 at s_T (pi_0 enters the regularised reward as a constant), and the
    distillation term sends nothing to pi_i's logits."""
    u = _random_unroll(6)
    cfg = losses.LossConfig(
        alpha=0.5, beta=4.0, distill=True, discount=0.9, regulariser=regulariser
    )
    grad_h = jax.grad(
        lambda h: losses.distral_loss(**{**u, "distilled_logits_t": h}, config=cfg)[0]
    )
    got = np.asarray(grad_h(u["distilled_logits_t"]))
    lg, h = np.asarray(u["logits_t"], np.float64), np.asarray(u["distilled_logits_t"], np.float64)
    p = np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)
    p0 = np.exp(h) / np.exp(h).sum(-1, keepdims=True)
    T = len(u["a_t"])
    np.testing.assert_allclose(got[:-1], (0.5 / 4.0) * (p0 - p)[:-1] / T, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got[-1], 0.0)
    to_pi = jax.grad(losses.distillation_loss)(u["logits_t"], u["distilled_logits_t"], 0.5, 4.0)
    np.testing.assert_array_equal(to_pi, 0.0)


# THE ASSEMBLED LOSS


def _random_unroll(seed, T=5, A=4):
    rng = np.random.default_rng(seed)
    return dict(
        logits_t=jnp.asarray(rng.normal(size=(T + 1, A)), jnp.float32),
        distilled_logits_t=jnp.asarray(rng.normal(size=(T + 1, A)), jnp.float32),
        v_t=jnp.asarray(rng.normal(size=T + 1), jnp.float32),
        a_t=jnp.asarray(rng.integers(0, A, size=T), jnp.int32),
        r_t=jnp.asarray(rng.normal(size=T), jnp.float32),
        discount_t=jnp.ones(T, jnp.float32),
        behaviour_logits_t=jnp.asarray(rng.normal(size=(T, A)), jnp.float32),
    )


def _softmax64(x):
    x = np.asarray(x, np.float64)
    return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


@pytest.mark.parametrize("n_step", [None, 2])
def test_distral_loss_terms_and_metrics_by_hand_and_jit(n_step):
    """Every term from the unroll by hand: returns of the regularised reward bootstrapped
    from V(s_{t+n}) (n-step, or the unroll's end), through an episode end."""
    u = _random_unroll(4)
    u["discount_t"] = u["discount_t"].at[2].set(0.0)
    cfg = losses.LossConfig(alpha=0.5, beta=4.0, distill=True, discount=0.9, n_step=n_step)
    loss, m = losses.distral_loss(**u, config=cfg)
    loss_jit, _ = jax.jit(losses.distral_loss, static_argnames="config")(**u, config=cfg)
    np.testing.assert_allclose(loss, loss_jit, rtol=1e-5)

    T = len(u["a_t"])
    lg = np.asarray(u["logits_t"][:-1], np.float64)
    p, p0 = _softmax64(lg), _softmax64(u["distilled_logits_t"][:-1])
    np.testing.assert_allclose(m.kl, np.mean(np.sum(p * np.log(p / p0), -1)), rtol=1e-5)
    np.testing.assert_allclose(m.entropy, np.mean(-np.sum(p * np.log(p), -1)), rtol=1e-5)
    np.testing.assert_allclose(
        m.distilled_entropy, np.mean(-np.sum(p0 * np.log(p0), -1)), rtol=1e-5
    )
    distill = -(0.5 / 4.0) * np.mean(np.sum(p * np.log(p0), -1))
    np.testing.assert_allclose(m.distill_loss, distill, rtol=1e-5)
    expected = np.sum(p * (0.5 * np.log(p0) - np.log(p)), -1) / 4.0
    np.testing.assert_allclose(m.regulariser_loss, -np.mean(expected), rtol=1e-5)
    np.testing.assert_allclose(m.logit_spread, np.mean(lg.max(-1) - lg.min(-1)), rtol=1e-5)

    v, r, d = (np.asarray(u[k], np.float64) for k in ("v_t", "r_t", "discount_t"))
    returns = py_n_step_returns(r + expected, 0.9 * d, v[1:], n_step or T)
    advantage = returns - v[:-1]
    log_pi_a = np.log(p[np.arange(T), np.asarray(u["a_t"])])
    policy, value = -np.mean(log_pi_a * advantage), 0.5 * np.mean(advantage**2)
    np.testing.assert_allclose(m.policy_loss, policy, rtol=1e-5)
    np.testing.assert_allclose(m.value_loss, value, rtol=1e-5)
    np.testing.assert_allclose(
        loss, policy + 0.5 * value + distill - np.mean(expected), rtol=1e-5, atol=1e-6
    )


def test_a3c_loss_has_entropy_bonus_and_no_distillation():
    """A3C: n-step returns of the environment reward alone and an entropy bonus of 0.1."""
    u = _random_unroll(5)
    cfg = losses.LossConfig.from_variant(get_variant("a3c", entropy_cost=0.1), discount=0.9)
    loss, m = losses.distral_loss(**u, config=cfg)
    assert float(m.distill_loss) == 0.0
    T = len(u["a_t"])
    p = _softmax64(u["logits_t"][:-1])
    v, r, d = (np.asarray(u[k], np.float64) for k in ("v_t", "r_t", "discount_t"))
    advantage = py_n_step_returns(r, 0.9 * d, v[1:], T) - v[:-1]
    policy = -np.mean(np.log(p[np.arange(T), np.asarray(u["a_t"])]) * advantage)
    entropy = np.mean(-np.sum(p * np.log(p), -1))
    np.testing.assert_allclose(m.regularised_reward, np.mean(r), rtol=1e-6)
    np.testing.assert_allclose(
        loss, policy + 0.25 * np.mean(advantage**2) - 0.1 * entropy, rtol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=1.5, distill=True), "alpha=1.5 is outside"),
        (dict(beta=0.0, distill=True), "beta=0.0 must be > 0"),
        (dict(returns="td"), "returns='td'"),
        (dict(n_step=0), "n_step=0"),
        (dict(discount=1.2), "discount=1.2"),
        (dict(regulariser="x"), "regulariser='x'; valid choices: expected, sampled"),
    ],
)
def test_loss_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.LossConfig(**kwargs)
