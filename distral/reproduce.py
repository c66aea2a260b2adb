"""`distral reproduce two-room`: the paper's Figure 3 (Teh et al., 2017, arXiv:1707.04175).

Left panel: tabular Distral (alternating soft Q-learning and distillation of pi_0, alpha = 1,
KL only; DESIGN.md 1.1) against "Separately" (the same soft Q-learning per task, pi_0 kept
uniform) on the two-room tasks, every iteration using `rollouts` roll-outs of `length` steps
per task. Right panel: pi_0 in the corridor given that the previous action was left, then
right. The seeds and both arms run together in one compiled program (vmap over arms and
seeds, lax.scan over iterations).

The grid world becomes a `tabular.TabularMDP` per task: state = cell * 5 + previous action
(`two_room.tabular_state`), deterministic moves, the environment's rewards, the goal cell
terminal (under every previous action), and starts uniform on the other cells with previous
action "none". The 100-step limit is the roll-out length.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from distral.config import ConfigError, Figure3Config
from distral.core import tabular
from distral.envs import two_room

ACTION_NAMES = ("up", "down", "left", "right")
ARMS = ("distral", "separately")


# THE GRID WORLD AS TABULAR MDPS


def two_room_mdps(params: two_room.TwoRoomParams, discount: float) -> tabular.TabularMDP:
    """One TabularMDP per task (leading task axis) over (cell, previous action) states."""
    walls = np.asarray(params.walls)
    cell_index = np.asarray(params.cell_index)
    free_cells = np.asarray(params.free_cells)
    height, width = walls.shape
    num_free = len(free_cells)
    num_prev = two_room.NO_ACTION + 1
    num_states = num_free * num_prev
    num_actions = two_room.NUM_ACTIONS

    # Moves depend on the cell only: next cell and whether the move was blocked.
    next_cell = np.empty((num_free, num_actions), np.int64)
    blocked = np.empty((num_free, num_actions), bool)
    for c, (r, col) in enumerate(free_cells.tolist()):
        for a, (dr, dc) in enumerate(two_room._MOVES.tolist()):
            nr, nc = r + dr, col + dc
            ok = 0 <= nr < height and 0 <= nc < width and not walls[nr, nc]
            blocked[c, a] = not ok
            next_cell[c, a] = cell_index[nr, nc] if ok else c
    cell_of_state = np.repeat(np.arange(num_free), num_prev)  # state s = cell * 5 + prev
    transitions = np.zeros((num_states, num_actions, num_states))
    for s in range(num_states):
        for a in range(num_actions):
            transitions[s, a, next_cell[cell_of_state[s], a] * num_prev + a] = 1.0

    mdps = []
    for goal in np.asarray(params.goal_index).tolist():
        step_reward = np.where(
            blocked, two_room.STEP_REWARD + two_room.WALL_PENALTY, two_room.STEP_REWARD
        )
        reward_cells = np.where(
            next_cell == goal, two_room.STEP_REWARD + two_room.GOAL_REWARD, step_reward
        )
        initial = np.zeros(num_states)
        starts = [c * num_prev + two_room.NO_ACTION for c in range(num_free) if c != goal]
        initial[starts] = 1.0 / len(starts)
        mdps.append(
            tabular.make_mdp(
                transitions,
                reward_cells[cell_of_state],
                initial,
                discount,
                terminal=cell_of_state == goal,
                next_state=next_cell[cell_of_state] * num_prev + np.arange(num_actions),
            )
        )
    return tabular.stack_mdps(mdps)


# THE EXPERIMENT: arms x seeds vmapped, iterations scanned


class Figure3Run(NamedTuple):
    returns: np.ndarray  # [2 arms, seeds, iterations]: roll-out return averaged over tasks
    log_pi0: np.ndarray  # [2 arms, seeds, S, A]: final pi_0 (uniform for "separately")
    compile_seconds: float
    run_seconds: float


def run_figure3(config: Figure3Config, params: two_room.TwoRoomParams) -> Figure3Run:
    """Both arms for `config.seeds` seeds in one compiled program."""
    mdps = two_room_mdps(params, config.discount)
    num_tasks, num_states, num_actions = mdps.rewards.shape

    def one_run(separately: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        def body(state: tabular.DistralState, key: jax.Array):
            state, metrics = tabular.distral_iteration(
                state,
                key,
                mdps,
                config.alpha,
                config.beta,
                config.learning_rate,
                config.rollouts,
                config.length,
                separately=separately,
                prior_counts=config.prior_counts,
            )
            return state, jnp.mean(metrics["mean_return"])

        init = tabular.init_distral_state(num_tasks, num_states, num_actions)
        final, returns = lax.scan(body, init, jax.random.split(key, config.iterations))
        return returns, final.log_pi0

    separately = jnp.array([False, True])
    keys = jax.random.split(jax.random.PRNGKey(0), config.seeds)
    # Seed k of both arms shares its key: the arms differ only in the coupling.
    program = jax.jit(jax.vmap(jax.vmap(one_run, in_axes=(None, 0)), in_axes=(0, None)))
    start = time.perf_counter()
    compiled = program.lower(separately, keys).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    returns, log_pi0 = jax.block_until_ready(compiled(separately, keys))
    return Figure3Run(
        np.asarray(returns), np.asarray(log_pi0), compile_seconds, time.perf_counter() - start
    )


# ANALYSIS


def corridor_policy(
    params: two_room.TwoRoomParams, log_pi0: np.ndarray
) -> dict[str, dict[str, float]]:
    """pi_0 averaged over the corridor cells (and seeds, if `log_pi0` has a leading axis),
    given that the previous action was left, then right: {"left": {"up": p, ...}, ...}."""
    corridor = np.asarray(params.corridor)
    cells = np.asarray(params.cell_index)[corridor]
    if cells.size == 0:
        raise ConfigError("the layout has no corridor cell (free, walls above and below)")
    probs = np.exp(np.asarray(log_pi0, dtype=float)).reshape(-1, *np.shape(log_pi0)[-2:])
    out = {}
    for prev in ("left", "right"):
        states = cells * (two_room.NO_ACTION + 1) + ACTION_NAMES.index(prev)
        p = probs[:, states].mean(axis=(0, 1))
        out[prev] = {name: float(v) for name, v in zip(ACTION_NAMES, p, strict=True)}
    return out


def first_iteration_within(mean: np.ndarray, target: float) -> int | None:
    """1-based first iteration whose mean return is >= target, None if none is."""
    hits = np.flatnonzero(mean >= target)
    return int(hits[0]) + 1 if hits.size else None


def summarise(
    config: Figure3Config, params: two_room.TwoRoomParams, run: Figure3Run, wall: float
) -> dict[str, Any]:
    """summary.json's content: curves with 95% CIs, the corridor policy and the checks."""
    from distral.stats import mean_ci

    optimal = float(np.mean(two_room.optimal_returns(params)))
    iterations = list(range(1, config.iterations + 1))
    summary: dict[str, Any] = {}
    for a, arm in enumerate(ARMS):
        mean, low, high = mean_ci(run.returns[a], axis=0)
        summary[arm] = {
            "iteration": iterations,
            "mean": mean.tolist(),
            "ci_low": low.tolist(),
            "ci_high": high.tolist(),
        }
    summary["optimal"] = optimal
    summary["corridor"] = corridor_policy(params, run.log_pi0[ARMS.index("distral")])
    summary["seeds"] = config.seeds
    summary["wall_seconds"] = wall
    summary["compile_seconds"] = run.compile_seconds
    summary["config"] = dataclasses.asdict(config)
    summary["checks"] = checks(summary)
    return summary


