"""Environments of distral (Teh et al., 2017, arXiv:1707.04175, Section 4).

`two_room`: the paper's grid world, in pure JAX, with a dm_env adapter.
`atari`: ALE games (ale-py) with the standard preprocessing, as dm_env tasks.
`minatar`: the five MinAtar games, padded to one observation shape, as dm_env tasks.
(`atari` and `minatar` are imported on use: `from distral.envs import atari`.)
Environments import no learning code.
"""

from distral.envs import two_room
from distral.envs.two_room import LAYOUTS, LayoutError, TwoRoomEnv, TwoRoomParams, make_params

__all__ = ["LAYOUTS", "LayoutError", "TwoRoomEnv", "TwoRoomParams", "make_params", "two_room"]
