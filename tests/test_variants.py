"""The seven variants: names, wiring to the network and the loss, and bad input."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral.core import losses, networks
from distral.core.learning import build_network
from distral.core.variants import (
    PAPER_VARIANTS,
    VARIANTS,
    VariantError,
    format_table,
    get_variant,
)

# name: (architecture, alpha, distill, entropy bonus in the loss)
PAPER_TABLE = {
    "a3c": ("independent", None, False, True),
    "a3c_multitask": ("shared", None, False, True),
    "a3c_2col": ("2col", None, False, True),
    "kl_1col": ("1col", 1.0, True, False),
    "kl_2col": ("2col", 1.0, True, False),
    "kl_ent_1col": ("1col", 0.5, True, False),
    "kl_ent_2col": ("2col", 0.5, True, False),
}

# name: (c_KL, c_Ent, LossConfig alpha, LossConfig beta) at the default beta = 30, by hand:
# c_KL = alpha / beta and c_Ent = (1 - alpha) / beta; the A3C rows have neither.
COSTS = {
    "a3c": (0.0, 0.0, 0.0, 1.0),
    "a3c_multitask": (0.0, 0.0, 0.0, 1.0),
    "a3c_2col": (0.0, 0.0, 0.0, 1.0),
    "kl_1col": (1 / 30, 0.0, 1.0, 30.0),
    "kl_2col": (1 / 30, 0.0, 1.0, 30.0),
    "kl_ent_1col": (1 / 60, 1 / 60, 0.5, 30.0),
    "kl_ent_2col": (1 / 60, 1 / 60, 0.5, 30.0),
}


def test_the_seven_names_and_their_table():
    assert list(PAPER_VARIANTS) == list(PAPER_TABLE)
    assert list(VARIANTS) == [*PAPER_TABLE, "gated", "gated_task"]
    for name, (arch, alpha, distill, bonus) in PAPER_TABLE.items():
        v = get_variant(name)
        assert (v.architecture, v.alpha, v.distill, v.entropy_cost > 0) == (
            arch,
            alpha,
            distill,
            bonus,
        )
        c_kl, c_ent, cfg_alpha, cfg_beta = COSTS[name]
        assert (v.c_kl, v.c_ent) == pytest.approx((c_kl, c_ent), rel=1e-12), name
        cfg = losses.LossConfig.from_variant(v)
        assert (cfg.alpha, cfg.beta, cfg.distill) == (cfg_alpha, cfg_beta, distill), name
        assert cfg.entropy_cost == (0.01 if bonus else 0.0), name


# name: pi_i's logits (a, b) in a h + b f_i as the paper writes them, beta = 4 where the
# variant takes one; task_column_output='logits' puts beta inside the column (b = 1).
LOGIT_MIX = {
    "a3c": (0.0, 1.0),
    "a3c_2col": (1.0, 1.0),
    "kl_1col": (0.0, 1.0),
    "kl_ent_1col": (0.0, 1.0),
    "kl_2col": (1.0, 4.0),
    "kl_ent_2col": (0.5, 4.0),
}


@pytest.mark.parametrize("column_output", ["f", "logits"])
@pytest.mark.parametrize("name", list(PAPER_TABLE))
def test_each_name_builds_its_network_by_hand(name, column_output):
    """A linear network (torso = identity): h = x W_0 + b_0, f_i = x W_i + b_i and
    V_i = x U_i + c_i written out from the parameters, and pi_i's logits mixed as the
    paper's table says, with beta = 4 multiplying the task column under 'f'."""
    v = get_variant(name, beta=4.0) if VARIANTS[name].beta_overridable else get_variant(name)
    net = build_network(
        v,
        num_tasks=3,
        num_actions=4,
        torso=networks.make_torso("mlp", hidden_sizes=()),
        task_column_output=column_output,
    )
    assert net.architecture == PAPER_TABLE[name][0]
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 6))
    params = net.init(jax.random.PRNGKey(1), jnp.zeros((1, 6)))
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    tid = np.array([0, 1, 2, 0, 1])
    out = net.apply(params, jnp.asarray(obs, jnp.float32), jnp.asarray(tid))

    def head(p, i=None):
        w, b = (np.asarray(p["w"]), np.asarray(p["b"])) if i is None else (p["w"][i], p["b"][i])
        return obs @ np.asarray(w) + np.asarray(b)

    if name == "a3c_multitask":  # pi_i = pi_0 = h, one value head per task on the input
        h = head(params["distilled"]["policy"])
        values = params["values"]
        want_value = [head(values, i)[k, 0] for k, i in enumerate(tid)]
        np.testing.assert_allclose(out.logits, h, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.distilled_logits, h, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.value, want_value, rtol=1e-5, atol=1e-5)
        return
    tasks = params["tasks"]
    h = np.zeros((5, 4)) if name == "a3c" else head(params["distilled"]["policy"])
    f = np.stack([head(tasks["policy"], i)[k] for k, i in enumerate(tid)])
    want_value = [head(tasks["value"], i)[k, 0] for k, i in enumerate(tid)]
    a, b = LOGIT_MIX[name]
    if column_output == "logits" and net.architecture == "2col":
        b = 1.0
    np.testing.assert_allclose(out.logits, a * h + b * f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.distilled_logits, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.value, want_value, rtol=1e-5, atol=1e-5)


