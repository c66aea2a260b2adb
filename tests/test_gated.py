"""Gated sub-policies (distral.core.gated): the gated sum, the sparsity and temporal
losses and their gradients, the gate switching rate, the activation-scaled learning
rates against plain Adam, and the network against a per-sample loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distral.core import gated
from distral.core.networks import make_torso


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_the_gated_sum_by_hand():
    f = jnp.array([[[1.0, 2.0, 3.0], [10.0, 0.0, -10.0]]])  # [1, K=2, A=3]
    g = jnp.array([[0.5, 0.1]])
    np.testing.assert_allclose(gated.gated_logits(f, g), [[1.5, 1.0, 0.5]], rtol=1e-6)


def test_sparsity_loss_and_its_gradient_by_hand():
    z = jnp.array([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]])  # gate logits [B=3, K=2]
    loss, grad = jax.value_and_grad(lambda z: gated.sparsity_loss(jax.nn.sigmoid(z)))(z)
    s = _sigmoid(np.asarray(z))
    assert float(loss) == pytest.approx(s[:, 0].mean() + s[:, 1].mean(), rel=1e-6)
    # d/dz_bk of sum_k mean_b sigma(z_bk) = sigma(1 - sigma) / B
    np.testing.assert_allclose(grad, s * (1 - s) / 3, rtol=1e-5)


def test_temporal_loss_stops_at_episode_boundaries_and_its_gradient_by_hand():
    g = jnp.array([[0.1, 0.9], [0.4, 0.8], [0.9, 0.1], [0.2, 0.2]])  # [T+1=4, K=2]
    d = jnp.array([1.0, 0.0, 0.5])  # an episode ends after a_1: s_2 starts a new one
    # (0.3^2 + 0.1^2) for 0 -> 1, nothing for 1 -> 2, (0.7^2 + 0.1^2) for 2 -> 3
    assert float(gated.temporal_loss(g, d)) == pytest.approx(0.09 + 0.01 + 0.49 + 0.01)
    assert float(gated.temporal_loss(g, jnp.zeros(3))) == 0.0
    grad = jax.grad(gated.temporal_loss)(g, d)
    # d/dg_t = 2 (g_t - g_{t-1}) [link t-1 -> t] - 2 (g_{t+1} - g_t) [link t -> t+1]
    want = np.array([[-0.6, 0.2], [0.6, -0.2], [1.4, -0.2], [-1.4, 0.2]])  # links 0-1 and 2-3 only
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_switching_rate_counts_crossings_of_one_half_within_episodes():
    g = jnp.array([[0.1, 0.9], [0.6, 0.8], [0.7, 0.2], [0.2, 0.3]])
    d = jnp.array([1.0, 1.0, 0.0])  # the last link crosses an episode boundary
    # links 0-1: gate 0 switches; 1-2: gate 1 switches; 2-3 not counted: 2 of 4
    assert float(gated.switching_rate(g, d)) == pytest.approx(0.5)
    assert np.isnan(float(gated.switching_rate(g, jnp.zeros(3))))


def test_activation_scaled_steps_are_adam_at_lr_over_the_running_activation():
    """After Adam, the sub-policies' steps are Adam's at lr / sigma_hat_k (capped at
    max_factor x lr), sigma_hat the running mean of the batches' gate means; every other
    parameter keeps Adam's step at lr."""
    lr, decay, cap = 0.1, 0.5, 4.0
    params = {"subpolicies": {"w": jnp.ones((3, 2))}, "torso": {"w": jnp.ones(2)}}
    grads = {"subpolicies": {"w": jnp.array([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]])}}
    grads["torso"] = {"w": jnp.array([0.5, -0.5])}
    scaled = optax.chain(
        optax.adam(lr), gated.scale_by_gate_activation(3, decay=decay, max_factor=cap)
    )
    plain = optax.adam(lr)
    state, plain_state = scaled.init(params), plain.init(params)
    activation = np.full(3, 0.5)
    for gate_mean in ([0.5, 0.1, 0.02], [0.3, 0.05, 0.01]):
        updates, state = scaled.update(grads, state, params, gate_mean=jnp.array(gate_mean))
        want, plain_state = plain.update(grads, plain_state, params)
        activation = decay * activation + (1 - decay) * np.array(gate_mean)
        factor = np.minimum(1 / activation, cap)
        np.testing.assert_allclose(
            updates["subpolicies"]["w"], want["subpolicies"]["w"] * factor[:, None], rtol=1e-6
        )
        np.testing.assert_allclose(updates["torso"]["w"], want["torso"]["w"], rtol=1e-6)
    # (0.5, 0.1, 0.02) then (0.3, 0.05, 0.01) from 0.5 at decay 0.5: (0.5, 0.3, 0.26),
    # then (0.4, 0.175, 0.135): factors 2.5, 4 (capped from 5.7), 4 (capped from 7.4)
    np.testing.assert_allclose(activation, [0.4, 0.175, 0.135])
    with pytest.raises(ValueError, match=r"max_factor=0\.5"):
        gated.scale_by_gate_activation(3, max_factor=0.5)


