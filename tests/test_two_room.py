"""Tests of distral.envs.two_room against hand-computed numbers and plain-Python references."""

import collections

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distral.envs import two_room as tr

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = [(-1, 0), (1, 0), (0, -1), (0, 1)]

# PLAIN-PYTHON REFERENCES


def py_grid(params):
    walls = np.asarray(params.walls).tolist()
    cells = [(r, c) for r, row in enumerate(walls) for c, w in enumerate(row) if not w]
    return walls, cells


def py_move(walls, cell, a):
    r, c = cell[0] + MOVES[a][0], cell[1] + MOVES[a][1]
    if 0 <= r < len(walls) and 0 <= c < len(walls[0]) and not walls[r][c]:
        return (r, c), False
    return cell, True


def py_bfs(walls, goal):
    dist, queue = {goal: 0}, collections.deque([goal])
    while queue:
        cell = queue.popleft()
        for a in range(4):
            nxt, blocked = py_move(walls, cell, a)
            if not blocked and nxt not in dist:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return dist


def py_random_policy_return(params, task, horizon=100):
    """Exact expected return of the uniform random policy: finite-horizon evaluation."""
    walls, cells = py_grid(params)
    goal = tuple(np.asarray(params.goals[task]).tolist())
    value = {c: 0.0 for c in cells}  # value with k steps left, k = 0
    for _ in range(horizon):
        new = {}
        for cell in cells:
            total = 0.0
            for a in range(4):
                nxt, blocked = py_move(walls, cell, a)
                if nxt == goal:
                    total += 0.9
                else:
                    total += (-0.6 if blocked else -0.1) + value[nxt]
            new[cell] = total / 4
        value = new
    return np.mean([value[c] for c in cells if c != goal])


def state_at(params, cell, t=0):
    pos = jnp.asarray(cell, jnp.int32)
    return tr.EnvState(
        pos=pos,
        prev_action=jnp.int32(tr.NO_ACTION),
        prev_reward=jnp.float32(0.0),
        t=jnp.int32(t),
        episode_return=jnp.float32(0.0),
        cell=params.cell_index[pos[0], pos[1]],
    )


step_jit = jax.jit(tr.step)

# LAYOUTS


def test_distral_public_layout():
    p = tr.make_params("distral_public")
    walls = np.asarray(p.walls)
    assert walls.shape == (9, 10) and tr.num_free_cells(p) == 32
    expected = np.ones((9, 10), bool)
    expected[1:8, 1:3] = expected[1:8, 7:9] = False  # two rooms of 7x2
    expected[4, 3:7] = False  # 4-cell corridor on row 4
    np.testing.assert_array_equal(walls, expected)
    corridor = np.zeros((9, 10), bool)
    corridor[4, 3:7] = True
    np.testing.assert_array_equal(np.asarray(p.corridor), corridor)
    assert tr.observation_size(p) == 38 and tr.num_tabular_states(p) == 160


def test_default_layout():
    p = tr.make_params()
    walls = np.asarray(p.walls)
    assert walls.shape == (7, 15) and tr.num_free_cells(p) == 53
    expected = np.ones((7, 15), bool)
    expected[1:6, 1:6] = expected[1:6, 9:14] = False  # two rooms of 5x5
    expected[3, 6:9] = False  # 3-cell corridor on the middle row
    np.testing.assert_array_equal(walls, expected)
    assert np.asarray(p.corridor).sum() == 3 and np.asarray(p.corridor)[3, 6:9].all()
    cell_index = np.asarray(p.cell_index)
    np.testing.assert_array_equal(np.sort(cell_index[~walls]), np.arange(53))
    assert (cell_index[walls] == -1).all()
    goals = [tuple(g) for g in np.asarray(p.goals).tolist()]
    assert len(goals) == 8 and len(set(goals)) == 8
    assert all(not walls[g] and not np.asarray(p.corridor)[g] for g in goals)


def test_goals_are_seeded():
    a, b = tr.make_params(goal_seed=3), tr.make_params(goal_seed=3)
    np.testing.assert_array_equal(a.goals, b.goals)
    assert not np.array_equal(a.goals, tr.make_params(goal_seed=4).goals)
    assert tr.num_tasks(tr.make_params(num_tasks=5)) == 5
    # The preset's 8 tasks (the README's and every result's), drawn without replacement.
    default = [(4, 10), (1, 4), (1, 1), (3, 4), (2, 5), (2, 3), (1, 2), (3, 12)]
    assert [tuple(g) for g in np.asarray(tr.make_params().goals).tolist()] == default
    # Boundaries: one task, an episode of one step.
    one = tr.make_params(num_tasks=1, max_steps=1)
    assert tr.num_tasks(one) == 1 and int(one.max_steps) == 1
    with pytest.raises(ValueError, match=r"^max_steps must be >= 1, got 0$"):
        tr.make_params(max_steps=0)