def test_a3c_2col_with_h_at_zero_is_a3c():
    torso = networks.make_torso("mlp", hidden_sizes=(16,))
    a3c, a3c_2col = get_variant("a3c"), get_variant("a3c_2col")
    net_a3c = build_network(a3c, num_tasks=2, num_actions=3, torso=torso)
    net_2col = build_network(a3c_2col, num_tasks=2, num_actions=3, torso=torso)
    T, B = 4, 6
    key = jax.random.PRNGKey(0)
    obs = jax.random.normal(key, (T + 1, B, 5))
    p2 = net_2col.init(jax.random.PRNGKey(1), obs[0])
    # h fixed at zero: the distilled column's policy head is zero.
    zero_head = jax.tree_util.tree_map(jnp.zeros_like, p2["distilled"]["policy"])
    p2 = {**p2, "distilled": {**p2["distilled"], "policy": zero_head}}
    p1 = {"tasks": p2["tasks"]}  # a3c: the same task columns, no distilled column

    rng = np.random.default_rng(0)
    task = jnp.asarray(rng.integers(0, 2, size=B))
    a = jnp.asarray(rng.integers(0, 3, size=(T, B)))
    r = jnp.asarray(rng.normal(size=(T, B)), jnp.float32)
    d = jnp.ones((T, B))
    mu = jnp.asarray(rng.normal(size=(T, B, 3)), jnp.float32)

    def loss(net, params, variant):
        out = net.apply(params, obs.reshape(-1, 5), jnp.tile(task, T + 1))
        cfg = losses.LossConfig.from_variant(variant, discount=0.9)
        lg, h, v = (
            out.logits.reshape(T + 1, B, 3),
            out.distilled_logits.reshape(T + 1, B, 3),
            out.value.reshape(T + 1, B),
        )
        fn = jax.vmap(lambda *x: losses.distral_loss(*x, config=cfg)[0], in_axes=1)
        return jnp.mean(fn(lg, h, v, a, r, d, mu))

    l1, l2 = loss(net_a3c, p1, a3c), loss(net_2col, p2, a3c_2col)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    # And the check can fail: a non-zero h changes the loss.
    l3 = loss(net_2col, net_2col.init(jax.random.PRNGKey(1), obs[0]), a3c_2col)
    assert abs(float(l3 - l1)) > 1e-6


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "kl_3col",
            {},
            "unknown variant 'kl_3col'; valid choices: a3c, a3c_multitask, a3c_2col, kl_1col, "
            "kl_2col, kl_ent_1col, kl_ent_2col",
        ),
        ("kl_ent_2col", {"alpha": 1.5}, "alpha=1.5 is outside [0, 1]"),
        ("kl_ent_2col", {"alpha": -0.1}, "alpha=-0.1 is outside [0, 1]"),
        ("kl_ent_2col", {"beta": 0.0}, "beta=0.0 must be > 0"),
        ("kl_2col", {"beta": -3.0}, "beta=-3.0 must be > 0"),
        ("a3c", {"entropy_cost": -0.1}, "entropy_cost=-0.1 must be >= 0"),
        (
            "kl_2col",
            {"alpha": 0.5},
            "variant 'kl_2col' fixes alpha=1; alpha can be set for: kl_ent_1col, kl_ent_2col",
        ),
        (
            "a3c",
            {"alpha": 0.5},
            "variant 'a3c' has no alpha; alpha can be set for: kl_ent_1col, kl_ent_2col",
        ),
        (
            "a3c",
            {"beta": 2.0},
            "variant 'a3c' has no beta; beta can be set for: "
            "kl_1col, kl_2col, kl_ent_1col, kl_ent_2col",
        ),
        (
            "kl_1col",
            {"entropy_cost": 0.1},
            "variant 'kl_1col' has no entropy bonus (entropy enters through alpha and beta); "
            "entropy_cost can be set for: a3c, a3c_multitask, a3c_2col",
        ),
    ],
)
def test_bad_names_and_coefficients_are_one_line_errors(name, kwargs, message):
    with pytest.raises(VariantError) as e:
        get_variant(name, **kwargs)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_overrides_apply():
    v = get_variant("kl_ent_1col", alpha=0.25, beta=7.0)
    assert (v.alpha, v.beta, v.c_kl, v.c_ent) == (0.25, 7.0, 0.25 / 7.0, 0.75 / 7.0)
    assert get_variant("a3c", entropy_cost=0.05).entropy_cost == 0.05
    assert VARIANTS["kl_ent_1col"].alpha == 0.5  # the table itself is unchanged
    # alpha's range is closed at both ends: 0 (entropy only) and 1 (KL only) are valid.
    assert get_variant("kl_ent_2col", alpha=0.0).c_kl == 0.0
    assert get_variant("kl_ent_2col", alpha=1.0).c_ent == 0.0
    assert get_variant("a3c", entropy_cost=0.0).entropy_cost == 0.0  # >= 0, 0 included


