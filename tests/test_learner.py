"""The distributed learner against a real in-process Reverb server."""

import jax
import numpy as np
import pytest
from dm_env import specs

from distral.core import learning, losses, networks
from distral.core.algorithm import DISTRAL, Parts
from distral.core.variants import get_variant
from distral.distributed import replay
from distral.distributed.learner import Learner

T, B_ENV, A, OBS = 4, 3, 4, 7


@pytest.fixture
def setup():
    variant = get_variant("kl_ent_2col")
    network = learning.build_network(
        variant, num_tasks=2, num_actions=A, torso=networks.make_torso("mlp", hidden_sizes=(16,))
    )
    optimizer = learning.make_optimizer(1e-2)
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


def test_learner_step_is_update_step_on_the_queued_unrolls(setup):
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

    expected = replay.items_to_batch(items).batch
    assert expected.task_id.tolist() == [0] * B_ENV + [1] * B_ENV
    want, want_metrics = learning.update_step(
        before, expected, network=network, optimizer=optimizer, config=config
    )
    for x, y in zip(
        jax.tree_util.tree_leaves(learner.state.params),
        jax.tree_util.tree_leaves(want.params),
        strict=True,
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert metrics["loss"] == pytest.approx(float(want_metrics["loss"]), rel=1e-5)
    assert metrics["learner_step"] == 1 and metrics["queue_size"] == 0
    assert metrics["parameter_lag_mean"] == 0.0  # acted with step 0 while the learner was at 0

    # The new parameters are what actors now fetch.
    params, step = source.fetch(timeout=5)
    assert step == 1
    for x, y in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want.params), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    # Unrolls from older parameters show up as parameter lag.
    _write_unroll(client, 1, 0, rng)
    _write_unroll(client, 0, 1, rng)
    metrics = learner.update()
    assert metrics["parameter_lag_max"] == 1 and metrics["parameter_lag_mean"] == 0.5
    assert metrics["env_frames_per_second"] > 0 and metrics["updates_per_second"] > 0
