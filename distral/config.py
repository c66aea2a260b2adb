"""Run configuration: frozen dataclasses, loaded from YAML and `--set key=value`.

Every field has a help text with its unit (shown by `distral train --help`); invariants are
checked in `__post_init__`. Loading is strict: an unknown key, a wrong type or an invalid
value is a `ConfigError` with a one-line message naming the key and the value, raised
before anything runs. YAML is read with `yaml.safe_load` only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from distral.collapse import DEFAULT_ENTROPY as DEFAULT_COLLAPSE_ENTROPY
from distral.core.variants import VARIANTS, VariantError, get_variant

# The algorithm families (`distral.algorithms` maps each name to its parts).
ALGORITHMS = ("distral", "distill", "apex", "apex_distill")
# The families of Ape-X's replay and learner (a dueling network); those with teachers.
APEX_FAMILIES = ("apex", "apex_distill")
STUDENT_FAMILIES = ("distill", "apex_distill")


class ConfigError(ValueError):
    """A bad configuration value. The message is one line, for the CLI."""


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name}={value!r} must be >= 1")


def _all_positive(config: Any, names: Sequence[str], prefix: str = "") -> None:
    for name in names:
        _positive(f"{prefix}{name}", getattr(config, name))


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; valid choices: {', '.join(choices)}")


def _f(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """The environment: the tasks to learn."""

    name: str = _f(
        "two_room",
        "environment: two_room (the paper's grid world, pure JAX), minatar (the five MinAtar "
        "games) or atari (ALE games); the games run with distral launch",
    )
    layout: str = _f(
        "default",
        "two_room map: a built-in name (default, distral_public), a .txt path, or an "
        "inline ASCII map (# wall, . free, G goal)",
    )
    num_tasks: int | None = _f(
        None, "two_room: number of goal cells (null = 8, the paper's); games: one per game"
    )
    goal_seed: int = _f(0, "seed of the fixed list of goal cells (when the map has no G)")
    goals: tuple[tuple[int, int], ...] | None = _f(
        None, "explicit goal cells [[row, col], ...]; overrides goal_seed"
    )
    games: tuple[str, ...] | None = _f(
        None,
        "minatar / atari: one task per game, e.g. [Pong, Breakout]; null = the five MinAtar "
        "games (minatar)",
    )
    max_steps: int | None = _f(
        None,
        "episode time limit, agent steps; null = 100 (two_room, the paper's), 10000 (minatar), "
        "27000 (atari: 108K frames, 30 minutes)",
    )
    sticky_action_prob: float | None = _f(
        None, "games: null = the standard (minatar 0.1, atari 0.25, Machado et al. 2018)"
    )
    ale_threads: int = _f(
        1,
        "atari: worker threads of each actor's vectorised ALE (1 suits one actor process "
        "per core; raise it when actors have cores to spare)",
    )

    def __post_init__(self) -> None:
        _choice("env.name", self.name, ENV_NAMES)
        if self.name == "two_room":
            if self.games is not None:
                raise ConfigError("env.games is for minatar and atari; two_room has goal cells")
            if self.num_tasks is not None:
                _positive("env.num_tasks", self.num_tasks)
            if self.goals is not None and len(self.goals) != self.task_count:
                raise ConfigError(
                    f"env.goals has {len(self.goals)} cells but env.num_tasks={self.task_count}:"
                    " give one goal per task"
                )
        else:
            if self.name == "atari" and not self.games:
                raise ConfigError("env.games must name the Atari games, e.g. [Pong, Breakout]")
            games = self.canonical_games
            if len(set(games)) != len(games):
                raise ConfigError(f"env.games={list(self.games or ())!r} names a game twice")
            if self.num_tasks is not None and self.num_tasks != len(games):
                raise ConfigError(
                    f"env.num_tasks={self.num_tasks} but env.games has {len(games)} games: "
                    "leave num_tasks null (one task per game)"
                )
        if self.max_steps is not None:
            _positive("env.max_steps", self.max_steps)
        _positive("env.ale_threads", self.ale_threads)
        if self.sticky_action_prob is not None and not 0.0 <= self.sticky_action_prob <= 1.0:
            raise ConfigError(
                f"env.sticky_action_prob={self.sticky_action_prob!r} is outside [0, 1]"
            )

    @property
    def canonical_games(self) -> tuple[str, ...]:
        """The games' package names (minatar / atari); a ConfigError names an unknown one."""
        if self.name == "minatar":
            from distral.envs import minatar as module
        elif self.name == "atari":
            from distral.envs import atari as module  # type: ignore[no-redef]
        else:
            return ()
        names = self.games if self.games is not None else module.GAMES
        try:
            return tuple(module.canonical_game(g) for g in names)
        except module.GameError as e:
            raise ConfigError(f"env.games: {e}") from None

    @property
    def task_count(self) -> int:
        if self.name == "two_room":
            return 8 if self.num_tasks is None else self.num_tasks
        return len(self.canonical_games)

    @property
    def step_limit(self) -> int:
        """max_steps, or the environment's default."""
        if self.max_steps is not None:
            return self.max_steps
        return {"two_room": 100, "minatar": 10_000, "atari": 27_000}[self.name]


