"""Distillation losses (distral.core.distillation) against hand-computed values and
plain-numpy gradients; KL-tau's limits; the configuration's checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral.core import distillation as d

# Student logits with pi_S = [1/6, 2/6, 3/6]; teacher outputs with softmax = [1/8, 3/8, 4/8].
S = jnp.log(jnp.asarray([1.0, 2.0, 3.0]))
Q = jnp.log(jnp.asarray([1.0, 3.0, 4.0]))
P_S = np.array([1, 2, 3]) / 6
P_T = np.array([1, 3, 4]) / 8


@pytest.mark.parametrize("jit", [False, True])
def test_losses_at_hand_computed_values(jit):
    wrap = jax.jit if jit else (lambda f, **_: f)
    nll = wrap(d.nll_loss)
    kl = wrap(d.kl_loss, static_argnums=2)
    pr = wrap(d.policy_regression_loss, static_argnums=2)
    # NLL: the teacher's best action is 2, pi_S(2) = 1/2.
    np.testing.assert_allclose(nll(S, Q), math.log(2), rtol=1e-6)
    np.testing.assert_allclose(nll(S, jnp.asarray([1.0, 5.0, 2.0])), math.log(3), rtol=1e-6)
    # MSE: (1-0)^2 + (2-4)^2 + (3-3)^2.
    np.testing.assert_allclose(
        wrap(d.mse_loss)(jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray([0.0, 4.0, 3.0])), 5.0
    )
    want_kl = (1 / 8) * math.log((1 / 8) / (1 / 6)) + (3 / 8) * math.log((3 / 8) / (2 / 6))
    np.testing.assert_allclose(kl(S, Q, 1.0), want_kl, rtol=1e-5)
    # tau scales the teacher's outputs: Q / 2 at tau 0.5 is Q at tau 1.
    np.testing.assert_allclose(kl(S, Q / 2, 0.5), want_kl, rtol=1e-5)
    want_ce = -((1 / 8) * math.log(1 / 6) + (3 / 8) * math.log(2 / 6) + (4 / 8) * math.log(3 / 6))
    np.testing.assert_allclose(pr(S, Q, 1.0), want_ce, rtol=1e-6)
    # Feature regression: ||[1, 2, -1] - [0, 0, 1]||^2 = 1 + 4 + 4.
    feat = wrap(d.feature_regression_loss)
    np.testing.assert_allclose(feat(jnp.asarray([1.0, 2, -1]), jnp.asarray([0.0, 0, 1])), 9.0)


def test_gradients_match_the_plain_formulas_and_spare_the_teacher():
    """d/ds of each loss by hand (softmax(s) - target, 2 (s - q)); no gradient reaches the
    teacher's outputs or features."""
    onehot = np.array([0.0, 0.0, 1.0])
    cases = {
        "nll": (d.nll_loss, P_S - onehot),
        "mse": (d.mse_loss, 2 * (np.asarray(S) - np.asarray(Q))),
        "kl": (lambda s, q: d.kl_loss(s, q, 1.0), P_S - P_T),
        "policy_regression": (lambda s, q: d.policy_regression_loss(s, q, 1.0), P_S - P_T),
        "feature": (d.feature_regression_loss, 2 * (np.asarray(S) - np.asarray(Q))),
    }
    for name, (loss, want) in cases.items():
        g_s, g_q = jax.grad(loss, argnums=(0, 1))(S, Q)
        np.testing.assert_allclose(g_s, want, rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(g_q, np.zeros(3), err_msg=name)


def test_kl_tends_to_nll_as_tau_goes_to_zero_and_has_the_soft_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = jnp.asarray(rng.normal(size=6), jnp.float32)
        q = jnp.asarray(rng.normal(size=6) * 3, jnp.float32)
        g_nll = jax.grad(d.nll_loss)(s, q)
        for tau in (1.0, 0.1, 0.01):
            g_kl = jax.grad(d.kl_loss)(s, q, tau)
            g_ce = jax.grad(d.policy_regression_loss)(s, q, tau)
            np.testing.assert_allclose(g_kl, g_ce, rtol=1e-5, atol=1e-7)
        # Gaps between q's entries are O(0.1): at tau 1e-4 the target is one-hot in float32.
        g_small = jax.grad(d.kl_loss)(s, q, 1e-4)
        np.testing.assert_allclose(g_small, g_nll, atol=1e-6)
        # ... and at tau 1 it is not.
        assert np.abs(np.asarray(jax.grad(d.kl_loss)(s, q, 1.0) - g_nll)).max() > 0.05


def test_kl_of_a_one_hot_target_is_finite_and_equals_nll():
    """softmax(q / 0.01) with gaps of 100 underflows to exact zeros: 0 log 0 counts as 0."""
    q = jnp.asarray([0.0, 100.0, 0.0])
    value, grad = jax.value_and_grad(d.kl_loss)(S, q, 0.01)
    np.testing.assert_allclose(value, -math.log(2 / 6), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(grad, P_S - np.array([0.0, 1.0, 0.0]), atol=1e-7)


def test_distill_loss_dispatches_and_weights_feature_regression():
    pred, feat = jnp.asarray([1.0, 2.0]), jnp.asarray([0.0, 0.0])  # feature term 5
    for kind, want in [
        ("nll", d.nll_loss(S, Q)),
        ("mse", d.mse_loss(S, Q)),
        ("kl", d.kl_loss(S, Q, 0.5)),
        ("actor_mimic", d.policy_regression_loss(S, Q, 0.5) + 0.2 * 5.0),
    ]:
        config = d.DistillConfig(loss=kind, tau=0.5, feature_cost=0.2)
        loss, m = d.distill_loss(S, Q, config, pred, feat)
        np.testing.assert_allclose(loss, want, rtol=1e-6, err_msg=kind)
        np.testing.assert_allclose(m.feature, 5.0 if kind == "actor_mimic" else 0.0)
        np.testing.assert_allclose(m.policy + 0.2 * m.feature, loss, rtol=1e-6)
        assert float(m.agreement) == 1.0  # both argmax at action 2
    _, m = d.distill_loss(S, jnp.asarray([9.0, 0.0, 0.0]), d.DistillConfig(loss="nll"))
    assert float(m.agreement) == 0.0
    off = d.DistillConfig(loss="actor_mimic", feature_cost=0.0)
    assert not off.uses_features
    np.testing.assert_allclose(d.distill_loss(S, Q, off)[0], d.policy_regression_loss(S, Q, 0.01))
    with pytest.raises(ValueError, match="needs predicted and features_t"):
        d.distill_loss(S, Q, d.DistillConfig(loss="actor_mimic"))


def test_vmapped_mean_matches_a_plain_python_loop():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(7, 4)).astype(np.float32)
    q = (rng.normal(size=(7, 4)) * 2).astype(np.float32)
    config = d.DistillConfig(loss="kl", tau=0.3)
    batched = jax.vmap(lambda a, b: d.distill_loss(a, b, config)[0])(jnp.asarray(s), jnp.asarray(q))
    for i in range(7):
        t = np.exp(q[i] / 0.3) / np.exp(q[i] / 0.3).sum()
        p = np.exp(s[i]) / np.exp(s[i]).sum()
        np.testing.assert_allclose(batched[i], np.sum(t * np.log(t / p)), rtol=1e-4, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="loss='x'; valid choices: nll, mse, kl, actor_mimic"):
        d.DistillConfig(loss="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tau=0"):
        d.DistillConfig(tau=0)
    with pytest.raises(ValueError, match="feature_cost=-1"):
        d.DistillConfig(feature_cost=-1)
    with pytest.raises(ValueError, match=r"tau=-0\.5"):
        d.kl_loss(S, Q, -0.5)
    with pytest.raises(AssertionError):
        d.nll_loss(S, Q[:2])
    with pytest.raises(AssertionError):
        d.mse_loss(S[None], Q[None])