def checks(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's acceptance figures, measured on the curves (no pass/fail is assumed)."""
    d, s = ({k: np.asarray(summary[arm][k]) for k in ("mean", "ci_low", "ci_high")} for arm in ARMS)
    n = len(d["mean"])
    window = slice(49, min(500, n))  # iterations 50..500, 1-based
    out: dict[str, Any] = {
        "distral_above_separately_50_500": (
            float(np.mean(d["mean"][window] > s["mean"][window])) if n >= 50 else None
        ),
        "ci_separated_at_200": bool(d["ci_low"][199] > s["ci_high"][199]) if n >= 200 else None,
        "distral_iteration_within_0.5": first_iteration_within(d["mean"], summary["optimal"] - 0.5),
        "separately_iteration_within_0.5": first_iteration_within(
            s["mean"], summary["optimal"] - 0.5
        ),
        "corridor_up_down": {prev: p["up"] + p["down"] for prev, p in summary["corridor"].items()},
    }
    return out


# OUTPUTS


def _draw_curves(ax: Any, summary: dict[str, Any]) -> None:
    for arm, label in zip(ARMS, ("Distral", "Separately"), strict=True):
        c = summary[arm]
        (line,) = ax.plot(c["iteration"], c["mean"], label=label)
        ax.fill_between(
            c["iteration"], c["ci_low"], c["ci_high"], color=line.get_color(), alpha=0.25, lw=0
        )
    ax.axhline(summary["optimal"], color="black", linestyle="--", linewidth=1, label="optimal")
    ax.set_xlabel("Iterations; each using 10 roll-outs of length 100")
    ax.set_ylabel("Returns; averaged across tasks")
    ax.set_title(f"two-room, {summary['seeds']} seeds (mean, 95% CI)")
    ax.legend(loc="lower right")


def _draw_corridor(ax: Any, params: two_room.TwoRoomParams, log_pi0: np.ndarray, prev: str):
    """pi_0 (mean over seeds) at every free cell given previous action `prev`: one arrow per
    action, its length proportional to the probability; corridor cells shaded."""
    walls = np.asarray(params.walls)
    corridor = np.asarray(params.corridor)
    probs = np.exp(np.asarray(log_pi0, dtype=float)).mean(axis=0)  # [S, A]
    shade = np.where(walls, 0.25, np.where(corridor, 0.85, 1.0))
    ax.imshow(shade, cmap="gray", vmin=0, vmax=1)
    moves = two_room._MOVES.astype(float)  # (d_row, d_col) per action
    for c, (r, col) in enumerate(np.asarray(params.free_cells).tolist()):
        p = probs[c * (two_room.NO_ACTION + 1) + ACTION_NAMES.index(prev)]
        for a in range(two_room.NUM_ACTIONS):
            if p[a] < 0.05:
                continue
            dr, dc = moves[a] * 0.45 * p[a]
            ax.arrow(
                col,
                r,
                dc,
                dr,
                width=0.04 * p[a],
                head_width=0.2 * p[a],
                head_length=0.15 * p[a],
                color="C3",
                lw=0,
                length_includes_head=True,
            )
    ax.set_title(f"pi_0, previous action {prev}")
    ax.set_xticks([])
    ax.set_yticks([])


def write_outputs(
    out: Path,
    config: Figure3Config,
    params: two_room.TwoRoomParams,
    run: Figure3Run,
    summary: dict[str, Any],
) -> None:
    """figure3.png, pi0_corridor.png, curves.csv, summary.json and README.md in `out`."""
    from distral.files import atomic_write
    from distral.plotting import pyplot, save_figure

    out.mkdir(parents=True, exist_ok=True)
    log_pi0 = run.log_pi0[ARMS.index("distral")]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), width_ratios=(1.4, 1, 1))
    try:
        _draw_curves(axes[0], summary)
        for ax, prev in zip(axes[1:], ("left", "right"), strict=True):
            _draw_corridor(ax, params, log_pi0, prev)
        fig.tight_layout()
        save_figure(fig, out / "figure3.png")
    finally:
        plt.close(fig)
    fig, axes = plt.subplots(2, 1, figsize=(7, 6))
    try:
        for ax, prev in zip(axes, ("left", "right"), strict=True):
            _draw_corridor(ax, params, log_pi0, prev)
        fig.tight_layout()
        save_figure(fig, out / "pi0_corridor.png")
    finally:
        plt.close(fig)

    header = ["iteration"] + [f"{arm}_{k}" for arm in ARMS for k in ("mean", "ci_low", "ci_high")]
    rows = [",".join(header)]
    for i, it in enumerate(summary["distral"]["iteration"]):
        cells = [str(it)] + [
            f"{summary[arm][k][i]:.6g}" for arm in ARMS for k in ("mean", "ci_low", "ci_high")
        ]
        rows.append(",".join(cells))
    atomic_write(out / "curves.csv", "\n".join(rows) + "\n")
    atomic_write(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(out / "README.md", report(summary))


def _fmt(x: float | None) -> str:
    return "never" if x is None else str(x)


def report(summary: dict[str, Any]) -> str:
    """README.md of the output directory: the measured numbers beside the paper's claims."""
    c = summary["checks"]
    cfg = summary["config"]
    d, s = summary["distral"], summary["separately"]
    at = [i for i in (10, 50, 100, 200, 500, 1000) if i <= len(d["mean"])]
    lines = [
        "# Distral Figure 3 (two-room), reproduced",
        "",
        f"`distral reproduce two-room --seeds {summary['seeds']} "
        f"--iterations {cfg['iterations']}`: {cfg['num_tasks']} tasks, layout "
        f"`{cfg['layout']}`, alpha {cfg['alpha']}, beta {cfg['beta']}, discount "
        f"{cfg['discount']}, soft Q-learning rate {cfg['learning_rate']}, "
        f"{cfg['rollouts']} roll-outs of length {cfg['length']} per task per iteration. "
        f"Wall time {summary['wall_seconds']:.1f} s (compile {summary['compile_seconds']:.1f} s).",
        "",
        f"Return averaged over tasks (mean over seeds [95% CI]); optimal {summary['optimal']:.3f}:",
        "",
        "| iteration | Distral | Separately |",
        "|---|---|---|",
    ]
    for i in at:
        k = i - 1
        lines.append(
            f"| {i} | {d['mean'][k]:.3f} [{d['ci_low'][k]:.3f}, {d['ci_high'][k]:.3f}] | "
            f"{s['mean'][k]:.3f} [{s['ci_low'][k]:.3f}, {s['ci_high'][k]:.3f}] |"
        )
    above = c["distral_above_separately_50_500"]
    lines += [
        "",
        "| the paper (Fig. 3) | here |",
        "|---|---|",
        "| Distral learns faster than Separately | Distral's mean is above Separately's at "
        + ("n/a" if above is None else f"{100 * above:.0f}%")
        + " of iterations 50-500; 95% CIs disjoint at iteration 200: "
        + f"{'n/a' if c['ci_separated_at_200'] is None else c['ci_separated_at_200']} |",
        "| Distral gets near the optimum first | first iteration within 0.5 of the optimum: "
        f"Distral {_fmt(c['distral_iteration_within_0.5'])}, Separately "
        f"{_fmt(c['separately_iteration_within_0.5'])} |",
        "| pi_0 in the corridor keeps going the way it came (up/down unlikely) | "
        + ", ".join(
            f"previous {prev}: P(up) + P(down) = {v:.3f}"
            for prev, v in c["corridor_up_down"].items()
        )
        + " |",
        "",
        "pi_0 in the corridor (mean over corridor cells and seeds):",
        "",
        "| previous action | up | down | left | right |",
        "|---|---|---|---|---|",
    ]
    for prev, p in summary["corridor"].items():
        lines.append(f"| {prev} | " + " | ".join(f"{p[a]:.3f}" for a in ACTION_NAMES) + " |")
    lines += ["", "Files: figure3.png, pi0_corridor.png, curves.csv, summary.json."]
    return "\n".join(lines) + "\n"


def reproduce_two_room(config: Figure3Config, out: Path) -> dict[str, Any]:
    """Runs the protocol and writes every output; returns summary.json's content."""
    start = time.perf_counter()
    params = two_room.make_params(
        config.layout, num_tasks=config.num_tasks, goal_seed=config.goal_seed
    )
    if not np.any(np.asarray(params.corridor)):
        raise ConfigError(
            f"layout {config.layout!r} has no corridor cell (free, walls above and below)"
        )
    run = run_figure3(config, params)
    wall = time.perf_counter() - start
    summary = summarise(config, params, run, wall)
    write_outputs(out, config, params, run, summary)
    return summary