@pytest.fixture
def net_and_params():
    torso = make_torso("mlp", hidden_sizes=(5,))
    net = gated.make_gated_network(
        torso, num_tasks=3, num_actions=4, num_subpolicies=2, task_gates=True
    )
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)))
    # non-zero task gate biases and values, so a wrong task row would show
    params["gates"]["task"] = jax.random.normal(jax.random.PRNGKey(1), (3, 2))
    return net, params


def test_the_network_against_a_per_sample_loop(net_and_params):
    net, p = net_and_params
    obs = jax.random.normal(jax.random.PRNGKey(2), (5, 6))
    task_id = jnp.array([0, 2, 1, 1, 0])
    out = net.apply_gated(p, obs, task_id)
    for b in range(5):
        x = np.maximum(np.asarray(obs[b]) @ p["torso"]["Dense_0"]["kernel"]
                       + p["torso"]["Dense_0"]["bias"], 0.0)  # fmt: skip
        z = x @ p["gates"]["w"] + p["gates"]["b"] + p["gates"]["task"][task_id[b]]
        gates = _sigmoid(np.asarray(z))
        logits = sum(
            gates[k] * (x @ p["subpolicies"]["w"][k] + p["subpolicies"]["b"][k]) for k in range(2)
        )
        value = x @ p["values"]["w"][task_id[b]][:, 0] + p["values"]["b"][task_id[b]][0]
        np.testing.assert_allclose(out.gates[b], gates, rtol=1e-5)
        np.testing.assert_allclose(out.output.logits[b], logits, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.output.distilled_logits[b], logits, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.output.value[b], value, rtol=1e-4, atol=1e-6)


