"""update_step: it trains (flax and Haiku torsos), and its loss matches tests/reference.py."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from distral.config import TrainConfig
from distral.core import learning, losses, networks
from distral.core.variants import get_variant
from distral.experiment import make_experiment

N_TASKS, A, OBS, T, B = 2, 3, 4, 4, 16


@functools.partial(jax.jit, static_argnames="network")
def _bandit_batch(key, params, network):
    """On-policy unrolls of one-step episodes: task i pays +1 for action i, else 0."""
    k_obs, k_task, k_act = jax.random.split(key, 3)
    obs = jax.random.normal(k_obs, (T + 1, B, OBS))
    task = jax.random.randint(k_task, (B,), 0, N_TASKS)
    out = network.apply(params, obs.reshape(-1, OBS), jnp.tile(task, T + 1))
    logits = out.logits.reshape(T + 1, B, A)
    action = jax.random.categorical(k_act, logits)
    reward = (action == task[None]).astype(jnp.float32)
    discount = jnp.zeros((T + 1, B))  # every step ends its episode
    return learning.Batch(obs, action, reward, discount, logits, task)


def _train(torso, variant_name, steps=150, returns="nstep"):
    variant = get_variant(variant_name)
    network = learning.build_network(variant, num_tasks=N_TASKS, num_actions=A, torso=torso)
    optimizer = learning.make_optimizer(3e-2)
    config = losses.LossConfig.from_variant(variant, discount=0.9, returns=returns)
    state = learning.init_training_state(
        jax.random.PRNGKey(0), network, optimizer, jnp.zeros((1, OBS))
    )
    key = jax.random.PRNGKey(1)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        batch = _bandit_batch(sub, state.params, network)
        state, metrics = learning.update_step(
            state, batch, network=network, optimizer=optimizer, config=config
        )
    probe = jnp.zeros((N_TASKS, OBS))
    pi = jax.nn.softmax(network.apply(state.params, probe, jnp.arange(N_TASKS)).logits)
    return state, metrics, np.asarray(pi)


# Called jitted, as the trainer and the learner call them: one compiled program each.
# Eagerly, every operation is compiled on its own at its first shape, which made the first
# test to run one pay seconds for it (tests/test_gated.py runs batch_loss eagerly).
_batch_loss = jax.jit(learning.batch_loss, static_argnums=(2, 3, 4))


def _check_learned(pi):
    # Starts near uniform (1/3); must end on the rewarded action of each task.
    for i in range(N_TASKS):
        assert pi[i, i] > 0.9, pi


@pytest.mark.parametrize("variant", ["kl_ent_2col", "a3c"])
def test_update_step_trains_a_flax_torso(variant):
    state, metrics, pi = _train(networks.make_torso("mlp", hidden_sizes=(16,)), variant)
    _check_learned(pi)
    assert int(state.step) == 150
    assert metrics["kl_per_task"].shape == (N_TASKS,)
    assert np.isfinite(float(metrics["loss"]))


def test_update_step_trains_a_haiku_torso():
    def torso_fn(x):
        return jax.nn.relu(hk.Linear(16)(x))

    torso = networks.haiku_torso(hk.transform(torso_fn))
    state, _, pi = _train(torso, "kl_ent_2col", returns="vtrace")
    _check_learned(pi)
    # The Haiku parameters are in the state and were updated.
    leaves = jax.tree_util.tree_leaves(state.params["distilled"]["torso"])
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    init = learning.init_training_state(
        jax.random.PRNGKey(0),
        learning.build_network(
            get_variant("kl_ent_2col"), num_tasks=N_TASKS, num_actions=A, torso=torso
        ),
        learning.make_optimizer(3e-2),
        jnp.zeros((1, OBS)),
    )
    moved = jax.tree_util.tree_map(
        lambda a, b: float(jnp.abs(a - b).max()), state.params, init.params
    )
    assert max(jax.tree_util.tree_leaves(moved["tasks"]["torso"])) > 1e-3


def test_distilled_policy_moves_to_the_task_average():
    """pi_0 is distilled from the task policies: with two tasks preferring actions 0 and 1,
    pi_0 ends up splitting its mass between them, away from action 2."""
    state, _, _ = _train(networks.make_torso("mlp", hidden_sizes=(16,)), "kl_ent_1col", steps=250)
    network = learning.build_network(
        get_variant("kl_ent_1col"),
        num_tasks=N_TASKS,
        num_actions=A,
        torso=networks.make_torso("mlp", hidden_sizes=(16,)),
    )
    pi0 = np.asarray(
        jax.nn.softmax(
            network.apply(
                state.params, jnp.zeros((1, OBS)), jnp.zeros(1, jnp.int32)
            ).distilled_logits
        )
    )[0]
    assert pi0[2] < 0.15, pi0
    assert pi0[0] > 0.3 and pi0[1] > 0.3, pi0


def test_task_grouped_loss_equals_the_mixed_path():
    """The trainer's task-major fast path computes the same loss and gradient."""
    variant = get_variant("kl_ent_2col")
    network = learning.build_network(
        variant,
        num_tasks=N_TASKS,
        num_actions=A,
        torso=networks.make_torso("mlp", hidden_sizes=(8,)),
    )
    config = losses.LossConfig.from_variant(variant, discount=0.9)
    params = jax.jit(network.init)(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    batch = _bandit_batch(jax.random.PRNGKey(3), params, network)
    E = B // N_TASKS
    batch = batch._replace(task_id=jnp.repeat(jnp.arange(N_TASKS), E))  # task-major
    grad = jax.jit(
        jax.grad(lambda p, g: learning.batch_loss(p, batch, network, config, g)[0]),
        static_argnums=1,
    )
    g_mixed, g_grouped = grad(params, False), grad(params, True)
    for x, y in zip(
        jax.tree_util.tree_leaves(g_mixed), jax.tree_util.tree_leaves(g_grouped), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    l1 = _batch_loss(params, batch, network, config, False)[0]
    l2 = _batch_loss(params, batch, network, config, True)[0]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    # The check can fail: mislabelled task ids change the loss.
    wrong = batch._replace(task_id=jnp.tile(jnp.arange(N_TASKS), E))
    assert abs(float(_batch_loss(params, wrong, network, config, False)[0] - l1)) > 1e-6


def _adam_updates(optimizer, params, grads_seq):
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    out = []
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        out.append(updates)
    return out


@pytest.mark.parametrize(
    "variant, scale, scaled",
    [("kl_2col", 0.25, True), ("kl_2col", 2.0, True), ("a3c_multitask", 0.25, False)],
)
def test_distilled_lr_scale_multiplies_only_h_steps(variant, scale, scaled):
    """Adam with h's rate scaled: h's steps are exactly scale x plain Adam's, the task
    columns' unchanged; h alone (a3c_multitask, no task columns) keeps the base rate."""
    config = TrainConfig(variant=variant, distilled_lr_scale=scale, hidden_sizes=(8,))
    experiment = make_experiment(config)
    init = jax.jit(experiment.network.init)
    params = init(jax.random.PRNGKey(0), jnp.asarray(experiment.example_obs))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    grads_seq = [jax.tree.map(lambda x, k=k: jax.random.normal(k, x.shape), params) for k in keys]
    plain = _adam_updates(learning.make_optimizer(1e-3), params, grads_seq)
    ours = _adam_updates(experiment.parts.optimizer, params, grads_seq)
    factor = scale if scaled else 1.0
    for p, o in zip(plain, ours, strict=True):
        for name in p:
            expected = factor if name == "distilled" else 1.0
            for a, b in zip(jax.tree.leaves(p[name]), jax.tree.leaves(o[name]), strict=True):
                np.testing.assert_allclose(np.asarray(b), expected * np.asarray(a), rtol=1e-6)
    assert "distilled" in plain[0] and ("tasks" in plain[0]) == scaled


def test_per_task_metrics_are_means_over_each_tasks_unrolls():
    """kl/entropy/logit_spread per task against a plain-numpy reference on a mixed batch
    (one task with a single unroll), NaN for a task absent from the batch; one gradient
    norm per parameter group."""
    variant = get_variant("kl_ent_2col")
    torso = networks.make_torso("mlp", hidden_sizes=(8,))
    network = learning.build_network(variant, num_tasks=4, num_actions=A, torso=torso)
    config = losses.LossConfig.from_variant(variant, discount=0.9)
    params = jax.jit(network.init)(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    params = jax.tree.map(lambda x: x * 30.0, params)  # policies far from uniform
    rng = np.random.default_rng(5)
    task = jnp.asarray([0, 2, 0, 3, 2, 2, 2, 0], jnp.int32)  # task 1 absent, task 3 once
    obs = jnp.asarray(rng.normal(size=(T + 1, 8, OBS)), jnp.float32)
    out = jax.jit(network.apply)(params, obs, jnp.broadcast_to(task, (T + 1, 8)))
    batch = learning.Batch(
        obs,
        jnp.asarray(rng.integers(0, A, size=(T + 1, 8)), jnp.int32),
        jnp.asarray(rng.normal(size=(T + 1, 8)), jnp.float32),
        jnp.ones((T + 1, 8)),
        out.logits,
        task,
    )
    _, m = _batch_loss(params, batch, network, config, False)

    logits, h = np.asarray(out.logits[:-1], np.float64), np.asarray(out.distilled_logits[:-1])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p0 = np.exp(h) / np.exp(h).sum(-1, keepdims=True)
    per_step = {
        "kl": np.sum(p * np.log(p / p0), -1),
        "entropy": -np.sum(p * np.log(p), -1),
        "logit_spread": logits.max(-1) - logits.min(-1),
    }
    for name, x in per_step.items():
        unroll_means = x.mean(0)  # [8]
        want = [unroll_means[np.asarray(task) == i].mean() for i in (0, 2, 3)]
        got = np.asarray(m[f"{name}_per_task"])
        np.testing.assert_allclose(got[[0, 2, 3]], want, rtol=1e-4, err_msg=name)
        assert np.isnan(got[1]), name
    np.testing.assert_array_equal(m["unrolls_per_task"], [3, 0, 4, 1])

    optimizer = learning.make_optimizer(1e-3)
    state = learning.TrainingState(params, optimizer.init(params), jnp.zeros((), jnp.int32), None)
    _, metrics = learning.update_step(
        state, batch, network=network, optimizer=optimizer, config=config
    )
    grads = jax.jit(jax.grad(lambda q: learning.batch_loss(q, batch, network, config)[0]))(params)
    for part in ("distilled", "tasks"):
        want = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads[part])))
        np.testing.assert_allclose(metrics[f"grad_norm_{part}"], want, rtol=1e-4)


