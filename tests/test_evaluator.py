"""The evaluators (the jitted two-room one and the dm_env one of the games): pi_i and pi_0
each run their own logits, scored by a plain walk.

On a map of two free cells (each the other task's goal), every episode of a task starts
on the same cell, so the returns of a deterministic policy are known exactly. A linear
network (torso = identity) with zero weights and one large bias per head makes pi_i of
each task and pi_0 deterministic and different.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral.config import EnvConfig, TrainConfig, load_config
from distral.core import acting
from distral.core.learning import init_training_state
from distral.evaluator import Evaluator, GameEvaluator, evaluation_key, make_evaluator
from distral.experiment import make_experiment, seed32

ROOT = Path(__file__).resolve().parents[1]

MAP = "####\n#GG#\n####"
GOALS = [(1, 1), (1, 2)]  # task i's goal; its episodes start on the other task's goal
STARTS = [(1, 2), (1, 1)]
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}
MAX_STEPS = 5
PI_I_ACTIONS = [LEFT, UP]  # task 0's column goes left (its goal), task 1's bumps the wall
PI_0_ACTION = RIGHT  # h goes right: a wall for task 0, the goal for task 1


def walk(start, goal, action, max_steps=MAX_STEPS, grid=MAP):
    """Undiscounted return of an episode that takes `action` at every step, by the rules
    of distral/envs/two_room.py: -0.1 a step, -0.5 more for a blocked move, +1 at the
    goal (which ends the episode), at most `max_steps` steps."""
    rows = grid.splitlines()
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


def _config(variant, column_output, grid=MAP):
    return TrainConfig(
        variant=variant,
        beta=4.0 if variant == "kl_ent_2col" else None,
        hidden_sizes=(),
        task_column_output=column_output,
        env=EnvConfig(layout=grid, num_tasks=2, max_steps=MAX_STEPS),
    )


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
    experiment = make_experiment(_config(variant, column_output))
    assert experiment.num_tasks == 2
    evaluator = make_evaluator(experiment, episodes=3, seed=0)
    assert isinstance(evaluator, Evaluator)  # two-room: the jitted evaluation
    pi_i, pi_0 = evaluator(_deterministic_params(experiment), 1)
    want_pi_i = [walk(STARTS[i], GOALS[i], PI_I_ACTIONS[i]) for i in range(2)]
    np.testing.assert_allclose(pi_i, want_pi_i, rtol=1e-5)
    assert want_pi_i == pytest.approx([0.9, -3.0])
    if variant == "a3c":
        assert np.isnan(pi_0).all()
        return
    want_pi_0 = [walk(STARTS[i], GOALS[i], PI_0_ACTION) for i in range(2)]
    np.testing.assert_allclose(pi_0, want_pi_0, rtol=1e-5)
    assert want_pi_0 == pytest.approx([-3.0, 0.9])


WIDE = "#####\n#GG.#\n#####"  # a third cell: episodes of one task start in two places


@pytest.mark.parametrize("variant", ["kl_ent_2col", "a3c"])
def test_game_evaluator_walks_each_episode_to_its_own_end(variant):
    """The dm_env evaluator (MinAtar and Atari use it) on two-room episodes of different
    lengths: under pi_0 (going right) task 1's episodes reach the middle goal in one step
    from the left cell and bump the wall for all 5 steps from the right one. The evaluator
    keeps its environments and resets each once per pass (pi_i, then pi_0), so the starts
    are the first and second resets of a fresh environment with the evaluator's seed; the
    mean of the plain walks from those starts is the expected return."""
    experiment = make_experiment(_config(variant, "f", grid=WIDE))
    episodes, seed = 6, 2
    evaluator = GameEvaluator(experiment, episodes, seed)
    pi_i, pi_0 = evaluator(_deterministic_params(experiment), 1)

    def starts(task, passes, stream=1):
        out = []
        for e in range(episodes):
            env = experiment.make_env(task, seed32(seed, task, e, stream))
            for _ in range(passes):
                env.reset()
            out.append(tuple(int(x) for x in env.state.pos))
        return out

    def expected(task, action, passes, stream=1):
        walks = [walk(p, GOALS[task], action, grid=WIDE) for p in starts(task, passes, stream)]
        return np.mean(walks)

    np.testing.assert_allclose(pi_i, [expected(i, PI_I_ACTIONS[i], 1) for i in range(2)], rtol=1e-5)
    # episode by episode: each environment's own walk (a fresh evaluator, the first resets)
    each, each_0 = GameEvaluator(experiment, episodes, seed).episode_returns(
        _deterministic_params(experiment), 1
    )
    walks = [
        [walk(p, GOALS[i], PI_I_ACTIONS[i], grid=WIDE) for p in starts(i, 1)] for i in range(2)
    ]
    np.testing.assert_allclose(each, walks, rtol=1e-5)
    if variant == "a3c":
        assert np.isnan(pi_0).all()
    else:
        assert {(1, 1), (1, 3)} <= set(starts(1, 2))  # both episode lengths occur
        want_0 = [expected(i, PI_0_ACTION, 2) for i in range(2)]
        np.testing.assert_allclose(pi_0, want_0, rtol=1e-5)
        walks_0 = [[walk(p, GOALS[1], PI_0_ACTION, grid=WIDE) for p in starts(1, 2)]]
        np.testing.assert_allclose(each_0[1:], walks_0, rtol=1e-5)  # episodes of both lengths
        assert len(set(np.round(each_0[1], 5))) == 2
    stopped = GameEvaluator(experiment, episodes, seed, should_stop=lambda: True)
    assert np.isnan(stopped(_deterministic_params(experiment), 1)[0]).all()
    # A distillation student's evaluator: each task's teacher plays where pi_0 would (task
    # 0's teacher goes right, task 1's left: neither is pi_0's nor pi_i's walk), paired
    # with the student: both on environments made for this evaluation with the seeds of
    # its log step (1 + 1: stream 2), from their first resets.
    teacher_actions = [RIGHT, LEFT]
    hand_made = [_teacher(experiment, i, a) for i, a in enumerate(teacher_actions)]
    student, teacher = GameEvaluator(experiment, episodes, seed, teachers=hand_made)(
        _deterministic_params(experiment), 1
    )
    want_i = [expected(i, PI_I_ACTIONS[i], 1, stream=2) for i in range(2)]
    np.testing.assert_allclose(student, want_i, rtol=1e-6)
    want = [expected(i, teacher_actions[i], 1, stream=2) for i in range(2)]
    np.testing.assert_allclose(teacher, want, rtol=1e-5)
    assert want[1] != expected(1, PI_0_ACTION, 1, stream=2) and want[1] != expected(1, LEFT, 2)
    assert starts(1, 1, stream=2) != starts(1, 1)  # the stream matters here


def _teacher(experiment, task, action):
    """A teacher that always takes `action` (its logits favour it by 100 nats)."""
    from distral.teachers import Teacher

    logits = 100.0 * jax.nn.one_hot(action, experiment.network.num_actions)

    def apply(params, obs):
        return jnp.broadcast_to(params, (obs.shape[0], params.shape[0])), obs

    name = experiment.task_names[task]
    return Teacher(name, "hand-made", logits, apply, "logits", 4, experiment.obs_size)


def test_evaluation_keys_are_pinned_per_seed_and_log_step():
    """The committed results were evaluated with these keys (fold_in(PRNGKey(10000 + seed),
    log step)); another key stream would change every published evaluation after seed 0."""
    pinned = {
        (0, 0): [2098027016, 788361917],
        (1, 4): [1596622454, 3898716926],
        (3, 7): [903413437, 3158497838],
    }
    for (seed, log_step), key in pinned.items():
        assert evaluation_key(seed, log_step).tolist() == key


def test_game_evaluator_scores_in_range_and_gives_up_when_asked_to_stop():
    """The MinAtar evaluator's returns are real game scores; a stop request aborts it
    (NaN) at the next step instead of playing long episodes to their end."""
    config = load_config(
        ROOT / "experiments" / "minatar_5games.yaml",
        ["env.games=[breakout, freeway]", "env.max_steps=300"],
    )
    experiment = make_experiment(config)
    state = init_training_state(
        jax.random.PRNGKey(0),
        experiment.network,
        experiment.parts.optimizer,
        experiment.example_obs,
    )
    evaluator = make_evaluator(experiment, 2, seed=0)
    assert isinstance(evaluator, GameEvaluator)
    pi_i, pi_0 = evaluator(state.params, 1)
    # An untrained policy: Breakout scores a few bricks at most; 300 steps of Freeway
    # (a full episode is 2,500) score the crossings the chicken makes, a handful at most.
    assert 0 <= pi_i[0] <= 5 and 0 <= pi_0[0] <= 5
    assert 0 <= pi_i[1] <= 5 and 0 <= pi_0[1] <= 5
    calls = []

    def stop_after_ten_steps() -> bool:
        calls.append(1)
        return len(calls) > 10

    pi_i, pi_0 = make_evaluator(experiment, 2, 0, stop_after_ten_steps)(state.params, 1)
    assert np.isnan(pi_i).all() and np.isnan(pi_0).all()
    assert len(calls) <= 12  # gave up at once (pi_i's abort, then pi_0's first check)


def _minatar_student(games):
    """A MinAtar experiment of `games` (200-step episodes) and a fresh learner state."""
    config = load_config(
        ROOT / "experiments" / "minatar_5games.yaml", [f"env.games=[{games}]", "env.max_steps=200"]
    )
    experiment = make_experiment(config)
    state = init_training_state(
        jax.random.PRNGKey(0), experiment.network, experiment.parts.optimizer,
        experiment.example_obs,
    )  # fmt: skip
    return experiment, state


class _Itself:
    """A teacher that is the student's own pi_i of `task` (its logits from the student's
    acting function on the student's parameters)."""

    outputs = "logits"

    def __init__(self, experiment, params, task):
        self.params = experiment.network.task_params(params, task)
        self._network = experiment.network

    def apply(self, params, obs):
        key = jax.random.PRNGKey(0)  # unused: only the logits are kept
        logits = acting.select_action(params, obs, np.int32(0), key, network=self._network)[1]
        return logits, jnp.zeros((obs.shape[0], 1))


