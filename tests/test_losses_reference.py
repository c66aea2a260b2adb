"""distral.core.losses against plain-Python references, on the inputs mutation testing
(`make mutate`) showed the other tests leave free: V-trace clips other than 1 and the
per-step KL/entropy on inputs of any rank."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from distral.core import losses


def py_vtrace(v, r, d, rho, clip_rho, clip_pg_rho):
    """V-trace targets v_s and advantages (Espeholt et al., 2018, eq. 1), a plain loop.

    v holds V(x_0..x_T); returns (v_s - V(x_s), clipped-rho pg advantages), s < T.
    """
    T = len(r)
    vs = [0.0] * (T + 1)
    vs[T] = v[T]
    for s in reversed(range(T)):
        delta = min(clip_rho, rho[s]) * (r[s] + d[s] * v[s + 1] - v[s])
        vs[s] = v[s] + delta + d[s] * min(1.0, rho[s]) * (vs[s + 1] - v[s + 1])
    errors = [vs[s] - v[s] for s in range(T)]
    adv = [min(clip_pg_rho, rho[s]) * (r[s] + d[s] * vs[s + 1] - v[s]) for s in range(T)]
    return np.array(errors), np.array(adv)


@pytest.mark.parametrize("clip_rho, clip_pg_rho", [(0.5, 2.0), (2.0, 0.5)])
def test_vtrace_errors_and_advantages_honour_both_clips(clip_rho, clip_pg_rho):
    """The config's rho-bar and pg clip reach V-trace (importance weights on both sides of
    0.5, 1 and 2, so a clip left at rlax's default of 1 changes the numbers)."""
    rho = np.array([0.3, 0.8, 1.5, 2.5, 0.6, 3.0])
    T, A = len(rho), 3
    a = np.array([0, 1, 2, 0, 1, 2])
    behaviour_logits = np.zeros((T, A), np.float32)  # mu uniform: log mu(a) = -log 3
    log_pi_a = (np.log(rho) - math.log(3)).astype(np.float32)  # pi(a) / mu(a) = rho
    v = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -0.5, 0.25], np.float32)
    r = np.array([1.0, 0.0, -1.0, 2.0, 0.5, 1.0], np.float32)
    d = np.array([0.9, 0.9, 0.0, 0.9, 0.9, 0.9], np.float32)
    cfg = losses.LossConfig(returns="vtrace", clip_rho=clip_rho, clip_pg_rho=clip_pg_rho)
    errors, adv = losses.value_errors_and_advantages(
        jnp.asarray(v),
        jnp.asarray(r),
        jnp.asarray(d),
        jnp.asarray(log_pi_a),
        jnp.asarray(behaviour_logits),
        jnp.asarray(a),
        cfg,
    )
    want_errors, want_adv = py_vtrace(v, r, d, rho, clip_rho, clip_pg_rho)
    np.testing.assert_allclose(errors, want_errors, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)


def test_kl_and_entropy_by_hand_on_one_step():
    """On logits [A] alone: pi = (1/4, 3/4) against pi_0 uniform."""
    logits = jnp.array([0.0, math.log(3.0)])
    uniform = jnp.zeros(2)
    want_h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    want_kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    np.testing.assert_allclose(losses.entropy(logits), want_h, rtol=1e-6)
    np.testing.assert_allclose(losses.kl_divergence(logits, uniform), want_kl, rtol=1e-5)