ENV_NAMES = ("two_room", "minatar", "atari")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`distral launch` only: actors, the Reverb queue and the learner's batch (the
    IMPALA layout, Espeholt et al. 2018, arXiv:1802.01561)."""

    actors_per_task: int = _f(1, "actor processes per task (each steps its own envs)")
    envs_per_actor: int = _f(16, "environments each actor steps in a batch (B)")
    batch_size: int = _f(8, "unrolls per learner step (each [T+1, B]); paper-size: N tasks")
    queue_size: int = _f(64, "unrolls the trajectories queue holds; full -> actors wait")
    refresh_every: int = _f(20, "actor steps between parameter fetches (20 = one unroll)")
    refresh_lag: int = _f(
        1,
        "actors take newly published parameters only when they are at least this many "
        "learner steps newer than the ones they act with (1: any newer publication; 8 or 32 "
        "force policy lag, to test robustness to it)",
    )
    publish_every: int = _f(1, "learner steps between parameter publications")
    max_learner_steps: int | None = _f(
        None, "stop after this many learner steps; null: when the env-step budget is consumed"
    )
    port: int = _f(0, "Reverb server port in the learner process; 0: any free port")
    replay_address: str | None = _f(
        None, "host:port of a running `distral replay-server` to use instead of starting one"
    )
    max_actor_restarts: int = _f(
        3, "restarts allowed per actor (or evaluator) slot before the run stops"
    )
    evaluator: str = _f(
        "learner",
        "where evaluations run: learner (at every log row, blocking the learner meanwhile) or "
        "process (its own process evaluates the newest parameters once per log_every learner "
        "steps; a row holds the newest result and its eval_learner_step, NaN if none came)",
    )

    def __post_init__(self) -> None:
        _choice("distributed.evaluator", self.evaluator, ("learner", "process"))
        counts = "actors_per_task envs_per_actor batch_size queue_size refresh_every refresh_lag"
        _all_positive(self, [*counts.split(), "publish_every"], prefix="distributed.")
        if self.max_learner_steps is not None:
            _positive("distributed.max_learner_steps", self.max_learner_steps)
        if not 0 <= self.port < 65536:
            raise ConfigError(f"distributed.port={self.port!r} must lie in [0, 65535]")
        if self.replay_address is not None:
            host, sep, port = self.replay_address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(
                    f"distributed.replay_address={self.replay_address!r} must look like host:port"
                )
        if self.max_actor_restarts < 0:
            raise ConfigError(
                f"distributed.max_actor_restarts={self.max_actor_restarts!r} must be >= 0"
            )


# Names of the distillation family's settings (`distral.core.distillation` defines them;
# tests/test_distill.py checks the two lists agree, so this module stays free of JAX).
DISTILL_LOSSES = ("nll", "mse", "kl", "actor_mimic")
STUDENT_HEADS = ("per_task", "shared")
BEHAVIOURS = ("student", "teacher", "mixture")


@dataclasses.dataclass(frozen=True)
class DistillSection:
    """`algorithm: distill` (`distral distill`): a student learns from finished runs."""

    teachers: tuple[str, ...] = _f(
        (), "teacher run directories (any distral train/launch run); --teacher adds to them"
    )  # (the CLI appends --teacher's to these; `--set distill.teachers=[...]` replaces them)
    teacher_seed: int | None = _f(None, "which seed of each teacher run; null: its first")
    loss: str = _f(
        "kl",
        "nll / mse / kl (Rusu et al., 2016) or actor_mimic (Parisotto et al., 2016)",
    )
    tau: float = _f(
        1.0,
        "teacher temperature of kl and actor_mimic: softmax(outputs / tau); 1 reads a policy "
        "teacher's logits as they are, 0.01 sharpens Q-values (Rusu et al.)",
    )
    feature_cost: float = _f(0.01, "actor_mimic: weight of feature regression; 0 = off")
    heads: str = _f("per_task", "student: per_task (a head per task) or shared (one head)")
    behaviour: str = _f(
        "student", "who acts to gather data: student (Actor-Mimic's choice), teacher, mixture"
    )
    teacher_prob: float = _f(0.5, "mixture: probability that a step's action is the teacher's")
    dqn_cost: float = _f(
        0.0,
        "apex_distill: weight lambda of the student's own n-step double-Q loss beside the KL "
        "(the combined objective); 0: the KL alone",
    )
    replay_per_task: int = _f(20_000, "samples each task's replay holds (oldest overwritten)")
    batch_per_task: int = _f(32, "samples per task in each update (tasks interleaved evenly)")

    def __post_init__(self) -> None:
        _choice("distill.loss", self.loss, DISTILL_LOSSES)
        _choice("distill.heads", self.heads, STUDENT_HEADS)
        _choice("distill.behaviour", self.behaviour, BEHAVIOURS)
        if not self.tau > 0:
            raise ConfigError(f"distill.tau={self.tau!r} must be > 0")
        if not self.feature_cost >= 0:
            raise ConfigError(f"distill.feature_cost={self.feature_cost!r} must be >= 0")
        if not self.dqn_cost >= 0:
            raise ConfigError(f"distill.dqn_cost={self.dqn_cost!r} must be >= 0")
        if not 0.0 <= self.teacher_prob <= 1.0:
            raise ConfigError(f"distill.teacher_prob={self.teacher_prob!r} is outside [0, 1]")
        _positive("distill.replay_per_task", self.replay_per_task)
        _positive("distill.batch_per_task", self.batch_per_task)


REPLAY_SELECTORS = ("prioritized", "uniform")  # `distral.distributed.prioritized.SELECTORS`


@dataclasses.dataclass(frozen=True)
class ApexSection:
    """`algorithm: apex` (`distral launch`): Ape-X DQN (Horgan et al., 2018,
    arXiv:1803.00933), dueling double DQN with n-step targets from a prioritised replay."""

    n_step: int = _f(3, "n of the n-step double-Q targets (Ape-X: 3)")
    target_update_period: int = _f(
        2500, "learner steps between copies of the online network into the target (Ape-X: 2500)"
    )
    hidden: int = _f(128, "units of each dueling stream's hidden layer (one pair per task)")
    epsilon_base: float = _f(
        0.4,
        "exploration ladder: environment b of an actor's B acts with epsilon "
        "epsilon_base ** (1 + epsilon_alpha b / (B - 1)) (Ape-X: 0.4, over its actors)",
    )
    epsilon_alpha: float = _f(7.0, "exploration ladder's exponent range (Ape-X: 7)")
    selector: str = _f(
        "prioritized", "replay sampling: prioritized (Ape-X) or uniform (the same run otherwise)"
    )
    priority_exponent: float = _f(0.6, "omega: item i is sampled w.p. ~ p_i ** omega (Ape-X: 0.6)")
    is_exponent_start: float = _f(
        0.4, "importance-sampling exponent at the start, annealed to 1 over the run (Ape-X: 0.4)"
    )
    replay_per_task: int = _f(100_000, "transitions each task's table holds (oldest removed)")
    min_replay_per_task: int = _f(
        5_000, "transitions each task's table holds before the learner's first sample"
    )
    batch_per_task: int = _f(64, "transitions of each task in one learner step")
    samples_per_insert: float = _f(
        1.0,
        "replay ratio held by a rate limiter: transitions sampled per transition inserted "
        "(actors wait when ahead, the learner when it is; Acme's DQN holds one too)",
    )

    def __post_init__(self) -> None:
        _choice("apex.selector", self.selector, REPLAY_SELECTORS)
        counts = "n_step target_update_period hidden replay_per_task min_replay_per_task"
        _all_positive(self, [*counts.split(), "batch_per_task"], prefix="apex.")
        for small, large in (
            ("min_replay_per_task", "replay_per_task"),
            ("batch_per_task", "min_replay_per_task"),
        ):
            if getattr(self, small) > getattr(self, large):
                raise ConfigError(
                    f"apex.{small}={getattr(self, small)!r} exceeds "
                    f"apex.{large}={getattr(self, large)!r}"
                )
        if not 0.0 < self.epsilon_base <= 1.0:
            raise ConfigError(f"apex.epsilon_base={self.epsilon_base!r} is outside (0, 1]")
        for name in ("epsilon_alpha", "priority_exponent"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"apex.{name}={getattr(self, name)!r} must be >= 0")
        if not 0.0 <= self.is_exponent_start <= 1.0:
            raise ConfigError(
                f"apex.is_exponent_start={self.is_exponent_start!r} is outside [0, 1]"
            )
        if not self.samples_per_insert > 0:
            raise ConfigError(f"apex.samples_per_insert={self.samples_per_insert!r} must be > 0")


GATE_COMBINATIONS = ("sum", "linear")  # `distral.core.gated.COMBINATIONS`


@dataclasses.dataclass(frozen=True)
class GatedSection:
    """Variants `gated` and `gated_task`: K gated sub-policies on a shared torso
    (`distral.core.gated`), trained with the A3C loss and the two gate losses."""

    num_subpolicies: int = _f(4, "K, the sub-policies (each a policy head, switched by a gate)")
    combination: str = _f(
        "sum",
        "g, how the gated parts make the logits: sum (sum_k sigma_k f_k) or linear "
        "(learned sum_k (sigma_k f_k) W_k + c, starting at the sum)",
    )
    sparsity_cost: float = _f(
        0.01, "c_sparse: cost of sum_k E[sigma_k] over the batch's states (0 turns it off)"
    )
    temporal_cost: float = _f(
        0.01,
        "c_temp: cost of sum_t sum_k (sigma_k(h_t) - sigma_k(h_t+1))^2 within an unroll's "
        "episodes, averaged over unrolls (0 turns it off)",
    )
    lr_scaling: bool = _f(
        True, "scale sub-policy k's Adam step by min(1 / sigma_hat_k, max_lr_factor)"
    )
    max_lr_factor: float = _f(10.0, "cap of the activation-scaled learning-rate factor (>= 1)")
    activation_decay: float = _f(
        0.99, "decay of sigma_hat_k, the running mean over batches of E[sigma_k], in [0, 1)"
    )
    torso_lr_scale: float = _f(
        1.0, "multiplier of the shared torso's learning rate (compare distilled_lr_scale)"
    )

    def __post_init__(self) -> None:
        _positive("gated.num_subpolicies", self.num_subpolicies)
        _choice("gated.combination", self.combination, GATE_COMBINATIONS)
        for name in ("sparsity_cost", "temporal_cost"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"gated.{name}={getattr(self, name)!r} must be >= 0")
        if not self.max_lr_factor >= 1.0:
            raise ConfigError(f"gated.max_lr_factor={self.max_lr_factor!r} must be >= 1")
        if not 0.0 <= self.activation_decay < 1.0:
            raise ConfigError(f"gated.activation_decay={self.activation_decay!r} is outside [0, 1)")
        if not self.torso_lr_scale > 0:
            raise ConfigError(f"gated.torso_lr_scale={self.torso_lr_scale!r} must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run: `distral train` (one jitted program) and `distral launch` (the `distributed`
    section adds the processes' settings; everything else means the same in both)."""

    algorithm: str = _f(
        "distral",
        f"algorithm family; one of {', '.join(ALGORITHMS)} (README, 'Adding an algorithm')",
    )
    variant: str = _f("kl_ent_2col", f"the family's variant; distral: one of {', '.join(VARIANTS)}")
    alpha: float | None = _f(None, "override of alpha (KL+ent variants), in [0, 1]")
    beta: float | None = _f(None, "override of beta (Distral variants), > 0")
    entropy_cost: float | None = _f(None, "override of the A3C entropy-bonus cost, >= 0")
    env: EnvConfig = dataclasses.field(
        default_factory=EnvConfig, metadata={"help": "environment section"}
    )
    torso: str = _f("mlp", "network torso: mlp, nature_cnn, impala_resnet, minatar_cnn")
    hidden_sizes: tuple[int, ...] = _f(
        (64, 64), "MLP torso layer sizes; [] = no hidden layer (heads linear in the input)"
    )
    torso_width: int | None = _f(
        None, "units of a CNN torso's last layer (null: 128 minatar_cnn, 512 nature_cnn, "
        "256 impala_resnet); the mlp torso's sizes are hidden_sizes"
    )  # fmt: skip
    task_columns: str = _f("separate", "task columns: separate (paper) or shared_torso")
    num_envs_per_task: int = _f(16, "parallel environments per task")
    unroll_length: int = _f(20, "agent steps per unroll (T) before each update")
    discount: float = _f(0.95, "discount per agent step")
    learning_rate: float = _f(1e-3, "Adam learning rate")
    distilled_lr_scale: float = _f(
        1.0, "multiplier of h's learning rate beside task columns (1col, 2col rows)"
    )
    task_column_output: str = _f(
        "logits",
        "2col Distral rows: logits (the task column outputs beta * f_i, so Adam's steps on "
        "pi_i's logits do not grow with beta) or f (it outputs f_i and the network multiplies "
        "by beta: the paper's literal form, which collapses at discount 0.99)",
    )
    regulariser: str = _f(
        "expected",
        "Distral rows: step t's own KL/entropy regulariser as its expectation over pi_i's "
        "actions, differentiated exactly (expected), or at the action taken only (sampled); "
        "the same expected gradient",
    )
    max_grad_norm: float = _f(40.0, "global gradient-norm clip (IMPALA: 40)")
    value_cost: float = _f(0.5, "weight of the value loss")
    returns: str = _f("nstep", "value targets: nstep (on-policy) or vtrace")
    n_step: int | None = _f(None, "n of n-step returns; null: bootstrap at unroll end")
    env_steps_per_task: int = _f(400_000, "training budget, agent steps per task")
    log_every: int = _f(20, "updates between log rows (one compiled chunk)")
    eval_episodes_per_task: int = _f(16, "episodes per task of each evaluation")
    collapse_entropy: float = _f(
        DEFAULT_COLLAPSE_ENTROPY,
        "collapse detector: a task whose pi_i entropy (nats, in the training data of a log "
        "row) is below this while its return is at or below the floor (never reaching the "
        "goal; a game's random score) is reported collapsed (collapsed_tasks column, a "
        "warning); 0 turns it off",
    )
    halt_on_nan: bool = _f(
        True,
        "stop at the first non-finite loss, gradient norm or parameter (a one-line error "
        "naming the step; no checkpoint of it is written); false: warn once and go on",
    )
    checkpoint_every: int = _f(10, "log rows between checkpoints (and at the end)")
    keep_checkpoints: int = _f(3, "checkpoints kept (the latest)")
    seeds: tuple[int, ...] = _f((0,), "seeds, run together (vmapped) in one program")
    init_from: str | None = _f(
        None,
        "transfer: a finished distral train/launch run (its first seed) whose distilled "
        "column h starts this run's (the tasks may differ; the network must match)",
    )
    init_parts: str = _f(
        "distilled", "what init_from copies: distilled (h's torso and policy head) or torso"
    )
    freeze_distilled: bool = _f(
        False,
        "transfer: h gets no updates, so the source's pi_0 is a fixed prior (the KL term's "
        "target) for the new tasks; needs init_from",
    )
    distributed: DistributedConfig = dataclasses.field(
        default_factory=DistributedConfig, metadata={"help": "distral launch section"}
    )
    distill: DistillSection = dataclasses.field(
        default_factory=DistillSection, metadata={"help": "distral distill section"}
    )
    apex: ApexSection = dataclasses.field(
        default_factory=ApexSection, metadata={"help": "algorithm: apex section (Ape-X DQN)"}
    )
    gated: GatedSection = dataclasses.field(
        default_factory=GatedSection,
        metadata={"help": "variants gated and gated_task: the gated sub-policies' section"},
    )

    def __post_init__(self) -> None:
        _choice("algorithm", self.algorithm, ALGORITHMS)
        if self.algorithm == "apex_distill" and self.distill.loss != "kl":
            raise ConfigError(
                f"distill.loss={self.distill.loss!r}: algorithm apex_distill minimises the KL "
                "(distill.loss: kl), with distill.dqn_cost x the double-Q loss beside it"
            )
        try:
            get_variant(
                self.variant, alpha=self.alpha, beta=self.beta, entropy_cost=self.entropy_cost
            )
        except VariantError as e:
            raise ConfigError(str(e)) from None
        _choice("torso", self.torso, ("mlp", "nature_cnn", "impala_resnet", "minatar_cnn"))
        if self.env.name == "two_room" and self.torso != "mlp":
            raise ConfigError(
                f"torso={self.torso!r} needs image observations; two_room gives vectors: use mlp"
            )
        if self.env.name != "two_room" and self.torso == "mlp":
            raise ConfigError(
                f"torso='mlp' takes vectors; {self.env.name} gives images: use "
                + ("minatar_cnn" if self.env.name == "minatar" else "nature_cnn or impala_resnet")
            )
        _choice("task_columns", self.task_columns, ("separate", "shared_torso"))
        _choice("returns", self.returns, ("nstep", "vtrace"))
        _choice("task_column_output", self.task_column_output, ("logits", "f"))
        _choice("regulariser", self.regulariser, ("expected", "sampled"))
        counts = "num_envs_per_task unroll_length env_steps_per_task log_every"
        _all_positive(self, [*counts.split(), "eval_episodes_per_task", "checkpoint_every"])
        _positive("keep_checkpoints", self.keep_checkpoints)
        if self.hidden_sizes and min(self.hidden_sizes) < 1:
            raise ConfigError(f"hidden_sizes={list(self.hidden_sizes)!r} must be positive sizes")
        if self.torso_width is not None:
            _positive("torso_width", self.torso_width)
            if self.torso == "mlp":
                raise ConfigError(
                    f"torso_width={self.torso_width!r} sizes a CNN torso; the mlp torso's "
                    "layers are hidden_sizes"
                )
        if not 0.0 <= self.discount <= 1.0:
            raise ConfigError(f"discount={self.discount!r} is outside [0, 1]")
        for name in ("learning_rate", "max_grad_norm", "distilled_lr_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        if not self.collapse_entropy >= 0:
            raise ConfigError(f"collapse_entropy={self.collapse_entropy!r} must be >= 0")
        if self.value_cost < 0:
            raise ConfigError(f"value_cost={self.value_cost!r} must be >= 0")
        if self.n_step is not None and self.n_step < 1:
            raise ConfigError(f"n_step={self.n_step!r} must be >= 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)!r} must be distinct and non-empty")
        if not all(0 <= s < 2**31 for s in self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)!r} must lie in [0, 2**31)")
        _choice("init_parts", self.init_parts, ("distilled", "torso"))
        if self.freeze_distilled and self.init_from is None:
            raise ConfigError("freeze_distilled=true needs init_from (the run whose pi_0 to keep)")
        if self.freeze_distilled and self.init_parts != "distilled":
            raise ConfigError(
                "freeze_distilled=true keeps the source's pi_0: it needs init_parts=distilled "
                f"(not {self.init_parts!r}, which would freeze a fresh policy head)"
            )
        if self.freeze_distilled and self.variant == "a3c_multitask":
            raise ConfigError(
                "freeze_distilled=true with a3c_multitask: h is its whole policy, nothing "
                "would learn"
            )

    @property
    def method(self) -> str:
        """The run's name in logs, labels and default directories: the variant in
        Distral's family, else the family (apex, apex_distill, distill), whose runs do
        not read `variant`."""
        return self.variant if self.algorithm == "distral" else self.algorithm

    @property
    def steps_per_update(self) -> int:
        """Agent steps per task consumed by one update."""
        return self.num_envs_per_task * self.unroll_length

    @property
    def num_log_steps(self) -> int:
        """Log rows (chunks of `log_every` updates) to cover the budget."""
        per_chunk = self.steps_per_update * self.log_every
        return -(-self.env_steps_per_task // per_chunk)


@dataclasses.dataclass(frozen=True)
class Figure3Config:
    """The protocol and hyperparameters of the Figure 3 reproduction (`--set KEY=VALUE`)."""

    seeds: int = _f(10, "independent runs, vmapped together into one program")
    iterations: int = _f(1000, "Distral iterations (paper's x axis: 1000)")
    rollouts: int = _f(10, "roll-outs per task per iteration (paper: 10)")
    length: int = _f(100, "agent steps per roll-out (paper: 100, the episode limit)")
    alpha: float = _f(1.0, "KL share; 1 = KL only, as the paper's tabular experiment")
    beta: float = _f(10.0, "1/c_KL, inverse temperature of the soft Q step (BUILD_NOTES.md)")
    discount: float = _f(0.95, "per agent step (as the deep preset)")
    learning_rate: float = _f(0.1, "soft Q-learning step size (BUILD_NOTES.md)")
    prior_counts: float = _f(0.1, "pseudo-count per (s, a) in the distillation; keeps pi_0 > 0")
    layout: str = _f("default", "two 5x5 rooms + 3-cell corridor; or distral_public, a file")
    num_tasks: int = _f(8, "goal cells drawn with goal_seed (paper: 8)")
    goal_seed: int = _f(0, "seed of the goal draw")

    def __post_init__(self) -> None:
        for name in ("seeds", "iterations", "rollouts", "length", "num_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.discount < 1.0:
            raise ConfigError(f"discount must lie in [0, 1), got {self.discount}")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"learning_rate must lie in (0, 1], got {self.learning_rate}")
        if not self.prior_counts > 0:
            raise ConfigError(f"prior_counts must be > 0, got {self.prior_counts}")


# LOADING


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from YAML) as type `tp`, or a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must have {len(args)} items")
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key}={value!r} must be a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={value!r} must be of type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            valid = ", ".join(prefix + n for n in names)
            raise ConfigError(f"unknown config key {f'{prefix}{key}'!r}; valid keys: {valid}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "c=[1, 2]"]` -> nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} must look like key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set of {part!r}")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file (safe_load), or a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys")
    return data


