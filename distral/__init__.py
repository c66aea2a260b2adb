"""distral: Distral (Teh et al., 2017, arXiv:1707.04175) in JAX.

The public surface. Importing `distral` is light (the variant table only); the maths
modules are loaded on first use of their names, so the CLI answers bad input at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from distral.core.variants import VARIANTS, Variant, VariantError, get_variant

_LAZY = {
    # losses
    "LossConfig": "distral.core.losses",
    "LossMetrics": "distral.core.losses",
    "distral_loss": "distral.core.losses",
    "regularised_reward": "distral.core.losses",
    "n_step_returns": "distral.core.losses",
    "distillation_loss": "distral.core.losses",
    # networks
    "Torso": "distral.core.networks",
    "NetworkOutput": "distral.core.networks",
    "DistralNetwork": "distral.core.networks",
    "make_network": "distral.core.networks",
    "make_torso": "distral.core.networks",
    "flax_torso": "distral.core.networks",
    "haiku_torso": "distral.core.networks",
    # learning
    "Batch": "distral.core.learning",
    "TrainingState": "distral.core.learning",
    "build_network": "distral.core.learning",
    "init_training_state": "distral.core.learning",
    "make_optimizer": "distral.core.learning",
    "update_step": "distral.core.learning",
    # algorithm families and finished runs
    "Algorithm": "distral.core.algorithm",
    "get_algorithm": "distral.core.algorithm",
    "load_run": "distral.rundir",
    # configs and the single-process trainer
    "ConfigError": "distral.config",
    "TrainConfig": "distral.config",
    "EnvConfig": "distral.config",
    "load_config": "distral.config",
    "Trainer": "distral.train",
    "run": "distral.train",
    # distributed components (Reverb)
    "Learner": "distral.distributed.learner",
    "Actor": "distral.distributed.actor",
    "select_action": "distral.core.acting",
    "select_action_pi0": "distral.core.acting",
    # teacher -> student distillation (Rusu et al., 2016; Parisotto et al., 2016)
    "DistillConfig": "distral.core.distillation",
    "distill_loss": "distral.core.distillation",
    "nll_loss": "distral.core.distillation",
    "mse_loss": "distral.core.distillation",
    "kl_loss": "distral.core.distillation",
    "policy_regression_loss": "distral.core.distillation",
    "feature_regression_loss": "distral.core.distillation",
    "student_network": "distral.core.distillation",
    "Teacher": "distral.teachers",
    "load_teachers": "distral.teachers",
    "Distiller": "distral.distill",
    # the paper's Figure 3 (`distral.compare.compare` runs comparisons)
    "Figure3Config": "distral.config",
    "reproduce_two_room": "distral.reproduce",
}

__all__ = ["VARIANTS", "Variant", "VariantError", "__version__", "get_variant", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "tabular":
        return importlib.import_module("distral.core.tabular")
    raise AttributeError(f"module 'distral' has no attribute {name!r}")