@pytest.mark.parametrize("task_columns", networks.TASK_COLUMNS)
def test_build_network_passes_the_task_columns_kind(task_columns):
    """build_network builds the columns it is asked for: its parameters have the layout of
    make_network's for that kind, which differs from the other kind's."""
    variant = get_variant("kl_ent_2col")
    torso = networks.make_torso("mlp", hidden_sizes=(8,))
    sizes = {"num_tasks": 2, "num_actions": A}

    def layout(net):
        params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
        return jax.tree.map(np.shape, params)

    built = layout(learning.build_network(variant, torso=torso, task_columns=task_columns, **sizes))
    layouts = {
        kind: layout(
            networks.make_network(
                "2col", torso=torso, task_columns=kind, alpha=0.5, beta=1.0, **sizes
            )
        )
        for kind in networks.TASK_COLUMNS
    }
    assert layouts["separate"] != layouts["shared_torso"]
    assert built == layouts[task_columns]


def test_init_training_state_splits_the_key_and_counts_from_int32_zero():
    """Parameters from the first half of the key, the state's rng is the second half, and
    the step is an int32 0 (checkpoints restore it into an int32 template)."""
    network = learning.build_network(
        get_variant("kl_ent_2col"),
        num_tasks=2,
        num_actions=A,
        torso=networks.make_torso("mlp", hidden_sizes=(8,)),
    )
    optimizer = learning.make_optimizer(1e-3)
    key = jax.random.PRNGKey(7)
    state = learning.init_training_state(key, network, optimizer, jnp.zeros((1, OBS)))
    params_key, rng = jax.random.split(key)
    want = network.init(params_key, jnp.zeros((1, OBS)))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state.rng, rng)
    assert state.step.dtype == jnp.int32 and state.step.shape == () and int(state.step) == 0