def test_one_task_parameters_and_rows_give_the_same_outputs(net_and_params):
    net, p = net_and_params
    obs = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 6))
    rows = net.apply_tasks(p, obs)
    for i in range(3):
        one = net.apply_task(net.task_params(p, i), obs[i], jnp.asarray(0))
        full = net.apply_task(p, obs[i], jnp.asarray(i))
        for got in (one, full):
            np.testing.assert_allclose(got.logits, rows.logits[i], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got.value, rows.value[i], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task_id=3"):
        net.task_params(p, 3)


def test_one_hot_task_gates_are_a_head_per_task(net_and_params):
    """K = N gates fixed one-hot on the task (gate weights 0, biases -30 except +30 on the
    task's own part): the known-task-indicator case, pi_i = softmax(f_i)."""
    torso = make_torso("mlp", hidden_sizes=(5,))
    net = gated.make_gated_network(
        torso, num_tasks=2, num_actions=3, num_subpolicies=2, task_gates=True
    )
    p = net.init(jax.random.PRNGKey(4), jnp.zeros((1, 6)))
    p["gates"] = {"w": jnp.zeros((5, 2)), "b": jnp.full(2, -30.0), "task": 60.0 * jnp.eye(2)}
    p["subpolicies"] = jax.tree.map(
        lambda x: 10 * jax.random.normal(jax.random.PRNGKey(5), x.shape), p["subpolicies"]
    )
    obs = jax.random.normal(jax.random.PRNGKey(6), (4, 6))
    features = torso.apply(p["torso"], obs)
    for i in range(2):
        head = features @ p["subpolicies"]["w"][i] + p["subpolicies"]["b"][i]
        got = net.apply_task(p, obs, jnp.asarray(i)).logits
        np.testing.assert_allclose(got, head, rtol=1e-5, atol=1e-5)


def test_the_learned_combination_starts_at_the_sum_and_matches_a_loop():
    """g linear: sum_k (sigma_k f_k) W_k + c, W_k = I and c = 0 at init (the sum's
    outputs); with random W_k and c, a per-sample loop; W and c get gradients."""
    torso = make_torso("mlp", hidden_sizes=(5,))
    sizes = dict(num_tasks=2, num_actions=3, num_subpolicies=2, task_gates=False)
    linear = gated.make_gated_network(torso, combination="linear", **sizes)
    summed = gated.make_gated_network(torso, **sizes)
    obs = jax.random.normal(jax.random.PRNGKey(2), (4, 6))
    task_id = jnp.array([0, 1, 1, 0])
    p = linear.init(jax.random.PRNGKey(0), obs)
    p_sum = summed.init(jax.random.PRNGKey(0), obs)
    assert set(p) - set(p_sum) == {"combine"}
    np.testing.assert_array_equal(p["combine"]["w"], np.stack([np.eye(3)] * 2))
    np.testing.assert_array_equal(p["combine"]["b"], np.zeros(3))
    np.testing.assert_allclose(  # one einsum against another: float32 rounding only
        linear.apply(p, obs, task_id).logits,
        summed.apply(p_sum, obs, task_id).logits,
        rtol=1e-6,
        atol=1e-9,
    )
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    p["combine"] = {"w": jax.random.normal(keys[0], (2, 3, 3)), "b": jax.random.normal(keys[1], 3)}
    p["gates"]["b"] = jax.random.normal(keys[2], (2,))
    out = linear.apply_gated(p, obs, task_id)
    x = np.maximum(
        np.asarray(obs) @ p["torso"]["Dense_0"]["kernel"] + p["torso"]["Dense_0"]["bias"], 0
    )
    for b in range(4):
        gates = _sigmoid(x[b] @ p["gates"]["w"] + p["gates"]["b"])
        f = [x[b] @ p["subpolicies"]["w"][k] + p["subpolicies"]["b"][k] for k in range(2)]
        want = sum(gates[k] * f[k] @ p["combine"]["w"][k] for k in range(2)) + p["combine"]["b"]
        np.testing.assert_allclose(out.output.logits[b], want, rtol=1e-4, atol=1e-5)
    grads = jax.grad(lambda q: jnp.sum(linear.apply(q, obs, task_id).logits[:, 0]))(p)
    assert np.all(np.asarray(grads["combine"]["b"]) == np.array([4.0, 0.0, 0.0]))
    assert np.any(np.asarray(grads["combine"]["w"]) != 0)
    with pytest.raises(ValueError, match=r"combination='max'; valid choices: sum, linear"):
        gated.make_gated_network(torso, combination="max", **sizes)


# ----------------------------------------------------------------------------------------
# THE VARIANTS IN THE DISTRAL LEARNER
# ----------------------------------------------------------------------------------------


def _experiment(variant="gated_task", **gated_settings):
    from distral.config import EnvConfig, GatedSection, TrainConfig
    from distral.experiment import make_experiment

    settings = dict(num_subpolicies=3, sparsity_cost=0.5, temporal_cost=2.0) | gated_settings
    config = TrainConfig(
        variant=variant,
        hidden_sizes=(8,),
        env=EnvConfig(num_tasks=2),
        learning_rate=0.01,
        gated=GatedSection(**settings),
    )
    return make_experiment(config)


def _batch(experiment, T=4, B=3):
    from distral.core import learning

    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    obs = jax.random.normal(keys[0], (T + 1, B, *experiment.obs_shape))
    discount = jnp.ones((T + 1, B)).at[1, 0].set(0.0).at[2, 2].set(0.0)
    return learning.Batch(
        observation=obs,
        action=jax.random.randint(keys[1], (T + 1, B), 0, experiment.network.num_actions),
        reward=jax.random.normal(keys[2], (T + 1, B)),
        discount=discount,
        behaviour_logits=jax.random.normal(keys[3], (T + 1, B, experiment.network.num_actions)),
        task_id=jnp.array([0, 1, 1]),
    )


def test_build_network_builds_both_gated_variants():
    """`learning.build_network`: the default K is the config's (`gated.num_subpolicies`);
    `gated_task`'s gates read the task id (its random task weights move them), `gated`'s
    do not."""
    from distral.config import GatedSection
    from distral.core import learning
    from distral.core.variants import get_variant

    torso = make_torso("mlp", hidden_sizes=(4,))
    obs = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
    for name, reads_task in (("gated", False), ("gated_task", True)):
        net = learning.build_network(get_variant(name), num_tasks=2, num_actions=3, torso=torso)
        assert net.num_subpolicies == GatedSection().num_subpolicies == 4
        p = net.init(jax.random.PRNGKey(0), obs)
        p = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(2), x.shape), p)
        gates = [net.apply_gated(p, obs, jnp.full(3, i)).gates for i in (0, 1)]
        assert (not np.allclose(gates[0], gates[1])) == reads_task, name
        assert "combine" not in p


