"""The two-room evaluator: pi_i and pi_0 each run their own logits, scored by a plain walk.

On a map of two free cells (each the other task's goal), every episode of a task starts
on the same cell, so the returns of a deterministic policy are known exactly. A linear
network (torso = identity) with zero weights and one large bias per head makes pi_i of
each task and pi_0 deterministic and different.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral.config import EnvConfig, TrainConfig
from distral.evaluator import make_evaluator
from distral.experiment import make_experiment

MAP = "####\n#GG#\n####"
GOALS = [(1, 1), (1, 2)]  # task i's goal; its episodes start on the other task's goal
STARTS = [(1, 2), (1, 1)]
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}
MAX_STEPS = 5
PI_I_ACTIONS = [LEFT, UP]  # task 0's column goes left (its goal), task 1's bumps the wall
PI_0_ACTION = RIGHT  # h goes right: a wall for task 0, the goal for task 1


def walk(start, goal, action, max_steps=MAX_STEPS):
    """Undiscounted return of an episode that takes `action` at every step, by the rules
    of distral/envs/two_room.py: -0.1 a step, -0.5 more for a blocked move, +1 at the
    goal (which ends the episode), at most `max_steps` steps."""
    rows = MAP.splitlines()
    pos, total = start, 0.0
    for _ in range(max_steps):
        row, col = pos[0] + MOVES[action][0], pos[1] + MOVES[action][1]
        if rows[row][col] == "#":
            total += -0.6
            continue
        pos = (row, col)
        if pos == goal:
            return total + 0.9
        total += -0.1
    return total


def _deterministic_params(experiment):
    """Zero weights; bias 100 on pi_0's action in h and on task i's action in f_i."""
    network = experiment.network
    params = network.init(jax.random.PRNGKey(0), jnp.asarray(experiment.example_obs))
    params = jax.tree.map(jnp.zeros_like, params)
    if "distilled" in params:
        params["distilled"]["policy"]["b"] = jnp.zeros(4).at[PI_0_ACTION].set(100.0)
    rows = jnp.zeros((2, 4)).at[jnp.arange(2), jnp.asarray(PI_I_ACTIONS)].set(100.0)
    params["tasks"]["policy"]["b"] = rows
    return params


@pytest.mark.parametrize("variant, column_output", [("kl_ent_2col", "f"), ("a3c", "logits")])
def test_pi_i_and_pi_0_returns_against_a_plain_walk(variant, column_output):
    """kl_ent_2col with 'f' and beta 4: pi_i's logits 0.5 * 100 (h) + 4 * 100 (f_i) pick
    f_i's action. a3c has no pi_0: its pi_0 returns are NaN."""
    config = TrainConfig(
        variant=variant,
        beta=4.0 if variant == "kl_ent_2col" else None,
        hidden_sizes=(),
        task_column_output=column_output,
        env=EnvConfig(layout=MAP, num_tasks=2, max_steps=MAX_STEPS),
    )
    experiment = make_experiment(config)
    assert experiment.num_tasks == 2
    pi_i, pi_0 = make_evaluator(experiment, episodes=3, seed=0)(
        _deterministic_params(experiment), 1
    )
    want_pi_i = [walk(STARTS[i], GOALS[i], PI_I_ACTIONS[i]) for i in range(2)]
    np.testing.assert_allclose(pi_i, want_pi_i, rtol=1e-5)
    assert want_pi_i == pytest.approx([0.9, -3.0])
    if variant == "a3c":
        assert np.isnan(pi_0).all()
        return
    want_pi_0 = [walk(STARTS[i], GOALS[i], PI_0_ACTION) for i in range(2)]
    np.testing.assert_allclose(pi_0, want_pi_0, rtol=1e-5)
    assert want_pi_0 == pytest.approx([-3.0, 0.9])