class _Still:
    """A teacher that always takes action 2 (MinAtar's "up": Breakout's paddle stays)."""

    params, outputs = None, "logits"

    @staticmethod
    def apply(params, obs):
        logits = jnp.full((obs.shape[0], 6), -1e9).at[:, 2].set(0.0)
        return logits, jnp.zeros((obs.shape[0], 1))


def test_a_teacher_that_is_the_student_plays_its_episodes_on_every_game_and_evaluation():
    """Paired evaluation on MinAtar (sticky actions on): on game 1 the teacher is the
    student itself, on game 0 a different policy whose Breakout episodes end at other
    times (so a key run on from game 0 would reach game 1 at another place). Game 1's
    returns equal the student's episode by episode, at two evaluations of one evaluator
    (its environments made afresh, at another log step's seeds); game 0's do not. And
    the teachers' episodes do not depend on the student: paired with another student
    (whose Breakout episodes last otherwise), they are the same on both games."""
    experiment, state = _minatar_student("breakout, asterix")
    teachers = [_Still(), _Itself(experiment, state.params, 1)]
    evaluator = GameEvaluator(experiment, 16, 5, teachers=teachers)
    first, later = (evaluator.episode_returns(state.params, step) for step in (1, 2))
    for student, teacher in (first, later):
        np.testing.assert_array_equal(teacher[1], student[1])
        assert len(set(student[1])) > 1  # Asterix episodes that differ
        assert not np.array_equal(teacher[0], student[0])
    assert not np.array_equal(first[0][1], later[0][1])  # another log step, other episodes
    # Another init, scaled so that its logits, not the shared Gumbel draws, pick actions:
    # it scores nothing on Breakout, so its episodes there end sooner (a key run on from
    # game 0 reached Asterix at another place and changed the teacher's episodes there).
    other = jax.tree.map(
        lambda x: 30.0 * x, experiment.network.init(jax.random.PRNGKey(2), experiment.example_obs)
    )
    other_student, same_teachers = evaluator.episode_returns(other, 1)
    assert other_student[0].sum() == 0 and first[0][0].sum() > 0
    np.testing.assert_array_equal(same_teachers, first[1])


def test_make_evaluator_passes_a_students_teachers_and_a_stop_gives_one_nan_per_task():
    """Given teachers, the game evaluator plays them in pi_0's place (their returns differ
    from a pi_0 evaluation's); a stop gives NaN for every task, shaped [N]."""
    experiment, state = _minatar_student("breakout, freeway")

    teachers = [_Still(), _Still()]  # "up" on every state
    _, with_teachers = make_evaluator(experiment, 2, 0, teachers=teachers)(state.params, 1)
    paired = GameEvaluator(experiment, 8, 3, teachers=[_Itself(experiment, state.params, 0)] * 2)
    student, itself = paired.episode_returns(state.params, 2)
    np.testing.assert_array_equal(itself[0], student[0])  # task 0 is the student's own
    # Freeway's chicken that always moves up crosses the road about 3 times in 200 steps.
    _, pi_0 = make_evaluator(experiment, 2, 0)(state.params, 1)
    assert with_teachers[1] >= 2 and with_teachers[1] > pi_0[1] + 1
    stopped, _ = make_evaluator(experiment, 2, 0, lambda: True, teachers=teachers)(state.params, 1)
    assert stopped.shape == (2,) and np.isnan(stopped).all()
