"""distral: Distral (Teh et al., 2017, arXiv:1707.04175) in JAX.

The public surface. Importing `distral` is light (the variant table only); the maths
modules are loaded on first use of their names, so the CLI answers bad input at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from distral.variants import VARIANTS, Variant, VariantError, get_variant

_LAZY = {
    # losses
    "LossConfig": "distral.losses",
    "LossMetrics": "distral.losses",
    "distral_loss": "distral.losses",
    "regularised_reward": "distral.losses",
    "n_step_returns": "distral.losses",
    "distillation_loss": "distral.losses",
    # networks
    "Torso": "distral.networks",
    "NetworkOutput": "distral.networks",
    "DistralNetwork": "distral.networks",
    "make_network": "distral.networks",
    "make_torso": "distral.networks",
    "flax_torso": "distral.networks",
    "haiku_torso": "distral.networks",
    # learning
    "Batch": "distral.learning",
    "TrainingState": "distral.learning",
    "build_network": "distral.learning",
    "init_training_state": "distral.learning",
    "make_optimizer": "distral.learning",
    "update_step": "distral.learning",
    # configs and the single-process trainer
    "ConfigError": "distral.config",
    "TrainConfig": "distral.config",
    "EnvConfig": "distral.config",
    "load_config": "distral.config",
    "Trainer": "distral.train",
    "run": "distral.train",
    # distributed components (Reverb)
    "Learner": "distral.learner",
    "Actor": "distral.actor",
    "select_action": "distral.acting",
    "select_action_pi0": "distral.acting",
    # the paper's Figure 3 (`distral.compare.compare` runs comparisons)
    "Figure3Config": "distral.config",
    "reproduce_two_room": "distral.reproduce",
}

__all__ = ["VARIANTS", "Variant", "VariantError", "__version__", "get_variant", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "tabular":
        return importlib.import_module("distral.tabular")
    raise AttributeError(f"module 'distral' has no attribute {name!r}")
