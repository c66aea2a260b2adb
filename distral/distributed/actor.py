"""The Distral actor (Teh et al., 2017, arXiv:1707.04175; DESIGN.md section 3).

One actor gathers experience for ONE task i with that task's policy pi_i, as in the paper's
distributed setup, and sends it to the learner through Reverb in the IMPALA way (Espeholt
et al., 2018, arXiv:1802.01561): fixed-length unrolls of a batch of environments, with the
behaviour logits for V-trace, and the learner's parameters refreshed every few steps.

The roles are Acme's: the `Actor` touches only the environment, its `VariableClient` (the
parameters it acts with) and its writer (where its experience goes: `ReplayWriter`, with
Reverb's back-pressure, or any object with the `ExperienceWriter` methods); the action
choice is the pure, jitted `acting.select_action`, the episode bookkeeping
`EpisodeStatistics`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np
import reverb

from distral.core import acting
from distral.core.networks import DistralNetwork
from distral.distributed import replay
from distral.envs.vector import VectorEnv

_POLL_MS = 500  # how often a blocked actor looks at its stop event

Policy = Callable[[Any, np.ndarray, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
"""(parameters held, observations [B, ...], key) -> (actions [B], what to write beside
them): Distral's `behaviour_logits`, a distillation student's teacher labels."""


def _identity(params: Any) -> Any:
    return params


class VariableClient:
    """The parameters an actor acts with, refreshed from the `variables` table.

    `refresh` fetches the newest publication (the first fetch waits up to `timeout` s for
    one); `update`, called before each actor step, refreshes every `refresh_every` steps.
    Parameters are taken only when at least `refresh_lag` learner steps newer than the ones
    held (1: any newer; larger values force policy lag, for robustness tests), or older (a
    learner resumed from an earlier checkpoint), and kept as `select(params)`: for an actor,
    its task's column (`network.task_params`), sliced once per new publication rather than
    at every step (5.6 vs 7.9 ms an action for the Nature CNN at B = 8: BUILD_NOTES.md,
    "Games").
    """

    def __init__(
        self,
        client: reverb.Client,
        params_template: Any,
        *,
        refresh_every: int,
        refresh_lag: int = 1,
        select: Callable[[Any], Any] = _identity,
    ) -> None:
        if refresh_every < 1 or refresh_lag < 1:
            raise ValueError(f"refresh_every={refresh_every}, refresh_lag={refresh_lag}: need >= 1")
        self._source = replay.VariableSource(client, params_template)
        self._refresh_every = refresh_every
        self._refresh_lag = refresh_lag
        self._select = select
        self._since_refresh = 0
        self.params: Any = None
        self.step = -1  # the learner step of `params` (-1: none yet)

    def refresh(self, timeout: float | None = None) -> None:
        params, step = self._source.fetch(
            timeout, allow_stale=True, min_step=self.step + self._refresh_lag
        )
        if step != self.step:  # a step's parameters never change: skip the copy
            self.params = jax.device_put(self._select(params))
            self.step = step
        self._since_refresh = 0

    def update(self) -> None:
        """Before each actor step: a refresh once `refresh_every` steps followed the last."""
        if self._since_refresh == self._refresh_every:
            self.refresh()
        self._since_refresh += 1


class EpisodeStatistics:
    """Undiscounted return and length of the current episode of each of B environments."""

    def __init__(self, num_envs: int) -> None:
        self._returns = np.zeros(num_envs, np.float64)
        self._lengths = np.zeros(num_envs, np.int64)
        self.num_episodes = 0  # finished so far

    def observe(self, reward: np.ndarray, done: np.ndarray) -> list[tuple[float, int]]:
        """Adds one vectorised step; returns (return, length) of the episodes it ended."""
        self._returns += reward
        self._lengths += 1
        ended = [(float(self._returns[b]), int(self._lengths[b])) for b in np.flatnonzero(done)]
        self._returns[done] = 0.0
        self._lengths[done] = 0
        self.num_episodes += len(ended)
        return ended


class ExperienceWriter(Protocol):
    """Where an `Actor`'s steps and finished episodes go."""

    def append(self, step: dict[str, Any], stop_event: threading.Event | None) -> bool:
        """Takes one vectorised step; False if asked to stop while it could not."""
        ...

    def episode(self, task_id: int, episode_return: float, length: int, params_step: int) -> None:
        """Takes one finished episode."""
        ...

    def flush_unrolls(self, stop_event: threading.Event | None) -> None:
        """Blocks until every unroll taken is delivered, or the stop event is set."""
        ...

    def flush_episodes(self, stopping: bool) -> None:
        """Delivers the episodes taken; briefly only when `stopping` (the server may be gone)."""
        ...

    def close(self) -> None: ...


def _wait(wait: Callable[[int | None], None], stop_event: threading.Event | None) -> bool:
    """Calls `wait(timeout_ms)` until it returns, or the stop event is set (-> False)."""
    if stop_event is None:
        wait(None)
        return True
    while not stop_event.is_set():
        try:
            wait(_POLL_MS)
            return True
        except reverb.errors.DeadlineExceededError:
            continue
    return False


