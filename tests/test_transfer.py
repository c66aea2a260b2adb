"""Transfer (distral.transfer, `--init-from`, `freeze_distilled`): h copied from a finished
run, kept fixed when frozen, and the runs that cannot give it named in one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from small_runs import TINY, tiny_config

from distral import config as cfg
from distral import rundir, transfer
from distral.core import learning
from distral.experiment import make_experiment
from distral.train import Trainer


@pytest.fixture
def source(small_run):
    """A finished kl_ent_2col run (seeds 2 and 5, goal_seed 0) and a finished a3c run (no
    h), of TINY (tests/small_runs.py)."""
    return {name: small_run(name) for name in ("2col", "a3c")}


def _same(a, b) -> bool:
    return jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


def test_freeze_distilled_zeroes_h_before_the_clip():
    """h's updates are 0, and the task columns' are plain clipped Adam's on the gradient
    without h's part (h does not count in the global norm)."""
    params = {"distilled": {"w": jnp.ones(3)}, "tasks": {"w": jnp.ones(2)}}
    grads = {"distilled": {"w": jnp.full(3, 100.0)}, "tasks": {"w": jnp.asarray([3.0, -4.0])}}
    frozen = learning.make_optimizer(0.1, max_grad_norm=1.0, freeze_distilled=True)
    plain = learning.make_optimizer(0.1, max_grad_norm=1.0)
    updates, _ = frozen.update(grads, frozen.init(params), params)
    np.testing.assert_array_equal(updates["distilled"]["w"], 0.0)
    no_h = {**grads, "distilled": {"w": jnp.zeros(3)}}
    want, _ = plain.update(no_h, plain.init(params), params)
    np.testing.assert_allclose(updates["tasks"]["w"], want["tasks"]["w"], rtol=1e-6)
    # Clipped to norm 1 from (3, -4), Adam's first step is -lr * sign: (-0.1, 0.1).
    np.testing.assert_allclose(updates["tasks"]["w"], [-0.1, 0.1], rtol=1e-4)
    # Adam's first step is blind to the gradient's scale; a second one on other gradients
    # is not: had h's 100s counted in the clip, the first step's (3, -4) would have been
    # scaled by 1/173 instead of 1/5, and this step would differ.
    frozen_state, plain_state = frozen.init(params), plain.init(params)
    second = {"distilled": {"w": jnp.zeros(3)}, "tasks": {"w": jnp.asarray([1.0, 2.0])}}
    for g, want_g in ((grads, no_h), (second, second)):
        updates, frozen_state = frozen.update(g, frozen_state, params)
        want, plain_state = plain.update(want_g, plain_state, params)
    np.testing.assert_allclose(updates["tasks"]["w"], want["tasks"]["w"], rtol=1e-6)


@pytest.mark.parametrize("parts", ["distilled", "torso"])
def test_init_from_copies_h_or_its_torso_and_nothing_else(source, parts):
    target = make_experiment(
        tiny_config(init_from=str(source["2col"]), init_parts=parts, env={"goal_seed": 1})
    )
    state = transfer.init_state_fn(target)(jax.random.PRNGKey(7))
    fresh = target.algorithm.init_state(jax.random.PRNGKey(7), target.parts, target.example_obs)
    src = rundir.load_run(source["2col"]).params  # its first seed, 2
    if parts == "distilled":
        assert _same(state.params["distilled"], src["distilled"])
    else:
        assert _same(state.params["distilled"]["torso"], src["distilled"]["torso"])
        assert _same(state.params["distilled"]["policy"], fresh.params["distilled"]["policy"])
        assert not _same(state.params["distilled"]["policy"], src["distilled"]["policy"])
    assert _same(state.params["tasks"], fresh.params["tasks"])
    assert not _same(state.params["tasks"], src["tasks"])


def test_runs_that_cannot_give_h_are_named(source):
    with pytest.raises(cfg.ConfigError, match="variant 'a3c' has no distilled column h"):
        transfer.init_state_fn(
            make_experiment(tiny_config(variant="a3c", init_from=str(source["2col"])))
        )
    with pytest.raises(cfg.ConfigError, match=r"ran variant 'a3c': it has no distilled column"):
        transfer.init_state_fn(make_experiment(tiny_config(init_from=str(source["a3c"]))))
    with pytest.raises(cfg.ConfigError, match="its h \\(distilled\\) has other shapes"):
        transfer.init_state_fn(
            make_experiment(tiny_config(init_from=str(source["2col"]), hidden_sizes=[4]))
        )
    with pytest.raises(cfg.ConfigError, match="freeze_distilled=true needs init_from"):
        tiny_config(freeze_distilled=True)
    with pytest.raises(cfg.ConfigError, match="it needs init_parts=distilled"):
        tiny_config(freeze_distilled=True, init_from="x", init_parts="torso")
    with pytest.raises(cfg.ConfigError, match="a3c_multitask: h is its whole policy"):
        tiny_config(freeze_distilled=True, init_from="x", variant="a3c_multitask")
    from distral.distributed.launch import preflight

    with pytest.raises(cfg.ConfigError, match="init_from '/nowhere' is not a run directory"):
        preflight(tiny_config(init_from="/nowhere"), backend="local", ray_address=None)


def test_cli_trains_new_goals_under_a_frozen_pi0(distral, source, tmp_path):
    """`distral train --init-from SRC --set freeze_distilled=true` on other goals: the
    final checkpoint's h is the source's, bit for bit; the task columns learned."""
    preset = tmp_path / "c.yaml"
    preset.write_text(yaml.safe_dump({**TINY, "env": {**TINY["env"], "goal_seed": 1}}))
    out = tmp_path / "run"
    p = distral(
        "train", preset, "--init-from", source["2col"], "--set", "freeze_distilled=true",
        "--out", out, "--quiet",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    loaded = rundir.load_run(out)
    assert loaded.config.init_from == str(source["2col"]) and loaded.config.freeze_distilled
    src = rundir.load_run(source["2col"]).params
    assert _same(loaded.params["distilled"], src["distilled"])
    start = Trainer(loaded.config).init(jnp.stack([jax.random.PRNGKey(0)])).train.params
    assert _same(jax.tree.map(lambda x: x[0], start["distilled"]), src["distilled"])
    first = jax.tree.map(lambda x: x[0], start["tasks"])
    moved = optax.global_norm(jax.tree.map(jnp.subtract, loaded.params["tasks"], first))
    assert float(moved) > 1e-3
