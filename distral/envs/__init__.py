"""Environments of distral (Teh et al., 2017, arXiv:1707.04175, Section 4).

`two_room`: the paper's grid world, in pure JAX, with a dm_env adapter.
Environments import no learning code.
"""

from distral.envs import two_room
from distral.envs.two_room import LAYOUTS, LayoutError, TwoRoomEnv, TwoRoomParams, make_params

__all__ = ["LAYOUTS", "LayoutError", "TwoRoomEnv", "TwoRoomParams", "make_params", "two_room"]
