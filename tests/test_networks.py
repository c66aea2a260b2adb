"""Tests for distral.networks: shapes, the 2col formula, task selection and isolation."""

from pathlib import Path

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral.core import networks

NUM_TASKS = 3
NUM_ACTIONS = 4
BATCH = 5
OBS_SHAPE = (3, 2)  # Non-flat on purpose: the MLP flattens trailing dims.
HIDDEN = (8, 6)
TASK_ID = np.array([0, 1, 2, 1, 0], np.int32)


def _obs(key=0, shape=(BATCH, *OBS_SHAPE)):
    return jax.random.normal(jax.random.PRNGKey(key), shape)


def _build(architecture, task_columns="separate", alpha=1.0, beta=1.0, torso=None):
    torso = torso or networks.make_torso("mlp", hidden_sizes=HIDDEN)
    net = networks.make_network(
        architecture,
        num_tasks=NUM_TASKS,
        num_actions=NUM_ACTIONS,
        torso=torso,
        task_columns=task_columns,
        alpha=alpha,
        beta=beta,
    )
    params = net.init(jax.random.PRNGKey(42), _obs())
    return net, params, torso


def _numpy_mlp(torso_params, obs):
    """The MLP torso evaluated by hand in numpy."""
    x = np.asarray(obs, np.float64).reshape(obs.shape[0], -1)
    for i in range(len(HIDDEN)):
        layer = torso_params[f"Dense_{i}"]
        x = np.maximum(x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]), 0.0)
    return x


