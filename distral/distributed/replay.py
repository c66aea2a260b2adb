"""The Reverb side of distributed Distral (Teh et al., 2017, arXiv:1707.04175; DESIGN.md s. 3).

Distral trains every task policy pi_i on its own task's experience and distils them into
pi_0. Here, as in IMPALA (Espeholt et al., 2018, arXiv:1802.01561), actors (one task each)
send fixed-length unrolls through a queue to one learner, which publishes its parameters
back. The Reverb tables:

- `trajectories`: a FIFO queue; each item is sampled once, and a full queue blocks the
  actors (the IMPALA queue). An item is ONE unroll of T+1 steps of a batch of B envs of one
  task, written with one `append` per vectorised step: fields [T+1, B, ...]. Consecutive
  unrolls overlap by one step (the last step of unroll k is the first of unroll k+1).
- `variables`: size 1, the latest learner parameters (flattened leaves) and their step;
  `variables_step`: size 1, that step alone (what actors poll).
- `episodes`: finished episodes (task id, return, length, params step), drained by the
  learner; never rate-limited, so actors never block on it.
- `evaluations`: the evaluator process's results (learner step of the parameters, pi_i
  and pi_0 mean returns per task), drained by the learner like `episodes`.

Step layout (that of `learning.Batch`): entry t holds s_t, the action a_t taken there, the
reward r_t and discount d_t that followed, the behaviour logits at s_t, the task id and the
learner step of the parameters that acted. No pickle: parameters travel as arrays.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import reverb
import tensorflow as tf
from dm_env import specs

from distral.core.learning import Batch

TRAJECTORIES = "trajectories"
VARIABLES = "variables"
VARIABLES_STEP = "variables_step"  # the step of the `variables` item alone: a cheap check
EPISODES = "episodes"
EVALUATIONS = "evaluations"

STEP_FIELDS = (
    "observation",
    "action",
    "reward",
    "discount",
    "behaviour_logits",
    "task_id",
    "params_step",
)
LOG_MAX_SIZE = 1_000_000
"""Items kept unread in a log table (episodes, evaluations); past this the oldest are dropped
(inserts never block)."""

EPISODE_SIGNATURE = {
    "task_id": tf.TensorSpec([], tf.int32),
    "return": tf.TensorSpec([], tf.float32),
    "length": tf.TensorSpec([], tf.int32),
    "params_step": tf.TensorSpec([], tf.int64),
}


# ----------------------------------------------------------------------------------------
# TABLES AND SERVER
# ----------------------------------------------------------------------------------------


def unroll_signature(
    obs_spec: specs.Array, num_actions: int, unroll_length: int, num_envs: int
) -> dict[str, tf.TensorSpec]:
    """The spec of one `trajectories` item: T+1 steps of B envs (T = `unroll_length`)."""
    if unroll_length < 1 or num_envs < 1 or num_actions < 1:
        raise ValueError(
            f"need unroll_length, num_envs, num_actions >= 1, got "
            f"{unroll_length}, {num_envs}, {num_actions}"
        )
    t1, b = unroll_length + 1, num_envs
    return {
        "observation": tf.TensorSpec([t1, b, *obs_spec.shape], tf.as_dtype(obs_spec.dtype)),
        "action": tf.TensorSpec([t1, b], tf.int32),
        "reward": tf.TensorSpec([t1, b], tf.float32),
        "discount": tf.TensorSpec([t1, b], tf.float32),
        "behaviour_logits": tf.TensorSpec([t1, b, num_actions], tf.float32),
        "task_id": tf.TensorSpec([t1], tf.int32),
        "params_step": tf.TensorSpec([t1], tf.int64),
    }


def variables_signature(params: Any) -> list[tf.TensorSpec]:
    """The spec of a `variables` item for a params pytree: [step int64, *leaves]."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    return [tf.TensorSpec([], tf.int64)] + [tf.TensorSpec(x.shape, x.dtype) for x in leaves]