def test_kl_and_entropy_reduce_the_last_axis_of_any_rank():
    """[B, T, A] logits give [B, T] values, each that of its own row (a plain loop)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4))
    h = rng.normal(size=(2, 3, 4))
    want_h, want_kl = np.zeros((2, 3)), np.zeros((2, 3))
    for b in range(2):
        for t in range(3):
            p = [math.exp(x) for x in logits[b, t]]
            p = [x / sum(p) for x in p]
            q = [math.exp(x) for x in h[b, t]]
            q = [x / sum(q) for x in q]
            want_h[b, t] = -sum(x * math.log(x) for x in p)
            want_kl[b, t] = sum(x * math.log(x / y) for x, y in zip(p, q, strict=True))
    got_h = losses.entropy(jnp.asarray(logits, jnp.float32))
    got_kl = losses.kl_divergence(jnp.asarray(logits, jnp.float32), jnp.asarray(h, jnp.float32))
    np.testing.assert_allclose(got_h, want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_kl, want_kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2])
def test_nstep_value_errors_bootstrap_after_the_configured_n_steps(n):
    """`LossConfig.n_step` reaches the targets: G_t = r_t + d_t r_{t+1} + ... + (prod d)
    V(s_{t+n}), cut at the unroll's end; the advantage is the same value error."""
    v = [0.5, -1.0, 2.0, 0.0, 1.0]  # V(s_0..s_4), T = 4
    r = [1.0, 0.0, -1.0, 2.0]
    d = [0.9, 0.5, 0.0, 0.8]
    want = []
    for t in range(4):
        g, scale, k = 0.0, 1.0, 0
        while k < n and t + k < 4:
            g += scale * r[t + k]
            scale *= d[t + k]
            k += 1
        want.append(g + scale * v[t + k] - v[t])
    cfg = losses.LossConfig(returns="nstep", n_step=n, discount=1.0)
    a = jnp.zeros(4, jnp.int32)
    errors, adv = losses.value_errors_and_advantages(
        jnp.asarray(v), jnp.asarray(r), jnp.asarray(d), jnp.zeros(4), jnp.zeros((4, 2)), a, cfg
    )
    np.testing.assert_allclose(errors, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(adv, want, rtol=1e-6, atol=1e-6)


def test_from_variant_gives_each_rows_coefficients():
    """The rows' loss coefficients, written out (Distral rows: the variant's alpha and
    beta = 30; A3C and gated rows: alpha 0 and beta 1, unused, and the 0.01 entropy
    bonus)."""
    from distral.core.variants import VARIANTS

    a3c = losses.LossConfig(alpha=0.0, beta=1.0, distill=False, entropy_cost=0.01)
    kl = losses.LossConfig(alpha=1.0, beta=30.0, distill=True, entropy_cost=0.0)
    kl_ent = losses.LossConfig(alpha=0.5, beta=30.0, distill=True, entropy_cost=0.0)
    want = {
        "a3c": a3c,
        "a3c_multitask": a3c,
        "a3c_2col": a3c,
        "kl_1col": kl,
        "kl_2col": kl,
        "kl_ent_1col": kl_ent,
        "kl_ent_2col": kl_ent,
        "gated": a3c,  # the gate costs come from the config's `gated` section
        "gated_task": a3c,
    }
    got = {name: losses.LossConfig.from_variant(v) for name, v in VARIANTS.items()}
    assert got == want


def test_distral_loss_rejects_outputs_without_the_extra_step():
    """Network outputs need T+1 steps for T transitions: T alone is a ValueError that
    says both counts."""
    T, A = 3, 2
    message = r"^logits_t has 3 steps, expected T\+1=4$"
    with pytest.raises(ValueError, match=message):  # chex checks raise AssertionError
        losses.distral_loss(
            jnp.zeros((T, A)),
            jnp.zeros((T, A)),
            jnp.zeros(T),
            jnp.zeros(T, jnp.int32),
            jnp.zeros(T),
            jnp.ones(T),
            jnp.zeros((T, A)),
            losses.LossConfig(),
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distill": True, "alpha": 0.0},
        {"distill": True, "alpha": 1.0},
        {"distill": True, "beta": 0.5},  # any beta > 0, below 1 too
        {"discount": 0.0},
        {"discount": 1.0},
        {"n_step": 1},
    ],
)
def test_loss_config_accepts_the_edges_of_each_range(kwargs):
    """The bounds are inclusive where the docstrings say so (a stricter check raises)."""
    config = losses.LossConfig(**kwargs)
    assert {k: getattr(config, k) for k in kwargs} == kwargs