def _slice_task(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _reference(net, params, torso, task_columns, obs, i, alpha=1.0, beta=1.0):
    """Outputs for obs [B, ...] all from task i, built from params sliced at task i."""
    arch = net.architecture
    h = None
    if arch != "independent":
        d = params["distilled"]
        h_features = torso.apply(d["torso"], obs)
        h = h_features @ d["policy"]["w"] + d["policy"]["b"]
    if arch == "shared":
        v = _slice_task(params["values"], i)
        return h, h, (h_features @ v["w"] + v["b"])[:, 0]
    tasks = params["tasks"]
    torso_params = (
        tasks["torso"] if task_columns == "shared_torso" else _slice_task(tasks["torso"], i)
    )
    features = torso.apply(torso_params, obs)
    pol, val = _slice_task(tasks["policy"], i), _slice_task(tasks["value"], i)
    f = features @ pol["w"] + pol["b"]
    value = (features @ val["w"] + val["b"])[:, 0]
    if arch == "independent":
        return f, np.zeros_like(f), value
    if arch == "1col":
        return f, h, value
    return alpha * h + beta * f, h, value


ALL = [(a, c) for a in networks.ARCHITECTURES for c in networks.TASK_COLUMNS]


@pytest.mark.parametrize("architecture,task_columns", ALL)
def test_output_shapes_under_jit(architecture, task_columns):
    net, params, _ = _build(architecture, task_columns)
    obs = _obs()
    out = jax.jit(net.apply)(params, obs, TASK_ID)
    assert out.logits.shape == (BATCH, NUM_ACTIONS)
    assert out.distilled_logits.shape == (BATCH, NUM_ACTIONS)
    assert out.value.shape == (BATCH,)
    rows = jax.jit(net.apply_tasks)(params, _obs(1, (NUM_TASKS, BATCH, *OBS_SHAPE)))
    assert rows.logits.shape == (NUM_TASKS, BATCH, NUM_ACTIONS)
    assert rows.distilled_logits.shape == (NUM_TASKS, BATCH, NUM_ACTIONS)
    assert rows.value.shape == (NUM_TASKS, BATCH)
    # Leading dims beyond the batch: obs [T, B, ...] with task_id [T, B].
    seq = jax.jit(net.apply)(params, _obs(2, (2, BATCH, *OBS_SHAPE)), np.stack([TASK_ID] * 2))
    assert seq.logits.shape == (2, BATCH, NUM_ACTIONS)
    assert seq.value.shape == (2, BATCH)
    # jit and no-jit agree.
    eager = net.apply(params, obs, TASK_ID)
    for a, b in zip(out, eager, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert net.num_tasks == NUM_TASKS and net.num_actions == NUM_ACTIONS
    assert net.architecture == architecture
    if architecture == "independent":
        assert "distilled" not in params
        np.testing.assert_array_equal(out.distilled_logits, 0.0)


@pytest.mark.parametrize("task_columns", networks.TASK_COLUMNS)
def test_2col_logits_are_alpha_h_plus_beta_f_by_hand(task_columns):
    alpha, beta = 0.5, 3.0
    net, params, _ = _build("2col", task_columns, alpha=alpha, beta=beta)
    obs = np.asarray(_obs())
    out = jax.jit(net.apply)(params, obs, TASK_ID)
    d, tasks = params["distilled"], params["tasks"]
    h = _numpy_mlp(d["torso"], obs) @ np.asarray(d["policy"]["w"]) + np.asarray(d["policy"]["b"])
    for b, i in enumerate(TASK_ID):
        tp = tasks["torso"] if task_columns == "shared_torso" else _slice_task(tasks["torso"], i)
        features = _numpy_mlp(tp, obs[b : b + 1])
        f = features @ np.asarray(tasks["policy"]["w"][i]) + np.asarray(tasks["policy"]["b"][i])
        v = features @ np.asarray(tasks["value"]["w"][i]) + np.asarray(tasks["value"]["b"][i])
        np.testing.assert_allclose(out.logits[b], alpha * h[b] + beta * f[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.value[b], v[0, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.distilled_logits, h, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("architecture,task_columns", ALL)
def test_task_features_are_what_pi_i_reads(architecture, task_columns):
    """task_features by hand (numpy MLPs): h's features for 'shared', the task column's for
    'independent' and '1col', both for '2col'; pi_i's logits are an affine map of them made
    of the network's own heads (alpha h + beta f for 2col)."""
    alpha, beta = 0.5, 3.0
    net, params, _ = _build(architecture, task_columns, alpha=alpha, beta=beta)
    obs = np.asarray(_obs(3))
    n = np.asarray
    for i in range(NUM_TASKS):
        got = np.asarray(jax.jit(net.task_features)(params, obs, jnp.int32(i)))
        parts, weights, biases = [], [], []
        if architecture in ("shared", "2col"):
            d = params["distilled"]
            parts.append(_numpy_mlp(d["torso"], obs))
            scale = 1.0 if architecture == "shared" else alpha
            weights.append(scale * n(d["policy"]["w"]))
            biases.append(scale * n(d["policy"]["b"]))
        if architecture != "shared":
            tasks = params["tasks"]
            tp = (
                tasks["torso"] if task_columns == "shared_torso" else _slice_task(tasks["torso"], i)
            )
            parts.append(_numpy_mlp(tp, obs))
            scale = beta if architecture == "2col" else 1.0
            weights.append(scale * n(tasks["policy"]["w"][i]))
            biases.append(scale * n(tasks["policy"]["b"][i]))
        want = np.concatenate(parts, axis=-1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert got.shape == (BATCH, sum(p.shape[1] for p in parts))
        logits = net.apply(params, obs, jnp.full((BATCH,), i, jnp.int32)).logits
        affine = want @ np.concatenate(weights, axis=0) + sum(biases)
        np.testing.assert_allclose(logits, affine, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture,task_columns", ALL)
def test_apply_single_task_equals_apply_tasks_row(architecture, task_columns):
    net, params, _ = _build(architecture, task_columns, alpha=0.5, beta=2.0)
    # Every parameter random (initial biases are zero): each path adds its own biases.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    params = jax.tree.unflatten(
        treedef, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    rows_obs = _obs(3, (NUM_TASKS, BATCH, *OBS_SHAPE))
    rows = jax.jit(net.apply_tasks)(params, rows_obs)
    for i in range(NUM_TASKS):
        out = jax.jit(net.apply)(params, rows_obs[i], np.full((BATCH,), i, np.int32))
        one = jax.jit(net.apply_task)(params, rows_obs[i], np.int32(i))  # column i alone
        sliced = net.task_params(params, i)  # column i's parameters alone, as task 0
        stacked = sliced["tasks"]["policy"] if "tasks" in sliced else sliced["values"]
        assert all(x.shape[0] == 1 for x in jax.tree.leaves(stacked))
        alone = jax.jit(net.apply_task)(sliced, rows_obs[i], np.int32(0))
        for a, c, d, b in zip(out, one, alone, rows, strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(c, b[i], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(d, b[i], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task_id=3 is outside"):
        net.task_params(params, NUM_TASKS)


@pytest.mark.parametrize("architecture,task_columns", ALL)
def test_mixed_task_ids_pick_own_column(architecture, task_columns):
    alpha, beta = 0.5, 2.0
    net, params, torso = _build(architecture, task_columns, alpha=alpha, beta=beta)
    obs = _obs(4)
    out = jax.jit(net.apply)(params, obs, TASK_ID)
    for b, i in enumerate(TASK_ID):
        ref = _reference(net, params, torso, task_columns, obs[b : b + 1], i, alpha, beta)
        for got, want in zip(out, ref, strict=True):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-5, atol=1e-6)
    # Columns really differ, so picking the wrong one would fail above.
    if architecture != "shared":
        other = jax.jit(net.apply)(params, obs, (TASK_ID + 1) % NUM_TASKS)
        assert not np.allclose(other.logits, out.logits)


def _grad(net, params, obs, task_id, field):
    def loss(p):
        return jnp.sum(getattr(net.apply(p, obs, task_id), field))

    return jax.jit(jax.grad(loss))(params)


def _all_zero(tree):
    return all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tree))


def _all_nonzero(tree):
    return all(bool(jnp.any(x != 0)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("architecture", ["independent", "1col", "2col"])
@pytest.mark.parametrize("task_columns", networks.TASK_COLUMNS)
def test_gradient_isolation_between_tasks(architecture, task_columns):
    net, params, _ = _build(architecture, task_columns)
    task_id = np.ones((BATCH,), np.int32)  # Task 1 only.
    grads = _grad(net, params, _obs(5), task_id, "logits")["tasks"]
    stacked = {"policy": grads["policy"], "value": grads["value"]}
    if task_columns == "separate":
        stacked["torso"] = grads["torso"]
    for i in (0, 2):
        assert _all_zero(_slice_task(stacked, i)), f"task {i} got gradient from task 1"
    assert _all_nonzero(_slice_task({k: v for k, v in stacked.items() if k != "value"}, 1))
    # Value heads get no gradient from the logits at all.
    assert _all_zero(grads["value"])
    if task_columns == "shared_torso":
        assert _all_nonzero(grads["torso"])


@pytest.mark.parametrize("task_columns", networks.TASK_COLUMNS)
def test_distilled_gradients_1col_and_2col(task_columns):
    obs, task_id = _obs(6), TASK_ID
    net, params, _ = _build("1col", task_columns)
    assert _all_zero(_grad(net, params, obs, task_id, "logits")["distilled"])
    assert _all_nonzero(_grad(net, params, obs, task_id, "distilled_logits")["distilled"])
    assert _all_zero(_grad(net, params, obs, task_id, "distilled_logits")["tasks"])
    # 2col: the policy's gradient flows into theta0 too (joint optimisation, DESIGN 1.2).
    net, params, _ = _build("2col", task_columns)
    assert _all_nonzero(_grad(net, params, obs, task_id, "logits")["distilled"])


def test_shared_architecture_same_policy_per_task_values():
    net, params, _ = _build("shared")
    assert set(params) == {"distilled", "values"}
    assert params["values"]["w"].shape == (NUM_TASKS, HIDDEN[-1], 1)
    obs = _obs(7)
    outs = [net.apply(params, obs, np.full((BATCH,), i, np.int32)) for i in range(NUM_TASKS)]
    for out in outs:
        np.testing.assert_array_equal(out.logits, outs[0].logits)
        np.testing.assert_array_equal(out.distilled_logits, out.logits)
    for i in range(NUM_TASKS):
        for j in range(i + 1, NUM_TASKS):
            assert not np.allclose(outs[i].value, outs[j].value)


def _num_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("architecture", ["independent", "1col", "2col"])
def test_shared_torso_is_smaller_and_unstacked(architecture):
    _, separate, _ = _build(architecture, "separate")
    _, shared, _ = _build(architecture, "shared_torso")
    assert _num_params(shared) < _num_params(separate)
    assert len(jax.tree.leaves(shared)) == len(jax.tree.leaves(separate))
    # The shared task torso has no task axis; the separate one does.
    assert shared["tasks"]["torso"]["Dense_0"]["kernel"].shape == (np.prod(OBS_SHAPE), HIDDEN[0])
    assert separate["tasks"]["torso"]["Dense_0"]["kernel"].shape == (
        NUM_TASKS,
        np.prod(OBS_SHAPE),
        HIDDEN[0],
    )
    assert shared["tasks"]["policy"]["w"].shape == (NUM_TASKS, HIDDEN[-1], NUM_ACTIONS)


def test_task_columns_are_initialised_differently_and_policies_near_uniform():
    net, params, _ = _build("2col")
    kernels = params["tasks"]["torso"]["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])
    assert not np.allclose(kernels[0], params["distilled"]["torso"]["Dense_0"]["kernel"])
    probs = jax.nn.softmax(net.apply(params, _obs(8), TASK_ID).logits)
    np.testing.assert_allclose(probs, 1.0 / NUM_ACTIONS, atol=0.02)


def _head_by_hand(key, in_dim, out_dim, scale):
    init = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
    return {"w": init(key, (in_dim, out_dim), jnp.float32), "b": jnp.zeros((out_dim,))}


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _init_by_hand(architecture, task_columns, torso, key, obs):
    """The documented key schedule, one split at a time: (h, tasks) = split(key); h splits
    into (torso, policy); 'separate' splits the tasks key into N columns of (torso, policy,
    value); 'shared_torso' into (torso, policy, value) with N heads per head key; 'shared'
    splits it into N value heads on h's features. Policy heads scale 1e-4, value heads 1."""
    dim, num = HIDDEN[-1], NUM_TASKS
    distilled_key, tasks_key = jax.random.split(key)
    params = {}
    if architecture != "independent":
        torso_key, policy_key = jax.random.split(distilled_key)
        params["distilled"] = {
            "torso": torso.init(torso_key, obs),
            "policy": _head_by_hand(policy_key, dim, NUM_ACTIONS, 1e-4),
        }
    if architecture == "shared":
        keys = jax.random.split(tasks_key, num)
        params["values"] = _stack([_head_by_hand(k, dim, 1, 1.0) for k in keys])
        return params
    if task_columns == "separate":
        columns = []
        for column_key in jax.random.split(tasks_key, num):
            torso_key, policy_key, value_key = jax.random.split(column_key, 3)
            columns.append(
                {
                    "torso": torso.init(torso_key, obs),
                    "policy": _head_by_hand(policy_key, dim, NUM_ACTIONS, 1e-4),
                    "value": _head_by_hand(value_key, dim, 1, 1.0),
                }
            )
        params["tasks"] = _stack(columns)
        return params
    torso_key, policy_key, value_key = jax.random.split(tasks_key, 3)
    policy_keys, value_keys = jax.random.split(policy_key, num), jax.random.split(value_key, num)
    params["tasks"] = {
        "torso": torso.init(torso_key, obs),
        "policy": _stack([_head_by_hand(k, dim, NUM_ACTIONS, 1e-4) for k in policy_keys]),
        "value": _stack([_head_by_hand(k, dim, 1, 1.0) for k in value_keys]),
    }
    return params


@pytest.mark.parametrize("architecture,task_columns", ALL)
def test_init_follows_the_documented_key_schedule(architecture, task_columns):
    """Pins how init consumes PRNG keys, so a restructuring cannot silently change runs."""
    _, params, torso = _build(architecture, task_columns)
    want = _init_by_hand(architecture, task_columns, torso, jax.random.PRNGKey(42), _obs())
    assert jax.tree.structure(params) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_nature_cnn_shape_and_uint8_scaling():
    torso = networks.make_torso("nature_cnn")
    pixels = jax.random.randint(jax.random.PRNGKey(0), (2, 84, 84, 4), 0, 256).astype(jnp.uint8)
    params = jax.jit(torso.init)(jax.random.PRNGKey(1), pixels)
    apply = jax.jit(torso.apply)
    features = apply(params, pixels)
    assert features.shape == (2, 512)
    scaled = apply(params, pixels.astype(jnp.float32) / 255.0)
    np.testing.assert_allclose(features, scaled, rtol=1e-5, atol=1e-6)
    assert not np.allclose(features, apply(params, pixels.astype(jnp.float32)))


def test_torso_width_sizes_the_cnns_last_layer():
    """`torso_width` (config) -> each CNN's last dense layer; None keeps the papers' sizes.
    MinAtar's: a 3x3 VALID conv of 16 channels on 10x10 -> 8 * 8 * 16 = 1,024 inputs."""
    from distral.config import load_config
    from distral.core.algorithm import torso_of

    frames = jnp.zeros((2, 10, 10, 4))
    for width, units in ((None, 128), (512, 512)):
        torso = networks.make_torso("minatar_cnn", width=width)
        params = torso.init(jax.random.PRNGKey(0), frames)
        assert params["Dense_0"]["kernel"].shape == (1024, units)
        assert torso.apply(params, frames).shape == (2, units)
        count = sum(x.size for x in jax.tree.leaves(params))
        assert count == 3 * 3 * 4 * 16 + 16 + 1024 * units + units
    pixels = jnp.zeros((1, 84, 84, 4), jnp.uint8)
    nature = networks.make_torso("nature_cnn", width=64)
    assert nature.apply(nature.init(jax.random.PRNGKey(0), pixels), pixels).shape == (1, 64)
    impala = networks.make_torso("impala_resnet", width=32)
    assert impala.apply(impala.init(jax.random.PRNGKey(0), pixels), pixels).shape == (1, 32)
    preset = Path(__file__).resolve().parents[1] / "experiments" / "minatar_distill.yaml"
    torso = torso_of(load_config(preset, ["torso_width=256"]))
    assert torso.apply(torso.init(jax.random.PRNGKey(0), frames), frames).shape == (2, 256)


def _lax_impala(params, x):
    """The IMPALA ResNet written with lax primitives: per stage a 3x3 conv, a 3x3 max-pool
    of stride 2 and two residual blocks x + conv(relu(conv(relu(x)))); then relu, flatten
    and a relu Dense layer."""

    def conv(p, y):
        out = jax.lax.conv_general_dilated(
            y, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return out + p["bias"]

    block = 0
    for stage in range(3):
        x = conv(params[f"Conv_{stage}"], x)
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
        for _ in range(2):
            p = params[f"_ResidualBlock_{block}"]
            x = x + conv(p["Conv_1"], jax.nn.relu(conv(p["Conv_0"], jax.nn.relu(x))))
            block += 1
    x = jax.nn.relu(x).reshape((x.shape[0], -1))
    return jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])


def test_impala_resnet_against_lax_by_hand():
    """12x12 pixels pool to 6, 3, 2: 2 * 2 * 32 features into the 256-unit layer; uint8
    pixels enter as x / 255."""
    torso = networks.make_torso("impala_resnet")
    pixels = jax.random.randint(jax.random.PRNGKey(0), (2, 12, 12, 3), 0, 256).astype(jnp.uint8)
    params = torso.init(jax.random.PRNGKey(1), pixels)
    params = jax.tree_util.tree_map_with_path(  # non-zero biases
        lambda path, x: x + 0.05 if path[-1].key == "bias" else x, params
    )
    assert params["Dense_0"]["kernel"].shape == (2 * 2 * 32, 256)
    features = jax.jit(torso.apply)(params, pixels)
    want = jax.jit(_lax_impala)(params, pixels.astype(jnp.float32) / 255.0)
    assert features.shape == (2, 256)
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-5)
    assert 0.2 < float(jnp.mean(want > 0)) < 1.0  # relu both active and cut


def test_unknown_names_raise_with_choices():
    with pytest.raises(ValueError, match="unknown torso 'bad'; valid choices: mlp, nature_cnn"):
        networks.make_torso("bad")
    torso = networks.make_torso("mlp")
    choices = "unknown architecture '3col'; valid choices: independent, shared, 1col, 2col"
    with pytest.raises(ValueError, match=f"^{choices}$"):
        networks.make_network("3col", num_tasks=2, num_actions=2, torso=torso)
    with pytest.raises(ValueError, match=r"^unknown task_columns 'x'; valid choices: separate,"):
        networks.make_network("1col", num_tasks=2, num_actions=2, torso=torso, task_columns="x")
    # One task and one action are enough; none is an error naming both counts.
    one = networks.make_network("2col", num_tasks=1, num_actions=1, torso=torso)
    params = one.init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))
    assert one.apply(params, jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32)).logits.shape == (2, 1)
    for tasks, actions in ((0, 2), (2, 0)):
        with pytest.raises(ValueError, match=f"got {tasks}, {actions}$"):
            networks.make_network("2col", num_tasks=tasks, num_actions=actions, torso=torso)


def test_apply_tasks_rejects_wrong_number_of_rows():
    net, params, _ = _build("1col")
    with pytest.raises(ValueError, match="apply_tasks needs obs"):
        net.apply_tasks(params, _obs(0, (NUM_TASKS + 1, BATCH, *OBS_SHAPE)))


def test_a_flax_torso_with_state_beside_its_params_is_refused():
    class Normed(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=False)(x.reshape((x.shape[0], -1)))

    torso = networks.flax_torso(Normed())
    with pytest.raises(
        ValueError,
        match=r"^torso modules may only hold 'params'; got collections \['batch_stats'\]$",
    ):
        torso.init(jax.random.PRNGKey(0), _obs())


def test_make_network_mixes_2col_with_alpha_and_beta_1_by_default():
    torso = networks.make_torso("mlp", hidden_sizes=HIDDEN)
    sizes = {"num_tasks": NUM_TASKS, "num_actions": NUM_ACTIONS, "torso": torso}
    default = networks.make_network("2col", **sizes)
    explicit = networks.make_network("2col", alpha=1.0, beta=1.0, **sizes)
    params = default.init(jax.random.PRNGKey(1), _obs())
    params = jax.tree.map(lambda x: x + 0.3, params)  # biases away from 0
    a, b = default.apply(params, _obs(), TASK_ID), explicit.apply(params, _obs(), TASK_ID)
    np.testing.assert_array_equal(a.logits, b.logits)
    doubled = networks.make_network("2col", alpha=2.0, beta=2.0, **sizes)
    assert not np.allclose(doubled.apply(params, _obs(), TASK_ID).logits, a.logits)


def test_shape_errors_name_the_shapes():
    net, params, torso = _build("2col")
    with pytest.raises(
        ValueError, match=r"^obs \(5, 3, 2\) must start with task_id's shape \(4,\)$"
    ):
        net.apply(params, _obs(), jnp.zeros(4, jnp.int32))
    cube = networks.Torso(init=torso.init, apply=lambda p, obs: obs)  # [B, 3, 2]: not [B, D]
    bad = networks.make_network("2col", num_tasks=2, num_actions=3, torso=cube)
    with pytest.raises(
        ValueError, match=r"^a torso must return \[B, D\] features, got shape \(5, 3, 2\)$"
    ):
        bad.init(jax.random.PRNGKey(0), _obs())


def test_single_task_functions_take_one_task_id():
    """apply_task and task_features run one column: a task_id per sample is refused (it
    would pick a column by its first entry)."""
    net, params, _ = _build("2col", "shared_torso")
    for fn in (net.apply_task, net.task_features):
        with pytest.raises(AssertionError):
            fn(params, _obs(), jnp.asarray([0, 1, 2, 1, 0]))


def _haiku_mlp(obs):
    x = obs.reshape((obs.shape[0], -1))
    for size in HIDDEN:
        x = jax.nn.relu(hk.Linear(size)(x))
    return x


def _numpy_haiku_mlp(torso_params, obs):
    """`_haiku_mlp` by hand: Haiku names its layers linear, linear_1, ..."""
    x = np.asarray(obs, np.float64).reshape(obs.shape[0], -1)
    for i in range(len(HIDDEN)):
        layer = torso_params["linear" if i == 0 else f"linear_{i}"]
        x = np.maximum(x @ np.asarray(layer["w"]) + np.asarray(layer["b"]), 0.0)
    return x


@pytest.mark.parametrize("task_columns", networks.TASK_COLUMNS)
def test_haiku_torso_in_2col_under_jit_by_hand(task_columns):
    """A Haiku torso in every column: logits alpha h + beta f_i and V_i from the Haiku
    parameters by hand (stacked on a task axis for separate columns)."""
    alpha, beta = 0.5, 3.0
    torso = networks.haiku_torso(hk.transform(_haiku_mlp))
    net, params, _ = _build("2col", task_columns, alpha=alpha, beta=beta, torso=torso)
    obs = np.asarray(_obs(9))
    out = jax.jit(net.apply)(params, obs, TASK_ID)
    d, tasks = params["distilled"], params["tasks"]
    head = lambda x, p: x @ np.asarray(p["w"]) + np.asarray(p["b"])  # noqa: E731
    h = head(_numpy_haiku_mlp(d["torso"], obs), d["policy"])
    for b, i in enumerate(TASK_ID):
        tp = tasks["torso"] if task_columns == "shared_torso" else _slice_task(tasks["torso"], i)
        features = _numpy_haiku_mlp(tp, obs[b : b + 1])
        f = head(features, _slice_task(tasks["policy"], i))[0]
        v = head(features, _slice_task(tasks["value"], i))[0, 0]
        np.testing.assert_allclose(out.logits[b], alpha * h[b] + beta * f, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.value[b], v, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.distilled_logits, h, rtol=1e-4, atol=1e-6)


def test_haiku_torso_matches_flax_mlp_with_copied_weights():
    flax_torso = networks.make_torso("mlp", hidden_sizes=HIDDEN)
    obs = _obs(10)
    flax_params = flax_torso.init(jax.random.PRNGKey(0), obs)
    for transformed in (hk.transform(_haiku_mlp), hk.without_apply_rng(hk.transform(_haiku_mlp))):
        torso = networks.haiku_torso(transformed)
        hk_params = torso.init(jax.random.PRNGKey(1), obs)
        names = ["linear"] + [f"linear_{i}" for i in range(1, len(HIDDEN))]
        assert sorted(hk_params) == sorted(names)
        copied = {
            name: {"w": flax_params[f"Dense_{i}"]["kernel"], "b": flax_params[f"Dense_{i}"]["bias"]}
            for i, name in enumerate(names)
        }
        np.testing.assert_allclose(
            jax.jit(torso.apply)(copied, obs), flax_torso.apply(flax_params, obs), atol=1e-5
        )
    with pytest.raises(TypeError, match=r"^haiku_torso takes hk.transform\(fn\), not hk.trans"):
        networks.haiku_torso(hk.transform_with_state(_haiku_mlp))
    with pytest.raises(TypeError, match=r"^haiku_torso takes an hk\.Transformed, got object$"):
        networks.haiku_torso(object())