def test_task_column_output_logits_or_f():
    """2col: 'logits' adds the column's output as it is, 'f' multiplies it by beta; the
    same parameters give pi_i logits alpha h + column vs alpha h + beta column."""
    variant = get_variant("kl_ent_2col", beta=7.0)
    torso = networks.make_torso("mlp", hidden_sizes=(8,))
    nets = {
        out: learning.build_network(
            variant, num_tasks=2, num_actions=A, torso=torso, task_column_output=out
        )
        for out in ("logits", "f")
    }
    params = nets["f"].init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    params = jax.tree.map(lambda x: x * 50.0, params)  # columns far from zero
    obs, task = jnp.ones((3, OBS)), jnp.array([0, 1, 1])
    literal, scaled = nets["f"].apply(params, obs, task), nets["logits"].apply(params, obs, task)
    h = literal.distilled_logits
    column = scaled.logits - 0.5 * h
    np.testing.assert_allclose(literal.logits, 0.5 * h + 7.0 * column, rtol=1e-4, atol=1e-3)
    assert float(jnp.abs(column).max()) > 1.0
    with pytest.raises(ValueError, match="task_column_output='x'"):
        learning.build_network(
            variant, num_tasks=2, num_actions=A, torso=torso, task_column_output="x"
        )


# THE LOSS OF A LINEAR NETWORK AGAINST THE PLAIN-PYTHON REFERENCE (tests/reference.py)


