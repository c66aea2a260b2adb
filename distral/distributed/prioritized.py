"""Ape-X's prioritised replay on Reverb (Horgan et al., 2018, arXiv:1803.00933).

Ape-X actors turn their steps into n-step transitions, give each an initial priority (the
absolute TD error under the actor's copy of the network) and insert them into a prioritised
replay; the learner samples with probability P(i) = p_i^omega / sum_k p_k^omega, corrects
with importance-sampling weights, and writes each sampled item's new priority back. Here:

- `transitions_i`: one table per task (the task label is known; a multitask learner
  samples every task evenly), Reverb's `Prioritized(omega)` selector (or `Uniform`, the
  `replay.selector` setting, to compare the two on one run), the oldest item removed
  first when full. An item is ONE transition (s_t, a_t, R, G, s_{t+n}) with its priority;
  in Ape-X policy distillation (`algorithm: apex_distill`) also the teacher's outputs at
  s_t, and the priority is KL(softmax(q_teacher / tau) || softmax(Q)) (+ lambda |td|).
- `NStepAccumulator` (actor side, numpy): the B environments' steps in the step layout of
  `learning.Batch` (entry t: s_t and the a_t, r_t, d_t that followed; auto-reset) become B
  transitions per step once n steps are held, each emitted n steps after it began; an
  episode's end (d = 0) cuts the later rewards and the bootstrap (`apex.n_step_transition`).
- `TransitionWriter` inserts them with their priorities; `PrioritizedSampler` samples a
  learner step's items of every table and `update_priorities` writes the new ones.

No pickle: items are arrays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import reverb
import tensorflow as tf
from dm_env import specs

from distral.core.apex import PRIORITY_EXPONENT, Batch
from distral.distributed.replay import ItemWriter, TableSampler, checked_step

Selector = Literal["prioritized", "uniform"]
SELECTORS: tuple[str, ...] = ("prioritized", "uniform")


def transition_table(task_id: int) -> str:
    """The table of task `task_id`'s n-step transitions."""
    return f"transitions_{task_id}"


def transition_signature(
    obs_spec: specs.Array, teacher_actions: int | None = None
) -> dict[str, tf.TensorSpec]:
    """The spec of one transition item: (s_t, a_t, R, G, s_{t+n}) and the learner step of
    the parameters that acted at s_t; with `teacher_actions` (Ape-X distillation) also the
    teacher's outputs at s_t, [teacher_actions]."""
    obs = tf.TensorSpec(obs_spec.shape, tf.as_dtype(obs_spec.dtype))
    signature = {
        "observation": obs,
        "action": tf.TensorSpec([], tf.int32),
        "reward": tf.TensorSpec([], tf.float32),
        "discount": tf.TensorSpec([], tf.float32),
        "next_observation": obs,
        "params_step": tf.TensorSpec([], tf.int64),
    }
    if teacher_actions is not None:
        signature["teacher_outputs"] = tf.TensorSpec([teacher_actions], tf.float32)
    return signature


