"""`distral reproduce two-room`: the grid world as tabular MDPs, the analysis, the CLI."""

import csv
import json

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from distral import reproduce
from distral.config import ConfigError, Figure3Config
from distral.core import tabular
from distral.envs import two_room


@pytest.fixture(scope="module")
def params():
    return two_room.make_params("default", num_tasks=8, goal_seed=0)


def test_tabular_two_room_optimum_equals_the_bfs_optimum(params):
    """Hard value iteration on the tabular MDPs == two_room.optimal_returns (independent BFS)."""
    discount = 0.95
    mdps = reproduce.two_room_mdps(params, discount)
    num_free = two_room.num_free_cells(params)
    assert mdps.rewards.shape == (8, num_free * 5, 4)
    np.testing.assert_allclose(np.sum(np.asarray(mdps.initial), axis=-1), 1.0, rtol=1e-6)
    start_values = []
    for i in range(8):
        mdp = jax.tree_util.tree_map(lambda x, i=i: x[i], mdps)
        _, values = tabular.value_iteration(mdp)
        start_values.append(float(jnp.dot(mdp.initial, values)))
    expected = two_room.optimal_returns(params, discount=discount)
    np.testing.assert_allclose(start_values, expected, atol=1e-4)


def test_tabular_two_room_steps_like_the_environment(params):
    """Every (cell, action) of the tabular model matches a step of the JAX environment."""
    mdps = reproduce.two_room_mdps(params, 0.9)
    task = 3
    goal = int(params.goal_index[task])
    for cell in range(two_room.num_free_cells(params)):
        state, _ = two_room.reset(jax.random.PRNGKey(0), params, task)
        state = state._replace(pos=params.free_cells[cell], cell=jnp.int32(cell))
        s = cell * 5 + two_room.NO_ACTION
        assert bool(mdps.terminal[task, s]) == (cell == goal)
        for a in range(4):
            nxt, _, reward, _ = two_room.step(params, state, a, task)
            s_next = int(two_room.tabular_state(nxt))
            assert int(mdps.next_state[task, s, a]) == s_next
            assert float(mdps.transitions[task, s, a, s_next]) == 1.0
            assert float(mdps.rewards[task, s, a]) == pytest.approx(float(reward))


def test_deterministic_rollout_equals_the_cdf_rollout(params):
    """The O(1) next_state path and the generic CDF path draw the same episodes."""
    mdps = reproduce.two_room_mdps(params, 0.95)
    mdp = jax.tree_util.tree_map(lambda x: x[0], mdps)
    pi = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), mdp.rewards.shape))
    fast = tabular.rollout(jax.random.PRNGKey(2), mdp, pi, 50, 100)
    slow = tabular.rollout(jax.random.PRNGKey(2), mdp._replace(next_state=None), pi, 50, 100)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert bool(jnp.any(fast.done))  # some episode reached its goal: terminal handling ran


def test_make_mdp_rejects_a_next_state_that_disagrees():
    transitions = np.zeros((2, 1, 2))
    transitions[:, 0, 1] = 1.0
    with pytest.raises(ValueError, match="next_state disagrees"):
        tabular.make_mdp(
            transitions,
            np.zeros((2, 1)),
            np.array([1.0, 0.0]),
            0.9,
            next_state=np.array([[0], [1]]),
        )


def test_corridor_policy_averages_corridor_cells_and_seeds(params):
    num_states = two_room.num_tabular_states(params)
    probs = np.full((2, num_states, 4), 0.25)
    corridor_cells = np.asarray(params.cell_index)[np.asarray(params.corridor)]
    assert corridor_cells.size == 3
    left = corridor_cells * 5 + 2
    probs[0, left] = [0.1, 0.1, 0.7, 0.1]  # seed 0
    probs[1, left] = [1e-12, 0.2, 0.8, 1e-12]  # seed 1
    probs[0, corridor_cells[0] * 5 + 2] = [0.3, 0.3, 0.3, 0.1]  # one cell differs
    out = reproduce.corridor_policy(params, np.log(probs))
    # up: seed 0 cells (0.3, 0.1, 0.1), seed 1 (~0, ~0, ~0) -> 0.5 / 6
    assert out["left"]["up"] == pytest.approx(0.5 / 6)
    assert out["left"]["left"] == pytest.approx((0.3 + 0.7 + 0.7 + 3 * 0.8) / 6)
    assert out["right"] == pytest.approx({"up": 0.25, "down": 0.25, "left": 0.25, "right": 0.25})