def test_maps_ignore_trailing_spaces_and_their_edge_is_a_wall():
    """Trailing blanks of a map line are dropped; outside a borderless map counts as
    wall, so the middle cell of a one-row map is a corridor cell (walls above and below)."""
    spaced = tr.make_params("#...#   \n#.#.#\n", num_tasks=1)
    plain = tr.make_params("#...#\n#.#.#\n", num_tasks=1)
    np.testing.assert_array_equal(spaced.walls, plain.walls)
    row = tr.make_params("...\n", goals=[(0, 0)])
    np.testing.assert_array_equal(row.corridor, [[True, True, True]])


# OPTIMAL RETURNS


def test_optimal_returns_by_hand():
    p = tr.make_params("G...\n")  # starts at distance 1, 2, 3
    np.testing.assert_allclose(tr.optimal_returns(p), [(0.9 + 0.8 + 0.7) / 3])
    g = 0.9  # discounted: -0.1 sum_{k<d} g^k + g^(d-1)
    by_hand = [0.9, -0.1 - 0.09 + 0.9, -0.1 - 0.09 - 0.081 + 0.81]
    np.testing.assert_allclose(tr.optimal_returns(p, discount=g), [np.mean(by_hand)])
    cut = tr.make_params("G...\n", max_steps=2)  # distance 3 runs out of time: -0.2
    np.testing.assert_allclose(tr.optimal_returns(cut), [(0.9 + 0.8 - 0.2) / 3])
    walled = tr.make_params("G.#.\n")  # the cell behind the wall never arrives: -10
    np.testing.assert_allclose(tr.optimal_returns(walled), [(0.9 - 10.0) / 2])


@pytest.mark.parametrize("layout", [*tr.LAYOUTS, "G..\n.#.\n..G"])  # and a map with no border
def test_optimal_returns_match_python_bfs(layout):
    p = tr.make_params(layout)
    walls, cells = py_grid(p)
    expected = []
    for goal in np.asarray(p.goals).tolist():
        dist = py_bfs(walls, tuple(goal))
        expected.append(np.mean([1.0 - 0.1 * dist[c] for c in cells if c != tuple(goal)]))
    np.testing.assert_allclose(tr.optimal_returns(p), expected, rtol=1e-12)


@pytest.mark.parametrize("layout", tr.LAYOUTS)
def test_greedy_policy_achieves_optimal_returns(layout):
    """Greedy along plain-Python BFS distances, from every start of every task, with `step`."""
    p = tr.make_params(layout)
    walls, cells = py_grid(p)
    policies, starts = [], []  # [N, F] action per cell; [N, F - 1] start cells
    for goal in np.asarray(p.goals).tolist():
        dist = py_bfs(walls, tuple(goal))
        policies.append([min(range(4), key=lambda a: dist[py_move(walls, c, a)[0]]) for c in cells])
        starts.append([c for c in cells if c != tuple(goal)])

    def rollout(task, start, policy):
        def body(carry, _):
            state, alive, ret = carry
            state, _, r, d = tr.step(p, state, policy[state.cell], task)
            return (state, alive & (d > 0), ret + jnp.where(alive, r, 0.0)), None

        init = (state_at(p, start), jnp.bool_(True), jnp.float32(0.0))
        (_, alive, ret), _ = jax.lax.scan(body, init, None, length=30)
        return ret, alive

    per_task = jax.vmap(rollout, in_axes=(None, 0, None))
    returns, alive = jax.jit(jax.vmap(per_task))(
        jnp.arange(len(starts)), jnp.asarray(starts, jnp.int32), jnp.asarray(policies)
    )
    assert not alive.any()
    np.testing.assert_allclose(returns.mean(axis=1), tr.optimal_returns(p), atol=1e-5)


# DYNAMICS AND OBSERVATIONS