def evaluation_signature(num_tasks: int) -> dict[str, tf.TensorSpec]:
    """The spec of an `evaluations` item: whose parameters, and the returns per task."""
    return {
        "learner_step": tf.TensorSpec([], tf.int64),
        "pi_i": tf.TensorSpec([num_tasks], tf.float64),
        "pi_0": tf.TensorSpec([num_tasks], tf.float64),
    }


def make_tables(
    signature: Mapping[str, tf.TensorSpec],
    *,
    max_queue_size: int,
    variables_signature: Any = None,
    num_tasks: int = 1,
) -> list[reverb.Table]:
    """The tables: the unroll queue, the parameter slot and its step, the episode and
    evaluation logs (`num_tasks` sizes the evaluations' per-task returns)."""
    if max_queue_size < 1:
        raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")

    def slot(name: str, slot_signature: Any) -> reverb.Table:  # holds the latest insert
        return reverb.Table(
            name=name,
            sampler=reverb.selectors.Fifo(),
            remover=reverb.selectors.Fifo(),
            max_size=1,
            rate_limiter=reverb.rate_limiters.MinSize(1),
            signature=slot_signature,
        )

    def log(name: str, log_signature: Any) -> reverb.Table:  # read once, never blocks writers
        return reverb.Table(
            name=name,
            sampler=reverb.selectors.Fifo(),
            remover=reverb.selectors.Fifo(),
            max_size=LOG_MAX_SIZE,
            max_times_sampled=1,
            rate_limiter=reverb.rate_limiters.MinSize(1),
            signature=log_signature,
        )

    return [
        reverb.Table.queue(TRAJECTORIES, max_size=max_queue_size, signature=dict(signature)),
        slot(VARIABLES, variables_signature),
        slot(VARIABLES_STEP, [tf.TensorSpec([], tf.int64)]),
        log(EPISODES, EPISODE_SIGNATURE),
        log(EVALUATIONS, evaluation_signature(num_tasks)),
    ]


def make_replay_tables(experiment: Any) -> list:
    """The Reverb tables of a configuration (signatures from its environment spec)."""
    config = experiment.config
    d = config.distributed
    obs_spec = experiment.observation_spec
    signature = unroll_signature(
        obs_spec, experiment.network.num_actions, config.unroll_length, d.envs_per_actor
    )
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), experiment.params_template())
    return make_tables(
        signature,
        max_queue_size=d.queue_size,
        variables_signature=variables_signature(params),
        num_tasks=experiment.num_tasks,
    )


def start_server(tables: list[reverb.Table], port: int | None = None) -> reverb.Server:
    """An in-process Reverb server (`port=None` picks a free port). Call `.stop()` when done."""
    return reverb.Server(tables=tables, port=port)


def server_address(server: reverb.Server) -> str:
    return f"localhost:{server.port}"


def table_size(client: reverb.Client, table: str) -> int:
    """The number of items now in `table`."""
    return int(client.server_info()[table].current_size)


# ----------------------------------------------------------------------------------------
# WRITING UNROLLS
# ----------------------------------------------------------------------------------------


