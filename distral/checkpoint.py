"""Checkpoints of a run directory: orbax, synchronous, atomic, latest N kept, no pickle.

A checkpoint is a dict of named parts (e.g. {"runner": RunnerState, "wall_seconds": w}),
each a pytree. It is stored as a nested dict named by the parameter tree's key paths
(`runner/train/params/tasks/head/kernel`, NamedTuple fields and dict keys by name, tuple
items by index), so a checkpoint can be read without the code that wrote it
(`restore_raw`), and parts of it (the parameters) by `distral.rundir.load_run`.

Checkpoints written before this layout stored each part's leaves in order, flat
(`runner_0000`, ... for `distral train`, `state_0000`, ... for `distral launch`'s learner
state); `restore` still reads them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Each part's key prefix in the flat layout that preceded key paths.
LEGACY_PREFIX = {"runner": "runner", "train": "state"}
_LEGACY_KEY = re.compile(r"^[a-z]+_\d{4}$")


def key_name(key: Any) -> str:
    """One step of a key path as a plain name: a dict key, a field, or an index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    raise TypeError(f"unsupported key path entry {key!r}")


def to_named(tree: Any) -> Any:
    """A pytree as nested dicts keyed by its key-path names, leaves as numpy arrays (a
    lone array stays an array)."""
    out: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not path:
            return np.asarray(jax.device_get(leaf))
        names = [key_name(k) for k in path]
        node = out
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.asarray(jax.device_get(leaf))
    return out


def from_named(named: Any, like: Any) -> Any:
    """The inverse of `to_named`: the leaves of `named` in the structure of `like`."""

    def lookup(path: tuple) -> Any:
        node: Any = named
        for key in path:
            name = key_name(key)
            if not isinstance(node, Mapping) or name not in node:
                where = "/".join(key_name(k) for k in path)
                raise KeyError(f"checkpoint has no array at {where!r}")
            node = node[name]
        return jnp.asarray(node)

    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [lookup(p) for p, _ in paths])


def _from_legacy(raw: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """Parts of `like` read from the flat, ordered layout (`<prefix>_0000`, ...)."""
    out = {}
    for part, tree in like.items():
        if part in raw:
            out[part] = jax.tree.map(jnp.asarray, raw[part])
            continue
        prefix = LEGACY_PREFIX[part]
        treedef = jax.tree.structure(tree)
        leaves = [jnp.asarray(raw[f"{prefix}_{i:04d}"]) for i in range(treedef.num_leaves)]
        out[part] = jax.tree.unflatten(treedef, leaves)
    return out


def _no_target_warning(record: logging.LogRecord) -> bool:
    return "expects a target tree" not in record.getMessage()


class Checkpoints:
    """The checkpoints/ directory of a run (orbax CheckpointManager, synchronous saves)."""

    def __init__(self, directory: str | Path, keep: int | None = None) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False
            ),
        )

    def latest_step(self) -> int | None:
        step = self._manager.latest_step()
        return None if step is None else int(step)

    def save(self, step: int, parts: Mapping[str, Any]) -> None:
        """Writes `parts` (named pytrees) as checkpoint `step` (orbax: temp dir, rename)."""
        tree = {name: to_named(part) for name, part in parts.items()}
        self._manager.save(step, args=self._ocp.args.StandardSave(tree))
        self._manager.wait_until_finished()

    def restore_raw(self, step: int | None = None) -> tuple[dict[str, Any], int]:
        """(the checkpoint as nested dicts of numpy arrays, its step); the latest by default."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError("the run has no checkpoint")
        # Without a target orbax warns that the arrays land on this host's devices: here
        # that is what is wanted (numpy arrays, read on one CPU host).
        absl = logging.getLogger("absl")
        absl.addFilter(_no_target_warning)
        try:
            return self._manager.restore(step), step
        finally:
            absl.removeFilter(_no_target_warning)

    def restore(self, like: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """(the latest checkpoint's parts in the structures of `like`, its step)."""
        raw, step = self.restore_raw()
        if any(_LEGACY_KEY.match(k) for k in raw):
            return _from_legacy(raw, like), step
        return {name: from_named(raw[name], tree) for name, tree in like.items()}, step

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
