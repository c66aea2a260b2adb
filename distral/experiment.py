"""What a run configuration builds: the tasks, the variant, the network and the optimiser.

`distral train` (one jitted program) and `distral launch` (learner, actors and evaluator in
separate processes) build their parts from the same `TrainConfig` through `make_experiment`,
so the two paths train the same network with the same loss (DESIGN.md section 3).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import optax

from distral import learning
from distral.config import ConfigError, TrainConfig
from distral.envs import two_room
from distral.losses import LossConfig
from distral.networks import DistralNetwork, make_torso
from distral.variants import Variant, get_variant


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The resolved parts of one configuration (no state, no processes, no files)."""

    config: TrainConfig
    env_params: two_room.TwoRoomParams
    variant: Variant
    num_tasks: int
    obs_size: int
    network: DistralNetwork
    optimizer: optax.GradientTransformation
    loss_config: LossConfig
    optimal_returns: np.ndarray  # [N] exact optimal expected return per task

    @property
    def has_pi0(self) -> bool:
        """False for `a3c` (independent task networks): no distilled policy exists."""
        return self.variant.architecture != "independent"

    @property
    def example_obs(self) -> np.ndarray:
        return np.zeros((1, self.obs_size), np.float32)


def make_experiment(config: TrainConfig, *, returns: str | None = None) -> Experiment:
    """Builds the parts of `config`; `returns` overrides `config.returns` (nstep | vtrace)."""
    env = config.env
    env_params = two_room.make_params(
        env.layout,
        num_tasks=env.num_tasks,
        goal_seed=env.goal_seed,
        goals=env.goals,
        max_steps=env.max_steps,
    )
    num_tasks = two_room.num_tasks(env_params)
    if num_tasks != env.num_tasks:
        raise ConfigError(
            f"env.layout has {num_tasks} G goal cells but env.num_tasks="
            f"{env.num_tasks}: set env.num_tasks={num_tasks}"
        )
    variant = get_variant(
        config.variant, alpha=config.alpha, beta=config.beta, entropy_cost=config.entropy_cost
    )
    network = learning.build_network(
        variant,
        num_tasks=num_tasks,
        num_actions=two_room.NUM_ACTIONS,
        torso=make_torso(config.torso, hidden_sizes=config.hidden_sizes),
        task_columns=config.task_columns,
    )
    loss_config = LossConfig.from_variant(
        variant,
        discount=config.discount,
        returns=returns or config.returns,
        n_step=config.n_step,
        value_cost=config.value_cost,
    )
    return Experiment(
        config=config,
        env_params=env_params,
        variant=variant,
        num_tasks=num_tasks,
        obs_size=two_room.observation_size(env_params),
        network=network,
        optimizer=learning.make_optimizer(config.learning_rate, config.max_grad_norm),
        loss_config=loss_config,
        optimal_returns=np.asarray(two_room.optimal_returns(env_params)),
    )