def test_the_config_chooses_the_combination_and_checks_it():
    """`gated.combination` reaches the network through the experiment (g's parameters),
    and an unknown one is the config's one-line error."""
    from distral.config import ConfigError, load_config

    linear = _experiment(combination="linear")
    params = linear.network.init(jax.random.PRNGKey(0), jnp.zeros((1, *linear.obs_shape)))
    assert params["combine"]["w"].shape == (3, 4, 4)
    assert "combine" not in _experiment().network.init(
        jax.random.PRNGKey(0), jnp.zeros((1, *linear.obs_shape))
    )
    with pytest.raises(ConfigError, match=r"gated.combination='max'; valid choices: sum, linear"):
        load_config(None, ["variant=gated", "gated.combination=max"])


def test_the_learner_loss_is_the_a3c_loss_plus_the_two_gate_costs_by_a_loop():
    from distral.core import learning, losses

    experiment = _experiment()
    parts = experiment.parts
    params = parts.network.init(jax.random.PRNGKey(0), experiment.example_obs)
    batch = _batch(experiment)
    loss, metrics = learning.batch_loss(params, batch, parts.network, parts.learner_config)
    task_ids = jnp.broadcast_to(batch.task_id[None], batch.action.shape)
    out, gates = parts.network.apply_gated(params, batch.observation, task_ids)
    a3c = np.mean([
        losses.distral_loss(
            out.logits[:, b], out.distilled_logits[:, b], out.value[:, b], batch.action[:-1, b],
            batch.reward[:-1, b], batch.discount[:-1, b], batch.behaviour_logits[:-1, b],
            parts.learner_config,
        )[0]
        for b in range(3)
    ])  # fmt: skip
    g, d = np.asarray(gates), np.asarray(batch.discount)
    sparsity = sum(g[:, :, k].mean() for k in range(3))
    temporal = np.mean([
        sum(((g[t + 1, b] - g[t, b]) ** 2).sum() for t in range(4) if d[t, b] > 0)
        for b in range(3)
    ])  # fmt: skip
    assert parts.learner_config.entropy_cost == 0.01  # the A3C rows' bonus
    assert float(loss) == pytest.approx(a3c + 0.5 * sparsity + 2.0 * temporal, rel=1e-5)
    assert float(metrics["gate_sparsity"]) == pytest.approx(sparsity, rel=1e-5)
    assert float(metrics["gate_temporal"]) == pytest.approx(temporal, rel=1e-5)
    np.testing.assert_allclose(metrics["gate_mean"], g.mean(axis=(0, 1)), rtol=1e-5)