def test_wall_penalty():
    p = tr.make_params(goals=[(5, 13)])
    for cell, action in [((1, 1), UP), ((1, 1), LEFT), ((1, 5), RIGHT), ((5, 3), DOWN)]:
        state, obs, r, d = step_jit(p, state_at(p, cell), action, 0)
        assert float(r) == pytest.approx(-0.6) and float(d) == 1.0
        assert tuple(np.asarray(state.pos)) == cell
        assert float(obs[-1]) == pytest.approx(-0.6)
    state, _, r, _ = step_jit(p, state_at(p, (3, 5)), RIGHT, 0)  # into the corridor
    assert float(r) == pytest.approx(-0.1) and tuple(np.asarray(state.pos)) == (3, 6)
    edge = tr.make_params("G..\n")  # no border: the grid's edge is a wall, on all 4 sides
    for action in (RIGHT, DOWN, UP):
        state, _, r, _ = step_jit(edge, state_at(edge, (0, 2)), action, 0)
        assert float(r) == pytest.approx(-0.6) and tuple(np.asarray(state.pos)) == (0, 2)
    state, _, r, d = step_jit(edge, state_at(edge, (0, 1)), LEFT, 0)
    assert float(r) == pytest.approx(0.9) and float(d) == 0.0


def test_observation_contents():
    p = tr.make_params()
    num_free = tr.num_free_cells(p)
    state, obs = tr.reset(jax.random.PRNGKey(0), p, 2)
    assert obs.shape == (num_free + 6,) and obs.dtype == jnp.float32
    cell = int(p.cell_index[state.pos[0], state.pos[1]])
    np.testing.assert_array_equal(obs[:num_free], np.eye(num_free)[cell])
    np.testing.assert_array_equal(obs[num_free:-1], [0, 0, 0, 0, 1])  # previous action "none"
    assert float(obs[-1]) == 0.0
    assert int(tr.tabular_state(state)) == cell * 5 + 4
    state, obs, r, _ = tr.step(p, state_at(p, (2, 2)), DOWN, 2)
    assert tuple(np.asarray(state.pos)) == (3, 2)
    np.testing.assert_array_equal(obs[:num_free], np.eye(num_free)[int(p.cell_index[3, 2])])
    np.testing.assert_array_equal(obs[num_free:-1], [0, 1, 0, 0, 0])
    assert float(obs[-1]) == pytest.approx(-0.1) == float(r)
    assert int(tr.tabular_state(state)) == int(p.cell_index[3, 2]) * 5 + DOWN


@pytest.mark.parametrize("layout", ["G...\n", "distral_public"])
def test_reset_start_distribution(layout):
    """Starts are uniform over the F - 1 free cells other than the goal (chi-square bound)."""
    p = tr.make_params(layout)
    num_free, n = tr.num_free_cells(p), 20_000
    task = tr.num_tasks(p) - 1
    keys = jax.random.split(jax.random.PRNGKey(7), n)
    states, _ = jax.jit(jax.vmap(tr.reset, in_axes=(0, None, None)))(keys, p, task)
    counts = np.bincount(np.asarray(states.cell), minlength=num_free)
    goal = int(p.goal_index[task])
    assert counts[goal] == 0
    others = np.delete(counts, goal)
    expected = n / (num_free - 1)
    chi2 = ((others - expected) ** 2 / expected).sum()
    assert chi2 < (num_free - 2) + 6 * np.sqrt(2 * (num_free - 2))  # mean + 6 sd
    np.testing.assert_array_equal(states.t, 0)
    np.testing.assert_array_equal(states.prev_action, tr.NO_ACTION)


def test_time_limit():
    p = tr.make_params(goals=[(5, 13)])
    state = state_at(p, (1, 1))
    for t in range(1, 101):
        state, _, _, d = step_jit(p, state, UP, 0)  # bump the border forever
        assert float(d) == (0.0 if t == 100 else 1.0)
    assert int(state.t) == 100 and float(state.episode_return) == pytest.approx(-60.0, abs=1e-3)
    cut_off = tr.make_params("G#..\n", max_steps=7)  # goal unreachable from every start
    state, _ = tr.reset(jax.random.PRNGKey(0), cut_off, 0)
    discounts = []
    for a in range(7):
        state, _, _, d = tr.step(cut_off, state, a % 4, 0)
        discounts.append(float(d))
    assert discounts == [1.0] * 6 + [0.0]