def test_checks_on_known_curves():
    n = 600
    it = np.arange(1, n + 1)
    distral = np.minimum(-5 + it / 16, 0.3)  # -0.2 is crossed between 76 and 77
    separately = np.minimum(-5 + it / 32, 0.2)  # ... between 153 and 154
    summary = {
        "distral": {"mean": distral, "ci_low": distral - 0.05, "ci_high": distral + 0.05},
        "separately": {
            "mean": separately,
            "ci_low": separately - 0.01,
            "ci_high": separately + 0.01,
        },
        "optimal": 0.3,
        "corridor": {"left": {"up": 0.01, "down": 0.02, "left": 0.9, "right": 0.07}},
    }
    c = reproduce.checks(summary)
    assert c["distral_iteration_within_0.5"] == 77
    assert c["separately_iteration_within_0.5"] == 154
    # distral is above everywhere (capped at 0.3 vs 0.2 from iteration 224 on)
    assert c["distral_above_separately_50_500"] == 1.0
    # at 200: distral 0.3 (low 0.25) vs separately 0.2 (high 0.21) -> disjoint
    assert c["ci_separated_at_200"] is True
    assert c["corridor_up_down"] == {"left": pytest.approx(0.03)}
    summary["separately"]["ci_high"] = separately + 0.1  # high 0.3 > 0.25
    assert reproduce.checks(summary)["ci_separated_at_200"] is False


def test_cli_short_protocol_writes_every_file(distral, tmp_path):
    out = tmp_path / "fig3"
    proc = distral("reproduce", "two-room", "--seeds", "3", "--iterations", "60", "--out", out)
    assert proc.returncode == 0, proc.stderr
    names = {"figure3.png", "pi0_corridor.png", "curves.csv", "summary.json", "README.md"}
    assert {p.name for p in out.iterdir()} == names
    for png in ("figure3.png", "pi0_corridor.png"):
        assert matplotlib.image.imread(out / png).ndim == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == 3
    assert summary["optimal"] == pytest.approx(
        float(
            np.mean(
                two_room.optimal_returns(two_room.make_params("default", num_tasks=8, goal_seed=0))
            )
        )
    )
    for arm in ("distral", "separately"):
        c = summary[arm]
        assert c["iteration"] == list(range(1, 61))
        assert np.all(np.asarray(c["ci_low"]) <= np.asarray(c["mean"]) + 1e-12)
        assert np.all(np.asarray(c["mean"]) <= np.asarray(c["ci_high"]) + 1e-12)
        assert np.all(np.asarray(c["mean"]) <= summary["optimal"] + 1e-6)
        # learning: the last 10 iterations beat the first 10 by a wide margin (random ~ -14)
        assert np.mean(c["mean"][-10:]) > np.mean(c["mean"][:10]) + 3.0
    for prev in ("left", "right"):
        p = summary["corridor"][prev]
        assert set(p) == {"up", "down", "left", "right"}
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 61))
    assert float(rows[-1]["distral_mean"]) == pytest.approx(
        summary["distral"]["mean"][-1], rel=1e-5
    )
    assert "Distral" in (out / "README.md").read_text()
    assert "| 50 |" in proc.stdout  # the report is printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["two-room", "--seeds", "0"], "seeds must be >= 1, got 0"),
        (["three-room"], "unknown experiment 'three-room'"),
        (["two-room", "--set", "beta=-1"], "beta must be > 0, got -1.0"),
        (["two-room", "--set", "gamma=0.9"], "unknown config key 'gamma'"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(distral, tmp_path, argv, message):
    out = tmp_path / "out"
    proc = distral("reproduce", *argv, "--out", out)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_a_non_empty_output_directory(distral, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = distral("reproduce", "two-room", "--iterations", "5", "--out", tmp_path)
    assert proc.returncode == 2
    assert str(tmp_path) in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_figure3_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="discount must lie in"):
        Figure3Config(discount=1.0)
