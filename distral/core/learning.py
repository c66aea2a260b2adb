"""The Distral learner step (Teh et al., 2017, arXiv:1707.04175), shared by every runner.

One module-level, jitted `update_step(state, batch) -> (state, metrics)` on a NamedTuple
`TrainingState`, in the style of Acme's IMPALA learner: the single-process trainer and the
distributed learner both call it, and it can be tested on its own. The network, optimiser
and loss configuration are static (hashable) arguments.

A `Batch` holds B unrolls of T+1 steps, time-major. Entry t carries the observation s_t,
the action a_t taken there, the reward r_t and discount d_t that followed, and the
behaviour policy's logits at s_t. The last entry's action/reward/discount belong to the
next unroll (consecutive unrolls overlap by one step) and are not used.
"""

from __future__ import annotations

import functools
from typing import Any, Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distral.core import gated
from distral.core.losses import LossConfig, distral_loss
from distral.core.networks import DistralNetwork, NetworkOutput, Torso, make_network
from distral.core.variants import Variant

Array = jax.Array
Params = Any


class TrainingState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    step: Array
    rng: Array


ArrayT = TypeVar("ArrayT", jax.Array, np.ndarray)


class Batch(NamedTuple, Generic[ArrayT]):
    """B unrolls of T+1 steps, time-major: `Batch[np.ndarray]` as sampled from replay,
    `Batch[jax.Array]` inside the jitted update (`update_step` takes either)."""

    observation: ArrayT  # [T+1, B, *obs]
    action: ArrayT  # [T+1, B] int
    reward: ArrayT  # [T+1, B]
    discount: ArrayT  # [T+1, B]
    behaviour_logits: ArrayT  # [T+1, B, A]
    task_id: ArrayT  # [B] int


TASK_COLUMN_OUTPUTS = ("logits", "f")


def build_network(
    variant: Variant,
    *,
    num_tasks: int,
    num_actions: int,
    torso: Torso,
    task_columns: str = "separate",
    task_column_output: str = "logits",
    num_subpolicies: int = 4,
    gate_combination: str = "sum",
) -> DistralNetwork | gated.GatedNetwork:
    """The network of a resolved variant (architecture and 2col mixing coefficients).

    `task_column_output` (2col Distral rows): 'logits' (default) makes the task column
    output beta * f_i itself, so pi_i = softmax(alpha * h + column) with no multiplier in
    the network; 'f' makes it output f_i and the network multiply by beta (the paper's
    literal form). The two give the same set of policies and the same objective; they
    differ in optimisation: Adam's step on a parameter is ~lr whatever its gradient's
    scale, so under 'f' every step of the task column moves pi_i's logits beta times as
    far (BUILD_NOTES.md, "Robust learning").

    The 'gated' architecture (`gated`, `gated_task`) is `num_subpolicies` gated sub-policies
    on one torso (`distral.core.gated`), combined by `gate_combination` ('sum' or a learned
    'linear' g); the task columns' settings do not apply to it.
    """
    if variant.architecture == "gated":
        return gated.make_gated_network(
            torso,
            num_tasks=num_tasks,
            num_actions=num_actions,
            num_subpolicies=num_subpolicies,
            task_gates=variant.task_gates,
            combination=gate_combination,
        )
    if task_column_output not in TASK_COLUMN_OUTPUTS:
        raise ValueError(
            f"task_column_output={task_column_output!r}; valid choices: "
            + ", ".join(TASK_COLUMN_OUTPUTS)
        )
    alpha, beta = variant.mix
    if task_column_output == "logits":
        beta = 1.0
    sizes = {"num_tasks": num_tasks, "num_actions": num_actions}
    return make_network(
        variant.architecture,
        torso=torso,
        task_columns=task_columns,
        alpha=alpha,
        beta=beta,
        **sizes,
    )


