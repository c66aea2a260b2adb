"""What the gates of a finished gated run do: mean sigma_k per task, and its heat map.

`distral plot --gates RUN_DIR` plays the run's final policy (its first seed) on every
task for a number of agent steps, records the gates sigma_k(h) at each state visited and
draws the mean per task and sub-policy: rows are tasks, columns sub-policies. Sub-policies
that specialise by task show as a block pattern; gates that ignore the task as columns of
one colour. The numbers are also written beside the figure (gates.csv).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from distral.files import atomic_output
from distral.plotting import PlotError, pyplot, save_figure


def gate_activity(
    run_dir: str | Path, *, steps_per_task: int = 1000, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """The task names and the [N, K] mean gate activations of the run's final parameters
    over `steps_per_task` agent steps of each task (actions sampled from pi_i, episodes
    restarted as they end)."""
    import jax
    import jax.numpy as jnp

    from distral.core.gated import GatedNetwork
    from distral.rundir import load_run

    loaded = load_run(run_dir)
    network = loaded.experiment.network
    if not isinstance(network, GatedNetwork):
        raise PlotError(f"{str(run_dir)!r} is a {loaded.config.variant} run: it has no gates")

    @jax.jit
    def act(obs, task_id, key):
        out = network.apply_gated(loaded.params, obs[None], task_id[None])
        return jax.random.categorical(key, out.output.logits[0]), out.gates[0]

    key = jax.random.PRNGKey(seed)
    means = []
    for task in range(network.num_tasks):
        env = loaded.experiment.make_env(task, seed)
        timestep, total = env.reset(), np.zeros(network.num_subpolicies)
        for _ in range(steps_per_task):
            key, k = jax.random.split(key)
            action, gates = act(jnp.asarray(timestep.observation), jnp.asarray(task), k)
            total += np.asarray(gates)
            timestep = env.step(int(action))
            if timestep.last():
                timestep = env.reset()
        means.append(total / steps_per_task)
    return list(loaded.experiment.task_names), np.stack(means)


def plot_gates(run_dir: str | Path, out: str | Path | None = None, **kwargs: int) -> Path:
    """The heat map of `gate_activity` (PNG `out`, default RUN_DIR/gates.png) and its
    numbers (the same name with .csv: task, then sigma_0..sigma_{K-1})."""
    names, activity = gate_activity(run_dir, **kwargs)
    N, K = activity.shape
    out = Path(out) if out is not None else Path(run_dir) / "gates.png"
    with atomic_output(out.with_suffix(".csv")) as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", *(f"sigma_{k}" for k in range(K))])
        for name, row in zip(names, activity, strict=True):
            writer.writerow([name, *(f"{x:.4f}" for x in row)])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * K, 1.0 + 0.45 * N))
    try:
        image = ax.imshow(activity, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, k), value in np.ndenumerate(activity):
            colour = "black" if value > 0.5 else "white"
            ax.text(k, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks(range(K), [f"f_{k}" for k in range(K)])
        ax.set_yticks(range(N), names)
        ax.set_xlabel("sub-policy")
        ax.set_title("mean gate activation")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        return save_figure(fig, out)
    finally:
        plt.close(fig)
