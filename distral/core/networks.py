"""Distral networks: torsos, the distilled column h and the stacked task columns f_i.

Implements the parameterisations of Figure 2 of "Distral: Robust Multitask Reinforcement
Learning" (Teh et al., NeurIPS 2017, arXiv:1707.04175):

- the distilled column h_theta0(s) gives pi_0 = softmax(h);
- one task column f_theta_i(s) per task, with a policy head and a value head V_i(s);
- "1col": pi_i = softmax(f_i); "2col": pi_i = softmax(alpha * h + beta * f_i);
- the baselines "independent" (A3C, f_i only) and "shared" (A3C multitask, pi_i = pi_0 = h
  with one value head per task).

Task-column parameters are stacked on a leading task axis (initialised by `jax.vmap` over
split keys) and selected by task id inside jit, so no Python loop runs over tasks.

Torsos map an observation batch [B, *obs_shape] to features [B, D]. Built in: `MLP`,
`NatureCNN` (Mnih et al., 2015) and `ImpalaResNet` (Espeholt et al., 2018,
arXiv:1802.01561). Any Flax module (`flax_torso`) or `hk.transform`ed Haiku function
(`haiku_torso`) can serve as a torso.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any  # A pytree of arrays.
Array = chex.Array
PRNGKey = chex.PRNGKey

TORSOS = ("mlp", "nature_cnn", "impala_resnet", "minatar_cnn")
ARCHITECTURES = ("independent", "shared", "1col", "2col")
TASK_COLUMNS = ("separate", "shared_torso")

# Heads are plain {"w", "b"} dicts. The policy head starts small (variance scale 1e-4, i.e.
# weights 0.01 x LeCun) so the initial policies are near uniform; the value head is LeCun.
_POLICY_INIT_SCALE = 1e-4
_VALUE_INIT_SCALE = 1.0


# ----------------------------------------------------------------------------------------
# TORSOS
# ----------------------------------------------------------------------------------------


class Torso(NamedTuple):
    """A pair of pure functions: a feature extractor with its own parameters."""

    init: Callable[[PRNGKey, Array], Params]  # (key, obs [B, *obs_shape]) -> params
    apply: Callable[[Params, Array], Array]  # (params, obs [B, *obs_shape]) -> [B, D]


def flax_torso(module: nn.Module) -> Torso:
    """Wraps a Flax module `module(obs [B, ...]) -> [B, D]` with only a 'params' collection."""

    def init(key: PRNGKey, obs: Array) -> Params:
        variables = module.init(key, obs)
        extra = sorted(set(variables) - {"params"})
        if extra:
            raise ValueError(f"torso modules may only hold 'params'; got collections {extra}")
        return variables.get("params", {})  # a torso without layers has no parameters

    def apply(params: Params, obs: Array) -> Array:
        return module.apply({"params": params}, obs)

    return Torso(init=init, apply=apply)


def haiku_torso(transformed: Any) -> Torso:
    """Wraps `hk.transform(fn)` (or its `hk.without_apply_rng`) with `fn(obs) -> [B, D]`.

    The torso must be deterministic: it is applied with `rng=None`. Stateful Haiku
    functions (`hk.transform_with_state`) are not supported.
    """
    import inspect

    import haiku as hk

    if isinstance(transformed, hk.TransformedWithState):
        raise TypeError("haiku_torso takes hk.transform(fn), not hk.transform_with_state(fn)")
    if not isinstance(transformed, hk.Transformed):
        raise TypeError(f"haiku_torso takes an hk.Transformed, got {type(transformed).__name__}")
    if "rng" in inspect.signature(transformed.apply).parameters:
        transformed = hk.without_apply_rng(transformed)
    return Torso(init=transformed.init, apply=transformed.apply)


def _as_float(x: Array) -> Array:
    """uint8 pixels are scaled to [0, 1]; any other input is cast to float32 as is."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


class MLP(nn.Module):
    """Flattens all but the batch axis, then Dense + relu per hidden size. With no hidden
    sizes the features are the flattened observation itself: the heads are then linear in
    it (for a one-hot state code, a tabular policy and value)."""

    hidden_sizes: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        return x


class NatureCNN(nn.Module):
    """The DQN torso of Mnih et al. (2015): input [B, H, W, C] -> features [B, 512]."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _as_float(x)
        x = nn.relu(nn.Conv(32, (8, 8), strides=(4, 4), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(512)(x))


class MinAtarCNN(nn.Module):
    """The MinAtar torso of Young and Tian (2019, arXiv:1903.03176): a 3x3 convolution with
    16 channels and a 128-unit layer; input [B, 10, 10, C] -> features [B, 128]."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _as_float(x)
        x = nn.relu(nn.Conv(16, (3, 3), strides=(1, 1), padding="VALID")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(128)(x))