def test_determinism_and_tasks():
    p = tr.make_params()
    run = jax.jit(tr.step_auto_reset)

    def trajectory(seed, task):
        key = jax.random.PRNGKey(seed)
        key, k = jax.random.split(key)
        state, _ = tr.reset(k, p, task)
        cells = []
        for _ in range(30):
            key, k_act, k_reset = jax.random.split(key, 3)
            action = jax.random.randint(k_act, (), 0, 4)
            state, *_ = run(k_reset, p, state, action, task)
            cells.append(int(state.cell))
        return cells

    assert trajectory(0, 1) == trajectory(0, 1)
    assert trajectory(0, 1) != trajectory(1, 1)
    goal = tuple(np.asarray(p.goals[0]).tolist())
    below = (goal[0] + 1, goal[1])  # every default goal has a free cell below or above
    start, action = (below, UP) if p.cell_index[below] >= 0 else ((goal[0] - 1, goal[1]), DOWN)
    rewards = [float(step_jit(p, state_at(p, start), action, task)[2]) for task in range(8)]
    assert rewards[0] == pytest.approx(0.9)
    assert rewards[1:] == pytest.approx([-0.1] * 7)


def test_step_auto_reset():
    p = tr.make_params("G.\n")
    key = jax.random.PRNGKey(5)
    state, obs, r, d, done = tr.step_auto_reset(key, p, state_at(p, (0, 1)), LEFT, 0)
    assert bool(done) and float(d) == 0.0 and float(r) == pytest.approx(0.9)
    fresh_state, fresh_obs = tr.reset(key, p, 0)
    np.testing.assert_array_equal(obs, fresh_obs)
    assert int(state.t) == 0 and int(state.prev_action) == tr.NO_ACTION
    assert tuple(np.asarray(state.pos)) == tuple(np.asarray(fresh_state.pos)) == (0, 1)
    state, _, r, d, done = tr.step_auto_reset(key, p, state_at(p, (0, 1)), RIGHT, 0)
    assert not bool(done) and float(r) == pytest.approx(-0.6) and int(state.t) == 1
    two = tr.make_params("G.G\n")  # the goal of the task given, not of task 0
    _, _, r, _, done = tr.step_auto_reset(key, two, state_at(two, (0, 1)), RIGHT, 1)
    assert bool(done) and float(r) == pytest.approx(0.9)
    _, _, r, _, done = tr.step_auto_reset(key, two, state_at(two, (0, 1)), LEFT, 1)
    assert not bool(done) and float(r) == pytest.approx(-0.1)


def test_jit_vmap_matches_unbatched():
    p = tr.make_params()
    n_env, n_task = 64, 8
    tasks = jnp.tile(jnp.arange(n_task), n_env)
    keys = jax.random.split(jax.random.PRNGKey(0), n_env * n_task)
    batch_reset = jax.jit(jax.vmap(tr.reset, in_axes=(0, None, 0)))
    batch_step = jax.jit(jax.vmap(tr.step_auto_reset, in_axes=(0, None, 0, 0, 0)))
    one_reset, one_step = jax.jit(tr.reset), jax.jit(tr.step_auto_reset)
    states, _ = batch_reset(keys, p, tasks)
    keys, tasks = np.asarray(keys), np.asarray(tasks)  # host copies: cheap per-env indexing
    singles = [one_reset(keys[i], p, tasks[i])[0] for i in range(len(tasks))]
    rng = np.random.default_rng(0)
    for t in range(4):
        actions = rng.integers(0, 4, len(tasks)).astype(np.int32)
        step_keys = np.asarray(jax.random.split(jax.random.PRNGKey(100 + t), len(tasks)))
        out = batch_step(step_keys, p, states, actions, tasks)
        states = out[0]
        batched = jax.tree_util.tree_map(np.asarray, out)
        for i in range(len(tasks)):
            args = (step_keys[i], p, singles[i], actions[i], tasks[i])
            one = (tr.step_auto_reset if i < 4 else one_step)(*args)  # a few without jit
            singles[i] = one[0]
            equal = jax.tree_util.tree_map(lambda a, b, i=i: np.array_equal(a[i], b), batched, one)
            assert all(jax.tree_util.tree_leaves(equal)), (t, i)


