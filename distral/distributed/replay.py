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
- `teacher_samples_i` (a distillation student, `algorithm: distill`, instead of
  `trajectories`): one table per task, uniform sampling, oldest removed first, each item
  one actor step of B states with the task's teacher outputs and features; a
  SampleToInsertRatio rate limiter holds the replay ratio (`distill_replay`).

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

from distral.core.distillation import Batch as DistillBatch
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
    queue = reverb.Table.queue(TRAJECTORIES, max_size=max_queue_size, signature=dict(signature))
    return [queue, *service_tables(variables_signature, num_tasks)]


def service_tables(variables_signature: Any, num_tasks: int) -> list[reverb.Table]:
    """The tables every run has beside its experience: the parameter slot and its step, the
    episode and evaluation logs."""

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
        slot(VARIABLES, variables_signature),
        slot(VARIABLES_STEP, [tf.TensorSpec([], tf.int64)]),
        log(EPISODES, EPISODE_SIGNATURE),
        log(EVALUATIONS, evaluation_signature(num_tasks)),
    ]


def make_replay_tables(experiment: Any) -> list:
    """The Reverb tables of a configuration (signatures from its environment spec): an
    unroll queue (`algorithm.replay_table` "queue"), one uniform table of teacher
    samples per task ("uniform": `distill_tables`), or one prioritised table of n-step
    transitions per task ("prioritized": `prioritized.apex_tables`)."""
    config = experiment.config
    d = config.distributed
    obs_spec = experiment.observation_spec
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), experiment.params_template())
    if experiment.algorithm.replay_table == "prioritized":  # Ape-X's transition tables
        from distral.distributed.prioritized import apex_tables

        return [
            *apex_tables(experiment),
            *service_tables(variables_signature(params), experiment.num_tasks),
        ]
    if experiment.algorithm.replay_table == "uniform":
        return [
            *distill_tables(experiment),
            *service_tables(variables_signature(params), experiment.num_tasks),
        ]
    signature = unroll_signature(
        obs_spec, experiment.network.num_actions, config.unroll_length, d.envs_per_actor
    )
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
# TEACHER SAMPLES (algorithm: distill): one uniform table per task
# ----------------------------------------------------------------------------------------


def teacher_table(task_id: int) -> str:
    """The table of task `task_id`'s teacher samples."""
    return f"teacher_samples_{task_id}"


def teacher_sample_signature(
    obs_spec: specs.Array, num_actions: int, feature_size: int, num_envs: int
) -> dict[str, tf.TensorSpec]:
    """The spec of one teacher-sample item: one actor step of its B environments, each
    state with its teacher's outputs and features (zero-padded to the largest teacher's;
    one zero without feature regression), and the student's learner step that acted."""
    if min(num_actions, feature_size, num_envs) < 1:
        raise ValueError(
            f"need num_actions, feature_size, num_envs >= 1, got "
            f"{num_actions}, {feature_size}, {num_envs}"
        )
    b = num_envs
    return {
        "observation": tf.TensorSpec([b, *obs_spec.shape], tf.as_dtype(obs_spec.dtype)),
        "teacher_outputs": tf.TensorSpec([b, num_actions], tf.float32),
        "teacher_features": tf.TensorSpec([b, feature_size], tf.float32),
        "params_step": tf.TensorSpec([], tf.int64),
    }


class DistillReplay(NamedTuple):
    """The per-task replays of a distributed distillation, in items of B samples."""

    items_per_update: int  # k: items of each task in one learner step (batch_per_task / B)
    max_items: int  # items a task's table holds (replay_per_task / B), oldest removed first
    samples_per_insert: float  # k / (actors_per_task x T): the learner's replay ratio
    min_items: int  # items a table needs before its first sample: one update's inserts