def test_the_table_is_the_one_the_readme_shows():
    """`distral variants` prints `format_table()`; the README shows its output verbatim."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("$ distral variants\n", 1)[1].split("```", 1)[0]
    assert format_table() == block.rstrip("\n")
    assert all(v.description for v in VARIANTS.values())  # `distral variants NAME` shows it


def test_the_gated_rows_are_a3c_rows_on_the_gated_architecture():
    """`gated` and `gated_task`: the A3C loss (entropy bonus 0.01, no pi_0 regulariser),
    only `gated_task`'s gates see the task id; the entropy bonus is theirs to set."""
    for name, task_gates in (("gated", False), ("gated_task", True)):
        v = get_variant(name)
        assert (v.architecture, v.task_gates, v.distill) == ("gated", task_gates, False)
        assert (v.alpha, v.beta, v.c_kl, v.c_ent, v.entropy_cost) == (None, None, 0, 0, 0.01)
        assert get_variant(name, entropy_cost=0.05).entropy_cost == 0.05
        with pytest.raises(VariantError, match=f"variant '{name}' has no beta"):
            get_variant(name, beta=3.0)
    assert not any(VARIANTS[n].task_gates for n in PAPER_VARIANTS)
    rows = {line.split()[0]: line for line in format_table().splitlines()[2:]}
    assert "sum_k sigma_k f_k" in rows["gated"] and "sees i" not in rows["gated"]
    assert "sum_k sigma_k f_k (sigma_k sees i)" in rows["gated_task"]