def make_optimizer(
    learning_rate: float,
    max_grad_norm: float = 40.0,
    *,
    distilled_lr_scale: float = 1.0,
    freeze_distilled: bool = False,
    gate_scaling: GateScaling | None = None,
) -> optax.GradientTransformation:
    """Adam after global-norm clipping (IMPALA clips at 40, arXiv:1802.01561).

    `distilled_lr_scale` multiplies the steps of the distilled column h (the parameters
    under "distilled"). Adam's step is proportional to its learning rate, so this is Adam
    with `learning_rate * distilled_lr_scale` for h. At 1.0 the chain (and the layout of
    its state, which checkpoints hold) is plain clipped Adam. `freeze_distilled` zeroes
    h's gradient first (a fixed pi_0 prior, transfer): h never moves, and its gradient does
    not count in the clip's global norm.

    `gate_scaling` (gated sub-policies) scales sub-policy k's steps by 1 / sigma_hat_k
    (`gated.scale_by_gate_activation`: `update` then takes the batch's `gate_mean`) and the
    shared torso's by `torso_lr_scale`.
    """
    chain = [optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate)]
    if distilled_lr_scale != 1.0:
        chain.append(optax.masked(optax.scale(distilled_lr_scale), _distilled_mask))
    if gate_scaling is not None:
        if gate_scaling.lr_scaling:
            chain.append(
                gated.scale_by_gate_activation(
                    gate_scaling.num_subpolicies,
                    decay=gate_scaling.decay,
                    max_factor=gate_scaling.max_factor,
                )
            )
        if gate_scaling.torso_lr_scale != 1.0:
            chain.append(optax.masked(optax.scale(gate_scaling.torso_lr_scale), _torso_mask))
    if freeze_distilled:
        chain.insert(0, optax.masked(optax.set_to_zero(), _distilled_mask))
    return optax.chain(*chain)


class GateScaling(NamedTuple):
    """The learning-rate settings of a gated network (`make_optimizer`)."""

    num_subpolicies: int
    lr_scaling: bool = True
    max_factor: float = 10.0
    decay: float = 0.99
    torso_lr_scale: float = 1.0


def _distilled_mask(params: Params) -> dict[str, bool]:
    return {name: name == "distilled" for name in params}


def _torso_mask(params: Params) -> dict[str, bool]:
    return {name: name == "torso" for name in params}


def init_training_state(
    key: Array, network: DistralNetwork, optimizer: optax.GradientTransformation, example_obs: Array
) -> TrainingState:
    """Fresh parameters and optimiser state; `example_obs` is a batch [B, *obs]."""
    params_key, rng = jax.random.split(key)
    params = network.init(params_key, example_obs)
    return TrainingState(params, optimizer.init(params), jnp.zeros((), jnp.int32), rng)


