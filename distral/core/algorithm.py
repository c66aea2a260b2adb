"""What an algorithm family gives the runners, and the families there are.

`distral train` (one jitted program), `distral launch` (actors, Reverb, a learner),
`distral compare` and `distral plot` run any family named by the config key `algorithm`.
A family is plain functions and data, in the roles of Acme's JAX agents (networks,
learning, acting, replay) and without generic builders:

- `build(config, num_tasks, num_actions)` -> `Parts`: its network, optimiser, learner
  configuration (static, hashable) and resolved variant;
- `init_state(key, parts, example_obs)` -> its learner state (a NamedTuple whose `params`
  are the network's parameters: what actors fetch and checkpoints hold);
- `update_step(state, batch, parts, task_grouped)` -> (state, metrics): one jitted
  learner step; `task_grouped` tells the single-process runner's batch layout (task-major
  rows) so the step may run each task's column on its own rows only;
- `select_action(params, obs, task_id, key, parts)` -> (action, extras): the actor's
  acting function; the extras are what the actor writes beside the action;
- `replay_item` and `replay_table`: what actors write and how the learner samples it;
- `metrics`: the scalar metrics `update_step` reports, and `per_task_metrics`, those it
  also reports per task (NAME_per_task, [N]).

The Distral family (Teh et al., 2017, arXiv:1707.04175) is the worked example: seven
variants (`distral.core.variants`), unrolls of T+1 steps in a FIFO queue, V-trace or
n-step targets. Nothing here imports Reverb, TensorFlow or Ray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from distral.core import acting, apex, distillation, learning
from distral.core.losses import LossConfig, LossMetrics
from distral.core.networks import Torso, make_torso
from distral.core.variants import Variant, get_variant

# T+1 steps of one environment (IMPALA); one state with its teacher's outputs (distillation);
# one n-step transition (Ape-X).
REPLAY_ITEMS = ("unroll", "teacher_sample", "transition")
# FIFO, each item sampled once (on-policy with lag); uniform sampling of a per-task replay;
# prioritised sampling of a per-task replay (Ape-X; its `selector` may make it uniform).
REPLAY_TABLES = ("queue", "uniform", "prioritized")


class Parts(NamedTuple):
    """What a family builds from a configuration (all hashable: static jit arguments)."""

    network: Any
    optimizer: optax.GradientTransformation
    learner_config: Any
    variant: Any


class Algorithm(NamedTuple):
    """An algorithm family: see the module docstring for each role."""

    name: str
    build: Callable[[Any, int, int], Parts]
    init_state: Callable[[jax.Array, Parts, Any], Any]
    update_step: Callable[..., tuple[Any, dict[str, jax.Array]]]
    select_action: Callable[..., tuple[jax.Array, jax.Array]]
    replay_item: str
    replay_table: str
    metrics: tuple[str, ...]
    per_task_metrics: tuple[str, ...]


def torso_of(config: Any) -> Torso:
    """The config's torso: `torso`, with `hidden_sizes` (mlp) or `torso_width` (the CNNs)."""
    return make_torso(config.torso, hidden_sizes=config.hidden_sizes, width=config.torso_width)


# DISTRAL


def build_distral(config: Any, num_tasks: int, num_actions: int) -> Parts:
    """The network, optimiser and loss of a `TrainConfig` with `algorithm: distral`."""
    variant: Variant = get_variant(
        config.variant, alpha=config.alpha, beta=config.beta, entropy_cost=config.entropy_cost
    )
    network = learning.build_network(
        variant,
        num_tasks=num_tasks,
        num_actions=num_actions,
        torso=torso_of(config),
        task_columns=config.task_columns,
        task_column_output=config.task_column_output,
        num_subpolicies=config.gated.num_subpolicies,
        gate_combination=config.gated.combination,
    )
    is_gated = variant.architecture == "gated"
    gates = config.gated
    optimizer = learning.make_optimizer(
        config.learning_rate,
        config.max_grad_norm,
        # Only beside task columns: h alone (a3c_multitask) is the whole policy.
        distilled_lr_scale=(
            config.distilled_lr_scale if variant.architecture in ("1col", "2col") else 1.0
        ),
        freeze_distilled=config.freeze_distilled,
        gate_scaling=(
            learning.GateScaling(
                gates.num_subpolicies,
                gates.lr_scaling,
                gates.max_lr_factor,
                gates.activation_decay,
                gates.torso_lr_scale,
            )
            if is_gated
            else None
        ),
    )
    loss_config = LossConfig.from_variant(
        variant,
        discount=config.discount,
        returns=config.returns,
        n_step=config.n_step,
        value_cost=config.value_cost,
        regulariser=config.regulariser,
        sparsity_cost=gates.sparsity_cost if is_gated else 0.0,
        temporal_cost=gates.temporal_cost if is_gated else 0.0,
    )
    return Parts(network, optimizer, loss_config, variant)


def _distral_init(key: jax.Array, parts: Parts, example_obs: Any) -> learning.TrainingState:
    return learning.init_training_state(key, parts.network, parts.optimizer, example_obs)


def _distral_update(
    state: learning.TrainingState, batch: learning.Batch, parts: Parts, task_grouped: bool = False
) -> tuple[learning.TrainingState, dict[str, jax.Array]]:
    static = {"network": parts.network, "optimizer": parts.optimizer}
    config = parts.learner_config
    return learning.update_step(state, batch, config=config, task_grouped=task_grouped, **static)


def _distral_act(
    params: Any, obs: jax.Array, task_id: jax.Array, key: jax.Array, parts: Parts
) -> tuple[jax.Array, jax.Array]:
    """pi_i's action and its logits (the behaviour policy V-trace corrects for)."""
    return acting.select_action(params, obs, task_id, key, network=parts.network)