@pytest.mark.parametrize(("layout", "measured"), [("default", -14.32), ("distral_public", -18.19)])
def test_random_policy_return(layout, measured):
    """Uniform random policy, mean undiscounted return over 2,000 episodes (8 tasks).

    Measured here (2,000 episodes, seed 0) and exactly (finite-horizon evaluation, mean over
    the 8 tasks): default -14.32 (exact -14.316), distral_public -18.19 (exact -18.187).
    The paper's axis reads about -30; these maps give less negative figures (see report).
    """
    p = tr.make_params(layout)
    n = 2000

    def episode(key, task):
        k_reset, k_act = jax.random.split(key)
        state, _ = tr.reset(k_reset, p, task)

        def body(carry, action):
            state, alive, ret = carry
            state, _, r, d = tr.step(p, state, action, task)
            return (state, alive & (d > 0), ret + jnp.where(alive, r, 0.0)), None

        actions = jax.random.randint(k_act, (100,), 0, 4)
        (_, alive, ret), _ = jax.lax.scan(body, (state, jnp.bool_(True), 0.0), actions)
        return ret, alive

    tasks = jnp.arange(n) % tr.num_tasks(p)
    returns, alive = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(0), n), tasks)
    assert not alive.any()  # every episode ended, by the goal or the time limit
    returns = np.asarray(returns, np.float64)
    stderr = returns.std() / np.sqrt(n)
    assert abs(returns.mean() - measured) < 1.0
    exact = np.mean([py_random_policy_return(p, i) for i in range(tr.num_tasks(p))])
    assert abs(returns.mean() - exact) < 4 * stderr
    assert exact < tr.optimal_returns(p).mean() - 10


# DM_ENV ADAPTER


def test_dm_env_adapter():
    p = tr.make_params("G..\n", max_steps=3)
    env = tr.TwoRoomEnv(p, task_id=0, seed=1)
    obs_spec, act_spec = env.observation_spec(), env.action_spec()
    assert obs_spec.shape == (tr.observation_size(p),) == (9,) and obs_spec.dtype == np.float32
    assert act_spec.num_values == 4
    first = env.step(0)  # step before any reset starts an episode
    assert first.step_type == dm_env.StepType.FIRST and first.reward is None
    obs_spec.validate(first.observation)
    assert first.observation[-2] == 1.0  # previous action "none"
    # walk right to the edge and bump it: never reaches G at (0, 0); time limit of 3
    types = []
    for _ in range(3):
        ts = env.step(RIGHT)
        obs_spec.validate(ts.observation)
        types.append((ts.step_type, float(ts.discount)))
    assert types[:2] == [(dm_env.StepType.MID, 1.0)] * 2
    assert types[2] == (dm_env.StepType.LAST, 0.0)
    assert env.step(RIGHT).step_type == dm_env.StepType.FIRST  # reset after LAST
    env = tr.TwoRoomEnv(tr.make_params("G.\n"), task_id=0)
    assert env.reset().step_type == dm_env.StepType.FIRST
    last = env.step(LEFT)
    assert last.last() and float(last.reward) == pytest.approx(0.9) and last.discount == 0.0
    env.observation_spec().validate(last.observation)  # previous reward 0.9 is in bounds
    for bad in (-1, 1):  # p has one task
        with pytest.raises(ValueError, match=rf"^task_id {bad} out of range: there are 1$"):
            tr.TwoRoomEnv(p, task_id=bad)
    assert tr.TwoRoomEnv(p, task_id=0).state is None  # before the first reset
    spec = tr.TwoRoomEnv(p, task_id=0).observation_spec()  # bounds by hand: the last entry
    assert spec.name == "observation" and spec.minimum.dtype == spec.maximum.dtype == np.float32
    np.testing.assert_allclose(spec.minimum, [0] * 8 + [-0.6], rtol=1e-6)  # is the reward
    np.testing.assert_allclose(spec.maximum, [1] * 8 + [0.9], rtol=1e-6)


def test_dm_env_adapter_steps_its_own_task_as_the_pure_step_does():
    """Two goals at the ends of a corridor: each task's adapter follows `step` with its own
    task id, step by step, and its time steps match its specs."""
    p = tr.make_params("G..G\n", max_steps=6)
    step = jax.jit(tr.step)
    ends = {}
    for task in (0, 1):
        env = tr.TwoRoomEnv(p, task_id=task, seed=3)
        env.reset()
        spec = env.action_spec()
        assert (spec.num_values, spec.dtype, spec.name) == (4, np.int32, "action")
        walk = RIGHT if task == 1 else LEFT  # towards the task's own goal
        while True:
            state = env.state
            _, obs, reward, discount = step(p, state, jnp.int32(walk), jnp.int32(task))
            ts = env.step(walk)
            np.testing.assert_array_equal(ts.observation, obs)
            assert ts.reward == np.float32(reward) and ts.discount == discount
            env.reward_spec().validate(ts.reward)
            env.discount_spec().validate(ts.discount)
            if ts.last():
                break
        ends[task] = (int(env.state.pos[1]), float(ts.reward))
    assert ends == {0: (0, pytest.approx(0.9)), 1: (3, pytest.approx(0.9))}
    mid = tr.TwoRoomEnv(p, task_id=0, seed=3)
    mid.reset()
    wall = mid.step(UP)  # a bump: reward -0.6, the episode goes on
    assert wall.mid() and wall.reward == np.float32(-0.6) and wall.discount == np.float32(1)


