"""Distillation losses (distral.core.distillation) against hand-computed values and
plain-numpy gradients; KL-tau's limits; the configuration's checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distral.core import distillation as d

# Student logits with pi_S = [1/6, 2/6, 3/6]; teacher outputs with softmax = [1/8, 3/8, 4/8].
# numpy, not jnp: a module-level JAX array starts JAX's backend when pytest imports the file,
# and `make mutate` forks its mutant runs from that process (tests/mutmut_jax_traces.py).
S = np.log(np.asarray([1.0, 2.0, 3.0], np.float32))
Q = np.log(np.asarray([1.0, 3.0, 4.0], np.float32))
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
    np.testing.assert_allclose(d.distill_loss(S, Q, off)[0], d.policy_regression_loss(S, Q, 1.0))
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


# THE STUDENT'S LEARNER


def _student(heads="per_task", hidden=()):
    from distral.core import networks

    torso = networks.make_torso("mlp", hidden_sizes=hidden)
    return d.student_network(heads, torso=torso, num_tasks=3, num_actions=4)


def _batch(seed=0, n=12, obs=5, d_max=6, tasks=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    return d.Batch(
        jnp.asarray(rng.normal(size=(n, obs)), jnp.float32),
        jnp.asarray(rng.normal(size=(n, 4)) * 2, jnp.float32),
        jnp.asarray(rng.normal(size=(n, d_max)), jnp.float32),
        jnp.asarray(rng.choice(tasks, size=n), jnp.int32),
    )


def test_student_heads_and_their_features():
    per_task, shared = _student("per_task"), _student("shared")
    obs = jnp.ones((2, 5))
    p = per_task.init(jax.random.PRNGKey(0), obs)
    q = shared.init(jax.random.PRNGKey(0), obs)
    assert p["tasks"]["policy"]["w"].shape == (3, 5, 4)  # a head per task, one torso
    assert q["distilled"]["policy"]["w"].shape == (5, 4) and "tasks" not in q
    for net, params in ((per_task, p), (shared, q)):
        f0 = net.task_features(params, obs, jnp.int32(0))
        np.testing.assert_array_equal(f0, net.task_features(params, obs, jnp.int32(2)))
    with pytest.raises(ValueError, match="heads='x'; valid choices: per_task, shared"):
        _student("x")


@pytest.mark.parametrize("kind", ["kl", "actor_mimic"])
def test_batch_loss_of_a_linear_student_matches_numpy(kind):
    """A student with no hidden layer: logits = obs W_i + b_i, features = obs. The loss,
    its terms and the per-task metrics against plain numpy; teacher i's features padded
    from D_i = (6, 2, 4) to 6."""
    net = _student()
    config = d.LearnerConfig(d.DistillConfig(kind, tau=0.5, feature_cost=0.3), (6, 2, 4))
    optimizer = optax.adam(1e-3)
    state = d.init_state(jax.random.PRNGKey(1), net, optimizer, config, jnp.zeros((1, 5)))
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), state.params)
    regression = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), state.regression
    )
    batch = _batch(tasks=(0, 2))  # task 1 absent: NaN per-task metrics
    loss, m = d.batch_loss((params, regression), batch, net, config)

    obs, q = np.asarray(batch.observation, np.float64), np.asarray(batch.teacher_outputs)
    want_loss, kls, ents, agree = [], [], [], []
    for b, i in enumerate(np.asarray(batch.task_id)):
        z = obs[b] @ np.asarray(params["tasks"]["policy"]["w"][i]) + np.asarray(
            params["tasks"]["policy"]["b"][i]
        )
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        t = np.exp(q[b] / 0.5) / np.exp(q[b] / 0.5).sum()
        kl = np.sum(t * np.log(t / p))
        term = kl if kind == "kl" else -np.sum(t * np.log(p))
        if kind == "actor_mimic":
            dim = (6, 2, 4)[i]
            w = np.asarray(regression["w"][i])[:, :dim]
            pred = obs[b] @ w + np.asarray(regression["b"][i])[:dim]
            term += 0.3 * np.sum((pred - np.asarray(batch.teacher_features[b, :dim])) ** 2)
        want_loss.append(term)
        kls.append(kl)
        ents.append(-np.sum(p * np.log(p)))
        agree.append(float(np.argmax(z) == np.argmax(q[b])))
    np.testing.assert_allclose(loss, np.mean(want_loss), rtol=1e-4)
    task = np.asarray(batch.task_id)
    for name, x in (("kl", kls), ("entropy", ents), ("agreement", agree)):
        got = np.asarray(m[f"{name}_per_task"])
        want = [np.mean(np.asarray(x)[task == i]) for i in (0, 2)]
        np.testing.assert_allclose(got[[0, 2]], want, rtol=1e-4, err_msg=name)
        assert np.isnan(got[1])
    np.testing.assert_allclose(m["agreement"], np.mean(agree), rtol=1e-6)
    assert (float(m["feature_loss"]) > 0) == (kind == "actor_mimic")


def test_feature_regression_reaches_only_the_student_torso_and_its_tasks_f_i():
    net = _student(hidden=(8,))
    config = d.LearnerConfig(d.DistillConfig("actor_mimic", feature_cost=1.0), (6, 6, 6))
    state = d.init_state(jax.random.PRNGKey(0), net, optax.adam(1e-3), config, jnp.zeros((1, 5)))
    batch = _batch(tasks=(1,))

    def feature_term(trainable):  # the feature regression term alone
        return d.batch_loss(trainable, batch, net, config)[1]["feature_loss"]

    g_params, g_reg = jax.grad(feature_term)((state.params, state.regression))
    norm = lambda tree: float(optax.global_norm(tree))  # noqa: E731
    assert norm(g_params["tasks"]["torso"]) > 1e-3
    assert norm(g_params["tasks"]["policy"]) == 0.0 and norm(g_params["tasks"]["value"]) == 0.0
    assert norm(jax.tree.map(lambda x: x[1], g_reg)) > 1e-3
    assert norm(jax.tree.map(lambda x: x[jnp.asarray([0, 2])], g_reg)) == 0.0


def test_update_steps_teach_a_fixed_batch():
    """200 Adam steps on one batch: the student's argmax agrees with every teacher output
    and the KL to softmax(q / tau) falls below 0.02 (from above 0.5)."""
    net = _student(hidden=(16,))
    config = d.LearnerConfig(d.DistillConfig("kl", tau=1.0))
    optimizer = optax.adam(3e-2)
    state = d.init_state(jax.random.PRNGKey(3), net, optimizer, config, jnp.zeros((1, 5)))
    batch = _batch(seed=4)
    _, first = d.batch_loss((state.params, state.regression), batch, net, config)
    for _ in range(200):
        state, metrics = d.update_step(
            state, batch, network=net, optimizer=optimizer, config=config
        )
    assert float(first["loss"]) > 0.5 and float(metrics["loss"]) < 0.02
    assert float(metrics["agreement"]) == 1.0 and int(state.step) == 200
    with pytest.raises(ValueError, match=r"feature_dims=\(6,\) needs one size per task \(3\)"):
        d.init_state(
            jax.random.PRNGKey(0), net, optimizer,
            d.LearnerConfig(d.DistillConfig("actor_mimic"), (6,)), jnp.zeros((1, 5)),
        )  # fmt: skip
