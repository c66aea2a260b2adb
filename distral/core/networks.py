"""Distral networks: torsos, the distilled column h and the stacked task columns f_i.

Implements the parameterisations of Figure 2 of "Distral: Robust Multitask Reinforcement
Learning" (Teh et al., NeurIPS 2017, arXiv:1707.04175):

- the distilled column h_theta0(s) gives pi_0 = softmax(h);
- one task column f_theta_i(s) per task, with a policy head and a value head V_i(s);
- "1col": pi_i = softmax(f_i); "2col": pi_i = softmax(alpha * h + beta * f_i);
- the baselines "independent" (A3C, f_i only) and "shared" (A3C multitask, pi_i = pi_0 = h
  with one value head per task).

A network is the distilled column (`distilled_column`) composed with one task-columns
strategy (`TaskColumns`: `separate_columns`, `shared_torso_columns`, or
`distilled_value_heads` for 'shared'), which provides init, per-sample, per-row, one-task
apply and the one-task slice; a new architecture is one new strategy. Task-column
parameters are stacked on a leading task axis (initialised by `jax.vmap` over split keys)
and selected by task id inside jit, so no Python loop runs over tasks.

Torsos map an observation batch [B, *obs_shape] to features [B, D]. Built in: `MLP`,
`NatureCNN` (Mnih et al., 2015) and `ImpalaResNet` (Espeholt et al., 2018,
arXiv:1802.01561). Any Flax module (`flax_torso`) or `hk.transform`ed Haiku function
(`haiku_torso`) can serve as a torso.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any  # A pytree of arrays.
Array = jax.Array
PRNGKey = chex.PRNGKey
T = TypeVar("T")

TORSOS = ("mlp", "nature_cnn", "impala_resnet", "minatar_cnn")
ARCHITECTURES = ("independent", "shared", "1col", "2col")

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
        # flax's stub also allows the (output, variables) pair returned with `mutable`.
        return module.apply({"params": params}, obs)  # type: ignore[return-value]

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
    """The DQN torso of Mnih et al. (2015): input [B, H, W, C] -> features [B, width]
    (512 in the paper)."""

    width: int = 512

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _as_float(x)
        x = nn.relu(nn.Conv(32, (8, 8), strides=(4, 4), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (4, 4), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=(1, 1), padding="VALID")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(self.width)(x))


class MinAtarCNN(nn.Module):
    """The MinAtar torso of Young and Tian (2019, arXiv:1903.03176): a 3x3 convolution with
    16 channels and a dense layer of `width` units (128 in the paper); input
    [B, 10, 10, C] -> features [B, width]."""

    width: int = 128

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _as_float(x)
        x = nn.relu(nn.Conv(16, (3, 3), strides=(1, 1), padding="VALID")(x))
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(self.width)(x))


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


def make_torso(
    kind: str, *, hidden_sizes: Sequence[int] = (64, 64), width: int | None = None
) -> Torso:
    """Builds a named torso; `hidden_sizes` is used by 'mlp' only, `width` (the units of
    the last dense layer; None: the torso's own) by the others."""
    if kind == "mlp":
        return flax_torso(MLP(hidden_sizes=tuple(hidden_sizes)))
    if kind == "nature_cnn":
        return flax_torso(NatureCNN() if width is None else NatureCNN(width=width))
    if kind == "impala_resnet":
        return flax_torso(ImpalaResNet() if width is None else ImpalaResNet(hidden_size=width))
    if kind == "minatar_cnn":
        return flax_torso(MinAtarCNN() if width is None else MinAtarCNN(width=width))
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


def _required(x: T | None, column: str) -> T:
    """`x`, an output of the `column` ('h' distilled, 'f' task) that the architecture has
    (None would mean parts composed for another architecture)."""
    if x is None:
        raise ValueError(f"this architecture needs the {column} column's output, got None")
    return x


def _pick(stacked: Params, task_id: Array) -> Params:
    """Task task_id's slice of stacked parameters (the task axis dropped)."""
    return jax.tree.map(lambda x: x[task_id], stacked)


def _keep_one(stacked: Params, task_id: int) -> Params:
    """Task task_id's slice of stacked parameters, keeping a task axis of length 1."""
    return jax.tree.map(lambda x: x[task_id : task_id + 1], stacked)


def _rows_to_batch(obs: Array) -> Array:
    """[N, B, *rest] -> [N * B, *rest]."""
    return obs.reshape((obs.shape[0] * obs.shape[1], *obs.shape[2:]))


def _batch_to_rows(x: Array, rows_obs: Array) -> Array:
    """[N * B, *rest] -> [N, B, *rest], N and B read from rows_obs [N, B, ...]."""
    return x.reshape((*rows_obs.shape[:2], *x.shape[1:]))


# ----------------------------------------------------------------------------------------
# THE DISTILLED COLUMN h: one torso and a policy head, pi_0 = softmax(h)
# ----------------------------------------------------------------------------------------


class DistilledColumn(NamedTuple):
    """The distilled column h; its parameters are {"torso": T, "policy": head}."""

    init: Callable[[PRNGKey, Array], Params]  # (key, obs [B, ...]) -> params
    apply: Callable[[Params, Array], tuple[Array, Array]]  # -> (features [B, D], h [B, A])
    feature_dim: Callable[[Params, Array], int]  # (params, obs [B, ...]) -> D


def distilled_column(torso: Torso, num_actions: int) -> DistilledColumn:
    """h_theta0 of the paper: `torso` then a near-zero-initialised policy head."""

    def init(key: PRNGKey, obs: Array) -> Params:
        torso_key, policy_key = jax.random.split(key)
        torso_params = torso.init(torso_key, obs)
        dim = _feature_dim(torso, torso_params, obs)
        return {
            "torso": torso_params,
            "policy": _dense_init(policy_key, dim, num_actions, _POLICY_INIT_SCALE),
        }

    def apply(params: Params, obs: Array) -> tuple[Array, Array]:
        features = torso.apply(params["torso"], obs)
        return features, _dense(params["policy"], features)

    def feature_dim(params: Params, obs: Array) -> int:
        return _feature_dim(torso, params["torso"], obs)

    return DistilledColumn(init=init, apply=apply, feature_dim=feature_dim)


# ----------------------------------------------------------------------------------------
# TASK COLUMNS: one strategy per way of parameterising the N per-task outputs
# ----------------------------------------------------------------------------------------


class TaskColumns(NamedTuple):
    """How the per-task outputs (f_i logits [.., A] or None, V_i [.., 1]) are computed.

    Each function sees its own parameters (`params[params_key]`), the observations and the
    distilled column's features `h_features` (None without a distilled column), so a new
    kind of task columns is one new builder, named in `TASK_COLUMN_KINDS`.
    """

    params_key: str  # where the parameters live in the network's params dict
    # (key, obs [B, ...], distilled feature dim or None) -> params
    init: Callable[[PRNGKey, Array, int | None], Params]
    # (params, obs [B, ...], h_features [B, D], task_id [B]): sample b uses task_id[b].
    apply_per_sample: Callable[[Params, Array, Array | None, Array], tuple[Array | None, Array]]
    # (params, obs [N, B, ...], h_features [N, B, D]): row i uses task i.
    apply_per_row: Callable[[Params, Array, Array | None], tuple[Array | None, Array]]
    # (params, obs [B, ...], h_features [B, D], task_id scalar): one task, only it runs.
    apply_one: Callable[[Params, Array, Array | None, Array], tuple[Array | None, Array]]
    # (params, task_id) -> task_id's parameters alone, on a task axis of length 1.
    slice: Callable[[Params, int], Params]
    # (params, obs [B, ...], task_id scalar) -> the features [B, D] task_id's policy head
    # reads, or None where there is no policy head (its policy is h's).
    features_one: Callable[[Params, Array, Array], Array | None]


def separate_columns(torso: Torso, num_tasks: int, num_actions: int) -> TaskColumns:
    """'separate' (the paper's): every task has its own torso, policy and value heads,
    stacked on a leading task axis: {"torso": [N]T, "policy": stacked, "value": stacked}.

    Per sample, every column runs on the whole batch (vmap over the stacked parameters) and
    each sample keeps its own column's output: N times one column's cost, and gradients
    reach only the selected tasks' parameters.
    """

    def init_column(key: PRNGKey, obs: Array) -> Params:
        torso_key, policy_key, value_key = jax.random.split(key, 3)
        torso_params = torso.init(torso_key, obs)
        dim = _feature_dim(torso, torso_params, obs)
        return {
            "torso": torso_params,
            "policy": _dense_init(policy_key, dim, num_actions, _POLICY_INIT_SCALE),
            "value": _dense_init(value_key, dim, 1, _VALUE_INIT_SCALE),
        }

    def column(params: Params, obs: Array) -> tuple[Array, Array]:
        """One unstacked column on obs [B, ...] -> (logits [B, A], value [B, 1])."""
        features = torso.apply(params["torso"], obs)
        return _dense(params["policy"], features), _dense(params["value"], features)

    def init(key: PRNGKey, obs: Array, _: int | None) -> Params:
        keys = jax.random.split(key, num_tasks)
        return jax.vmap(init_column, in_axes=(0, None))(keys, obs)

    def apply_per_sample(params: Params, obs: Array, _: Array | None, task_id: Array):
        all_logits, all_values = jax.vmap(column, in_axes=(0, None))(params, obs)
        select = task_id[None, :, None]  # [1, B, 1] against [N, B, O].
        return (
            jnp.take_along_axis(all_logits, select, axis=0)[0],
            jnp.take_along_axis(all_values, select, axis=0)[0],
        )

    return TaskColumns(
        params_key="tasks",
        init=init,
        apply_per_sample=apply_per_sample,
        apply_per_row=lambda params, obs, _: jax.vmap(column)(params, obs),
        apply_one=lambda params, obs, _, task_id: column(_pick(params, task_id), obs),
        slice=_keep_one,
        features_one=lambda params, obs, task_id: torso.apply(_pick(params, task_id)["torso"], obs),
    )


def shared_torso_columns(torso: Torso, num_tasks: int, num_actions: int) -> TaskColumns:
    """'shared_torso': one torso shared by the tasks, per-task policy and value heads:
    {"torso": T, "policy": stacked, "value": stacked}. The torso runs once per call."""

    def init(key: PRNGKey, obs: Array, _: int | None) -> Params:
        torso_key, policy_key, value_key = jax.random.split(key, 3)
        torso_params = torso.init(torso_key, obs)
        dim = _feature_dim(torso, torso_params, obs)
        return {
            "torso": torso_params,
            "policy": _stacked_dense_init(
                policy_key, num_tasks, dim, num_actions, _POLICY_INIT_SCALE
            ),
            "value": _stacked_dense_init(value_key, num_tasks, dim, 1, _VALUE_INIT_SCALE),
        }

    def apply_per_sample(params: Params, obs: Array, _: Array | None, task_id: Array):
        features = torso.apply(params["torso"], obs)
        return (
            _dense_per_sample(params["policy"], features, task_id),
            _dense_per_sample(params["value"], features, task_id),
        )

    def apply_per_row(params: Params, obs: Array, _: Array | None):
        features = _batch_to_rows(torso.apply(params["torso"], _rows_to_batch(obs)), obs)
        return _dense_per_row(params["policy"], features), _dense_per_row(params["value"], features)

    def apply_one(params: Params, obs: Array, _: Array | None, task_id: Array):
        features = torso.apply(params["torso"], obs)
        policy, value = _pick((params["policy"], params["value"]), task_id)
        return _dense(policy, features), _dense(value, features)

    def slice_(params: Params, task_id: int) -> Params:
        policy, value = _keep_one((params["policy"], params["value"]), task_id)
        return {**params, "policy": policy, "value": value}

    return TaskColumns(
        params_key="tasks",
        init=init,
        apply_per_sample=apply_per_sample,
        apply_per_row=apply_per_row,
        apply_one=apply_one,
        slice=slice_,
        features_one=lambda params, obs, _: torso.apply(params["torso"], obs),
    )


def distilled_value_heads(num_tasks: int) -> TaskColumns:
    """No task columns (A3C multitask, 'shared'): pi_i = pi_0 = h and one value head per
    task on h's features, stacked: {"w": [N, D, 1], "b": [N, 1]}. No f_i logits."""
    return TaskColumns(
        params_key="values",
        init=lambda key, obs, dim: _stacked_dense_init(
            key, num_tasks, _required(dim, "h"), 1, _VALUE_INIT_SCALE
        ),
        apply_per_sample=lambda p, obs, h, task_id: (
            None,
            _dense_per_sample(p, _required(h, "h"), task_id),
        ),
        apply_per_row=lambda p, obs, h: (None, _dense_per_row(p, _required(h, "h"))),
        apply_one=lambda p, obs, h, task_id: (None, _dense(_pick(p, task_id), _required(h, "h"))),
        slice=_keep_one,
        features_one=lambda p, obs, task_id: None,
    )


# Task-column kinds by name, as the `task_columns` argument of `make_network` spells them.
TASK_COLUMN_KINDS: dict[str, Callable[[Torso, int, int], TaskColumns]] = {
    "separate": separate_columns,
    "shared_torso": shared_torso_columns,
}
TASK_COLUMNS = tuple(TASK_COLUMN_KINDS)


# ----------------------------------------------------------------------------------------
# DISTRAL NETWORK: the distilled column composed with a task-columns strategy
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
    # (params, obs [B, *obs_shape], task_id scalar int) -> features [B, D]: the hidden
    # representation pi_i's logits are computed from (the task column's torso features,
    # h's for 'shared', both concatenated for '2col'): what Actor-Mimic regresses.
    task_features: Callable[[Params, Array, Array], Array]
    num_tasks: int
    num_actions: int
    architecture: str


def policy_output(
    architecture: str, alpha: float = 1.0, beta: float = 1.0
) -> Callable[[Array | None, Array | None, Array], NetworkOutput]:
    """(f logits, h logits, value [..., 1]) -> NetworkOutput of one architecture."""

    def output(f: Array | None, h: Array | None, value: Array) -> NetworkOutput:
        value = value[..., 0]
        if architecture == "independent":
            f = _required(f, "f")
            return NetworkOutput(f, jnp.zeros_like(f), value)
        h = _required(h, "h")
        if architecture == "shared":
            return NetworkOutput(h, h, value)
        f = _required(f, "f")
        if architecture == "1col":
            return NetworkOutput(f, h, value)
        return NetworkOutput(alpha * h + beta * f, h, value)

    return output


def _check_names(architecture: str, task_columns: str, num_tasks: int, num_actions: int):
    for name, value, choices in (
        ("architecture", architecture, ARCHITECTURES),
        ("task_columns", task_columns, TASK_COLUMNS),
    ):
        if value not in choices:
            raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    if num_tasks < 1 or num_actions < 1:
        raise ValueError(
            f"need num_tasks >= 1 and num_actions >= 1, got {num_tasks}, {num_actions}"
        )


class _Composed(NamedTuple):
    """The distilled column h (None for 'independent') composed with task columns; its
    methods are the functions of `DistralNetwork`."""

    distilled: DistilledColumn | None
    columns: TaskColumns
    output: Callable[[Array | None, Array | None, Array], NetworkOutput]
    num_tasks: int
    policy_reads_h: bool  # pi_i's logits use h ('shared', '2col')

    def init(self, key: PRNGKey, obs: Array) -> Params:
        distilled_key, tasks_key = jax.random.split(key)
        params, h_dim = {}, None
        if self.distilled is not None:
            params["distilled"] = self.distilled.init(distilled_key, obs)
            h_dim = self.distilled.feature_dim(params["distilled"], obs)
        params[self.columns.params_key] = self.columns.init(tasks_key, obs, h_dim)
        return params

    def h_column(self, params: Params, obs: Array) -> tuple[Array | None, Array | None]:
        """(h features, h logits) on obs [B, ...], or (None, None) without h."""
        if self.distilled is None:
            return None, None
        return self.distilled.apply(params["distilled"], obs)

    def apply_flat(self, params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        h_features, h_logits = self.h_column(params, obs)
        columns = params[self.columns.params_key]
        f_logits, value = self.columns.apply_per_sample(columns, obs, h_features, task_id)
        return self.output(f_logits, h_logits, value)

    def apply(self, params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        task_id = jnp.asarray(task_id)
        chex.assert_type(task_id, int)
        lead = task_id.shape
        if obs.shape[: len(lead)] != lead:
            raise ValueError(f"obs {obs.shape} must start with task_id's shape {lead}")
        flat_obs = obs.reshape((-1, *obs.shape[len(lead) :]))
        out = self.apply_flat(params, flat_obs, task_id.reshape(-1))
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)

    def apply_tasks(self, params: Params, obs: Array) -> NetworkOutput:
        if obs.ndim < 2 or obs.shape[0] != self.num_tasks:
            raise ValueError(f"apply_tasks needs obs [{self.num_tasks}, B, ...], got {obs.shape}")
        h = self.h_column(params, _rows_to_batch(obs))
        h_features, h_logits = jax.tree.map(lambda x: _batch_to_rows(x, obs), h)
        columns = params[self.columns.params_key]
        f_logits, value = self.columns.apply_per_row(columns, obs, h_features)
        return self.output(f_logits, h_logits, value)

    def apply_task(self, params: Params, obs: Array, task_id: Array) -> NetworkOutput:
        task_id = jnp.asarray(task_id)
        chex.assert_rank(task_id, 0)
        chex.assert_type(task_id, int)
        h_features, h_logits = self.h_column(params, obs)
        columns = params[self.columns.params_key]
        f_logits, value = self.columns.apply_one(columns, obs, h_features, task_id)
        return self.output(f_logits, h_logits, value)

    def task_features(self, params: Params, obs: Array, task_id: Array) -> Array:
        task_id = jnp.asarray(task_id)
        chex.assert_rank(task_id, 0)
        h_features = self.h_column(params, obs)[0] if self.policy_reads_h else None
        columns = params[self.columns.params_key]
        parts = [h_features, self.columns.features_one(columns, obs, task_id)]
        return jnp.concatenate([x for x in parts if x is not None], axis=-1)

    def task_params(self, params: Params, task_id: int) -> Params:
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(f"task_id={task_id} is outside [0, {self.num_tasks})")
        key = self.columns.params_key
        return {**params, key: self.columns.slice(params[key], task_id)}


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
      task_columns: a key of `TASK_COLUMN_KINDS`: 'separate' (paper-faithful: every task
        column has its own torso, stacked on a task axis) or 'shared_torso' (the task
        columns share one torso and keep per-task policy and value heads; h always keeps
        its own torso). Ignored by 'shared', which uses `distilled_value_heads`.
      alpha, beta: the 2col mixing coefficients (used by '2col' only).

    Params: {"distilled": h's params (not for 'independent'), columns.params_key: the task
    columns' params} (see `distilled_column` and the `TaskColumns` builders). `apply` runs
    each sample through its own task's column, `apply_tasks` runs row i of [N, B] through
    column i, `apply_task` (a batch of one task, as an actor's) slices out and runs that
    task's column only. The distilled column h always runs once on the flattened batch.
    """
    _check_names(architecture, task_columns, num_tasks, num_actions)
    distilled = None if architecture == "independent" else distilled_column(torso, num_actions)
    if architecture == "shared":
        columns = distilled_value_heads(num_tasks)
    else:
        columns = TASK_COLUMN_KINDS[task_columns](torso, num_tasks, num_actions)
    output = policy_output(architecture, alpha, beta)
    net = _Composed(distilled, columns, output, num_tasks, architecture in ("shared", "2col"))
    return DistralNetwork(
        init=net.init,
        apply=net.apply,
        apply_tasks=net.apply_tasks,
        apply_task=net.apply_task,
        task_params=net.task_params,
        task_features=net.task_features,
        num_tasks=num_tasks,
        num_actions=num_actions,
        architecture=architecture,
    )
