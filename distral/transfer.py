"""Transfer: a run starts from a finished run's distilled column h (`init_from`).

Teh et al. (2017) motivate pi_0 as what transfers between tasks; Actor-Mimic (Parisotto et
al., 2016) transfers a multitask network's representation to a new game. With `init_from`
a `distral train` or `distral launch` run copies h (its torso and policy head: pi_0, or
the torso alone, `init_parts`) from a finished run of other tasks on the same observations
and actions; with `freeze_distilled` h never moves, so the source's pi_0 is the fixed prior
that the KL term pulls the new task policies toward. The rest (task columns, optimiser
state) starts fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from distral.config import ConfigError
from distral.experiment import Experiment


def source_params(experiment: Experiment) -> Any:
    """The parameters that `init_from` copies (h, or h's torso), read from its latest
    checkpoint (first seed) and checked against this run's shapes; a one-line ConfigError
    names the run when it cannot give them."""
    from distral.rundir import load_run

    config = experiment.config
    path = str(config.init_from)
    template = experiment.params_template()
    if "distilled" not in template:
        raise ConfigError(
            f"init_from: variant {config.variant!r} has no distilled column h to initialise"
        )
    run = load_run(path)
    if "distilled" not in run.params:
        raise ConfigError(
            f"init_from {path!r} ran variant {run.config.variant!r}: it has no distilled column h"
        )
    source, want = run.params["distilled"], template["distilled"]
    if config.init_parts == "torso":
        source, want = source["torso"], want["torso"]

    def shapes(tree: Any) -> Any:
        return jax.tree.map(lambda x: tuple(np.shape(x)), tree)

    if jax.tree.structure(source) != jax.tree.structure(want) or shapes(source) != shapes(want):
        raise ConfigError(
            f"init_from {path!r}: its h ({config.init_parts}) has other shapes than this "
            f"run's (torso, hidden_sizes, observations and actions must match)"
        )
    return jax.tree.map(np.asarray, source)


def init_state_fn(experiment: Experiment) -> Callable[[jax.Array], Any]:
    """key -> the family's fresh learner state, with `init_from`'s h copied in (pure: the
    source parameters are read here, once, and closed over)."""
    algorithm, parts, example = experiment.algorithm, experiment.parts, experiment.example_obs
    config = experiment.config

    def fresh(key: jax.Array) -> Any:
        return algorithm.init_state(key, parts, example)

    if config.init_from is None:
        return fresh
    source = source_params(experiment)

    def init(key: jax.Array) -> Any:
        state = fresh(key)
        h = dict(state.params["distilled"])
        if config.init_parts == "torso":
            h["torso"] = source
        else:
            h = source
        return state._replace(params={**state.params, "distilled": h})

    return init