class _ResidualBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.Conv(self.channels, (3, 3), padding="SAME")(nn.relu(x))
        y = nn.Conv(self.channels, (3, 3), padding="SAME")(nn.relu(y))
        return x + y


class ImpalaResNet(nn.Module):
    """The small IMPALA ResNet (Espeholt et al., 2018): [B, H, W, C] -> features [B, 256]."""

    channels: Sequence[int] = (16, 32, 32)
    num_blocks: int = 2
    hidden_size: int = 256

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _as_float(x)
        for channels in self.channels:
            x = nn.Conv(channels, (3, 3), padding="SAME")(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for _ in range(self.num_blocks):
                x = _ResidualBlock(channels)(x)
        x = nn.relu(x).reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(self.hidden_size)(x))


def make_torso(kind: str, *, hidden_sizes: Sequence[int] = (64, 64)) -> Torso:
    """Builds a named torso; `hidden_sizes` is used by 'mlp' only."""
    if kind == "mlp":
        return flax_torso(MLP(hidden_sizes=tuple(hidden_sizes)))
    if kind == "nature_cnn":
        return flax_torso(NatureCNN())
    if kind == "impala_resnet":
        return flax_torso(ImpalaResNet())
    if kind == "minatar_cnn":
        return flax_torso(MinAtarCNN())
    raise ValueError(f"unknown torso {kind!r}; valid choices: {', '.join(TORSOS)}")


# ----------------------------------------------------------------------------------------
# HEADS: plain {"w": [D, O], "b": [O]} dicts, stacked as {"w": [N, D, O], "b": [N, O]}
# ----------------------------------------------------------------------------------------


def _dense_init(key: PRNGKey, in_dim: int, out_dim: int, scale: float) -> Params:
    init = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
    return {"w": init(key, (in_dim, out_dim), jnp.float32), "b": jnp.zeros((out_dim,))}


def _stacked_dense_init(key: PRNGKey, num: int, in_dim: int, out_dim: int, scale: float):
    keys = jax.random.split(key, num)
    return jax.vmap(lambda k: _dense_init(k, in_dim, out_dim, scale))(keys)


def _dense(p: Params, x: Array) -> Array:
    return x @ p["w"] + p["b"]


def _dense_per_sample(p: Params, x: Array, task_id: Array) -> Array:
    """Stacked head, sample b uses head task_id[b]: x [B, D] -> [B, O]."""
    return jnp.einsum("bd,bdo->bo", x, p["w"][task_id]) + p["b"][task_id]


def _dense_per_row(p: Params, x: Array) -> Array:
    """Stacked head, row n uses head n: x [N, B, D] -> [N, B, O]."""
    return jnp.einsum("nbd,ndo->nbo", x, p["w"]) + p["b"][:, None, :]


def _feature_dim(torso: Torso, torso_params: Params, obs: Array) -> int:
    features = jax.eval_shape(torso.apply, torso_params, obs)
    if len(features.shape) != 2:
        raise ValueError(f"a torso must return [B, D] features, got shape {features.shape}")
    return features.shape[-1]


# ----------------------------------------------------------------------------------------
# DISTRAL NETWORK
# ----------------------------------------------------------------------------------------


class NetworkOutput(NamedTuple):
    logits: Array  # [..., A] logits of the task policy pi_i.
    distilled_logits: Array  # [..., A] h(s), logits of pi_0 (zeros for 'independent').
    value: Array  # [...] V_i(s).


class DistralNetwork(NamedTuple):
    """Pure functions of a multitask Distral network (see `make_network`)."""

    init: Callable[[PRNGKey, Array], Params]  # (key, example obs batch [B, *obs_shape])
    # (params, obs [*lead, *obs_shape], task_id [*lead] int) -> outputs [*lead, ...].
    apply: Callable[[Params, Array, Array], NetworkOutput]
    # (params, obs [N, B, *obs_shape]), row i from task i -> outputs [N, B, ...].
    apply_tasks: Callable[[Params, Array], NetworkOutput]
    # (params, obs [B, *obs_shape], task_id scalar int) -> outputs [B, ...], one column run.
    apply_task: Callable[[Params, Array, Array], NetworkOutput]
    # (params, task_id int) -> the parameters of task_id's column and the shared parts, so
    # that apply_task(task_params(p, i), obs, 0) == apply_task(p, obs, i) without slicing
    # the stacked columns at every call (actors slice once per parameter refresh).
    task_params: Callable[[Params, int], Params]
    num_tasks: int
    num_actions: int
    architecture: str