def test_the_update_scales_each_subpolicys_step_by_its_batch_activation():
    """Adam's first step is -lr g / (|g| + eps) per parameter; with the running mean's decay at 0
    the sub-policy k's step is that over E[sigma_k] of this batch (capped at 2), the
    torso's at torso_lr_scale 2 (2.0 itself: a scale tested only below 1 let `!= 2.0` pass),
    the gates' and values' unscaled."""
    from distral.core import learning

    experiment = _experiment(activation_decay=0.0, max_lr_factor=2.0, torso_lr_scale=2.0)
    parts = experiment.parts
    state = experiment.algorithm.init_state(jax.random.PRNGKey(0), parts, experiment.example_obs)
    batch = _batch(experiment)
    grads, metrics = jax.grad(learning.batch_loss, has_aux=True)(
        state.params, batch, parts.network, parts.learner_config
    )
    new, out_metrics = experiment.algorithm.update_step(state, batch, parts)
    factor = np.minimum(1 / np.asarray(metrics["gate_mean"]), 2.0)
    step = jax.tree.map(lambda a, b: np.asarray(a - b), new.params, state.params)
    adam = jax.tree.map(lambda g: -0.01 * np.asarray(g) / (np.abs(g) + 1e-8), grads)
    w = (3, 1, 1)  # sub-policy k's weights are [k, D, A]
    np.testing.assert_allclose(
        step["subpolicies"]["w"], adam["subpolicies"]["w"] * factor.reshape(w), atol=1e-6
    )
    torso = jax.tree.map(lambda a, b: np.abs(a - 2.0 * b).max(), step["torso"], adam["torso"])
    assert max(jax.tree.leaves(torso)) < 1e-6
    np.testing.assert_allclose(step["gates"]["w"], adam["gates"]["w"], atol=1e-6)
    assert float(out_metrics["gate_activation"]) == pytest.approx(
        float(np.mean(metrics["gate_mean"])), rel=1e-6
    )
    assert "gate_mean" not in out_metrics


# ----------------------------------------------------------------------------------------
# A GATED RUN: its metrics and its gates' heat map
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    """A tiny `gated_task` run of three two-room tasks (distral train, in process)."""
    from distral.config import load_config
    from distral.train import run

    settings = {
        "variant": "gated_task", "hidden_sizes": [8], "num_envs_per_task": 4,
        "unroll_length": 5, "log_every": 10, "env_steps_per_task": 400,
        "eval_episodes_per_task": 2, "env": {"num_tasks": 3, "max_steps": 20},
        "gated": {"num_subpolicies": 2},
    }  # fmt: skip
    out = tmp_path_factory.mktemp("gated") / "run"
    run(load_config(None, overrides=settings), out, progress=False)
    return out


def test_a_gated_run_logs_the_gates_metrics(gated_run):
    """Each row: the mean activation in (0, 1), the sparsity term K times it (both are
    means over the row's updates of E[sigma_k] summed, resp. averaged, over k), a
    switching rate in [0, 1], a non-negative temporal term, and the gates' gradients."""
    from distral.plotting import read_metrics

    metrics = read_metrics(gated_run)
    activation = np.asarray(metrics["gate_activation"])
    assert len(activation) == 2 and np.all((activation > 0) & (activation < 1))
    np.testing.assert_allclose(metrics["gate_sparsity"], 2 * activation, rtol=1e-5)
    assert np.all((np.asarray(metrics["gate_switching"]) >= 0) & (metrics["gate_switching"] <= 1))
    assert np.all(np.asarray(metrics["gate_temporal"]) >= 0)
    assert np.all(np.isfinite(metrics["grad_norm"]))


def test_distral_plot_gates_draws_the_mean_activation_per_task(gated_run, tmp_path):
    import csv
    import subprocess
    import sys

    out = tmp_path / "g.png"
    cmd = [sys.executable, "-m", "distral.cli", "plot", "--gates", str(gated_run)]
    cmd += ["--gate-steps", "100", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out) and out.stat().st_size > 0
    rows = list(csv.reader(open(tmp_path / "g.csv")))
    assert rows[0] == ["task", "sigma_0", "sigma_1"] and len(rows) == 4
    assert [r[0] for r in rows[1:]] == [r[0] for r in rows[1:] if r[0].startswith("goal (")]
    assert all(0 < float(x) < 1 for r in rows[1:] for x in r[1:])
