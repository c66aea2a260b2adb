"""The dm_env time step after an action, shared by the game adapters (`atari`, `minatar`).

An episode ends when the game does (termination, discount 0) or after `max_steps` agent
steps (truncation, discount 1: the return beyond the limit is bootstrapped, not zero).
"""

from __future__ import annotations

import dm_env
import numpy as np


def step_timestep(
    reward: float, observation: np.ndarray, *, game_over: bool, t: int, max_steps: int
) -> dm_env.TimeStep:
    """TERMINATION if `game_over`, else TRUNCATION once `t` >= `max_steps`, else MID.

    The reward is float32, as the adapters' reward spec. The caller resets on `.last()`.
    """
    reward32 = np.float32(reward)
    if game_over:
        return dm_env.termination(reward32, observation)
    if t >= max_steps:
        return dm_env.truncation(reward32, observation)
    return dm_env.transition(reward32, observation)
