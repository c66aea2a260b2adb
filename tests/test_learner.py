"""The distributed learner against a real in-process Reverb server."""

import jax
import numpy as np
import pytest
import reference
from dm_env import specs

from distral.core import learning, losses, networks
from distral.core.algorithm import DISTRAL, Parts
from distral.core.variants import get_variant
from distral.distributed import replay
from distral.distributed.learner import Learner

STEP_FIELDS = ("observation", "action", "reward", "discount", "behaviour_logits")

T, B_ENV, A, OBS = 4, 3, 4, 7
LR = 1e-2


@pytest.fixture
def setup():
    variant = get_variant("kl_ent_2col")
    network = learning.build_network(
        variant, num_tasks=2, num_actions=A, torso=networks.make_torso("mlp", hidden_sizes=())
    )  # linear: tests/reference.py writes its loss out
    optimizer = learning.make_optimizer(LR)
    config = losses.LossConfig.from_variant(variant, discount=0.9, returns="vtrace")
    example = np.zeros((1, OBS), np.float32)
    params = network.init(jax.random.PRNGKey(0), example)
    signature = replay.unroll_signature(specs.Array((OBS,), np.float32), A, T, B_ENV)
    tables = replay.make_tables(
        signature, max_queue_size=8, variables_signature=replay.variables_signature(params)
    )
    server = replay.start_server(tables)
    import reverb

    client = reverb.Client(replay.server_address(server))
    try:
        yield network, optimizer, config, client, example
    finally:
        server.stop()


def _write_unroll(client, task_id, params_step, rng):
    """One item of T+1 known steps for `task_id`; returns what was written."""
    writer = replay.UnrollWriter(client, T)
    steps = []
    for _ in range(T + 1):
        step = {
            "observation": rng.normal(size=(B_ENV, OBS)).astype(np.float32),
            "action": rng.integers(0, A, size=B_ENV).astype(np.int32),
            "reward": rng.normal(size=B_ENV).astype(np.float32),
            "discount": (rng.uniform(size=B_ENV) > 0.2).astype(np.float32),
            "behaviour_logits": rng.normal(size=(B_ENV, A)).astype(np.float32),
            "task_id": np.int32(task_id),
            "params_step": np.int64(params_step),
        }
        writer.append(step)
        steps.append(step)
    writer.flush()
    writer.close()
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def test_learner_step_takes_the_reference_loss_and_adam_step_on_the_queued_unrolls(setup):
    """Two queued items, assembled by hand into a batch: the learner reports the loss of
    the plain-Python reference and moves each parameter against its gradient's sign."""
    network, optimizer, config, client, example = setup
    parts = Parts(network, optimizer, config, None)
    learner = Learner(DISTRAL, parts, client, batch_size=2, example_obs=example)
    source = replay.VariableSource(client, learner.state.params)
    _, step = source.fetch(timeout=5)
    assert step == 0  # the initial parameters are published at start

    rng = np.random.default_rng(0)
    items = [_write_unroll(client, 0, 0, rng), _write_unroll(client, 1, 0, rng)]  # FIFO order
    before = learner.state
    metrics = learner.update()

    # The batch by hand: item k's B_ENV envs are columns k*B_ENV.., with item k's task.
    batch = learning.Batch(
        **{k: np.concatenate([it[k] for it in items], axis=1) for k in STEP_FIELDS},
        task_id=np.array([0] * B_ENV + [1] * B_ENV, np.int32),
    )
    want_loss, want_grads = jax.value_and_grad(
        lambda p: reference.linear_2col_vtrace_loss(
            p, batch, alpha=0.5, beta=30.0, column_scale=1.0, gamma=0.9
        )[0]
    )(before.params)
    assert metrics["loss"] == pytest.approx(float(want_loss), rel=1e-4)
    # One step of clipped Adam from fresh moments moves every parameter by -LR * sign(g)
    # (m/sqrt(v) = g/|g|), whatever the clipping's scale.
    after, start = jax.tree.leaves(learner.state.params), jax.tree.leaves(before.params)
    for a, b, g in zip(after, start, jax.tree.leaves(want_grads), strict=True):
        delta, g = np.asarray(a) - np.asarray(b), np.asarray(g)
        clear = np.abs(g) > 1e-5
        assert clear.mean() > 0.9
        np.testing.assert_allclose(delta[clear], -LR * np.sign(g[clear]), rtol=1e-3)
    assert metrics["learner_step"] == 1 and metrics["queue_size"] == 0
    assert metrics["parameter_lag_mean"] == 0.0  # acted with step 0 while the learner was at 0
    np.testing.assert_array_equal(metrics["frames_per_task"], [T * B_ENV, T * B_ENV])

    # The new parameters are what actors now fetch.
    params, step = source.fetch(timeout=5)
    assert step == 1
    for x, y in zip(
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(learner.state.params),
        strict=True,
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    # Unrolls from older parameters show up as parameter lag.
    _write_unroll(client, 1, 0, rng)
    _write_unroll(client, 0, 1, rng)
    metrics = learner.update()
    assert metrics["parameter_lag_max"] == 1 and metrics["parameter_lag_mean"] == 0.5
    # Both rates divide by the same elapsed time: their ratio is the frames of one update.
    ratio = metrics["env_frames_per_second"] / metrics["updates_per_second"]
    assert ratio == pytest.approx(T * 2 * B_ENV)


def test_apex_budget_and_a_family_without_per_task_metrics():
    from distral.config import load_config
    from distral.distributed.learner import Window, learner_budget

    preset = "experiments/minatar_apex_dqn.yaml"
    # 1M transitions per game, 1 sample per insert, 64 a step: 15,625 steps, any games.
    assert learner_budget(load_config(preset), 1) == 15_625
    config = load_config(preset, ["apex.samples_per_insert=0.5", "apex.batch_per_task=48"])
    assert learner_budget(config, 3) == 10_417  # ceil(1e6 x 0.5 / 48)
    window = Window(2, ())
    assert np.isnan(window.task_mean("kl")).all() and window.task_mean("kl").shape == (2,)