class ReplayWriter:
    """An actor's writer to the Reverb server: its experience through `items` (unrolls of
    T+1 steps to `trajectories`: `replay.UnrollWriter`; or one item per step to its task's
    table: `replay.SampleWriter`) and finished episodes to `episodes`, sent with each item.

    Back-pressure: while the table refuses more (a full queue, a rate limiter), `append`
    waits, looking at the stop event every 0.5 s (an actor blocked inside Reverb could not
    see it otherwise)."""

    def __init__(
        self, client: reverb.Client, items: replay.UnrollWriter | replay.SampleWriter
    ) -> None:
        self._unrolls = items
        self._episodes = replay.EpisodeWriter(client)

    def append(self, step: dict[str, Any], stop_event: threading.Event | None) -> bool:
        items = self._unrolls.num_items
        try:
            self._unrolls.append(step, timeout_ms=_POLL_MS if stop_event is not None else None)
        except reverb.errors.DeadlineExceededError:
            if not _wait(self._unrolls.wait, stop_event):
                return False
        if self._unrolls.num_items > items:  # an unroll went out: send the episodes too
            self._episodes.flush()
        return True

    def episode(self, task_id: int, episode_return: float, length: int, params_step: int) -> None:
        self._episodes.write(task_id, episode_return, length, params_step)

    def flush_unrolls(self, stop_event: threading.Event | None) -> None:
        _wait(self._unrolls.flush, stop_event)

    def flush_episodes(self, stopping: bool) -> None:
        try:
            self._episodes.flush(timeout_ms=_POLL_MS if stopping else None)
        except reverb.errors.DeadlineExceededError:
            pass

    def close(self) -> None:
        self._unrolls.close()
        self._episodes.close()


class Actor:
    """Steps B environments of task `task_id` with pi_i and hands every step to `writer`.

    Every vectorised step is (s_t, a_t, r_t, d_t, task id, params step) and what `policy`
    returns beside the action: by default pi_i's behaviour logits at s_t (the layout of
    `learning.Batch`); a distillation student's policy returns its teacher's labels
    (`distral.distill.actor_policy`). Each finished episode goes to the writer with its
    undiscounted return and length. `variables` holds this task's column of the published
    parameters (`network.task_params`, its `select`), so acting runs one task column; each
    `run` first refreshes them (the first fetch waits up to `first_fetch_timeout` s for the
    learner to publish).
    """

    def __init__(
        self,
        env: VectorEnv,
        task_id: int,
        network: DistralNetwork,
        variables: VariableClient,
        writer: ExperienceWriter,
        *,
        seed: int,
        first_fetch_timeout: float | None = None,
        policy: Policy | None = None,
    ) -> None:
        if not 0 <= task_id < network.num_tasks:
            raise ValueError(f"task_id {task_id} out of range: the network has {network.num_tasks}")
        if env.num_actions != network.num_actions:
            raise ValueError(
                f"env has {env.num_actions} actions but the network {network.num_actions}"
            )
        self._env = env
        self._task_id = int(task_id)
        self._network = network
        self._variables = variables
        self._writer = writer
        self._seed = seed
        self._first_fetch_timeout = first_fetch_timeout
        self._episodes = EpisodeStatistics(env.num_envs)
        self._column = np.int32(0)  # the index of this task in its sliced parameters
        self._policy = policy or self._pi_i
        self._obs: np.ndarray | None = None  # s_t of the B envs between calls to run
        self._key = jax.random.PRNGKey(seed)
        self.num_steps = 0  # actor steps taken (each steps all B environments)

    @property
    def num_episodes(self) -> int:
        return self._episodes.num_episodes

    @property
    def params_step(self) -> int:
        """The learner step of the parameters acting now (-1: none fetched yet)."""
        return self._variables.step

    def _pi_i(self, params: Any, obs: np.ndarray, key: jax.Array) -> tuple[Any, dict[str, Any]]:
        """Distral's policy: pi_i's action and its logits (what V-trace corrects for)."""
        action, logits = acting.select_action(params, obs, self._column, key, network=self._network)
        return action, {"behaviour_logits": logits}

    def _step(self, stop_event: threading.Event | None) -> bool:
        """One actor step; False if asked to stop while the writer was blocked."""
        self._variables.update()
        # ACT at s_t, then STEP the environments (auto-reset).
        key, act_key = jax.random.split(self._key)
        assert self._obs is not None  # `run` resets the environments first
        action, extras = self._policy(self._variables.params, self._obs, act_key)
        action = np.asarray(action)
        next_obs, reward, discount, done = self._env.step(action)
        # WRITE s_t with a_t, r_t, d_t and the policy's extras at s_t.
        step = {
            "observation": self._obs,
            "action": action,
            "reward": reward,
            "discount": discount,
            **{name: np.asarray(x) for name, x in extras.items()},
            "task_id": np.int32(self._task_id),
            "params_step": np.int64(self.params_step),
        }
        self.num_steps += 1
        for episode_return, length in self._episodes.observe(reward, done):
            self._writer.episode(self._task_id, episode_return, length, self.params_step)
        self._obs, self._key = next_obs, key  # s_t was counted: the next call goes on from here
        return self._writer.append(step, stop_event)

    def run(self, max_steps: int | None = None, stop_event: threading.Event | None = None) -> None:
        """Acts for `max_steps` actor steps (None: until `stop_event` is set). A later call
        continues where this one stopped (same episodes, same unroll stream)."""
        if max_steps is None and stop_event is None:
            raise ValueError("give max_steps or stop_event, or the actor never stops")
        self._variables.refresh(self._first_fetch_timeout if self._obs is None else None)
        if self._obs is None:
            self._obs = self._env.reset(self._seed)
        try:
            for _ in range(max_steps) if max_steps is not None else itertools.count():
                if stop_event is not None and stop_event.is_set():
                    break
                if not self._step(stop_event):
                    break
            else:  # max_steps reached: every unroll written reaches the table
                self._writer.flush_unrolls(stop_event)
        finally:
            self._writer.flush_episodes(stopping=stop_event is not None and stop_event.is_set())

    def close(self) -> None:
        self._writer.close()