def make_network(
    architecture: str,
    *,
    num_tasks: int,
    num_actions: int,
    torso: Torso,
    task_columns: str = "separate",
    alpha: float = 1.0,
    beta: float = 1.0,
) -> DistralNetwork:
    """Builds the network of one Distral architecture (paper, Figure 2).

    Args:
      architecture: 'independent' (pi_i = f_i, no pi_0), 'shared' (pi_i = pi_0 = h, one
        value head per task on h's torso), '1col' (pi_i = f_i, pi_0 = h, a separate network)
        or '2col' (pi_i logits alpha * h + beta * f_i, pi_0 = h).
      num_tasks: N, the number of task columns.
      num_actions: A, the size of the (shared) discrete action space.
      torso: feature extractor used by every column (each column has its own copy).
      task_columns: 'separate' (paper-faithful: every task column has its own torso,
        stacked on a task axis) or 'shared_torso' (the task columns share one torso and keep
        per-task policy and value heads; h always keeps its own torso). Ignored by 'shared'.
      alpha, beta: the 2col mixing coefficients (used by '2col' only).

    Params layout (heads are {"w": [D, O], "b": [O]}, stacked heads {"w": [N, D, O],
    "b": [N, O]}; T = torso params, [N]T = torso params stacked on a task axis):
      independent: {"tasks": {"torso": [N]T or T, "policy": stacked, "value": stacked}}
      shared:      {"distilled": {"torso": T, "policy": head}, "values": stacked}
      1col, 2col:  {"distilled": {"torso": T, "policy": head}, "tasks": as independent}

    `apply` with mixed task ids runs every task column on the whole batch (vmap over the
    stacked parameters) and keeps each sample's own column (take_along_axis): N times the
    column's forward cost, and gradients reach only the selected tasks' parameters. With
    'shared_torso' the shared torso runs once and each sample's heads are gathered.
    `apply_tasks` vmaps the columns over (stacked params, obs rows), costing 1x, and
    `apply_task` (a batch of one task, as an actor's) slices out and runs that task's column
    only. The distilled column h always runs once on the flattened batch.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; valid choices: {', '.join(ARCHITECTURES)}"
        )
    if task_columns not in TASK_COLUMNS:
        raise ValueError(
            f"unknown task_columns {task_columns!r}; valid choices: {', '.join(TASK_COLUMNS)}"
        )
    if num_tasks < 1 or num_actions < 1:
        raise ValueError(
            f"need num_tasks >= 1 and num_actions >= 1, got {num_tasks}, {num_actions}"
        )
    has_distilled = architecture != "independent"
    has_task_columns = architecture != "shared"
    separate = task_columns == "separate"

    # INIT
    def init_task_column(key: PRNGKey, obs: Array) -> Params:
        torso_key, policy_key, value_key = jax.random.split(key, 3)
        torso_params = torso.init(torso_key, obs)
        dim = _feature_dim(torso, torso_params, obs)
        return {
            "torso": torso_params,
            "policy": _dense_init(policy_key, dim, num_actions, _POLICY_INIT_SCALE),
            "value": _dense_init(value_key, dim, 1, _VALUE_INIT_SCALE),
        }

    def init(key: PRNGKey, obs: Array) -> Params:
        distilled_key, tasks_key = jax.random.split(key)
        params = {}
        if has_distilled:
            torso_key, policy_key = jax.random.split(distilled_key)
            torso_params = torso.init(torso_key, obs)
            dim = _feature_dim(torso, torso_params, obs)
            params["distilled"] = {
                "torso": torso_params,
                "policy": _dense_init(policy_key, dim, num_actions, _POLICY_INIT_SCALE),
            }
            if not has_task_columns:
                params["values"] = _stacked_dense_init(
                    tasks_key, num_tasks, dim, 1, _VALUE_INIT_SCALE
                )
        if has_task_columns:
            if separate:
                keys = jax.random.split(tasks_key, num_tasks)
                params["tasks"] = jax.vmap(init_task_column, in_axes=(0, None))(keys, obs)
            else:
                torso_key, policy_key, value_key = jax.random.split(tasks_key, 3)
                torso_params = torso.init(torso_key, obs)
                dim = _feature_dim(torso, torso_params, obs)
                params["tasks"] = {
                    "torso": torso_params,
                    "policy": _stacked_dense_init(
                        policy_key, num_tasks, dim, num_actions, _POLICY_INIT_SCALE
                    ),
                    "value": _stacked_dense_init(value_key, num_tasks, dim, 1, _VALUE_INIT_SCALE),
                }
        return params

    # COLUMNS
    def distilled(params: Params, obs: Array) -> tuple[Array, Array]:
        """h on obs [B, ...] -> (features [B, D], logits [B, A])."""
        features = torso.apply(params["distilled"]["torso"], obs)
        return features, _dense(params["distilled"]["policy"], features)

    def task_column(column: Params, obs: Array) -> tuple[Array, Array]:
        """One unstacked task column on obs [B, ...] -> (logits [B, A], value [B, 1])."""
        features = torso.apply(column["torso"], obs)
        return _dense(column["policy"], features), _dense(column["value"], features)

    def combine(f_logits, h_logits, value) -> NetworkOutput:
        value = value[..., 0]
        if architecture == "independent":
            return NetworkOutput(f_logits, jnp.zeros_like(f_logits), value)
        if architecture == "shared":
            return NetworkOutput(h_logits, h_logits, value)
        if architecture == "1col":
            return NetworkOutput(f_logits, h_logits, value)
        return NetworkOutput(alpha * h_logits + beta * f_logits, h_logits, value)

    # APPLY: each sample uses its own task's column.
    def apply_flat(params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        h_logits = f_logits = None
        if has_distilled:
            h_features, h_logits = distilled(params, obs)
        if not has_task_columns:
            return combine(None, h_logits, _dense_per_sample(params["values"], h_features, task_id))
        tasks = params["tasks"]
        if separate:
            all_logits, all_values = jax.vmap(task_column, in_axes=(0, None))(tasks, obs)
            select = task_id[None, :, None]  # [1, B, 1] against [N, B, O].
            f_logits = jnp.take_along_axis(all_logits, select, axis=0)[0]
            value = jnp.take_along_axis(all_values, select, axis=0)[0]
        else:
            features = torso.apply(tasks["torso"], obs)
            f_logits = _dense_per_sample(tasks["policy"], features, task_id)
            value = _dense_per_sample(tasks["value"], features, task_id)
        return combine(f_logits, h_logits, value)

    def apply(params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        task_id = jnp.asarray(task_id)
        chex.assert_type(task_id, int)
        lead = task_id.shape
        if obs.shape[: len(lead)] != lead:
            raise ValueError(f"obs {obs.shape} must start with task_id's shape {lead}")
        flat_obs = obs.reshape((-1, *obs.shape[len(lead) :]))
        out = apply_flat(params, flat_obs, task_id.reshape(-1))
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)

    # APPLY_TASKS: row i of obs belongs to task i.
    def apply_tasks(params: Params, obs: Array) -> NetworkOutput:
        if obs.ndim < 2 or obs.shape[0] != num_tasks:
            raise ValueError(f"apply_tasks needs obs [{num_tasks}, B, ...], got {obs.shape}")
        rows, batch = obs.shape[:2]
        flat_obs = obs.reshape((rows * batch, *obs.shape[2:]))

        def unflatten(x):
            return x.reshape((rows, batch, *x.shape[1:]))

        h_logits = f_logits = None
        if has_distilled:
            h_features, h_logits = jax.tree.map(unflatten, distilled(params, flat_obs))
        if not has_task_columns:
            return combine(None, h_logits, _dense_per_row(params["values"], h_features))
        tasks = params["tasks"]
        if separate:
            f_logits, value = jax.vmap(task_column)(tasks, obs)
        else:
            features = unflatten(torso.apply(tasks["torso"], flat_obs))
            f_logits = _dense_per_row(tasks["policy"], features)
            value = _dense_per_row(tasks["value"], features)
        return combine(f_logits, h_logits, value)

    # APPLY_TASK: every row from one task (an actor's batch): only that task's column runs.
    def apply_task(params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        task_id = jnp.asarray(task_id)
        chex.assert_rank(task_id, 0)
        chex.assert_type(task_id, int)

        def pick(stacked: Params) -> Params:
            return jax.tree.map(lambda x: x[task_id], stacked)

        h_logits = f_logits = None
        if has_distilled:
            h_features, h_logits = distilled(params, obs)
        if not has_task_columns:
            return combine(None, h_logits, _dense(pick(params["values"]), h_features))
        tasks = params["tasks"]
        if separate:
            f_logits, value = task_column(pick(tasks), obs)
        else:
            features = torso.apply(tasks["torso"], obs)
            f_logits = _dense(pick(tasks["policy"]), features)
            value = _dense(pick(tasks["value"]), features)
        return combine(f_logits, h_logits, value)

    # TASK_PARAMS: task i's column alone (a leading axis of 1), for apply_task(., obs, 0).
    def task_params(params: Params, task_id: int) -> Params:
        def one(stacked: Params) -> Params:
            return jax.tree.map(lambda x: x[task_id : task_id + 1], stacked)

        if not 0 <= task_id < num_tasks:
            raise ValueError(f"task_id={task_id} is outside [0, {num_tasks})")
        out = dict(params)
        if not has_task_columns:
            out["values"] = one(params["values"])
        elif separate:
            out["tasks"] = one(params["tasks"])
        else:
            tasks = params["tasks"]
            out["tasks"] = {**tasks, "policy": one(tasks["policy"]), "value": one(tasks["value"])}
        return out

    return DistralNetwork(
        init=init,
        apply=apply,
        apply_tasks=apply_tasks,
        apply_task=apply_task,
        task_params=task_params,
        num_tasks=num_tasks,
        num_actions=num_actions,
        architecture=architecture,
    )
