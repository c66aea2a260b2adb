"""Pure action selection for Distral actors and evaluators (Teh et al., 2017, arXiv:1707.04175).

Actors behave with the task policy pi_i (paper, Section 2: each task's experience is
gathered by its own policy); evaluators also run the distilled policy pi_0 = softmax(h) on
every task. Both are module-level jitted functions with the network static, in the style of
Acme's `acting` modules: no environment, no Reverb, no state beyond the arguments.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from distral.core.networks import DistralNetwork, Params

Array = jax.Array


def _sample(logits: Array, key: Array) -> tuple[Array, Array]:
    action = jax.random.categorical(key, logits).astype(jnp.int32)
    return action, logits


def _apply(network: DistralNetwork, params: Params, obs: Array, task_id: Array):
    """task_id [B] (any mix of tasks) or a scalar (the whole batch is one task's: only its
    column runs, N times cheaper than the mixed path for N task columns)."""
    task_id = jnp.asarray(task_id)
    if task_id.ndim == 0:
        return network.apply_task(params, obs, task_id)
    chex.assert_rank(task_id, 1)
    return network.apply(params, obs, task_id)


@functools.partial(jax.jit, static_argnames=("network",))
def select_action(
    params: Params, obs: Array, task_id: Array, key: Array, *, network: DistralNetwork
) -> tuple[Array, Array]:
    """Samples a_t ~ pi_i(.|s_t): obs [B, *obs], task_id [B] or a scalar -> (action [B]
    int32, logits [B, A]).

    The logits are those of the behaviour policy, stored for V-trace's importance weights.
    """
    return _sample(_apply(network, params, obs, task_id).logits, key)


@functools.partial(jax.jit, static_argnames=("network",))
def select_action_pi0(
    params: Params, obs: Array, task_id: Array, key: Array, *, network: DistralNetwork
) -> tuple[Array, Array]:
    """Samples from the distilled policy pi_0 = softmax(h(s_t)): (action [B] int32, logits [B, A]).

    `task_id` ([B] or a scalar) is only used to run the network (pi_0 does not depend on
    it). For the 'independent' baseline there is no pi_0: its distilled logits are zeros
    (uniform).
    """
    return _sample(_apply(network, params, obs, task_id).distilled_logits, key)
