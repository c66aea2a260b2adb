"""update_step: it trains, with a flax torso and with a user's Haiku torso."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral import learning, losses, networks
from distral.config import TrainConfig
from distral.experiment import make_experiment
from distral.variants import get_variant

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
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    batch = _bandit_batch(jax.random.PRNGKey(3), params, network)
    E = B // N_TASKS
    batch = batch._replace(task_id=jnp.repeat(jnp.arange(N_TASKS), E))  # task-major
    grad = jax.grad(lambda p, g: learning.batch_loss(p, batch, network, config, g)[0])
    g_mixed, g_grouped = grad(params, False), grad(params, True)
    for x, y in zip(
        jax.tree_util.tree_leaves(g_mixed), jax.tree_util.tree_leaves(g_grouped), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    l1 = learning.batch_loss(params, batch, network, config, False)[0]
    l2 = learning.batch_loss(params, batch, network, config, True)[0]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    # The check can fail: mislabelled task ids change the loss.
    wrong = batch._replace(task_id=jnp.tile(jnp.arange(N_TASKS), E))
    assert abs(float(learning.batch_loss(params, wrong, network, config, False)[0] - l1)) > 1e-6


def _adam_updates(optimizer, params, grads_seq):
    state = optimizer.init(params)
    out = []
    for grads in grads_seq:
        updates, state = optimizer.update(grads, state, params)
        out.append(updates)
    return out


@pytest.mark.parametrize("variant, scaled", [("kl_2col", True), ("a3c_multitask", False)])
def test_distilled_lr_scale_multiplies_only_h_steps(variant, scaled):
    """Adam with h's rate scaled: h's steps are exactly scale x plain Adam's, the task
    columns' unchanged; h alone (a3c_multitask, no task columns) keeps the base rate."""
    config = TrainConfig(variant=variant, distilled_lr_scale=0.25, hidden_sizes=(8,))
    experiment = make_experiment(config)
    params = experiment.network.init(jax.random.PRNGKey(0), jnp.asarray(experiment.example_obs))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    grads_seq = [jax.tree.map(lambda x, k=k: jax.random.normal(k, x.shape), params) for k in keys]
    plain = _adam_updates(learning.make_optimizer(1e-3), params, grads_seq)
    ours = _adam_updates(experiment.optimizer, params, grads_seq)
    factor = 0.25 if scaled else 1.0
    for p, o in zip(plain, ours, strict=True):
        for name in p:
            expected = factor if name == "distilled" else 1.0
            for a, b in zip(jax.tree.leaves(p[name]), jax.tree.leaves(o[name]), strict=True):
                np.testing.assert_allclose(np.asarray(b), expected * np.asarray(a), rtol=1e-6)
    assert "distilled" in plain[0] and ("tasks" in plain[0]) == scaled