def transition_tables(
    obs_spec: specs.Array,
    num_tasks: int,
    *,
    max_size: int,
    min_size: int,
    selector: Selector = "prioritized",
    priority_exponent: float = PRIORITY_EXPONENT,
    samples_per_insert: float | None = None,
    error_buffer: float = 0.0,
    teacher_actions: int | None = None,
) -> list[reverb.Table]:
    """One table per task of at most `max_size` transitions (oldest removed first); the
    learner may sample once a table holds `min_size`. Without `samples_per_insert` the
    actors run free (Ape-X's way: a MinSize limiter); with it a SampleToInsertRatio
    limiter holds the replay ratio within `error_buffer` samples, so a run's result does
    not depend on how fast the machine's actors are relative to its learner. Items carry
    the teacher's outputs with `teacher_actions` (`transition_signature`)."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown replay selector {selector!r}; valid: {', '.join(SELECTORS)}")
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size} and {max_size}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    signature = transition_signature(obs_spec, teacher_actions)

    def sampler() -> Any:
        if selector == "uniform":
            return reverb.selectors.Uniform()
        return reverb.selectors.Prioritized(priority_exponent)

    def limiter() -> Any:
        if samples_per_insert is None:
            return reverb.rate_limiters.MinSize(min_size)
        return reverb.rate_limiters.SampleToInsertRatio(samples_per_insert, min_size, error_buffer)

    return [
        reverb.Table(
            name=transition_table(i),
            sampler=sampler(),
            remover=reverb.selectors.Fifo(),
            max_size=max_size,
            rate_limiter=limiter(),
            signature=signature,
        )
        for i in range(num_tasks)
    ]


class ApexReplay(NamedTuple):
    """The per-task transition replays of an Ape-X run (`apex_replay`)."""

    items_per_update: int  # k: transitions of each task in one learner step
    max_items: int
    min_items: int
    samples_per_insert: float
    error_buffer: float  # the rate limiter's slack, in samples


def apex_replay(config: Any) -> ApexReplay:
    """The replay sizes of `config.apex`. The rate limiter's slack lets the learner take
    4 steps' samples, plus one burst of every actor of the task (B transitions each per
    actor step), before either side waits."""
    s, d = config.apex, config.distributed
    burst = s.samples_per_insert * d.envs_per_actor * d.actors_per_task
    slack = 4.0 * s.batch_per_task + burst + 2.0 * max(1.0, s.samples_per_insert)
    return ApexReplay(
        s.batch_per_task, s.replay_per_task, s.min_replay_per_task, s.samples_per_insert, slack
    )


def apex_tables(experiment: Any) -> list[reverb.Table]:
    """The transition tables of an Ape-X configuration (`replay.make_replay_tables`)."""
    config = experiment.config
    sizes = apex_replay(config)
    distill = config.algorithm == "apex_distill"
    return transition_tables(
        experiment.observation_spec,
        experiment.num_tasks,
        max_size=sizes.max_items,
        min_size=sizes.min_items,
        selector=config.apex.selector,
        priority_exponent=config.apex.priority_exponent,
        samples_per_insert=sizes.samples_per_insert,
        error_buffer=sizes.error_buffer,
        teacher_actions=experiment.network.num_actions if distill else None,
    )


# ----------------------------------------------------------------------------------------
# ACTOR SIDE: n-step transitions and their initial priorities
# ----------------------------------------------------------------------------------------


class Transitions(NamedTuple):
    """B n-step transitions, one per environment, with the actor's priorities."""

    observation: np.ndarray  # s_t [B, *obs]
    action: np.ndarray  # a_t [B] int32
    reward: np.ndarray  # R [B] float32
    discount: np.ndarray  # G [B] float32
    next_observation: np.ndarray  # s_{t+n} [B, *obs]
    params_step: np.ndarray  # [B] int64: the learner step that acted at s_t
    priority: np.ndarray  # [B] float64: w |R + G max_a Q(s_{t+n}, a) - Q(s_t, a_t)| + p_t
    teacher_outputs: np.ndarray | None = None  # [B, A] at s_t (Ape-X distillation)


class NStepAccumulator:
    """Turns B environments' steps into n-step transitions (numpy, no jit per step).

    `append(observation, action, reward, discount, q_values, params_step)` takes entry t of
    the step layout (s_t, the action taken there, the reward and environment discount that
    followed, Q(s_t, .) under the acting parameters) and returns the B transitions that
    began n steps earlier, or None while fewer than n steps are held. R and G use
    d = gamma x the environment's discount; a 0 (episode end) zeroes every later reward
    and G. The priority is the absolute double-Q TD error under the acting network, whose
    online and target copies are the same on an actor (Ape-X): |R + G max_a Q(s_{t+n}, a)
    - Q(s_t, a_t)|, times `td_weight`, plus the `priority` given with s_t (Ape-X
    distillation: the KL at s_t, with lambda as `td_weight`). `teacher_outputs` given with
    s_t go out with its transition.
    """

    def __init__(self, n: int, gamma: float, td_weight: float = 1.0) -> None:
        if n < 1:
            raise ValueError(f"n_step must be >= 1, got {n}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {gamma}")
        if not td_weight >= 0:
            raise ValueError(f"td_weight must be >= 0, got {td_weight}")
        self.n = n
        self.gamma = gamma
        self.td_weight = td_weight
        self._held: deque[tuple[Any, ...]] = deque(maxlen=n)

    def append(
        self,
        observation: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        discount: np.ndarray,
        q_values: np.ndarray,
        params_step: np.ndarray,
        teacher_outputs: np.ndarray | None = None,
        priority: np.ndarray | None = None,
    ) -> Transitions | None:
        """Holds entry t; returns the transitions of entry t - n (next observation s_t)."""
        out = None
        if len(self._held) == self.n:
            out = self._transitions(observation, q_values)
        a = np.asarray(action)
        q_taken = np.take_along_axis(np.asarray(q_values), a[:, None].astype(np.int64), 1)[:, 0]
        base = np.zeros(a.shape) if priority is None else np.asarray(priority, np.float64)
        self._held.append(
            (np.asarray(observation), a, np.asarray(reward), np.asarray(discount), q_taken,
             np.asarray(params_step), teacher_outputs, base)
        )  # fmt: skip
        return out

    def _transitions(self, next_observation: np.ndarray, q_next: np.ndarray) -> Transitions:
        first = self._held[0]
        reward_sum = np.zeros(first[2].shape, np.float64)
        carried = np.ones(first[3].shape, np.float64)
        for _, _, r, d, *_ in self._held:
            reward_sum += carried * r
            carried *= self.gamma * d
        bootstrap = np.max(np.asarray(q_next, np.float64), axis=-1)
        td = np.abs(reward_sum + carried * bootstrap - first[4])
        teacher = None if first[6] is None else np.asarray(first[6], np.float32)
        return Transitions(
            observation=first[0],
            action=first[1].astype(np.int32),
            reward=reward_sum.astype(np.float32),
            discount=carried.astype(np.float32),
            next_observation=np.asarray(next_observation),
            params_step=first[5].astype(np.int64),
            priority=self.td_weight * td + first[7],
            teacher_outputs=teacher,
        )