def _linear_case(task_ids, task_column_output="logits", seed=0):
    """A kl_ent_2col linear network (torso = identity) with O(1) random parameters and a
    hand-made V-trace batch of T=3 steps whose importance weights straddle the clips."""
    variant = get_variant("kl_ent_2col", beta=4.0)
    network = learning.build_network(
        variant,
        num_tasks=3,
        num_actions=A,
        torso=networks.make_torso("mlp", hidden_sizes=()),
        task_column_output=task_column_output,
    )
    config = losses.LossConfig.from_variant(
        variant, discount=0.9, returns="vtrace", clip_rho=1.5, clip_pg_rho=2.0
    )
    rng = np.random.default_rng(seed)
    # Only the parameters' shapes: every value is drawn below.
    params = jax.eval_shape(network.init, jax.random.PRNGKey(seed), jnp.zeros((1, OBS)))
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    T1, Bb = 4, len(task_ids)
    discount = np.ones((T1, Bb), np.float32)
    discount[1, 0] = 0.0  # an episode ends inside the first unroll
    batch = learning.Batch(
        observation=jnp.asarray(rng.normal(size=(T1, Bb, OBS)), jnp.float32),
        action=jnp.asarray(rng.integers(0, A, size=(T1, Bb)), jnp.int32),
        reward=jnp.asarray(rng.normal(size=(T1, Bb)), jnp.float32),
        discount=jnp.asarray(discount),
        behaviour_logits=jnp.asarray(2.0 * rng.normal(size=(T1, Bb, A)), jnp.float32),
        task_id=jnp.asarray(task_ids, jnp.int32),
    )
    return network, config, params, batch


@pytest.mark.parametrize(
    "task_ids, grouped, column_output",
    [
        ([0, 2, 0, 2, 2], False, "logits"),  # task 1 absent: NaN per-task metrics
        ([0, 2, 0, 2, 2], False, "f"),  # the network multiplies the column by beta = 4
        ([0, 0, 1, 1, 2, 2], True, "logits"),  # the trainer's task-major layout
    ],
)
def test_batch_loss_of_a_linear_network_matches_the_python_reference(
    task_ids, grouped, column_output
):
    """Loss, its policy and value terms, and kl / entropy / logit spread per task, from
    the parameters by hand: logits alpha h + s f_i with s = beta under 'f' (1 under
    'logits'), the behaviour logits of step t weighting the action of step t, V-trace
    with rho-bar 1.5 and the policy-gradient clip 2."""
    network, config, params, batch = _linear_case(task_ids, column_output)
    loss, m = _batch_loss(params, batch, network, config, grouped)
    want, per_unroll = reference.linear_2col_vtrace_loss(
        params,
        batch,
        alpha=0.5,
        beta=4.0,
        column_scale=4.0 if column_output == "f" else 1.0,
        gamma=0.9,
        clip_rho=1.5,
        clip_pg_rho=2.0,
    )
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    np.testing.assert_allclose(m["policy_loss"], per_unroll["policy"].mean(), rtol=1e-4)
    np.testing.assert_allclose(m["value_loss"], per_unroll["value"].mean(), rtol=1e-4)
    task = np.asarray(task_ids)
    for name in ("kl", "entropy", "logit_spread"):
        got = np.asarray(m[f"{name}_per_task"])
        for i in range(3):
            if (task == i).any():
                want_i = np.asarray(per_unroll[name])[task == i].mean()
                np.testing.assert_allclose(got[i], want_i, rtol=1e-4, err_msg=f"{name} {i}")
            else:
                assert np.isnan(got[i]), name
    np.testing.assert_array_equal(m["unrolls_per_task"], np.bincount(task, minlength=3))
