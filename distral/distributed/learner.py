"""The distributed Distral learner (Teh et al., 2017, arXiv:1707.04175): a thin shell.

It takes batches of unrolls from the Reverb `trajectories` queue, runs the same jitted
`learning.update_step` as `distral train` (with V-trace targets by default, since actors
act with parameters that lag the learner's), publishes the new parameters to the
`variables` table, and reports what a distributed run needs to watch: updates/s, env
frames/s, queue size and parameter lag (learner step minus the step of the parameters
that generated a batch). Checkpointing and the evaluator belong to the launcher.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import optax
import reverb

from distral.core import learning
from distral.core.losses import LossConfig
from distral.core.networks import DistralNetwork
from distral.distributed import replay


class Learner:
    """Batches from Reverb -> `update_step` -> published parameters."""

    def __init__(
        self,
        network: DistralNetwork,
        optimizer: optax.GradientTransformation,
        loss_config: LossConfig,
        client: reverb.Client,
        *,
        batch_size: int,
        example_obs: np.ndarray,
        seed: int = 0,
        publish_every: int = 1,
        state: learning.TrainingState | None = None,
    ) -> None:
        if batch_size < 1 or publish_every < 1:
            raise ValueError(f"batch_size={batch_size}, publish_every={publish_every}: need >= 1")
        self._network = network
        self._optimizer = optimizer
        self._config = loss_config
        self._client = client
        self._sampler = replay.QueueSampler(client)
        self._batch_size = batch_size
        self._publish_every = publish_every
        self.state = state or learning.init_training_state(
            jax.random.PRNGKey(seed), network, optimizer, example_obs
        )
        self._frames = 0
        self._updates = 0
        self._t_start = time.perf_counter()
        self.publish()

    @property
    def step(self) -> int:
        return int(self.state.step)

    def publish(self) -> None:
        """Makes the current parameters (and their step) the ones actors fetch."""
        replay.publish_params(self._client, self.state.params, self.step)

    def update(self) -> dict[str, Any]:
        """One learner step on `batch_size` unrolls from the queue (blocks until they exist)."""
        t0 = time.perf_counter()
        sampled = self._sampler.sample(self._batch_size)
        t_sampled = time.perf_counter()
        lag = self.step - sampled.params_step
        self.state, metrics = learning.update_step(
            self.state,
            jax.tree.map(np.asarray, sampled.batch),
            network=self._network,
            optimizer=self._optimizer,
            config=self._config,
        )
        metrics = jax.device_get(metrics)
        if self.step % self._publish_every == 0:
            self.publish()
        t_done = time.perf_counter()
        T1, B = sampled.batch.action.shape
        self._frames += (T1 - 1) * B
        self._updates += 1
        elapsed = t_done - self._t_start
        out: dict[str, Any] = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        out.update(
            learner_step=self.step,
            frames_per_task=np.bincount(sampled.batch.task_id, minlength=self._network.num_tasks)
            * (T1 - 1),
            **{k: np.asarray(v) for k, v in metrics.items() if k.endswith("_per_task")},
            parameter_lag_mean=float(np.mean(lag)),
            parameter_lag_max=int(np.max(lag)),
            queue_size=float(replay.table_size(self._client, replay.TRAJECTORIES)),
            sample_seconds=t_sampled - t0,
            update_seconds=t_done - t_sampled,
            updates_per_second=self._updates / elapsed if elapsed > 0 else 0.0,
            env_frames_per_second=self._frames / elapsed if elapsed > 0 else 0.0,
        )
        return out