class TransitionWriter(ItemWriter):
    """Inserts each transition of a `Transitions` batch as one item of its task's table,
    with the actor's priority; the batch is checked against the signature once, and
    `ItemWriter`'s back-pressure wait follows the batch's items. It writes the fields of
    the table's signature: with `teacher_outputs` for Ape-X distillation."""

    def __init__(
        self,
        client: reverb.Client,
        task_id: int,
        *,
        signature: Mapping[str, tf.TensorSpec] | None = None,
        max_in_flight_items: int = 32,
    ) -> None:
        super().__init__(
            client,
            transition_table(task_id),
            signature,
            skip=0,
            max_in_flight_items=max_in_flight_items,
            keep_alive=1,
        )

    def write(self, transitions: Transitions, *, timeout_ms: int | None = None) -> int:
        """Writes the B transitions; returns how many."""
        count = transitions.action.shape[0]
        batched = {k: ((count, *shape), dtype) for k, (shape, dtype) in self._specs.items()}
        steps = {k: getattr(transitions, k) for k in self._specs}
        fields = checked_step(steps, batched, self._table)
        for b in range(count):
            self._writer.append({k: x[b] for k, x in fields.items()})
            trajectory = {k: self._writer.history[k][-1] for k in self._specs}
            priority = float(transitions.priority[b])
            self._writer.create_item(self._table, priority=priority, trajectory=trajectory)
        self.num_items += count
        self.wait(timeout_ms=timeout_ms)  # once per call: a wait per item halves the rate
        return count


# ----------------------------------------------------------------------------------------
# LEARNER SIDE: prioritised samples and priority updates
# ----------------------------------------------------------------------------------------


class SampledTransitions(NamedTuple):
    batch: Batch  # apex.Batch of N x k transitions, task-major, numpy
    keys: list[np.ndarray]  # per table: the k sampled items' keys (uint64)
    params_step: np.ndarray  # [N x k] the learner step that acted at each s_t