def load_config(
    path: str | Path | None = None,
    sets: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    cls: type = TrainConfig,
) -> Any:
    """The config of a file, then `--set` items, then `overrides` (e.g. CLI flags).

    A TrainConfig file may hold `per_variant: {VARIANT: {key: value, ...}}`: the selected
    variant's entries apply over the file's values and under `--set` and the flags (a
    preset can carry each algorithm's own hyperparameters, as papers tune them). The
    resolved config has no `per_variant` section.
    """
    data = read_yaml(path) if path is not None else {}
    top = _merge(parse_sets(sets), {k: v for k, v in (overrides or {}).items() if v is not None})
    per_variant = data.pop(PER_VARIANT, None)
    if PER_VARIANT in top:
        raise ConfigError(f"{PER_VARIANT} belongs in the config file, not in --set")
    if per_variant is not None and cls is TrainConfig:
        if not isinstance(per_variant, Mapping):
            raise ConfigError(f"{PER_VARIANT} must map variant names to settings")
        for name, extra in per_variant.items():
            if name not in VARIANTS:
                raise ConfigError(
                    f"{PER_VARIANT}.{name}: unknown variant; valid: {', '.join(VARIANTS)}"
                )
            if not isinstance(extra, Mapping) or "variant" in extra:
                raise ConfigError(f"{PER_VARIANT}.{name} must be a mapping of other keys")
            _build(cls, _merge(_merge(data, extra), {"variant": name}))  # check every entry
        variant = _merge(data, top).get("variant", TrainConfig.variant)
        data = _merge(data, per_variant.get(variant, {}))
    elif per_variant is not None:
        raise ConfigError(f"unknown config key {PER_VARIANT!r}")
    return _build(cls, _merge(data, top))


