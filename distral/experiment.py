"""What a run configuration builds: the tasks, and its algorithm's network and optimiser.

`distral train` (one jitted program) and `distral launch` (learner, actors and evaluator in
separate processes) build their parts from the same `TrainConfig` through `make_experiment`,
so the two paths train the same network with the same loss (DESIGN.md section 3).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import dm_env
import numpy as np
from dm_env import specs

from distral.config import ConfigError, TrainConfig
from distral.envs import two_room
from distral.envs.vector import DmEnvVector, TwoRoomVectorEnv, VectorEnv

if TYPE_CHECKING:  # the algorithm is imported when built: `task_spec` stays light
    from distral.core.algorithm import Algorithm, Parts
    from distral.core.networks import DistralNetwork
    from distral.core.variants import Variant


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The resolved parts of one configuration (no state, no processes, no files)."""

    config: TrainConfig
    algorithm: Algorithm  # the family (`config.algorithm`)
    parts: Parts  # what the family built: network, optimizer, learner config, variant
    env_params: two_room.TwoRoomParams | None  # None for the game environments
    num_tasks: int
    obs_size: int  # two_room's vector size; for images the product of obs_shape
    optimal_returns: np.ndarray  # [N] exact optimal return per task (NaN for games)
    floor_returns: np.ndarray  # [N] no-goal return (two_room) or random score (games)
    observation_spec: specs.Array  # one environment's observation (no batch axis)
    task_names: tuple[str, ...]  # "goal (r, c)" or the game

    @property
    def network(self) -> DistralNetwork:
        """The algorithm's network (`parts.network`): what runners, actors and probes run."""
        return self.parts.network

    @property
    def metrics(self) -> tuple[str, ...]:
        """The scalar metrics of a metrics row: the family's (`Algorithm.metrics`), and the
        gates' for a gated variant (`learning.GATE_METRICS`)."""
        from distral.core.learning import GATE_METRICS

        gated = self.variant is not None and self.variant.architecture == "gated"
        return (*self.algorithm.metrics, *(GATE_METRICS if gated else ()))

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.observation_spec.shape)

    @property
    def variant(self) -> Variant:
        """The resolved variant (`parts.variant`): the row of the seven and its coefficients
        (None for the families that have no variants)."""
        return self.parts.variant

    def make_vector_env(self, task_id: int, num_envs: int, seed: int) -> VectorEnv:
        """`num_envs` environments of task `task_id` for an actor (auto-resetting)."""
        env = self.config.env
        if env.name == "two_room":
            assert self.env_params is not None
            return TwoRoomVectorEnv(self.env_params, task_id, num_envs, seed=seed)
        if env.name == "atari":  # ale-py's vectorised C++ environment
            from distral.envs.atari import AtariVectorEnv

            return AtariVectorEnv(
                self.task_names[task_id],
                num_envs,
                seed32(seed),
                num_threads=env.ale_threads,
                **self._game_kwargs(),
            )
        # One 32-bit seed per environment from (seed, b): the games' generators take 32 bits.
        seeds = [seed32(seed, b) for b in range(num_envs)]
        return DmEnvVector([self.make_env(task_id, s) for s in seeds])

    def make_env(self, task_id: int, seed: int) -> dm_env.Environment:
        """One dm_env.Environment of task `task_id`."""
        env = self.config.env
        if env.name == "two_room":
            assert self.env_params is not None
            return two_room.TwoRoomEnv(self.env_params, task_id, seed=seed)
        if env.name == "minatar":
            from distral.envs.minatar import MinAtarEnv

            return MinAtarEnv(self.task_names[task_id], seed, **self._game_kwargs())
        from distral.envs.atari import AtariEnv

        return AtariEnv(self.task_names[task_id], seed, **self._game_kwargs())

    def _game_kwargs(self) -> dict:
        env = self.config.env
        kwargs: dict = {"max_steps": env.step_limit}
        if env.sticky_action_prob is not None:
            kwargs["sticky_action_prob"] = env.sticky_action_prob
        return kwargs

    @property
    def has_pi0(self) -> bool:
        """Whether a distilled policy pi_0 exists: not for `a3c` (independent task
        networks), nor for other families (a distillation student has only its pi_i)."""
        return self.config.algorithm == "distral" and self.variant.architecture != "independent"

    def with_learner_config(self, **changes: Any) -> Experiment:
        """This experiment with its family's learner configuration changed: a static value
        only the run knows (a student's teachers' feature sizes, Ape-X's learner budget)."""
        config = dataclasses.replace(self.parts.learner_config, **changes)
        return dataclasses.replace(self, parts=self.parts._replace(learner_config=config))

    @property
    def example_obs(self) -> np.ndarray:
        return np.zeros((1, *self.obs_shape), self.observation_spec.dtype)

    def params_template(self) -> Any:
        """The network's parameter pytree as shapes and dtypes only (nothing computed): the
        structure a process reading published parameters unflattens them into."""
        import jax

        return jax.eval_shape(self.network.init, jax.random.PRNGKey(0), self.example_obs)


def seed32(*entropy: int) -> int:
    """A 32-bit seed derived from `entropy` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def task_spec(config: TrainConfig):
    """(env_params, num_tasks, num_actions, observation spec, optimal returns, floor
    returns, task names). The floor is what `distral.collapse` compares a task's return
    with: never reaching the goal (two_room: -0.1 for every one of max_steps steps), or the
    uniform-random policy's score (games; NaN where no reference score exists)."""
    env = config.env
    if env.name == "two_room":
        env_params = two_room.make_params(
            env.layout,
            num_tasks=env.task_count,
            goal_seed=env.goal_seed,
            goals=env.goals,
            max_steps=env.step_limit,
        )
        num_tasks = two_room.num_tasks(env_params)
        if num_tasks != env.task_count:
            raise ConfigError(
                f"env.layout has {num_tasks} G goal cells but env.num_tasks="
                f"{env.task_count}: set env.num_tasks={num_tasks}"
            )
        names = tuple(f"goal {tuple(g)}" for g in np.asarray(env_params.goals).tolist())
        return (
            env_params,
            num_tasks,
            two_room.NUM_ACTIONS,
            two_room.TwoRoomEnv(env_params, 0).observation_spec(),
            np.asarray(two_room.optimal_returns(env_params)),
            np.full(num_tasks, two_room.STEP_REWARD * env.step_limit),
            names,
        )
    if env.name == "minatar":
        from distral.envs import minatar as module
    else:
        from distral.envs import atari as module  # type: ignore[no-redef]
    games = env.canonical_games
    optimal = np.full(len(games), np.nan)
    floor = np.array([module.RANDOM_SCORES.get(g, np.nan) for g in games])
    return None, len(games), module.NUM_ACTIONS, module.observation_spec(), optimal, floor, games


def make_experiment(config: TrainConfig) -> Experiment:
    """Builds the parts of `config`: its tasks, and its algorithm family's network,
    optimiser and learner configuration (`distral.core.algorithm`)."""
    from distral.core.algorithm import get_algorithm

    env_params, num_tasks, num_actions, obs_spec, optimal, floor, names = task_spec(config)
    algorithm = get_algorithm(config.algorithm)
    parts = algorithm.build(config, num_tasks, num_actions)
    return Experiment(
        config=config,
        algorithm=algorithm,
        parts=parts,
        env_params=env_params,
        num_tasks=num_tasks,
        obs_size=int(np.prod(obs_spec.shape)),
        optimal_returns=optimal,
        floor_returns=floor,
        observation_spec=obs_spec,
        task_names=names,
    )
