"""The two-room grid world of Distral (Teh et al., 2017, arXiv:1707.04175, Section 4.1, Fig. 3).

Two rooms joined by a horizontal corridor; each task has its own goal cell. Everything that
runs per step is a pure JAX function of arrays (`reset`, `step`, `step_auto_reset`), so it
works under `jax.jit` and `jax.vmap` over keys, states, actions and task ids. `TwoRoomEnv` is
a `dm_env.Environment` adapter for actors; `optimal_returns` is the exact optimum, by BFS.

Dynamics (DESIGN.md section 2):
- actions 0 up, 1 down, 2 left, 3 right; a move into a wall, or off the grid, is blocked
  and the agent stays;
- reward -0.1 per step, an extra -0.5 for a blocked move (-0.6 in all), and +1 on reaching
  the goal (the goal-reaching step pays +0.9), which ends the episode;
- at most `max_steps` (100) steps. The step that reaches the limit ends the episode with
  discount 0, like the goal: truncation is treated as termination, because the
  observation has no clock, so the state after the limit is not a state the agent could
  tell apart from any other (bootstrapping from it would be bootstrapping from a guess);
- each episode starts on a uniformly random free cell other than the task's goal.

Observation: the agent's cell, its previous action (4 = "none" at reset) and previous
reward (0 at reset). The deep input is concat(one-hot free-cell index [F], one-hot
previous action [5], previous reward [1]), float32 [F + 6].

Tabular state: `cell * 5 + previous action`, F * 5 states. The previous reward is left
out. Given (cell, previous action) it is fixed (-0.1 after a move, 0 at reset), except that
a wall bump (-0.6) and a move that arrived in the same cell share the pair; the goal-reaching
+0.9 is only seen on the last observation of an episode. Dropping it loses nothing for
control: the dynamics and rewards depend on the cell alone.

Layouts are ASCII maps: `#` wall, `.` free cell, `G` a free cell that is a task's goal
(goals in reading order). Without `G` cells the goals are drawn with a seed among the room
cells: free cells that are not corridor cells (a corridor cell has walls, or the grid's
edge, both above and below it).
"""

from __future__ import annotations

import collections
import importlib.resources
import os
import textwrap
from collections.abc import Sequence
from typing import NamedTuple

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from dm_env import specs

from distral.envs import timesteps

Array = jax.Array

LAYOUTS: tuple[str, ...] = ("default", "distral_public")
NUM_ACTIONS = 4
NO_ACTION = 4
"""Previous action at reset ("none"); one-hot slot 4 of the previous-action block."""
STEP_REWARD = -0.1
WALL_PENALTY = -0.5
GOAL_REWARD = 1.0
_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.int32)  # up, down, left, right
_CHARS = "#.G"


class LayoutError(ValueError):
    """A layout or goal list that cannot make a grid world; the message is one line."""


class TwoRoomParams(NamedTuple):
    """A grid world and its tasks; arrays only, so it can be closed over or passed to jit.

    F free cells, N tasks, an H x W grid. `max_steps` is an int32 scalar array, so the
    whole tuple can also be a traced jit argument.
    """

    walls: Array  # [H, W] bool
    cell_index: Array  # [H, W] int32: index of each free cell in 0..F-1, -1 on walls
    free_cells: Array  # [F, 2] int32 (row, col), reading order
    goals: Array  # [N, 2] int32: goal cell of each task
    goal_index: Array  # [N] int32: free-cell index of each goal
    corridor: Array  # [H, W] bool: free cells with walls above and below
    max_steps: Array  # [] int32: episode length limit in agent steps


class EnvState(NamedTuple):
    """One environment's state. `cell` (free-cell index of `pos`) serves `tabular_state`."""

    pos: Array  # [2] int32 (row, col)
    prev_action: Array  # [] int32, NO_ACTION at reset
    prev_reward: Array  # [] float32, 0 at reset
    t: Array  # [] int32: steps taken in this episode
    episode_return: Array  # [] float32: undiscounted return so far in this episode
    cell: Array  # [] int32: free-cell index of pos


# LAYOUTS


def load_layout(layout: str) -> str:
    """The map text of a built-in name, a path to a .txt file, or an inline map (has a newline)."""
    if "\n" in layout:
        return layout
    if layout in LAYOUTS:
        return (importlib.resources.files("distral.envs") / "layouts" / f"{layout}.txt").read_text()
    if os.path.isfile(layout):
        with open(layout) as f:
            return f.read()
    raise LayoutError(
        f"unknown layout {layout!r}: not a built-in ({', '.join(LAYOUTS)}) and not a file"
    )


