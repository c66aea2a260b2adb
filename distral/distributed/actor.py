"""The Distral actor (Teh et al., 2017, arXiv:1707.04175; DESIGN.md section 3).

One actor gathers experience for ONE task i with that task's policy pi_i, as in the paper's
distributed setup, and sends it to the learner through Reverb in the IMPALA way (Espeholt
et al., 2018, arXiv:1802.01561): fixed-length unrolls of a batch of environments, with the
behaviour logits for V-trace, and the learner's parameters refreshed every few steps.

The actor object touches only the environment, the variable source and the writers; the
action choice is the pure, jitted `acting.select_action`.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import jax
import numpy as np
import reverb

from distral.core import acting
from distral.core.networks import DistralNetwork
from distral.distributed import replay
from distral.envs.vector import VectorEnv

_POLL_MS = 500  # how often a blocked actor looks at its stop event


class Actor:
    """Steps B environments of task `task_id` with pi_i and writes overlapping unrolls.

    Every vectorised step appends (s_t, a_t, r_t, d_t, behaviour logits at s_t, task id,
    params step) to the `trajectories` writer: the layout of `learning.Batch`. Parameters
    are refreshed from `variables` every `refresh_every` actor steps (one actor step steps
    all B environments), taken only when at least `refresh_lag` learner steps newer than
    the ones held (1: any newer; larger values force policy lag, for robustness tests), and
    kept as this task's column only (`network.task_params`), so acting runs one task
    column; the first fetch blocks until the learner has published.
    Each finished episode goes to `episodes` with its undiscounted return and length.
    """

    def __init__(
        self,
        env: VectorEnv,
        task_id: int,
        network: DistralNetwork,
        client: reverb.Client,
        *,
        unroll_length: int,
        refresh_every: int,
        refresh_lag: int = 1,
        seed: int,
        params_template: Any,
        first_fetch_timeout: float | None = None,
        write: bool = True,
    ) -> None:
        if not 0 <= task_id < network.num_tasks:
            raise ValueError(f"task_id {task_id} out of range: the network has {network.num_tasks}")
        if env.num_actions != network.num_actions:
            raise ValueError(
                f"env has {env.num_actions} actions but the network {network.num_actions}"
            )
        if refresh_every < 1 or refresh_lag < 1:
            raise ValueError(f"refresh_every={refresh_every}, refresh_lag={refresh_lag}: need >= 1")
        self._env = env
        self._task_id = int(task_id)
        self._network = network
        self._refresh_every = refresh_every
        self._refresh_lag = refresh_lag
        self._seed = seed
        self._first_fetch_timeout = first_fetch_timeout
        self._write_enabled = write  # False: act and step only (benchmarks/distributed.py)
        self._variables = replay.VariableSource(client, params_template)
        self._writer = replay.UnrollWriter(client, unroll_length)
        self._episodes = replay.EpisodeWriter(client)
        self._column = np.int32(0)  # the index of this task in its sliced parameters
        self._obs: np.ndarray | None = None  # s_t of the B envs between calls to run
        self._key = jax.random.PRNGKey(seed)
        self._episode_return = np.zeros(env.num_envs, np.float64)
        self._episode_length = np.zeros(env.num_envs, np.int64)
        self.num_steps = 0  # actor steps taken (each steps all B environments)
        self.num_episodes = 0
        self.params_step = -1

    def _refresh(self, timeout: float | None = None) -> None:
        params, step = self._variables.fetch(
            timeout, allow_stale=True, min_step=self.params_step + self._refresh_lag
        )
        if step != self.params_step:  # a step's parameters never change: skip the copy
            # This task's column only, sliced once here rather than at every step (5.6 vs
            # 7.9 ms an action for the Nature CNN at B = 8: BUILD_NOTES.md, "Games").
            self._params = jax.device_put(self._network.task_params(params, self._task_id))
            self.params_step = step

    @staticmethod
    def _wait(wait: Any, stop_event: threading.Event | None) -> bool:
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

    def _write(self, step: dict[str, Any], stop_event: threading.Event | None) -> bool:
        """Appends one step; while the queue is full, waits, unless asked to stop (-> False)."""
        items = self._writer.num_items
        try:
            self._writer.append(step, timeout_ms=_POLL_MS if stop_event is not None else None)
        except reverb.errors.DeadlineExceededError:
            if not self._wait(self._writer.wait, stop_event):
                return False
        if self._writer.num_items > items:  # an unroll went out: send the episodes too
            self._episodes.flush()
        return True

    def run(self, max_steps: int | None = None, stop_event: threading.Event | None = None) -> None:
        """Acts for `max_steps` actor steps (None: until `stop_event` is set). A later call
        continues where this one stopped (same episodes, same unroll stream)."""
        if max_steps is None and stop_event is None:
            raise ValueError("give max_steps or stop_event, or the actor never stops")
        env = self._env
        self._refresh(self._first_fetch_timeout if self._obs is None else None)
        if self._obs is None:
            self._obs = env.reset(self._seed)
        obs, key = self._obs, self._key
        episode_return, episode_length = self._episode_return, self._episode_length
        try:
            steps = range(max_steps) if max_steps is not None else itertools.count()
            for t in steps:
                if stop_event is not None and stop_event.is_set():
                    break
                if t > 0 and t % self._refresh_every == 0:
                    self._refresh()
                # ACT with pi_i at s_t, then STEP the environments (auto-reset).
                key, act_key = jax.random.split(key)
                action, logits = acting.select_action(
                    self._params, obs, self._column, act_key, network=self._network
                )
                action, logits = np.asarray(action), np.asarray(logits)
                next_obs, reward, discount, done = env.step(action)
                # WRITE s_t with a_t, r_t, d_t and the behaviour logits at s_t.
                step = {
                    "observation": obs,
                    "action": action,
                    "reward": reward,
                    "discount": discount,
                    "behaviour_logits": logits,
                    "task_id": np.int32(self._task_id),
                    "params_step": np.int64(self.params_step),
                }
                self.num_steps += 1
                # EPISODES: returns and lengths of the ones that ended with this step.
                episode_return += reward
                episode_length += 1
                for b in np.flatnonzero(done) if self._write_enabled else ():
                    self._episodes.write(
                        self._task_id, episode_return[b], episode_length[b], self.params_step
                    )
                    self.num_episodes += 1
                episode_return[done] = 0.0
                episode_length[done] = 0
                obs = self._obs = next_obs  # s_t was counted: the next call goes on from here
                self._key = key
                if self._write_enabled and not self._write(step, stop_event):
                    break
            else:  # max_steps reached: every unroll written reaches the table
                if self._write_enabled:
                    self._wait(self._writer.flush, stop_event)
        finally:
            # Bounded: when stopping, the server may already be gone.
            stopping = stop_event is not None and stop_event.is_set()
            try:
                self._episodes.flush(timeout_ms=_POLL_MS if stopping else None)
            except reverb.errors.DeadlineExceededError:
                pass

    def close(self) -> None:
        self._writer.close()
        self._episodes.close()
