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
) -> DistralNetwork:
    """The network of a resolved variant (architecture and 2col mixing coefficients).

    `task_column_output` (2col Distral rows): 'logits' (default) makes the task column
    output beta * f_i itself, so pi_i = softmax(alpha * h + column) with no multiplier in
    the network; 'f' makes it output f_i and the network multiply by beta (the paper's
    literal form). The two give the same set of policies and the same objective; they
    differ in optimisation: Adam's step on a parameter is ~lr whatever its gradient's
    scale, so under 'f' every step of the task column moves pi_i's logits beta times as
    far (BUILD_NOTES.md, "Robust learning").
    """
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
) -> optax.GradientTransformation:
    """Adam after global-norm clipping (IMPALA clips at 40, arXiv:1802.01561).

    `distilled_lr_scale` multiplies the steps of the distilled column h (the parameters
    under "distilled"). Adam's step is proportional to its learning rate, so this is Adam
    with `learning_rate * distilled_lr_scale` for h. At 1.0 the chain (and the layout of
    its state, which checkpoints hold) is plain clipped Adam. `freeze_distilled` zeroes
    h's gradient first (a fixed pi_0 prior, transfer): h never moves, and its gradient does
    not count in the clip's global norm.
    """
    chain = [optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate)]
    if distilled_lr_scale != 1.0:
        chain.append(optax.masked(optax.scale(distilled_lr_scale), _distilled_mask))
    if freeze_distilled:
        chain.insert(0, optax.masked(optax.set_to_zero(), _distilled_mask))
    return optax.chain(*chain)


def _distilled_mask(params: Params) -> dict[str, bool]:
    return {name: name == "distilled" for name in params}


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
    """
    if task_grouped:
        out = _apply_grouped(params, network, batch.observation)
    else:
        task_ids = jnp.broadcast_to(batch.task_id[None], batch.action.shape)  # [T+1, B]
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
    return jnp.mean(loss), metrics


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
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.global_norm(grads)
    for part, g in grads.items():  # "distilled" (h), "tasks" (the task columns), "values"
        metrics[f"grad_norm_{part}"] = optax.global_norm(g)
    new_state = TrainingState(params, opt_state, state.step + 1, state.rng)
    return new_state, metrics