PER_VARIANT = "per_variant"

#: Fields added with a default that changed the learner (issue 15, 2026-12-01), and the
#: value a run recorded before them ran with. A run directory's config.yaml holds every
#: field of its day, so a missing one means an older run.
RUN_LEGACY_DEFAULTS: dict[str, Any] = {"task_column_output": "f", "regulariser": "sampled"}


def load_run_config(run_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """A run directory's resolved config.yaml, as it ran: fields the file predates take
    their `RUN_LEGACY_DEFAULTS` value, not today's default (resume, compare, probes)."""
    path = Path(run_dir) / "config.yaml"
    legacy = {k: v for k, v in RUN_LEGACY_DEFAULTS.items() if k not in read_yaml(path)}
    return load_config(path, overrides=_merge(legacy, overrides or {}))


def _plain(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict (tuples as lists)."""
    return _plain(dataclasses.asdict(config))


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def describe_fields(cls: type = TrainConfig, prefix: str = "") -> str:
    """One line per field: key, type, default and help (for `--help`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            lines.append(f"  {prefix}{f.name}:  {f.metadata['help']}")
            lines.append(describe_fields(tp, prefix=f"{prefix}{f.name}."))
            continue
        default = f.default
        shown = "null" if default is None else json.dumps(_plain(default))
        lines.append(
            f"  {prefix}{f.name} ({_type_name(tp)}, default {shown}): {f.metadata['help']}"
        )
    return "\n".join(lines)