class UnrollWriter:
    """Appends vectorised steps and cuts them into overlapping unrolls of T+1 steps.

    After T+1 appends, and then after every T more, one item covering the last T+1 steps
    goes to `trajectories`. Each append is checked against the table's signature (a wrong
    shape or an unsafe dtype raises ValueError naming the field). After an item is created
    the writer waits until at most `max_in_flight_items` items are unconfirmed, so a full
    queue blocks the actor; `timeout_ms` bounds that wait (reverb.errors.DeadlineExceededError;
    the item stays pending, call `wait` again).
    """

    def __init__(
        self,
        client: reverb.Client,
        unroll_length: int,
        *,
        signature: Mapping[str, tf.TensorSpec] | None = None,
        max_in_flight_items: int = 1,
    ) -> None:
        if signature is None:
            signature = client.server_info()[TRAJECTORIES].signature
            if signature is None:
                raise ValueError(f"table {TRAJECTORIES!r} has no signature; pass `signature`")
        self._specs = {
            k: (tuple(spec.shape.as_list()[1:]), np.dtype(spec.dtype.as_numpy_dtype))
            for k, spec in signature.items()
        }
        steps = {spec.shape.as_list()[0] for spec in signature.values()}
        if steps != {unroll_length + 1}:
            raise ValueError(
                f"unroll_length={unroll_length} needs items of {unroll_length + 1} steps; "
                f"the signature has {sorted(steps)}"
            )
        self.unroll_length = unroll_length
        self._max_in_flight = max_in_flight_items
        self._writer = client.trajectory_writer(num_keep_alive_refs=unroll_length + 1)
        self._num_appends = 0
        self.num_items = 0

    def _check(self, step: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if set(step) != set(self._specs):
            raise ValueError(
                f"a step needs exactly the fields {sorted(self._specs)}, got {sorted(step)}"
            )
        out = {}
        for name, (shape, dtype) in self._specs.items():
            x = np.asarray(step[name])
            if x.shape != shape or not np.can_cast(x.dtype, dtype, "same_kind"):
                raise ValueError(
                    f"step field {name!r} has shape {x.shape} and dtype {x.dtype}; the "
                    f"{TRAJECTORIES!r} table expects shape {shape} and dtype {dtype} per step"
                )
            out[name] = x.astype(dtype, copy=False)
        return out

    def append(self, step: Mapping[str, Any], *, timeout_ms: int | None = None) -> bool:
        """Appends one vectorised step; returns True if it completed an unroll item."""
        self._writer.append(self._check(step))
        self._num_appends += 1
        t = self.unroll_length
        if self._num_appends < t + 1 or (self._num_appends - 1) % t != 0:
            return False
        trajectory = {k: self._writer.history[k][-(t + 1) :] for k in self._specs}
        self._writer.create_item(TRAJECTORIES, priority=1.0, trajectory=trajectory)
        self.num_items += 1
        self.wait(timeout_ms=timeout_ms)
        return True

    def wait(self, timeout_ms: int | None = None) -> None:
        """Blocks until at most `max_in_flight_items` items are unconfirmed by the server."""
        self._writer.flush(block_until_num_items=self._max_in_flight, timeout_ms=timeout_ms)

    def flush(self, timeout_ms: int | None = None) -> None:
        """Blocks until every created item is in the table."""
        self._writer.flush(timeout_ms=timeout_ms)

    def close(self) -> None:
        self._writer.close()


class EpisodeWriter:
    """Writes finished episodes into `episodes` (one item each; the table never blocks)."""

    def __init__(self, client: reverb.Client) -> None:
        self._writer = client.trajectory_writer(num_keep_alive_refs=1)

    def write(self, task_id: int, episode_return: float, length: int, params_step: int) -> None:
        self._writer.append(
            {
                "task_id": np.int32(task_id),
                "return": np.float32(episode_return),
                "length": np.int32(length),
                "params_step": np.int64(params_step),
            }
        )
        trajectory = {k: self._writer.history[k][-1] for k in EPISODE_SIGNATURE}
        self._writer.create_item(EPISODES, priority=1.0, trajectory=trajectory)

    def flush(self, timeout_ms: int | None = None) -> None:
        self._writer.flush(timeout_ms=timeout_ms)

    def close(self) -> None:
        self._writer.close()


def _drain(client: reverb.Client, table: str) -> list[Mapping[str, np.ndarray]]:
    """Every item now in a log table (`episodes`, `evaluations`), in insertion order; no
    blocking. Meant for one consumer (the learner): it reads the size, samples that many."""
    size = table_size(client, table)
    if size == 0:
        return []
    samples = client.sample(
        table, num_samples=size, emit_timesteps=False, unpack_as_table_signature=True
    )
    return [sample.data for sample in samples]


def drain_episodes(client: reverb.Client) -> list[tuple[int, float, int, int]]:
    """Every episode now in `episodes` as (task_id, return, length, params_step)."""
    return [
        (int(d["task_id"]), float(d["return"]), int(d["length"]), int(d["params_step"]))
        for d in _drain(client, EPISODES)
    ]


def write_evaluation(
    client: reverb.Client, learner_step: int, pi_i: np.ndarray, pi_0: np.ndarray
) -> None:
    """Logs one evaluation (of the parameters published at `learner_step`) in `evaluations`."""
    writer = client.trajectory_writer(num_keep_alive_refs=1)
    try:
        writer.append(
            {
                "learner_step": np.int64(learner_step),
                "pi_i": np.asarray(pi_i, np.float64),
                "pi_0": np.asarray(pi_0, np.float64),
            }
        )
        trajectory = {k: writer.history[k][-1] for k in ("learner_step", "pi_i", "pi_0")}
        writer.create_item(EVALUATIONS, priority=1.0, trajectory=trajectory)
        writer.flush()
    finally:
        writer.close()


def drain_evaluations(client: reverb.Client) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Every evaluation now in `evaluations` as (learner_step, pi_i [N], pi_0 [N])."""
    return [
        (int(d["learner_step"]), np.asarray(d["pi_i"]), np.asarray(d["pi_0"]))
        for d in _drain(client, EVALUATIONS)
    ]


# ----------------------------------------------------------------------------------------
# PARAMETERS
# ----------------------------------------------------------------------------------------


def publish_params(client: reverb.Client, params: Any, step: int) -> None:
    """Replaces the `variables` item by (step, flattened leaves of `params`), then the
    `variables_step` item by step (so a step read there is never ahead of `variables`)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]
    client.insert([np.int64(step), *leaves], priorities={VARIABLES: 1.0})
    client.insert([np.int64(step)], priorities={VARIABLES_STEP: 1.0})