DISTRAL = Algorithm(
    name="distral",
    build=build_distral,
    init_state=_distral_init,
    update_step=_distral_update,
    select_action=_distral_act,
    replay_item="unroll",
    replay_table="queue",
    metrics=(
        "loss",
        *LossMetrics._fields,
        "grad_norm",
        "grad_norm_distilled",
        "grad_norm_tasks",
    ),
    per_task_metrics=learning.PER_TASK_METRICS,
)

# TEACHER -> STUDENT DISTILLATION (Rusu et al., 2016; Parisotto et al., 2016)


def build_distill(config: Any, num_tasks: int, num_actions: int) -> Parts:
    """The student network, its optimiser and its loss, from `config.distill`. The
    regression heads' sizes are the teachers' feature sizes, which the runner sets
    (`dataclasses.replace(parts.learner_config, feature_dims=...)`) once it has read them."""
    settings = config.distill
    network = distillation.student_network(
        settings.heads,
        torso=torso_of(config),
        num_tasks=num_tasks,
        num_actions=num_actions,
    )
    optimizer = learning.make_optimizer(config.learning_rate, config.max_grad_norm)
    loss = distillation.DistillConfig(settings.loss, settings.tau, settings.feature_cost)
    return Parts(network, optimizer, distillation.LearnerConfig(loss), None)


def _distill_init(key: jax.Array, parts: Parts, example_obs: Any) -> distillation.DistillState:
    return distillation.init_state(
        key, parts.network, parts.optimizer, parts.learner_config, example_obs
    )


def _distill_update(
    state: distillation.DistillState,
    batch: distillation.Batch,
    parts: Parts,
    task_grouped: bool = False,
) -> tuple[distillation.DistillState, dict[str, jax.Array]]:
    static = {"network": parts.network, "optimizer": parts.optimizer}
    return distillation.update_step(state, batch, config=parts.learner_config, **static)


DISTILL = Algorithm(
    name="distill",
    build=build_distill,
    init_state=_distill_init,
    update_step=_distill_update,
    select_action=_distral_act,  # the student's action on its task (pi_i's head)
    replay_item="teacher_sample",
    replay_table="uniform",
    metrics=distillation.DISTILL_METRICS,
    per_task_metrics=distillation.PER_TASK_METRICS,
)

# APE-X DQN (Horgan et al., 2018)


def build_apex(config: Any, num_tasks: int, num_actions: int) -> Parts:
    """The dueling network (one head per task), Adam with the global-norm clip (Ape-X
    clips at 40 too) and the learner's settings from `config.apex`. The importance-sampling
    exponent's horizon is the run's learner budget, which the learner process sets
    (`dataclasses.replace(parts.learner_config, is_exponent_steps=budget)`)."""
    settings = config.apex
    network = apex.dueling_network(
        torso_of(config),
        num_tasks,
        num_actions,
        settings.hidden,
    )
    optimizer = learning.make_optimizer(config.learning_rate, config.max_grad_norm)
    learner_config = apex.LearnerConfig(
        target_update_period=settings.target_update_period,
        is_exponent_start=settings.is_exponent_start,
    )
    if config.algorithm == "apex_distill":  # the KL to the teachers, lambda x the DQN loss
        learner_config = dataclasses.replace(
            learner_config, distill_tau=config.distill.tau, dqn_cost=config.distill.dqn_cost
        )
    return Parts(network, optimizer, learner_config, None)


def _apex_init(key: jax.Array, parts: Parts, example_obs: Any) -> apex.ApexState:
    return apex.init_state(key, parts.network, parts.optimizer, example_obs)


def _apex_update(
    state: apex.ApexState, batch: apex.Batch, parts: Parts, task_grouped: bool = False
) -> tuple[apex.ApexState, dict[str, jax.Array]]:
    """The update, with the batch's new priorities as the metric `priority` ([B]: the
    learner hands them to its sampler, they are not a column)."""
    static = {"network": parts.network, "optimizer": parts.optimizer}
    state, priority, metrics = apex.update_step(state, batch, config=parts.learner_config, **static)
    return state, {**metrics, "priority": priority}


def _apex_act(
    params: Any, obs: jax.Array, task_id: jax.Array, key: jax.Array, parts: Parts
) -> tuple[jax.Array, jax.Array]:
    """The evaluator's near-greedy action (epsilon `apex.EVAL_EPSILON`) and the Q-values;
    actors explore with their ladder's epsilons (`distral.distributed.workers`)."""
    return apex.select_action(
        params, obs, task_id, jax.numpy.float32(apex.EVAL_EPSILON), key, network=parts.network
    )


APEX = Algorithm(
    name="apex",
    build=build_apex,
    init_state=_apex_init,
    update_step=_apex_update,
    select_action=_apex_act,
    replay_item="transition",
    replay_table="prioritized",
    metrics=apex.APEX_METRICS,
    per_task_metrics=(),
)

# APE-X POLICY DISTILLATION: Ape-X's actors, replay and learner; the student (the same
# dueling network) minimises KL(softmax(q_teacher / tau) || softmax(Q)) with IS weights,
# optionally beside its own double-Q loss, and each transition's priority is that KL (plus
# lambda |td|). Teachers ride on the actors (`distral.distributed.workers`).
APEX_DISTILL = APEX._replace(
    name="apex_distill",
    metrics=apex.APEX_DISTILL_METRICS,
    per_task_metrics=("kl",),
)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (DISTRAL, DISTILL, APEX, APEX_DISTILL)}


def get_algorithm(name: str) -> Algorithm:
    """The family named `name` (a config's `algorithm`)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name!r}; valid choices: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