def _label(layout: str) -> str:
    return "<inline map>" if "\n" in layout else repr(layout)


def _parse(text: str, label: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Walls [H, W] bool and the `G` cells in reading order; raises LayoutError."""
    lines = [line.rstrip() for line in textwrap.dedent(text).splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LayoutError(f"layout {label} has no free cell: the map is empty")
    width = len(lines[0])
    marked = []
    for r, line in enumerate(lines):
        if len(line) != width:
            raise LayoutError(
                f"layout {label} has ragged rows: row {r} has {len(line)} columns, "
                f"row 0 has {width}"
            )
        for c, ch in enumerate(line):
            if ch not in _CHARS:
                raise LayoutError(
                    f"layout {label} has unknown character {ch!r} at row {r}, column {c} "
                    f"(allowed: '#' wall, '.' free, 'G' goal)"
                )
            if ch == "G":
                marked.append((r, c))
    walls = np.array([[ch == "#" for ch in line] for line in lines], bool)
    return walls, marked


def make_params(
    layout: str = "default",
    *,
    num_tasks: int = 8,
    goal_seed: int = 0,
    goals: Sequence[tuple[int, int]] | None = None,
    max_steps: int = 100,
) -> TwoRoomParams:
    """Build a grid world and its task goals.

    Goals come from, in order of precedence: `goals` ((row, col) per task, may be anywhere
    free, corridor included); the map's `G` cells; else `num_tasks` distinct room cells
    drawn with `goal_seed`. `num_tasks` is used only in the last case.
    """
    label = _label(layout)
    walls, marked = _parse(load_layout(layout), label)
    height, width = walls.shape
    free = ~walls
    free_cells = np.argwhere(free).astype(np.int32)  # reading order
    num_free = len(free_cells)
    if num_free == 0:
        raise LayoutError(f"layout {label} has no free cell ('.' or 'G')")
    if num_free < 2:
        raise LayoutError(
            f"layout {label} has 1 free cell: a start cell besides the goal is needed"
        )
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    cell_index = np.full(walls.shape, -1, np.int32)
    cell_index[free] = np.arange(num_free, dtype=np.int32)
    padded = np.pad(walls, 1, constant_values=True)
    corridor = free & padded[:-2, 1:-1] & padded[2:, 1:-1]

    if goals is not None:
        goal_list: Sequence[tuple[int, ...]] = [tuple(int(x) for x in g) for g in goals]
        if not goal_list:
            raise LayoutError("goals is empty: give at least one (row, col)")
        for g in goal_list:
            if len(g) != 2:
                raise LayoutError(f"goal {g} is not a (row, col) pair")
            r, c = g
            if not (0 <= r < height and 0 <= c < width):
                raise LayoutError(
                    f"goal {g} is outside the {height}x{width} grid of layout {label}"
                )
            if walls[r, c]:
                raise LayoutError(f"goal {g} is on a wall of layout {label}")
        if len(set(goal_list)) != len(goal_list):
            dup = next(g for g in goal_list if goal_list.count(g) > 1)
            raise LayoutError(f"goal {dup} is given twice: task goals must be distinct")
    elif marked:
        goal_list = marked
    else:
        if num_tasks < 1:
            raise LayoutError(f"num_tasks must be >= 1, got {num_tasks}")
        room_cells = np.argwhere(free & ~corridor)
        if len(room_cells) < num_tasks:
            raise LayoutError(
                f"num_tasks={num_tasks} exceeds the {len(room_cells)} free room cells "
                f"(corridor excluded) of layout {label}"
            )
        pick = np.random.default_rng(goal_seed).choice(len(room_cells), num_tasks, replace=False)
        goal_list = [tuple(int(x) for x in room_cells[i]) for i in pick]

    goals_arr = np.array(goal_list, np.int32).reshape(-1, 2)
    return TwoRoomParams(
        walls=jnp.asarray(walls),
        cell_index=jnp.asarray(cell_index),
        free_cells=jnp.asarray(free_cells),
        goals=jnp.asarray(goals_arr),
        goal_index=jnp.asarray(cell_index[goals_arr[:, 0], goals_arr[:, 1]]),
        corridor=jnp.asarray(corridor),
        max_steps=jnp.asarray(max_steps, jnp.int32),
    )


def num_free_cells(params: TwoRoomParams) -> int:
    """F, the number of free cells (static: read from a shape)."""
    return params.free_cells.shape[0]


def num_tasks(params: TwoRoomParams) -> int:
    """N, the number of tasks (static: read from a shape)."""
    return params.goals.shape[0]


def observation_size(params: TwoRoomParams) -> int:
    """F + 6: one-hot cell [F], one-hot previous action [5], previous reward [1]."""
    return num_free_cells(params) + NO_ACTION + 2


def num_tabular_states(params: TwoRoomParams) -> int:
    """F * 5: (cell, previous action) pairs; see `tabular_state`."""
    return num_free_cells(params) * (NO_ACTION + 1)


# PURE DYNAMICS (jit- and vmap-able; task_id and action are assumed in range: gathers clamp)


def observation(params: TwoRoomParams, state: EnvState) -> Array:
    """The deep input, float32 [F + 6]."""
    return jnp.concatenate(
        [
            jax.nn.one_hot(state.cell, num_free_cells(params), dtype=jnp.float32),
            jax.nn.one_hot(state.prev_action, NO_ACTION + 1, dtype=jnp.float32),
            jnp.asarray(state.prev_reward, jnp.float32)[None],
        ]
    )


def tabular_state(state: EnvState) -> Array:
    """int32 in [0, F * 5): cell * 5 + previous action (previous reward left out, see top)."""
    return (state.cell * (NO_ACTION + 1) + state.prev_action).astype(jnp.int32)


def reset(key: Array, params: TwoRoomParams, task_id: Array) -> tuple[EnvState, Array]:
    """Start an episode on a uniformly random free cell other than task `task_id`'s goal."""
    goal = params.goal_index[task_id]
    u = jax.random.randint(key, (), 0, num_free_cells(params) - 1, dtype=jnp.int32)
    cell = u + (u >= goal).astype(jnp.int32)  # skip the goal: uniform over the other F-1
    state = EnvState(
        pos=params.free_cells[cell],
        prev_action=jnp.asarray(NO_ACTION, jnp.int32),
        prev_reward=jnp.asarray(0.0, jnp.float32),
        t=jnp.asarray(0, jnp.int32),
        episode_return=jnp.asarray(0.0, jnp.float32),
        cell=cell,
    )
    return state, observation(params, state)


def step(
    params: TwoRoomParams, state: EnvState, action: Array, task_id: Array
) -> tuple[EnvState, Array, Array, Array]:
    """One deterministic move: (state, obs, reward float32, discount float32).

    discount is 0 when the step ends the episode (goal reached or `max_steps` hit), else 1.
    Stepping a finished episode is the caller's business (see `step_auto_reset`).
    """
    action = jnp.asarray(action, jnp.int32)
    height, width = params.walls.shape
    target = state.pos + jnp.asarray(_MOVES)[action]
    inside = (target[0] >= 0) & (target[0] < height) & (target[1] >= 0) & (target[1] < width)
    clipped = jnp.clip(target, 0, jnp.array([height - 1, width - 1]))
    blocked = ~inside | params.walls[clipped[0], clipped[1]]
    pos = jnp.where(blocked, state.pos, target)
    at_goal = jnp.all(pos == params.goals[task_id])
    reward = jnp.where(
        at_goal,
        jnp.float32(STEP_REWARD + GOAL_REWARD),
        jnp.where(blocked, jnp.float32(STEP_REWARD + WALL_PENALTY), jnp.float32(STEP_REWARD)),
    )
    t = state.t + 1
    done = at_goal | (t >= params.max_steps)
    new_state = EnvState(
        pos=pos,
        prev_action=action,
        prev_reward=reward,
        t=t,
        episode_return=state.episode_return + reward,
        cell=params.cell_index[pos[0], pos[1]],
    )
    discount = jnp.where(done, jnp.float32(0.0), jnp.float32(1.0))
    return new_state, observation(params, new_state), reward, discount


def step_auto_reset(
    key: Array, params: TwoRoomParams, state: EnvState, action: Array, task_id: Array
) -> tuple[EnvState, Array, Array, Array, Array]:
    """`step`, then a fresh episode (drawn with `key`) wherever the step ended one.

    Returns (state, obs, reward, discount, done): state and obs are those of the new
    episode's start when done, while reward, discount and done describe the step taken.
    The finished episode's return is `state.episode_return + reward` of the input state.
    """
    next_state, _, reward, discount = step(params, state, action, task_id)
    done = discount == 0.0
    reset_state, _ = reset(key, params, task_id)
    next_state = jax.tree_util.tree_map(
        lambda fresh, old: jnp.where(done, fresh, old), reset_state, next_state
    )
    # One observation, of the state kept (XLA drops the two unused ones above).
    return next_state, observation(params, next_state), reward, discount, done


# EXACT OPTIMUM (numpy, outside jit)


def goal_distances(params: TwoRoomParams) -> np.ndarray:
    """[N, F] int: shortest path length in moves from each free cell to each goal, -1 if none."""
    walls = np.asarray(params.walls)
    cell_index = np.asarray(params.cell_index)
    height, width = walls.shape
    out = np.full((num_tasks(params), num_free_cells(params)), -1, np.int64)
    for i, (gr, gc) in enumerate(np.asarray(params.goals).tolist()):
        dist = {(gr, gc): 0}
        queue = collections.deque([(gr, gc)])
        while queue:
            r, c = queue.popleft()
            for dr, dc in _MOVES.tolist():
                nr, nc = r + dr, c + dc
                if 0 <= nr < height and 0 <= nc < width and not walls[nr, nc]:
                    if (nr, nc) not in dist:
                        dist[(nr, nc)] = dist[(r, c)] + 1
                        queue.append((nr, nc))
        for (r, c), d in dist.items():
            out[i, cell_index[r, c]] = d
    return out


def optimal_returns(params: TwoRoomParams, *, discount: float = 1.0) -> np.ndarray:
    """[N] exact optimal expected return per task over the uniform start distribution.

    From a start at distance d <= max_steps the best return is a shortest path:
    sum_{k<d} g^k (-0.1) + g^(d-1) (+1). A start with no path (or d > max_steps) never
    bumps and is cut off at the limit: sum_{k<max_steps} g^k (-0.1). Undiscounted (g = 1)
    by default; the mean is over the F - 1 free cells other than the goal.
    """
    limit = int(params.max_steps)
    dists = goal_distances(params)
    goal_index = np.asarray(params.goal_index)
    cum = np.concatenate([[0.0], np.cumsum(discount ** np.arange(limit))])  # sum_{k<n} g^k
    fail = STEP_REWARD * cum[limit]
    out = np.empty(len(dists))
    for i, row in enumerate(dists):
        values = []
        for cell, d in enumerate(row.tolist()):
            if cell == goal_index[i]:
                continue
            if 0 < d <= limit:
                values.append(max(STEP_REWARD * cum[d] + GOAL_REWARD * discount ** (d - 1), fail))
            else:
                values.append(fail)
        out[i] = np.mean(values)
    return out


# DM_ENV ADAPTER

_reset_jit = jax.jit(reset)
_step_jit = jax.jit(step)


class TwoRoomEnv(timesteps.Float32Specs, dm_env.Environment):
    """One task of the grid world as a dm_env.Environment; step after LAST resets."""

    def __init__(self, params: TwoRoomParams, task_id: int, seed: int = 0):
        if not 0 <= task_id < num_tasks(params):
            raise ValueError(f"task_id {task_id} out of range: there are {num_tasks(params)}")
        self._params = params
        self._task_id = jnp.asarray(task_id, jnp.int32)
        self._key = jax.random.PRNGKey(seed)
        self._state: EnvState | None = None
        self._needs_reset = True

    @property
    def params(self) -> TwoRoomParams:
        return self._params

    @property
    def state(self) -> EnvState | None:
        return self._state

    def reset(self) -> dm_env.TimeStep:
        self._key, key = jax.random.split(self._key)
        self._state, obs = _reset_jit(key, self._params, self._task_id)
        self._needs_reset = False
        return dm_env.restart(np.asarray(obs))

    def step(self, action: int) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        a = int(action)
        if not 0 <= a < NUM_ACTIONS:
            raise ValueError(f"action {action} out of range [0, {NUM_ACTIONS})")
        self._state, obs, reward, discount = _step_jit(
            self._params, self._state, jnp.asarray(a, jnp.int32), self._task_id
        )
        obs, reward = np.asarray(obs), np.float32(reward)
        if float(discount) == 0.0:
            self._needs_reset = True
            return timesteps.last(reward, obs, discount=np.float32(0.0))
        return dm_env.transition(reward, obs, discount=np.float32(1.0))

    def observation_spec(self) -> specs.BoundedArray:
        size = observation_size(self._params)
        minimum = np.zeros(size, np.float32)
        maximum = np.ones(size, np.float32)
        minimum[-1] = STEP_REWARD + WALL_PENALTY
        maximum[-1] = STEP_REWARD + GOAL_REWARD
        return specs.BoundedArray((size,), np.float32, minimum, maximum, name="observation")

    def action_spec(self) -> specs.DiscreteArray:
        return specs.DiscreteArray(NUM_ACTIONS, dtype=np.int32, name="action")
