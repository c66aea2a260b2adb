"""Gated sub-policies: a policy built from K parts that learned gates switch on and off.

A multitask learner fed one task after another sees its updates interfere: a step for one
task moves the policy everywhere. Gated sub-policies build the policy from parts that are
active only where they act, so that each part is updated mostly by its own states:

    h = psi(s)                                  shared torso
    f_k(h)                                      K sub-policies (logits [A])
    sigma_k(h) = sigmoid(w_k . h + b_k [+ u_k,i])  gates in (0, 1); u_k,i: task i's gate
                                                bias, where the task is known ('gated_task')
    pi(.|s) = softmax(g(sigma_1 f_1, ..., sigma_K f_K))
                                                g = the sum (default), or a learned linear
                                                map sum_k (sigma_k f_k) W_k + c, W_k [A, A]
                                                ('linear', initialised to the sum)
    V_i(s)                                      one value head per task on h

and trains them with the A3C loss (policy gradient, value, entropy bonus) plus

- the **sparsity loss** c_sparse * sum_k E[sigma_k(h)] (the expectation over the batch's
  states: gates that do not help are switched off);
- the **temporal-consistency loss** c_temp * sum_t sum_k (sigma_k(h_t) - sigma_k(h_{t+1}))^2
  over the consecutive steps of an unroll that lie in one episode (none across a reset);
- **activation-scaled learning rates** (`scale_by_gate_activation`): with sigma_hat_k a
  running mean of E[sigma_k] over batches, the step of f_k's parameters is multiplied by
  min(1 / sigma_hat_k, max_factor), so a part that acts on a few states learns at the rate
  of one that acts everywhere.

With a gate bias per task, K = N and the gates fixed one-hot on the task, this is a head
per task on a shared torso (the "known task indicator" case). The network has the same
functions as a `DistralNetwork` (pi_i = pi_0 = the gated policy, as 'shared'), so every
runner takes it; its outputs also carry the gates [..., K].

Pure JAX; no Reverb, TensorFlow or Ray.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from distral.core import networks
from distral.core.networks import NetworkOutput, Torso

Array = jax.Array
Params = Any

#: Initial gate bias: sigmoid(0) = 0.5, every part half on.
_GATE_INIT_SCALE = 1e-2


# ----------------------------------------------------------------------------------------
# THE POLICY AND THE TWO GATE LOSSES (one unroll or one batch; the caller vmaps)
# ----------------------------------------------------------------------------------------


def gated_logits(subpolicy_logits: Array, gates: Array) -> Array:
    """sum_k sigma_k f_k: subpolicy_logits [..., K, A], gates [..., K] -> logits [..., A]."""
    chex.assert_equal_shape_prefix([subpolicy_logits, gates], gates.ndim)
    return jnp.einsum("...ka,...k->...a", subpolicy_logits, gates)


def linear_combination(subpolicy_logits: Array, gates: Array, w: Array, b: Array) -> Array:
    """The learned g: sum_k (sigma_k f_k) W_k + c. subpolicy_logits [..., K, A], gates
    [..., K], w [K, A, A], b [A] -> logits [..., A]. With every W_k the identity and c = 0
    it is the gated sum."""
    chex.assert_equal_shape_prefix([subpolicy_logits, gates], gates.ndim)
    chex.assert_shape(w, (gates.shape[-1], subpolicy_logits.shape[-1], b.shape[-1]))
    return jnp.einsum("...ka,...k,kac->...c", subpolicy_logits, gates, w) + b


#: The choices of g, the combination of the gated sub-policies.
COMBINATIONS = ("sum", "linear")


def sparsity_loss(gates: Array) -> Array:
    """sum_k E[sigma_k]: gates [..., K], the expectation over every leading axis."""
    chex.assert_rank(gates, {1, 2, 3})
    return jnp.sum(jnp.mean(gates.reshape((-1, gates.shape[-1])), axis=0))


def same_episode(discount_t: Array) -> Array:
    """[T] 1.0 where s_{t+1} follows s_t in the same episode: the environment's discount
    after a_t is 0 at an episode's end (truncation included), and the next entry of the
    unroll is then the first state of a new episode."""
    return (discount_t > 0.0).astype(jnp.float32)


def temporal_loss(gates_t: Array, discount_t: Array) -> Array:
    """sum_t sum_k (sigma_k(h_t) - sigma_k(h_{t+1}))^2 over the consecutive steps of one
    unroll that lie in one episode: gates_t [T+1, K] at s_0..s_T, discount_t [T]."""
    chex.assert_rank([gates_t, discount_t], [2, 1])
    chex.assert_axis_dimension(gates_t, 0, discount_t.shape[0] + 1)
    jumps = jnp.sum(jnp.square(gates_t[1:] - gates_t[:-1]), axis=-1)  # [T]
    return jnp.sum(same_episode(discount_t) * jumps)


def switching_rate(gates_t: Array, discount_t: Array) -> Array:
    """The fraction of a gate's in-episode steps t -> t+1 on which it crosses 0.5 (on to
    off or off to on): gates_t [T+1, K], discount_t [T]. NaN for an unroll with no two
    consecutive steps in one episode."""
    chex.assert_rank([gates_t, discount_t], [2, 1])
    on = gates_t > 0.5
    switched = (on[1:] != on[:-1]).astype(jnp.float32)  # [T, K]
    mask = same_episode(discount_t)[:, None]
    return jnp.sum(mask * switched) / (jnp.sum(mask) * gates_t.shape[-1])


# ----------------------------------------------------------------------------------------
# ACTIVATION-SCALED LEARNING RATES (an optax transformation)
# ----------------------------------------------------------------------------------------


class GateActivationState(NamedTuple):
    activation: Array
    """[K] sigma_hat_k: running mean over batches of E[sigma_k]."""


def scale_by_gate_activation(
    num_subpolicies: int, *, decay: float = 0.99, max_factor: float = 10.0
) -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates of the sub-policies' parameters (`params["subpolicies"]`,
    stacked on a leading axis of K) by min(1 / sigma_hat_k, max_factor); every other
    parameter's update passes unchanged.

    `update(updates, state, params, gate_mean=[K])` first folds the batch's mean gate
    activations into sigma_hat = decay * sigma_hat + (1 - decay) * gate_mean (starting at
    0.5, the gates' value at initialisation), then scales. Placed after Adam, whose step
    is ~lr whatever the gradient's scale, it is Adam with lr / sigma_hat_k for f_k.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay!r} is outside [0, 1)")
    if not max_factor >= 1.0:
        raise ValueError(f"max_factor={max_factor!r} must be >= 1")

    def init(params: Params) -> GateActivationState:
        del params
        return GateActivationState(jnp.full((num_subpolicies,), 0.5, jnp.float32))

    def update(
        updates: Params,
        state: GateActivationState,
        params: Params | None = None,
        *,
        gate_mean: Array,
        **extra: Any,
    ) -> tuple[Params, GateActivationState]:
        del params, extra
        chex.assert_shape(gate_mean, (num_subpolicies,))
        activation = decay * state.activation + (1.0 - decay) * gate_mean
        factor = jnp.minimum(1.0 / jnp.maximum(activation, 1e-12), max_factor)

        def scale(u: Array) -> Array:
            return u * factor.reshape((num_subpolicies,) + (1,) * (u.ndim - 1))

        scaled = {**updates, "subpolicies": jax.tree.map(scale, updates["subpolicies"])}
        return scaled, GateActivationState(activation)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------------------
# THE NETWORK
# ----------------------------------------------------------------------------------------


class GatedOutput(NamedTuple):
    """A `NetworkOutput` and the gates it was built from."""

    output: NetworkOutput
    gates: Array  # [..., K]


class _Gated(NamedTuple):
    torso: Torso
    num_tasks: int
    num_actions: int
    num_subpolicies: int
    task_gates: bool
    combination: str

    def init(self, key: Array, obs: Array) -> Params:
        torso_key, policy_key, gate_key, value_key = jax.random.split(key, 4)
        torso_params = self.torso.init(torso_key, obs)
        dim = networks._feature_dim(self.torso, torso_params, obs)
        K, N = self.num_subpolicies, self.num_tasks
        params = {
            "torso": torso_params,
            "subpolicies": networks._stacked_dense_init(
                policy_key, K, dim, self.num_actions, networks._POLICY_INIT_SCALE
            ),
            "gates": networks._dense_init(gate_key, dim, K, _GATE_INIT_SCALE),
            "values": networks._stacked_dense_init(
                value_key, N, dim, 1, networks._VALUE_INIT_SCALE
            ),
        }
        if self.task_gates:
            params["gates"]["task"] = jnp.zeros((N, K))
        if self.combination == "linear":
            A = self.num_actions
            params["combine"] = {"w": jnp.tile(jnp.eye(A)[None], (K, 1, 1)), "b": jnp.zeros(A)}
        return params

    def _heads(self, params: Params, features: Array, task_id: Array) -> GatedOutput:
        """features [B, D], task_id [B] (rows of one task table: values and task gates)."""
        gate_logits = networks._dense(params["gates"], features)
        if self.task_gates:
            gate_logits = gate_logits + params["gates"]["task"][task_id]
        gates = jax.nn.sigmoid(gate_logits)  # [B, K]
        f = jnp.einsum("bd,kda->bka", features, params["subpolicies"]["w"])
        f = f + params["subpolicies"]["b"]
        if self.combination == "linear":
            logits = linear_combination(f, gates, params["combine"]["w"], params["combine"]["b"])
        else:
            logits = gated_logits(f, gates)
        value = networks._dense_per_sample(params["values"], features, task_id)[..., 0]
        return GatedOutput(NetworkOutput(logits, logits, value), gates)

    def apply_gated(self, params: Params, obs: Array, task_id: Array) -> GatedOutput:
        """obs [*lead, *obs_shape], task_id [*lead] -> outputs and gates [*lead, ...]."""
        task_id = jnp.asarray(task_id)
        chex.assert_type(task_id, int)
        lead = task_id.shape
        flat_obs = obs.reshape((-1, *obs.shape[len(lead) :]))
        features = self.torso.apply(params["torso"], flat_obs)
        out = self._heads(params, features, task_id.reshape(-1))
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)

    def apply(self, params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        return self.apply_gated(params, obs, task_id).output

    def apply_tasks(self, params: Params, obs: Array) -> NetworkOutput:
        if obs.ndim < 2 or obs.shape[0] != self.num_tasks:
            raise ValueError(f"apply_tasks needs obs [{self.num_tasks}, B, ...], got {obs.shape}")
        rows = jnp.broadcast_to(jnp.arange(self.num_tasks)[:, None], obs.shape[:2])
        return self.apply(params, obs, rows)

    def apply_task(self, params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        task_id = jnp.asarray(task_id)
        chex.assert_rank(task_id, 0)
        return self.apply(params, obs, jnp.full(obs.shape[:1], task_id))

    def task_features(self, params: Params, obs: Array, task_id: Array) -> Array:
        del task_id
        return self.torso.apply(params["torso"], obs)

    def task_params(self, params: Params, task_id: int) -> Params:
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(f"task_id={task_id} is outside [0, {self.num_tasks})")
        one = slice(task_id, task_id + 1)
        sliced = {**params, "values": jax.tree.map(lambda x: x[one], params["values"])}
        if self.task_gates:
            sliced["gates"] = {**params["gates"], "task": params["gates"]["task"][one]}
        return sliced


class GatedNetwork(NamedTuple):
    """The functions of a `DistralNetwork` (architecture 'gated'), and `apply_gated`,
    which also returns the gates."""

    init: Any
    apply: Any
    apply_tasks: Any
    apply_task: Any
    task_params: Any
    task_features: Any
    apply_gated: Any
    num_tasks: int
    num_actions: int
    num_subpolicies: int
    architecture: str = "gated"


def make_gated_network(
    torso: Torso,
    *,
    num_tasks: int,
    num_actions: int,
    num_subpolicies: int,
    task_gates: bool,
    combination: str = "sum",
) -> GatedNetwork:
    """K gated sub-policies on a shared torso, one value head per task; `task_gates` adds
    a gate bias per task (the task id as an input of the gates: 'gated_task');
    `combination` is g: 'sum', or 'linear' (learned, `linear_combination`).

    Params: {"torso", "subpolicies": {"w": [K, D, A], "b": [K, A]}, "gates": {"w": [D, K],
    "b": [K], "task": [N, K] with task gates}, "values": {"w": [N, D, 1], "b": [N, 1]},
    "combine": {"w": [K, A, A], "b": [A]} with g linear}. g's parameters take the base
    learning rate (only the sub-policies' steps are activation-scaled).
    """
    if min(num_tasks, num_actions, num_subpolicies) < 1:
        raise ValueError(
            "need num_tasks, num_actions and num_subpolicies >= 1, got "
            f"{num_tasks}, {num_actions}, {num_subpolicies}"
        )
    if combination not in COMBINATIONS:
        raise ValueError(f"combination={combination!r}; valid choices: {', '.join(COMBINATIONS)}")
    net = _Gated(torso, num_tasks, num_actions, num_subpolicies, task_gates, combination)
    return GatedNetwork(
        init=net.init,
        apply=net.apply,
        apply_tasks=net.apply_tasks,
        apply_task=net.apply_task,
        task_params=net.task_params,
        task_features=net.task_features,
        apply_gated=net.apply_gated,
        num_tasks=num_tasks,
        num_actions=num_actions,
        num_subpolicies=num_subpolicies,
    )