class VariableSource:
    """Reads the latest published parameters into the structure of `params_template`.

    Long-lived samplers of the size-1 `variables` and `variables_step` tables (opened at
    the first fetch): making a sampler per fetch cost ~0.7 ms of the actor's ~3 ms step on
    two-room. Reverb keeps one sample of each fetched ahead, read just after the previous
    read. A fetch with `allow_stale=True` (what actors use) first reads the step alone, at
    most one fetch interval old, and returns the parameters it holds when that step is
    theirs: the parameters themselves (20 MB for the Atari preset's network) cross the
    wire only when the learner has published new ones. Otherwise, and without
    `allow_stale`, the prefetched parameters are skipped for a sample read after the call
    began.
    """

    def __init__(self, client: reverb.Client, params_template: Any) -> None:
        self._client = client
        leaves, self._treedef = jax.tree.flatten(params_template)
        self._shapes = [np.shape(x) for x in leaves]
        # Opened once published: the size-1 tables are never empty again.
        self._samples: Iterator[Any] | None = None  # of `variables`
        self._steps: Iterator[Any] | None = None  # of `variables_step`
        self._latest: tuple[Any, int] | None = None

    def fetch(
        self, timeout: float | None = None, *, allow_stale: bool = False, min_step: int = 0
    ) -> tuple[Any, int]:
        """(params, step) of the latest publication (with `allow_stale`: of the latest as of
        the previous fetch, or newer, and the parameters held unless that publication's step
        is at least `min_step`); waits up to `timeout` s (None: forever) for the first one,
        raising TimeoutError."""
        if min_step and not allow_stale:
            raise ValueError("min_step needs allow_stale=True (the stale-by-one fetch)")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while self._samples is None and table_size(self._client, VARIABLES_STEP) == 0:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no parameters published in {VARIABLES!r} after {timeout} s")
            time.sleep(delay)
            delay = min(2 * delay, 0.25)
        if self._samples is None:  # new samplers' first samples are read now: fresh
            self._steps = self._client.sample(
                VARIABLES_STEP, num_samples=1 << 62, emit_timesteps=False
            )
            self._samples = self._client.sample(
                VARIABLES, num_samples=1 << 62, emit_timesteps=False
            )
        elif allow_stale and self._latest is not None and self._steps is not None:
            newest = int(next(self._steps).data[0][0])
            held = self._latest[1]
            # Nothing new (as of the previous fetch), or newer but not by enough; a step
            # below the held one (a learner resumed from an older checkpoint) is taken.
            if newest == held or held < newest < min_step:
                return self._latest
            next(self._samples)  # read after the last parameter read: maybe older
        elif not allow_stale:
            next(self._samples)  # read at the previous fetch; the next one is read after it
        sample = next(self._samples)
        step, *leaves = (x[0] for x in sample.data)  # `insert` stores a 1-step trajectory
        if [np.shape(x) for x in leaves] != self._shapes:
            raise ValueError(
                "published parameters do not match the template: leaf shapes "
                f"{[np.shape(x) for x in leaves]} vs {self._shapes}"
            )
        self._latest = jax.tree.unflatten(self._treedef, list(leaves)), int(step)
        return self._latest