def test_dm_env_adapter_refuses_actions_outside_0_to_3():
    env = tr.TwoRoomEnv(tr.make_params("G...\n", max_steps=20), task_id=0)
    env.reset()
    for a in (0, 3):
        assert env.step(a).mid()  # both ends of the range are actions
    for a in (-1, 4):
        with pytest.raises(ValueError, match=rf"^action {a} out of range \[0, 4\)$"):
            env.step(a)


# LAYOUT VALIDATION AND LOADING


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"layout": "#.x\n...\n"}, ["layout <inline map> has", "'x'", "row 0, column 2"]),
        ({"layout": "###\n###\n"}, ["layout <inline map> has no free cell"]),
        ({"layout": "\n\n"}, ["layout <inline map> has no free cell: the map is empty"]),
        ({"layout": "G\n"}, ["layout <inline map> has 1 free cell: a start cell besides"]),
        ({"goals": []}, ["goals is empty: give at least one (row, col)"]),
        ({"goals": [(1,)]}, ["goal (1,) is not a (row, col) pair"]),
        ({"goals": [(1, 1), (1, 2), (1, 2)]}, ["goal (1, 2) is given twice"]),
        ({"layout": "distral_public", "goals": [(0, 10)]}, ["(0, 10)", "outside", "9x10"]),
        ({"num_tasks": 0}, ["num_tasks must be >= 1, got 0"]),
        ({"layout": "default", "goals": [(3, 7)], "num_tasks": 0}, []),  # goals: no check
        ({"layout": "...\n..\n"}, ["ragged", "row 1 has 2"]),
        ({"layout": "default", "goals": [(0, 0)]}, ["(0, 0)", "wall"]),
        ({"layout": "distral_public", "goals": [(9, 3)]}, ["(9, 3)", "outside", "9x10"]),
        ({"layout": "distral_public", "num_tasks": 29}, ["num_tasks=29", "28 free room cells"]),
        ({"layout": "nope"}, ["unknown layout 'nope': not a built-in (default, distral_public)"]),
    ],
)
def test_layout_errors(kwargs, needles):
    if not needles:  # a valid call among the invalid ones: the check it skips is skipped
        assert tr.num_tasks(tr.make_params(**kwargs)) == 1
        return
    with pytest.raises(tr.LayoutError) as info:
        tr.make_params(**kwargs)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_a_map_file_is_named_in_its_errors(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("#.?\n...\n")
    with pytest.raises(tr.LayoutError, match=f"^layout '{path}' has unknown character '\\?'"):
        tr.make_params(str(path))


def test_layouts_load_inline_and_from_files(tmp_path):
    assert tr.num_tasks(tr.make_params("distral_public", num_tasks=28)) == 28
    inline = """
        #######
        #G...G#
        #..G..#
        #######
    """
    p = tr.make_params(inline)  # G cells are the goals, in reading order
    np.testing.assert_array_equal(p.goals, [[1, 1], [1, 5], [2, 3]])
    path = tmp_path / "mine.txt"
    path.write_text(tr.load_layout("default"))
    from_file = tr.make_params(str(path))
    np.testing.assert_array_equal(from_file.walls, tr.make_params("default").walls)
    np.testing.assert_array_equal(from_file.goals, tr.make_params("default").goals)
    explicit = tr.make_params(inline, goals=[(2, 1)])  # explicit goals win over G cells
    np.testing.assert_array_equal(explicit.goals, [[2, 1]])


def test_episode_return_sums_the_rewards_from_zero():
    """EnvState.episode_return: 0 at reset, then the running sum of the step rewards."""
    p = tr.make_params()
    state, _ = tr.reset(jax.random.PRNGKey(3), p, 1)
    assert float(state.episode_return) == 0.0
    total = 0.0
    for action in (UP, UP, LEFT, DOWN, RIGHT, RIGHT):
        state, _, r, _ = tr.step(p, state, action, 1)
        total += float(r)
        assert float(state.episode_return) == pytest.approx(total)
