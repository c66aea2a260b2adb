"""The dm_env time step after an action, shared by the game adapters (`atari`, `minatar`),
and the float32 reward and discount specs of every adapter (`two_room`'s too).

An episode ends when the game does (termination, discount 0) or after `max_steps` agent
steps (truncation, discount 1: the return beyond the limit is bootstrapped, not zero).
"""

from __future__ import annotations

import dm_env
import numpy as np
from dm_env import specs

_ZERO, _ONE = np.float32(0.0), np.float32(1.0)


class Float32Specs:
    """The adapters' reward and discount specs: float32 scalars, as their time steps carry
    (dm_env's default specs say float64)."""

    def reward_spec(self) -> specs.Array:
        return specs.Array((), np.float32, name="reward")

    def discount_spec(self) -> specs.BoundedArray:
        return specs.BoundedArray((), np.float32, 0.0, 1.0, name="discount")


def last(reward: np.float32, observation: np.ndarray, *, discount: np.float32) -> dm_env.TimeStep:
    """The LAST time step with a float32 discount (0: termination, 1: truncation)."""
    return dm_env.TimeStep(dm_env.StepType.LAST, reward, discount, observation)


def step_timestep(
    reward: float, observation: np.ndarray, *, game_over: bool, t: int, max_steps: int
) -> dm_env.TimeStep:
    """TERMINATION if `game_over`, else TRUNCATION once `t` >= `max_steps`, else MID.

    Reward and discount are float32, as `Float32Specs`. The caller resets on `.last()`.
    """
    reward32 = np.float32(reward)
    if game_over:
        return last(reward32, observation, discount=_ZERO)
    if t >= max_steps:
        return last(reward32, observation, discount=_ONE)
    return dm_env.transition(reward32, observation, discount=_ONE)