class PrioritizedSampler:
    """Each learner step takes `items_per_task` transitions of every task's table.

    One `client.sample` per table per step, so every step's draw sees the priorities the
    previous step wrote (a long-lived sampler would fetch ahead of the update).
    """

    def __init__(self, client: reverb.Client, num_tasks: int, items_per_task: int) -> None:
        if num_tasks < 1 or items_per_task < 1:
            raise ValueError(f"num_tasks={num_tasks}, items_per_task={items_per_task}")
        self._client = client
        self._tables = [transition_table(i) for i in range(num_tasks)]
        self._k = items_per_task

    def sample(self) -> SampledTransitions:
        """Blocks until every table can be sampled (its MinSize), then draws k items each."""
        data: dict[str, list[np.ndarray]] = {}
        probability, size, keys, task_id = [], [], [], []
        for i, table in enumerate(self._tables):
            samples = list(
                self._client.sample(
                    table, num_samples=self._k, emit_timesteps=False, unpack_as_table_signature=True
                )
            )
            keys.append(np.array([s.info.key for s in samples], np.uint64))
            probability.append(np.array([s.info.probability for s in samples], np.float64))
            size.append(np.array([s.info.table_size for s in samples], np.float64))
            task_id.append(np.full(self._k, i, np.int32))
            for name in samples[0].data:  # the table's fields, teacher outputs included
                stacked = np.stack([np.asarray(s.data[name]) for s in samples])
                data.setdefault(name, []).append(stacked)
        cat = {name: np.concatenate(parts) for name, parts in data.items()}
        batch = Batch(
            observation=cat["observation"],
            action=cat["action"],
            reward=cat["reward"],
            discount=cat["discount"],
            next_observation=cat["next_observation"],
            task_id=np.concatenate(task_id),
            probability=np.concatenate(probability).astype(np.float32),
            table_size=np.concatenate(size).astype(np.float32),
            teacher_outputs=cat.get("teacher_outputs"),
        )
        return SampledTransitions(batch, keys, cat["params_step"])

    def update_priorities(self, keys: list[np.ndarray], priorities: np.ndarray) -> None:
        """Writes the new priorities of a step's items (task-major, as `sample` gave them).
        An item removed meanwhile is skipped by Reverb."""
        priorities = np.asarray(priorities, np.float64).reshape(len(self._tables), self._k)
        for table, table_keys, table_priorities in zip(self._tables, keys, priorities, strict=True):
            updates = {int(k): float(p) for k, p in zip(table_keys, table_priorities, strict=True)}
            self._client.mutate_priorities(table, updates=updates)


class NStepWriter(TransitionWriter):
    """An Ape-X actor's item writer (`actor.ReplayWriter`'s `items`): takes the actor's
    vectorised steps (the step layout, with the acting network's `q_values` at s_t),
    turns them into n-step transitions (`NStepAccumulator`) and inserts them with their
    initial priorities. A step that completes transitions returns True. An Ape-X
    distillation actor's steps also hold `teacher_outputs` and the KL at s_t
    (`distill_priority`), and `td_weight` is lambda."""

    def __init__(
        self,
        client: reverb.Client,
        task_id: int,
        n_step: int,
        discount: float,
        *,
        td_weight: float = 1.0,
        signature: Mapping[str, tf.TensorSpec] | None = None,
        max_in_flight_items: int = 32,
    ) -> None:
        self._accumulator = NStepAccumulator(n_step, discount, td_weight)
        super().__init__(
            client, task_id, signature=signature, max_in_flight_items=max_in_flight_items
        )

    def append(self, step: Mapping[str, Any], *, timeout_ms: int | None = None) -> bool:
        action = np.asarray(step["action"])
        transitions = self._accumulator.append(
            step["observation"],
            action,
            step["reward"],
            step["discount"],
            step["q_values"],
            np.broadcast_to(np.asarray(step["params_step"], np.int64), action.shape),
            step.get("teacher_outputs"),
            step.get("distill_priority"),
        )
        if transitions is None:
            return False
        self.write(transitions, timeout_ms=timeout_ms)
        return True


class TransitionSampler(TableSampler):
    """The learner's side of Ape-X's replay (`replay.TableSampler`'s `wait` and `size`):
    `sample` -> (batch, params steps, env steps per task), then
    `update_priorities(priorities)` for the batch `sample` gave last."""

    def __init__(self, client: reverb.Client, num_tasks: int, items_per_task: int) -> None:
        tables = [transition_table(i) for i in range(num_tasks)]
        super().__init__(client, tables, items_per_task)
        self._sampler = PrioritizedSampler(client, num_tasks, items_per_task)
        self._keys: list[np.ndarray] | None = None

    def sample(self) -> tuple[Batch, np.ndarray, np.ndarray]:
        """(`apex.Batch` of N x k transitions, the learner step that acted at each s_t,
        transitions inserted per task since the previous step: one env step each). Call
        it after `wait` returned True."""
        sampled = self._sampler.sample()
        self._keys = sampled.keys
        return sampled.batch, sampled.params_step, self._new_inserts()

    def update_priorities(self, priorities: np.ndarray) -> None:
        """Writes the new priorities of the batch `sample` gave last."""
        if self._keys is None:
            raise RuntimeError("update_priorities before any sample")
        self._sampler.update_priorities(self._keys, priorities)