def _apply_grouped(params: Params, network: DistralNetwork, obs: Array) -> NetworkOutput:
    """Network outputs for a task-major batch [T+1, N*E, ...] (unrolls of task i at i*E..)."""
    T1, B = obs.shape[:2]
    N = network.num_tasks
    rows = obs.reshape((T1, N, B // N, *obs.shape[2:])).swapaxes(0, 1)  # [N, T+1, E, ...]
    out = network.apply_tasks(params, rows.reshape((N, T1 * (B // N), *obs.shape[2:])))

    def back(x: Array) -> Array:
        x = x.reshape((N, T1, B // N, *x.shape[2:])).swapaxes(0, 1)
        return x.reshape((T1, B, *x.shape[3:]))

    return jax.tree.map(back, out)


def batch_loss(
    params: Params,
    batch: Batch[Array],
    network: DistralNetwork,
    config: LossConfig,
    task_grouped: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """Mean `distral_loss` over the unrolls, and metrics (with KL and entropy per task).

    With `task_grouped`, the batch is task-major (B = N*E, unrolls of task i at columns
    i*E..(i+1)*E-1, as `distral train` lays them out) and the network runs each task's
    column on its own rows only (`apply_tasks`), instead of every column on every row.
    A gated network (one torso for every task) adds the gate losses (`gate_terms`).
    """
    gates = None
    task_ids = jnp.broadcast_to(batch.task_id[None], batch.action.shape)  # [T+1, B]
    if isinstance(network, gated.GatedNetwork):
        out, gates = network.apply_gated(params, batch.observation, task_ids)
    elif task_grouped:
        out = _apply_grouped(params, network, batch.observation)
    else:
        out = network.apply(params, batch.observation, task_ids)

    per_unroll = jax.vmap(
        functools.partial(distral_loss, config=config), in_axes=(1, 1, 1, 1, 1, 1, 1)
    )
    loss, m = per_unroll(
        out.logits,
        out.distilled_logits,
        out.value,
        batch.action[:-1],
        batch.reward[:-1],
        batch.discount[:-1],
        batch.behaviour_logits[:-1],
    )
    one_hot = jax.nn.one_hot(batch.task_id, network.num_tasks)  # [B, N]
    unrolls = one_hot.sum(0)
    metrics = {k: jnp.mean(v) for k, v in m._asdict().items()}
    # Per task: means over the task's unrolls (NaN for a task absent from the batch).
    for name in PER_TASK_METRICS:
        total = (one_hot * getattr(m, name)[:, None]).sum(0)
        metrics[f"{name}_per_task"] = jnp.where(unrolls > 0, total / unrolls, jnp.nan)
    metrics["unrolls_per_task"] = unrolls
    loss = jnp.mean(loss)
    if gates is not None:
        gate_loss, gate_metrics = gate_terms(gates, batch.discount[:-1], config)
        loss, metrics = loss + gate_loss, {**metrics, **gate_metrics}
    return loss, metrics


def gate_terms(gates: Array, discount: Array, config: LossConfig) -> tuple[Array, dict[str, Array]]:
    """The gate losses of a batch, gates [T+1, B, K] and discounts [T, B]:
    c_sparse * sum_k E[sigma_k] + c_temp * (mean over unrolls of the temporal loss), and
    their metrics; `gate_mean` [K] is E[sigma_k] over the batch (the optimiser's input for
    activation-scaled learning rates)."""
    sparsity = gated.sparsity_loss(gates)
    temporal = jnp.mean(jax.vmap(gated.temporal_loss, in_axes=(1, 1))(gates, discount))
    switching = jax.vmap(gated.switching_rate, in_axes=(1, 1))(gates, discount)
    loss = config.sparsity_cost * sparsity + config.temporal_cost * temporal
    return loss, {
        "gate_sparsity": sparsity,
        "gate_temporal": temporal,
        "gate_switching": jnp.nanmean(switching),
        "gate_mean": jnp.mean(gates, axis=(0, 1)),
    }


GATE_METRICS = ("gate_activation", "gate_sparsity", "gate_temporal", "gate_switching")
"""The scalar metrics a gated network's `update_step` adds: the mean gate activation
(mean over k of E[sigma_k]), the sparsity and temporal losses (before their costs) and
the gates' switching rate (`gated.switching_rate`)."""

PER_TASK_METRICS = ("kl", "entropy", "logit_spread")
"""LossMetrics fields that `batch_loss` also reports per task, as NAME_per_task [N]."""


@functools.partial(jax.jit, static_argnames=("network", "optimizer", "config", "task_grouped"))
def update_step(
    state: TrainingState,
    batch: Batch,
    *,
    network: DistralNetwork,
    optimizer: optax.GradientTransformation,
    config: LossConfig,
    task_grouped: bool = False,
) -> tuple[TrainingState, dict[str, Array]]:
    """One gradient step on a batch of unrolls: (state, batch) -> (state, metrics)."""
    (loss, metrics), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        state.params, batch, network, config, task_grouped
    )
    # A gated network's optimiser scales its sub-policies' steps by the gates' activations.
    extra = {"gate_mean": metrics.pop("gate_mean")} if "gate_mean" in metrics else {}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.global_norm(grads)
    if extra:
        metrics["gate_activation"] = jnp.mean(extra["gate_mean"])
    # "distilled" (h), "tasks" (the task columns), "values"; a gated network's "torso",
    # "subpolicies" and "gates"
    for part, g in grads.items():
        metrics[f"grad_norm_{part}"] = optax.global_norm(g)
    new_state = TrainingState(params, opt_state, state.step + 1, state.rng)
    return new_state, metrics