def distill_replay(config: Any) -> DistillReplay:
    """The replay sizes of `config` (`algorithm: distill` under `distral launch`).

    Each learner step takes `batch_per_task` samples from every task, and is matched with
    `unroll_length` actor steps of every actor of the task (the replay ratio of `distral
    distill` on two_room: a rollout of num_envs x unroll_length steps per update), which
    a SampleToInsertRatio rate limiter holds: actors wait when ahead, the learner when it
    is. Config checks made it divide: batch_per_task and replay_per_task by envs_per_actor.
    """
    d, s = config.distributed, config.distill
    k = s.batch_per_task // d.envs_per_actor
    inserts = d.actors_per_task * config.unroll_length
    return DistillReplay(k, s.replay_per_task // d.envs_per_actor, k / inserts, max(k, inserts))


def distill_tables(experiment: Any) -> list[reverb.Table]:
    """One table per task: uniform sampling, the oldest item removed when full, and a
    SampleToInsertRatio rate limiter (`distill_replay`) with a slack of 4 learner steps."""
    config = experiment.config
    sizes = distill_replay(config)
    learner = experiment.parts.learner_config
    feature_size = max(learner.feature_dims) if learner.loss.uses_features else 1
    signature = teacher_sample_signature(
        experiment.observation_spec,
        experiment.network.num_actions,
        feature_size,
        config.distributed.envs_per_actor,
    )
    slack = 4.0 * sizes.items_per_update + 2.0 * max(1.0, sizes.samples_per_insert)
    return [
        reverb.Table(
            name=teacher_table(i),
            sampler=reverb.selectors.Uniform(),
            remover=reverb.selectors.Fifo(),
            max_size=sizes.max_items,
            rate_limiter=reverb.rate_limiters.SampleToInsertRatio(
                sizes.samples_per_insert, sizes.min_items, slack
            ),
            signature=signature,
        )
        for i in range(experiment.num_tasks)
    ]


class ItemWriter:
    """What the experience writers share: a trajectory writer on one table whose steps are
    checked against the table's signature (less `skip` leading axes; the server's when
    `signature` is None), the items created so far, and the back-pressure wait: after an
    item is created the writer waits until at most `max_in_flight_items` items are
    unconfirmed, so a table that refuses more blocks the actor; `timeout_ms` bounds that
    wait (reverb.errors.DeadlineExceededError; the item stays pending, call `wait` again)."""

    def __init__(
        self,
        client: reverb.Client,
        table: str,
        signature: Mapping[str, tf.TensorSpec] | None,
        *,
        skip: int,
        max_in_flight_items: int,
        keep_alive: int,
    ) -> None:
        if signature is None:
            signature = client.server_info()[table].signature
            if signature is None:
                raise ValueError(f"table {table!r} has no signature; pass `signature`")
        self._table = table
        self._signature = signature
        self._specs = step_specs(signature, skip=skip)
        self._max_in_flight = max_in_flight_items
        self._writer = client.trajectory_writer(num_keep_alive_refs=keep_alive)
        self.num_items = 0

    def _create(self, trajectory: Mapping[str, Any], timeout_ms: int | None) -> None:
        self._writer.create_item(self._table, priority=1.0, trajectory=trajectory)
        self.num_items += 1
        self.wait(timeout_ms=timeout_ms)

    def wait(self, timeout_ms: int | None = None) -> None:
        """Blocks until at most `max_in_flight_items` items are unconfirmed by the server."""
        self._writer.flush(block_until_num_items=self._max_in_flight, timeout_ms=timeout_ms)

    def flush(self, timeout_ms: int | None = None) -> None:
        """Blocks until every created item is in the table."""
        self._writer.flush(timeout_ms=timeout_ms)

    def close(self) -> None:
        self._writer.close()


class SampleWriter(ItemWriter):
    """Writes each appended actor step (B states with their teachers' labels) as one item
    of its task's table (`ItemWriter`'s wait: the table's rate limiter holds the actor)."""

    def __init__(
        self,
        client: reverb.Client,
        task_id: int,
        *,
        signature: Mapping[str, tf.TensorSpec] | None = None,
        max_in_flight_items: int = 1,
    ) -> None:
        super().__init__(
            client,
            teacher_table(task_id),
            signature,
            skip=0,
            max_in_flight_items=max_in_flight_items,
            keep_alive=1,
        )

    def append(self, step: Mapping[str, Any], *, timeout_ms: int | None = None) -> bool:
        """Writes the step's fields of this table (others, e.g. the reward, are not
        kept); returns True (every step is an item)."""
        missing = set(self._specs) - set(step)
        if missing:
            raise ValueError(f"a step for {self._table!r} lacks the fields {sorted(missing)}")
        fields = {k: step[k] for k in self._specs}
        self._writer.append(checked_step(fields, self._specs, self._table))
        self._create({k: self._writer.history[k][-1] for k in self._specs}, timeout_ms)
        return True


# ----------------------------------------------------------------------------------------
# WRITING UNROLLS
# ----------------------------------------------------------------------------------------


def step_specs(signature: Mapping[str, tf.TensorSpec], skip: int) -> dict[str, tuple]:
    """{field: (shape, dtype)} of one appended step: an item's spec less its first `skip`
    axes (1 for an unroll's time axis, 0 for a one-step item)."""
    return {
        k: (tuple(spec.shape.as_list()[skip:]), np.dtype(spec.dtype.as_numpy_dtype))
        for k, spec in signature.items()
    }


def checked_step(
    step: Mapping[str, Any], specs: Mapping[str, tuple], table: str
) -> dict[str, np.ndarray]:
    """The fields `specs` names, taken from `step` and cast; a missing field, a wrong shape
    or an unsafe dtype is a ValueError naming the field and the table."""
    if set(step) != set(specs):
        raise ValueError(f"a step needs exactly the fields {sorted(specs)}, got {sorted(step)}")
    out = {}
    for name, (shape, dtype) in specs.items():
        x = np.asarray(step[name])
        if x.shape != shape or not np.can_cast(x.dtype, dtype, "same_kind"):
            raise ValueError(
                f"step field {name!r} has shape {x.shape} and dtype {x.dtype}; the "
                f"{table!r} table expects shape {shape} and dtype {dtype} per step"
            )
        out[name] = x.astype(dtype, copy=False)
    return out


class UnrollWriter(ItemWriter):
    """Appends vectorised steps and cuts them into overlapping unrolls of T+1 steps.

    After T+1 appends, and then after every T more, one item covering the last T+1 steps
    goes to `trajectories`. Each append is checked against the table's signature (a wrong
    shape or an unsafe dtype raises ValueError naming the field); a full queue blocks the
    actor (`ItemWriter`'s wait).
    """

    def __init__(
        self,
        client: reverb.Client,
        unroll_length: int,
        *,
        signature: Mapping[str, tf.TensorSpec] | None = None,
        max_in_flight_items: int = 1,
    ) -> None:
        super().__init__(
            client,
            TRAJECTORIES,
            signature,
            skip=1,
            max_in_flight_items=max_in_flight_items,
            keep_alive=unroll_length + 1,
        )
        steps = {spec.shape.as_list()[0] for spec in self._signature.values()}
        if steps != {unroll_length + 1}:
            self.close()
            raise ValueError(
                f"unroll_length={unroll_length} needs items of {unroll_length + 1} steps; "
                f"the signature has {sorted(steps)}"
            )
        self.unroll_length = unroll_length
        self._num_appends = 0

    def append(self, step: Mapping[str, Any], *, timeout_ms: int | None = None) -> bool:
        """Appends one vectorised step; returns True if it completed an unroll item."""
        self._writer.append(checked_step(step, self._specs, TRAJECTORIES))
        self._num_appends += 1
        t = self.unroll_length
        if self._num_appends < t + 1 or (self._num_appends - 1) % t != 0:
            return False
        self._create({k: self._writer.history[k][-(t + 1) :] for k in self._specs}, timeout_ms)
        return True


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


class UnrollSampler:
    """The learner's side of the unroll queue, with `TeacherSampler`'s interface:
    `batch_size` unrolls per step."""

    def __init__(self, client: reverb.Client, num_tasks: int, batch_size: int) -> None:
        self._client = client
        self._num_tasks = num_tasks
        self._batch_size = batch_size
        self._queue = QueueSampler(client)

    def wait(self, should_stop: Any) -> bool:
        """True once the queue holds a step's unrolls; False if `should_stop()` first."""
        return wait_for_items(self._client, TRAJECTORIES, self._batch_size, should_stop)

    def size(self) -> float:
        return float(table_size(self._client, TRAJECTORIES))

    def sample(self) -> tuple[Batch[np.ndarray], np.ndarray, np.ndarray]:
        """(the batch, the oldest learner step of each unroll, env steps per task in it)."""
        sampled = self._queue.sample(self._batch_size)
        steps = sampled.batch.action.shape[0] - 1
        unrolls = np.bincount(sampled.batch.task_id, minlength=self._num_tasks)
        return sampled.batch, sampled.params_step, unrolls * steps


def sample_batch(client: reverb.Client, batch_size: int) -> SampledBatch:
    """Takes `batch_size` unrolls from the queue (blocking until there are that many)."""
    samples = client.sample(
        TRAJECTORIES, num_samples=batch_size, emit_timesteps=False, unpack_as_table_signature=True
    )
    return items_to_batch([s.data for s in samples])


def can_sample(info: Any, num_samples: int) -> bool:
    """Whether a table's rate limiter lets `num_samples` more samples through now, plus the
    one a long-lived sampler fetches ahead (Reverb's rule: the table holds at least
    min_size_to_sample items, and inserts x samples_per_insert - samples stays >= min_diff
    after them)."""
    limiter = info.rate_limiter_info
    if info.current_size < limiter.min_size_to_sample:
        return False
    inserted = limiter.insert_stats.completed * limiter.samples_per_insert
    return inserted - limiter.sample_stats.completed - (num_samples + 1) >= limiter.min_diff


class TableSampler:
    """What the learner's side of per-task rate-limited tables shares (`TeacherSampler`,
    `prioritized.TransitionSampler`): `wait` polls until every table's rate limiter lets
    a step's `items_per_update` items through (Reverb's Python sampler has no timeout: a
    learner blocked inside it could not see a stop), `size`, and the items inserted into
    each table since the previous step."""

    def __init__(self, client: reverb.Client, tables: list[str], items_per_update: int) -> None:
        if not tables or items_per_update < 1:
            raise ValueError(f"num_tasks={len(tables)}, items_per_update={items_per_update}")
        self._client = client
        self._tables = tables
        self._k = items_per_update
        self._inserted = np.zeros(len(tables), np.int64)  # items per table, as of the last step
        self._info: Any = None

    def wait(self, should_stop: Any, poll: float = 0.002) -> bool:
        """True once every table can give a step's items; False if `should_stop()` first."""
        while True:
            self._info = self._client.server_info()
            if all(can_sample(self._info[t], self._k) for t in self._tables):
                return True
            if should_stop():
                return False
            time.sleep(poll)

    def size(self) -> float:
        """Mean items per table (as of the last `wait`)."""
        if self._info is None:
            return 0.0
        return float(np.mean([self._info[t].current_size for t in self._tables]))

    def _new_inserts(self) -> np.ndarray:
        """[N] items inserted into each table since the previous call (as of the last
        `wait`)."""
        inserted = np.array(
            [self._info[t].rate_limiter_info.insert_stats.completed for t in self._tables], np.int64
        )
        new, self._inserted = inserted - self._inserted, inserted
        return new


class TeacherSampler(TableSampler):
    """The learner's side of the per-task teacher-sample tables: each step takes
    `items_per_update` items of every task (task-major: tasks interleaved evenly, as in
    Rusu et al. and Parisotto et al.), through one long-lived sampler per table, once
    `wait` saw every table's rate limiter let them through."""

    def __init__(self, client: reverb.Client, num_tasks: int, items_per_update: int) -> None:
        super().__init__(client, [teacher_table(i) for i in range(num_tasks)], items_per_update)
        self._samples = [
            client.sample(
                t, num_samples=1 << 62, emit_timesteps=False, unpack_as_table_signature=True
            )
            for t in self._tables
        ]

    def sample(self) -> tuple[Any, np.ndarray, np.ndarray]:
        """(`distillation.Batch` of N x k x B samples, the student's learner step of each
        item [N x k], env steps per task written since the previous step [N]). Call it
        after `wait` returned True: it samples what `wait` saw could be sampled."""
        items = [[next(s).data for _ in range(self._k)] for s in self._samples]
        flat = [item for task in items for item in task]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([item[name] for item in flat], axis=0)

        b = flat[0]["observation"].shape[0]
        task_id = np.repeat(np.arange(len(items), dtype=np.int32), self._k * b)
        batch = DistillBatch(
            cat("observation"), cat("teacher_outputs"), cat("teacher_features"), task_id
        )
        params_step = np.array([int(item["params_step"]) for item in flat], np.int64)
        return batch, params_step, self._new_inserts() * b
