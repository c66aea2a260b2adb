"""Ape-X DQN (Horgan et al., 2018, arXiv:1803.00933): the pure maths, rlax style.

Ape-X DQN is a dueling network (Wang et al., 2016, arXiv:1511.06581) learning from n-step
double Q-learning targets (van Hasselt et al., 2016, arXiv:1509.06461) sampled from a
prioritised replay (Schaul et al., 2016, arXiv:1511.05952) that many actors fill, each
acting epsilon-greedily with its own epsilon.

- Actors turn n consecutive steps into one transition (s_t, a_t, R_t, G_t, s_{t+n}) with
  R_t = sum_{k<n} (prod_{j<k} d_{t+j}) r_{t+k} and G_t = prod_{k<n} d_{t+k}, where d is
  the environment's discount times gamma (0 past an episode's end): `n_step_transition`.
- The TD error of a transition is R_t + G_t Q'(s_{t+n}, argmax_a Q(s_{t+n}, a)) - Q(s_t,
  a_t), with Q' the target network (copied from Q every K updates). Its absolute value is
  the transition's priority; actors compute it with their copy of the network when they
  insert, the learner after each update (`apex_dqn_loss`).
- Replay samples item i with probability P(i) = p_i^omega / sum_k p_k^omega (Reverb's
  prioritised selector, omega = 0.6) and the learner weights its loss by the
  importance-sampling weight w_i = (N P(i))^-b / max_j w_j over the batch, with b annealed
  linearly from 0.4 to 1 over the run (`importance_weights`, `is_exponent`).

Each loss takes ONE transition and checks it; callers `jax.vmap` over the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Generic, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from distral.core.distillation import kl_loss
from distral.core.learning import ArrayT
from distral.core.losses import rlax
from distral.core.networks import Params, Torso

PRNGKey = chex.PRNGKey

Array = jax.Array

# Ape-X, section 4 and appendix: epsilon_i = 0.4 ** (1 + 7 i / (N - 1)); priority exponent
# 0.6; importance-sampling exponent 0.4 (annealed to 1 here, as Schaul et al. do).
EPSILON_BASE = 0.4
EPSILON_ALPHA = 7.0
PRIORITY_EXPONENT = 0.6
IS_EXPONENT_START = 0.4


def epsilon_ladder(
    num_actors: int, base: float = EPSILON_BASE, alpha: float = EPSILON_ALPHA
) -> tuple[float, ...]:
    """Each actor's epsilon: base ** (1 + alpha i / (N - 1)) for i = 0 .. N - 1.

    Actor 0 explores most (epsilon = base), the last least (base ** (1 + alpha)). A single
    actor gets `base`.
    """
    if num_actors < 1:
        raise ValueError(f"epsilon_ladder needs at least one actor, got {num_actors}")
    if num_actors == 1:
        return (base,)
    return tuple(base ** (1.0 + alpha * i / (num_actors - 1)) for i in range(num_actors))


def epsilon_greedy(q_values: Array, epsilon: Array, key: PRNGKey) -> Array:
    """Actions [B] of an epsilon-greedy policy on Q-values [B, A]: each sample's argmax,
    replaced with probability `epsilon` (a scalar, or [B]: one per sample) by an action
    drawn uniformly (the greedy one included, as in DQN)."""
    chex.assert_rank(q_values, 2)
    explore_key, action_key = jax.random.split(key)
    batch, num_actions = q_values.shape
    explore = jax.random.uniform(explore_key, (batch,)) < epsilon
    random_action = jax.random.randint(action_key, (batch,), 0, num_actions)
    return jnp.where(explore, random_action, jnp.argmax(q_values, axis=-1)).astype(jnp.int32)


def n_step_transition(r_t: Array, discount_t: Array) -> tuple[Array, Array]:
    """The n-step reward and discount of n consecutive steps (r_t[k], discount_t[k]).

    discount_t[k] is the environment's discount times gamma: a 0 (an episode's end) cuts
    off every later reward and the bootstrap. Returns (R, G) with
    R = sum_k (prod_{j<k} discount_t[j]) r_t[k] and G = prod_k discount_t[k].
    """
    chex.assert_rank([r_t, discount_t], 1)
    chex.assert_equal_shape([r_t, discount_t])
    chex.assert_type([r_t, discount_t], float)
    survived = jnp.cumprod(discount_t)
    before = jnp.concatenate([jnp.ones((1,), discount_t.dtype), survived[:-1]])
    return jnp.sum(before * r_t), survived[-1]


def apex_dqn_loss(
    q_tm1: Array,
    a_tm1: Array,
    r_t: Array,
    discount_t: Array,
    q_t_target: Array,
    q_t_online: Array,
    weight: Array,
) -> tuple[Array, Array]:
    """One n-step transition's weighted double-Q loss and its new priority.

    q_tm1: Q(s_t, .) of the online network, [A]; a_tm1: the action taken; r_t, discount_t:
    the transition's n-step reward R and discount G (scalars); q_t_target, q_t_online:
    Q'(s_{t+n}, .) and Q(s_{t+n}, .), [A] (the online one selects, the target one values);
    weight: the importance-sampling weight. Returns (weight * td^2 / 2, |td|); the target
    carries no gradient.
    """
    chex.assert_rank([q_tm1, a_tm1, r_t, discount_t, q_t_target, q_t_online, weight],
                     [1, 0, 0, 0, 1, 1, 0])  # fmt: skip
    chex.assert_equal_shape([q_tm1, q_t_target, q_t_online])
    td = rlax.double_q_learning(q_tm1, a_tm1, r_t, discount_t, q_t_target, q_t_online)
    return 0.5 * jax.lax.stop_gradient(weight) * td**2, jax.lax.stop_gradient(jnp.abs(td))


def importance_weights(probabilities: Array, table_size: Array, exponent: Array) -> Array:
    """Schaul et al.'s weights w_i = (N P(i))^-exponent, divided by the batch's largest.

    probabilities: P(i) of each sampled item, [B] (Reverb's `SampleInfo.probability`);
    table_size: N, the items in the table when it was sampled.
    """
    chex.assert_rank(probabilities, 1)
    w = (table_size * probabilities) ** -exponent
    return w / jnp.max(w)


def is_exponent(step: Array, total_steps: int, start: float = IS_EXPONENT_START) -> Array:
    """The importance-sampling exponent at learner step `step`: start -> 1 linearly over
    `total_steps`, then 1."""
    if total_steps < 1:
        raise ValueError(f"is_exponent needs total_steps >= 1, got {total_steps}")
    fraction = jnp.clip(step / total_steps, 0.0, 1.0)
    return start + (1.0 - start) * fraction


def dueling_q(value: Array, advantages: Array) -> Array:
    """Wang et al.'s aggregation Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').

    value: [...]; advantages: [..., A]. The mean (not the max) keeps A identifiable with
    a stable target, the paper's choice.
    """
    chex.assert_rank(advantages, value.ndim + 1)
    return value[..., None] + advantages - jnp.mean(advantages, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------
# THE DUELING NETWORK: a shared torso, one value and one advantage stream per task
# ----------------------------------------------------------------------------------------


class QNetwork(NamedTuple):
    """Q-values of one head per task on a shared torso; parameters {"torso", "value",
    "advantage"}, each stream {"hidden": {"w": [N, D, H], "b": [N, H]}, "out": {"w":
    [N, H, O], "b": [N, O]}} stacked on the task axis N."""

    init: Callable[[PRNGKey, Array], Params]  # (key, obs [B, ...]) -> params
    apply: Callable[[Params, Array, Array], Array]  # (params, obs, task_id [B]) -> [B, A]
    num_tasks: int
    num_actions: int
    features: Callable[[Params, Array], Array]  # (params, obs) -> the torso's [B, D]

    def task_params(self, params: Params, task_id: int) -> Params:
        """Task `task_id`'s network alone (the torso and its streams, a task axis of 1):
        what an actor of that task holds, applied with task id 0."""
        one = lambda x: x[task_id : task_id + 1]  # noqa: E731
        return {
            "torso": params["torso"],
            "value": jax.tree.map(one, params["value"]),
            "advantage": jax.tree.map(one, params["advantage"]),
        }


def _stream_init(key: PRNGKey, num_tasks: int, dims: tuple[int, int, int]) -> Params:
    d, h, o = dims
    # The task axis is a batch axis: each task's stream has fan-in d (or h), whatever N.
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))
    k_hidden, k_out = jax.random.split(key)
    return {
        "hidden": {"w": init(k_hidden, (num_tasks, d, h), jnp.float32),
                   "b": jnp.zeros((num_tasks, h))},
        "out": {"w": init(k_out, (num_tasks, h, o), jnp.float32), "b": jnp.zeros((num_tasks, o))},
    }  # fmt: skip


def _stream(p: Params, features: Array, task_id: Array) -> Array:
    """Every task's stream on features [B, D], then sample b's task: -> [B, O]. Computing
    all N heads costs N times one, and N is a handful of games; gathering a [D, H] matrix
    per sample would cost B times the memory."""
    hidden = jax.nn.relu(jnp.einsum("bd,ndh->bnh", features, p["hidden"]["w"]) + p["hidden"]["b"])
    out = jnp.einsum("bnh,nho->bno", hidden, p["out"]["w"]) + p["out"]["b"]
    return out[jnp.arange(features.shape[0]), task_id]


def dueling_network(torso: Torso, num_tasks: int, num_actions: int, hidden: int) -> QNetwork:
    """Wang et al.'s dueling architecture with `hidden` units per stream, one head per
    task (Ape-X's multitask runs: the task label is known)."""
    if num_tasks < 1 or num_actions < 1 or hidden < 1:
        raise ValueError(
            f"dueling_network needs num_tasks, num_actions and hidden >= 1, got "
            f"{num_tasks}, {num_actions}, {hidden}"
        )

    def init(key: PRNGKey, obs: Array) -> Params:
        k_torso, k_value, k_advantage = jax.random.split(key, 3)
        torso_params = torso.init(k_torso, obs)
        features = jax.eval_shape(torso.apply, torso_params, obs)
        if len(features.shape) != 2:
            raise ValueError(f"a torso must return [B, D] features, got shape {features.shape}")
        d = features.shape[1]
        return {
            "torso": torso_params,
            "value": _stream_init(k_value, num_tasks, (d, hidden, 1)),
            "advantage": _stream_init(k_advantage, num_tasks, (d, hidden, num_actions)),
        }

    def features(params: Params, obs: Array) -> Array:
        return torso.apply(params["torso"], obs)

    def apply(params: Params, obs: Array, task_id: Array) -> Array:
        chex.assert_rank(task_id, 1)
        h = features(params, obs)
        value = _stream(params["value"], h, task_id)[:, 0]
        return dueling_q(value, _stream(params["advantage"], h, task_id))

    return QNetwork(init, apply, num_tasks, num_actions, features)


@functools.partial(jax.jit, static_argnames=("network",))
def select_action(
    params: Params, obs: Array, task_id: Array, epsilon: Array, key: PRNGKey, *, network: QNetwork
) -> tuple[Array, Array]:
    """An actor's epsilon-greedy actions on task `task_id` (a scalar) and the Q-values
    [B, A] it acted on (the n-step writer's initial priorities use them)."""
    task = jnp.full((obs.shape[0],), task_id, jnp.int32)
    q_values = network.apply(params, obs, task)
    return epsilon_greedy(q_values, epsilon, key), q_values


EVAL_EPSILON = 0.001
"""The evaluator's epsilon (Dopamine's and Rainbow's evaluation value): near-greedy, so an
evaluation cannot loop forever on a deterministic game state."""


# ----------------------------------------------------------------------------------------
# THE LEARNER: one jitted update on a batch of prioritised n-step transitions
# ----------------------------------------------------------------------------------------


class Batch(NamedTuple, Generic[ArrayT]):
    """B n-step transitions as sampled, with what the sampler knew of them."""

    observation: ArrayT  # s_t [B, *obs]
    action: ArrayT  # a_t [B] int
    reward: ArrayT  # the n-step reward R [B]
    discount: ArrayT  # the n-step discount G [B] (0 if the episode ended)
    next_observation: ArrayT  # s_{t+n} [B, *obs]
    task_id: ArrayT  # [B] int
    probability: ArrayT  # P(item) when it was sampled [B]
    table_size: ArrayT  # items in its table when it was sampled [B]
    teacher_outputs: ArrayT | None = None  # Ape-X distillation: the teacher's at s_t [B, A]


class ApexState(NamedTuple):
    params: Params
    target_params: Params
    opt_state: optax.OptState
    step: Array


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Static settings of `update_step`."""

    target_update_period: int = 2500
    """Learner steps between copies of the online network into the target (Ape-X: 2,500)."""
    is_exponent_steps: int = 1
    """Learner steps over which the importance-sampling exponent goes to 1 (the run's)."""
    is_exponent_start: float = IS_EXPONENT_START
    distill_tau: float | None = None
    """Ape-X distillation (`algorithm: apex_distill`): the temperature tau of the KL from
    the teacher's softmax(q / tau) to the student's softmax(Q); None: plain Ape-X DQN."""
    dqn_cost: float = 1.0
    """The weight lambda of the double-Q loss: Ape-X DQN's whole loss; beside the KL in
    Ape-X distillation, where 0 (the default there) leaves the KL alone."""

    def __post_init__(self) -> None:
        for name in ("target_update_period", "is_exponent_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.distill_tau is not None and not self.distill_tau > 0:
            raise ValueError(f"distill_tau must be > 0, got {self.distill_tau}")
        if not self.dqn_cost >= 0 or (self.distill_tau is None and self.dqn_cost == 0):
            raise ValueError(f"dqn_cost={self.dqn_cost} leaves no loss (or is negative)")


def init_state(
    key: PRNGKey, network: QNetwork, optimizer: optax.GradientTransformation, example_obs: Array
) -> ApexState:
    """Fresh online parameters, the target network equal to them, and the optimiser."""
    params = network.init(key, example_obs)
    return ApexState(params, params, optimizer.init(params), jnp.zeros((), jnp.int32))


APEX_METRICS = ("loss", "td_abs", "q_mean", "is_weight_min", "is_exponent", "grad_norm")
# Ape-X distillation adds the KL to the teacher (mean, and per task: `kl_task_i` columns).
APEX_DISTILL_METRICS = ("loss", "kl", "td_abs", "q_mean", "is_weight_min", "is_exponent",
                        "grad_norm")  # fmt: skip


def distill_priority(q_s: Array, q_t: Array, tau: float) -> Array:
    """KL(softmax(q_t / tau) || softmax(q_s)) of one state [A]: an Ape-X distillation
    transition's priority (plus lambda |td| with the combined objective), and its loss."""
    return kl_loss(q_s, q_t, tau)


def batch_loss(
    params: Params,
    target_params: Params,
    batch: Batch[Array],
    weights: Array,
    network: QNetwork,
    config: LearnerConfig,
) -> tuple[Array, tuple[Array, Array, dict[str, Array]]]:
    """Mean IS-weighted loss of the batch: lambda x the double-Q loss, plus, for Ape-X
    distillation, the KL from the teacher's softmax(q / tau) to the student's softmax(Q).
    Returns it with each item's new priority (lambda |td| + KL), Q(s_t) and the KL and
    |td| per item (NaN where the loss has no such term)."""
    q_tm1 = network.apply(params, batch.observation, batch.task_id)
    nan = jnp.full(q_tm1.shape[:1], jnp.nan)
    loss, priority, td_abs, kl = jnp.zeros_like(nan), jnp.zeros_like(nan), nan, nan
    if config.dqn_cost > 0:
        q_t_online = network.apply(params, batch.next_observation, batch.task_id)
        q_t_target = network.apply(target_params, batch.next_observation, batch.task_id)
        dqn, td_abs = jax.vmap(apex_dqn_loss)(
            q_tm1, batch.action, batch.reward, batch.discount, q_t_target, q_t_online, weights
        )
        loss, priority = config.dqn_cost * dqn, config.dqn_cost * td_abs
    if config.distill_tau is not None:
        if batch.teacher_outputs is None:
            raise ValueError("Ape-X distillation needs a batch with teacher_outputs")
        kl = jax.vmap(distill_priority, in_axes=(0, 0, None))(
            q_tm1, batch.teacher_outputs, config.distill_tau
        )
        loss = loss + jax.lax.stop_gradient(weights) * kl
        priority = priority + jax.lax.stop_gradient(kl)
    return jnp.mean(loss), (priority, q_tm1, {"td_abs": td_abs, "kl": kl})


@functools.partial(jax.jit, static_argnames=("network", "optimizer", "config"))
def update_step(
    state: ApexState,
    batch: Batch,
    *,
    network: QNetwork,
    optimizer: optax.GradientTransformation,
    config: LearnerConfig,
) -> tuple[ApexState, Array, dict[str, Array]]:
    """One step: IS-weighted double-Q loss, optimiser step, target copy every
    `target_update_period` steps. Returns (state, the batch's new priorities: |td|, or for
    Ape-X distillation KL + lambda |td|, and metrics)."""
    exponent = is_exponent(state.step, config.is_exponent_steps, config.is_exponent_start)
    weights = importance_weights(batch.probability, batch.table_size, exponent)
    (loss, (priority, q_tm1, terms)), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        state.params, state.target_params, batch, weights, network, config
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    target = optax.periodic_update(params, state.target_params, step, config.target_update_period)
    metrics = {
        "loss": loss,
        "td_abs": jnp.mean(terms["td_abs"]),
        "q_mean": jnp.mean(q_tm1),
        "is_weight_min": jnp.min(weights),
        "is_exponent": exponent,
        "grad_norm": optax.global_norm(grads),
    }
    if config.distill_tau is not None:  # the KL, and per task (the batch's task ids)
        one_hot = jax.nn.one_hot(batch.task_id, network.num_tasks)  # [B, N]
        count = one_hot.sum(0)
        metrics["kl"] = jnp.mean(terms["kl"])
        total = (one_hot * terms["kl"][:, None]).sum(0)
        metrics["kl_per_task"] = jnp.where(count > 0, total / count, jnp.nan)
    return ApexState(params, target, opt_state, step), priority, metrics
