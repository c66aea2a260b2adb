"""MinAtar games as Distral tasks (Young and Tian, 2019, arXiv:1903.03176).

Five small Atari-like games on a 10 x 10 grid that learn on a CPU in minutes: the
CPU-sized multitask benchmark of DESIGN.md section 2. One game is one task. The games have
4 to 10 observation channels; every task's observation is padded with zero channels to
`NUM_CHANNELS` (10, Seaquest's), so one network takes them all, and every game uses
MinAtar's full set of 6 actions (no-op, left, up, right, down, fire), so pi_0 is shared.

`MinAtarEnv` is a dm_env.Environment: observation float32 [10, 10, 10] in {0, 1}; MinAtar's
own sticky actions (probability 0.1 by default, as its authors); an episode ends when the
game does (discount 0) or after `max_steps` agent steps (truncation, discount 1).
Environments import no learning code.
"""

from __future__ import annotations

import difflib
from typing import Any

import dm_env
import numpy as np
from dm_env import specs

from distral.envs.timesteps import Float32Specs, step_timestep

#: The five MinAtar games, by their package names.
GAMES = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")
NUM_CHANNELS = 10  # the most of any game (seaquest)
NUM_ACTIONS = 6  # MinAtar's full action set, shared by all games
GRID = 10
#: Mean score of the uniform-random policy, 100 episodes per game with the default sticky
#: actions (`experiments/minatar_random.py`, seed 0, 2026-11-22; standard errors 0.04-0.21
#: in experiments/results/minatar/random.json). The collapse detector's floor for games.
RANDOM_SCORES = {
    "breakout": 0.50,
    "asterix": 0.36,
    "freeway": 0.17,
    "seaquest": 0.11,
    "space_invaders": 2.88,
}


class GameError(ValueError):
    """An unknown game name; the message is one line and lists close matches."""


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def canonical_game(name: str) -> str:
    """'SpaceInvaders', 'space-invaders' or 'space_invaders' -> 'space_invaders'."""
    by_key = {_key(g): g for g in GAMES}
    if _key(name) in by_key:
        return by_key[_key(name)]
    close = difflib.get_close_matches(_key(name), list(by_key), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(by_key[c] for c in close)}?" if close else ""
    raise GameError(f"unknown MinAtar game {name!r}{hint} (games: {', '.join(GAMES)})")


def observation_spec() -> specs.BoundedArray:
    """Every game's observation: float32 [10, 10, 10] in {0, 1} (padded channels)."""
    return specs.BoundedArray((GRID, GRID, NUM_CHANNELS), np.float32, 0.0, 1.0, name="observation")


class MinAtarEnv(Float32Specs, dm_env.Environment):
    """One MinAtar game as a dm_env.Environment; step after LAST resets."""

    def __init__(
        self,
        game: str,
        seed: int = 0,
        *,
        sticky_action_prob: float = 0.1,
        max_steps: int = 10_000,
    ) -> None:
        from minatar import Environment  # here: importing distral.envs stays light

        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.game = canonical_game(game)
        self._env = Environment(self.game, sticky_action_prob=sticky_action_prob)
        self._env.seed(seed)
        self._channels = self._env.state_shape()[2]
        self._max_steps = int(max_steps)
        self._t = 0
        self._needs_reset = True

    @property
    def game_state(self) -> Any:
        """MinAtar's game object of the running episode (read it, e.g. Seaquest's `sub_y`)."""
        return self._env.env

    def _observation(self) -> np.ndarray:
        obs = np.zeros((GRID, GRID, NUM_CHANNELS), np.float32)
        obs[..., : self._channels] = self._env.state()
        return obs

    def reset(self) -> dm_env.TimeStep:
        self._env.reset()
        self._t = 0
        self._needs_reset = False
        return dm_env.restart(self._observation())

    def step(self, action) -> dm_env.TimeStep:
        if self._needs_reset:
            return self.reset()
        reward, terminal = self._env.act(int(action))
        self._t += 1
        obs = self._observation()
        timestep = step_timestep(
            reward, obs, game_over=bool(terminal), t=self._t, max_steps=self._max_steps
        )
        self._needs_reset = timestep.last()
        return timestep

    def observation_spec(self) -> specs.BoundedArray:
        return observation_spec()

    def action_spec(self) -> specs.DiscreteArray:
        return specs.DiscreteArray(NUM_ACTIONS, name="action")