# ----------------------------------------------------------------------------------------
# SAMPLING BATCHES
# ----------------------------------------------------------------------------------------


class SampledBatch(NamedTuple):
    batch: Batch[np.ndarray]  # time-major [T+1, items * B_env, ...]; task_id [items * B_env]
    params_step: np.ndarray  # [items] int64: oldest learner step that acted in each item


def items_to_batch(items: list[Mapping[str, np.ndarray]]) -> SampledBatch:
    """Concatenates unroll items [T+1, B_env, ...] along the env axis (item k: columns
    k*B_env..(k+1)*B_env-1), each column keeping its item's task id."""

    def cat(name: str) -> np.ndarray:
        return np.concatenate([item[name] for item in items], axis=1)

    task_id = np.concatenate(
        [np.full(item["action"].shape[1], item["task_id"][0], np.int32) for item in items]
    )
    batch = Batch(
        observation=cat("observation"),
        action=cat("action"),
        reward=cat("reward"),
        discount=cat("discount"),
        behaviour_logits=cat("behaviour_logits"),
        task_id=task_id,
    )
    params_step = np.array([item["params_step"].min() for item in items], np.int64)
    return SampledBatch(batch, params_step)


def wait_for_items(
    client: reverb.Client, table: str, num_items: int, should_stop: Any, poll: float = 0.002
) -> bool:
    """Waits until `table` holds `num_items` items (True) or `should_stop()` (False).

    Reverb's Python sampler has no timeout; a single consumer that waits here first can
    then sample without blocking, and still notices a stop request.
    """
    while table_size(client, table) < num_items:
        if should_stop():
            return False
        time.sleep(poll)
    return True


class QueueSampler:
    """One long-lived sampler of the trajectories queue.

    Reverb logs an INFO line ("Sampler and server are owned by the same process") for every
    sampler it makes, on stderr, and `client.sample` makes one per call: one line per learner
    step. This keeps a single sampler open instead. It fetches at most one item ahead (Reverb's
    buffer of 1), so the queue shows one item fewer than was written and not yet learned on.
    """

    def __init__(self, client: reverb.Client) -> None:
        self._samples = client.sample(
            TRAJECTORIES, num_samples=1 << 62, emit_timesteps=False, unpack_as_table_signature=True
        )

    def sample(self, batch_size: int) -> SampledBatch:
        """The next `batch_size` unrolls (blocking until there are that many)."""
        return items_to_batch([next(self._samples).data for _ in range(batch_size)])


def sample_batch(client: reverb.Client, batch_size: int) -> SampledBatch:
    """Takes `batch_size` unrolls from the queue (blocking until there are that many)."""
    samples = client.sample(
        TRAJECTORIES, num_samples=batch_size, emit_timesteps=False, unpack_as_table_signature=True
    )
    return items_to_batch([s.data for s in samples])
