"""Batched environments for the actors of distral (Teh et al., 2017, arXiv:1707.04175).

An actor of the distributed runner (DESIGN.md section 3) steps a batch of B environments of
one task at once, so one Reverb `append` carries a leading environment axis. `VectorEnv` is
the small protocol it needs; every implementation AUTO-RESETS: when a step ends an
episode, `done` is True, `reward` and `discount` describe the step that ended it (discount
0), and the returned observation is already the first observation of the next episode.

This is the layout of `learning.Batch`: entry t holds s_t and the a_t, r_t, d_t that
followed, so a discount of 0 stops bootstrapping across the reset and the learner never
needs a separate "final observation". A dm_env episode cut short (LAST with discount 1) is
therefore also reported with discount 0: truncation is treated as termination, as in
`two_room` (the next observation belongs to another episode and cannot be bootstrapped
from).

Implementations: `TwoRoomVectorEnv` (pure JAX, one jitted call per batched step) and
`DmEnvVector` (any list of `dm_env.Environment`s, stepped in a Python loop).
Environments import no learning code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import dm_env
import jax
import jax.numpy as jnp
import numpy as np
from dm_env import specs

from distral.envs import two_room


@runtime_checkable
class VectorEnv(Protocol):
    """B environments of one task, stepped together, with auto-reset."""

    num_envs: int
    num_actions: int

    def observation_spec(self) -> specs.Array:
        """The spec of ONE environment's observation (no batch axis)."""
        ...

    def reset(self, seed: int) -> np.ndarray:
        """Starts every environment afresh: obs [B, *obs_shape]."""
        ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """actions [B] -> (obs [B, ...], reward [B] f32, discount [B] f32, done [B] bool)."""
        ...


# ----------------------------------------------------------------------------------------
# TWO-ROOM: vmapped pure-JAX dynamics, one jit call per batched step
# ----------------------------------------------------------------------------------------


@jax.jit
def _batched_reset(key: jax.Array, params: two_room.TwoRoomParams, task_id: jax.Array):
    """Fresh episodes for B envs: (key, state [B], obs [B, D]); task_id [B]."""
    key, sub = jax.random.split(key)
    keys = jax.random.split(sub, task_id.shape[0])
    state, obs = jax.vmap(two_room.reset, in_axes=(0, None, 0))(keys, params, task_id)
    return key, state, obs


@jax.jit
def _batched_step(
    key: jax.Array,
    params: two_room.TwoRoomParams,
    state: two_room.EnvState,
    action: jax.Array,
    task_id: jax.Array,
):
    """One auto-resetting step of B envs: (key, state, obs, reward, discount, done)."""
    key, sub = jax.random.split(key)
    keys = jax.random.split(sub, task_id.shape[0])
    step = jax.vmap(two_room.step_auto_reset, in_axes=(0, None, 0, 0, 0))
    state, obs, reward, discount, done = step(keys, params, state, action, task_id)
    return key, state, obs, reward, discount, done


class TwoRoomVectorEnv:
    """B two-room environments of task `task_id`, on `two_room.step_auto_reset`.

    Random keys: `reset(seed)` sets key = PRNGKey(seed); each reset or step splits
    (key, sub) = split(key) and gives environment b the key split(sub, B)[b].
    """

    def __init__(
        self, params: two_room.TwoRoomParams, task_id: int, num_envs: int, seed: int = 0
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        # The dm_env adapter checks task_id and owns the observation spec.
        self._spec = two_room.TwoRoomEnv(params, task_id).observation_spec()
        self.params = params
        self.task_id = int(task_id)
        self.num_envs = int(num_envs)
        self.num_actions = two_room.NUM_ACTIONS
        self._task_ids = jnp.full((num_envs,), task_id, jnp.int32)
        self._seed = seed
        self._key: jax.Array | None = None
        self._state: two_room.EnvState | None = None

    def observation_spec(self) -> specs.BoundedArray:
        return self._spec

    @property
    def state(self) -> two_room.EnvState | None:
        """The batched EnvState [B] (None before the first reset)."""
        return self._state

    def reset(self, seed: int | None = None) -> np.ndarray:
        key = jax.random.PRNGKey(self._seed if seed is None else seed)
        self._key, self._state, obs = _batched_reset(key, self.params, self._task_ids)
        return np.asarray(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._state is None:
            raise RuntimeError("call reset(seed) before step(actions)")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        self._key, self._state, *out = _batched_step(
            self._key, self.params, self._state, jnp.asarray(actions, jnp.int32), self._task_ids
        )
        obs, reward, discount, done = jax.device_get(out)
        return obs, reward, discount, done


# ----------------------------------------------------------------------------------------
# ANY DM_ENV: a Python loop over B environments
# ----------------------------------------------------------------------------------------


class DmEnvVector:
    """B `dm_env.Environment`s (one task) as a VectorEnv; a LAST step resets that env.

    dm_env has no seed argument: `reset(seed)` ignores `seed` (seed the envs yourself).
    """

    def __init__(self, envs: list[dm_env.Environment]) -> None:
        if not envs:
            raise ValueError("DmEnvVector needs at least one environment")
        self._envs = list(envs)
        self.num_envs = len(self._envs)
        action_spec = self._envs[0].action_spec()
        if not isinstance(action_spec, specs.DiscreteArray):
            raise TypeError(f"actors need a DiscreteArray action spec, got {action_spec}")
        self.num_actions = int(action_spec.num_values)
        self._spec = self._envs[0].observation_spec()

    def observation_spec(self) -> specs.Array:
        return self._spec

    def _obs(self, timestep: dm_env.TimeStep) -> np.ndarray:
        return np.asarray(timestep.observation, self._spec.dtype)

    def reset(self, seed: int | None = None) -> np.ndarray:
        del seed
        return np.stack([self._obs(env.reset()) for env in self._envs])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        obs, reward = [], np.zeros(self.num_envs, np.float32)
        discount = np.ones(self.num_envs, np.float32)
        done = np.zeros(self.num_envs, bool)
        for b, (env, action) in enumerate(zip(self._envs, actions.tolist(), strict=True)):
            timestep = env.step(action)
            reward[b] = timestep.reward
            if timestep.last():
                done[b] = True
                discount[b] = 0.0
                timestep = env.reset()
            else:
                discount[b] = timestep.discount
            obs.append(self._obs(timestep))
        return np.stack(obs), reward, discount, done
