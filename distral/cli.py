"""The `distral` command line.

Bad input is one line on stderr, `distral: error: ...`, and exit code 2, before anything
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distral import __version__
from distral.config import ConfigError, describe_fields
from distral.core.variants import VARIANTS, VariantError, format_table, get_variant

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(message)


def _fail(message: str) -> None:
    print(f"distral: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _cmd_variants(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.alpha is not None or args.beta is not None or args.entropy_cost is not None:
            _fail("--alpha/--beta/--entropy-cost need a variant NAME")
        if args.json:
            print(json.dumps({n: dataclasses.asdict(v) for n, v in VARIANTS.items()}, indent=2))
        else:
            print(format_table())
        return 0
    variant = get_variant(
        args.name, alpha=args.alpha, beta=args.beta, entropy_cost=args.entropy_cost
    )
    fields = dataclasses.asdict(variant)
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        width = max(map(len, fields))
        for key, value in fields.items():
            print(f"{key.ljust(width)}  {value}")
    return 0


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        _fail(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2")
    if not seeds:
        _fail(f"--seeds {text!r} names no seed")
    return seeds


def _config_and_run_dir(
    args: argparse.Namespace, command: str, seeds: list[int] | None, distributed: dict
) -> tuple[Any, Path]:
    """The config and run directory of `distral train` / `distral launch`: a run to resume
    as it was configured (only `distributed` settings may change), or a new one from CONFIG
    into a missing or empty directory. Errors are one line, before any file is written."""
    from distral.config import load_config, load_run_config
    from distral.rundir import check_run_dir

    seed_flag = "--seeds" if command == "train" else "--seed"
    if args.resume is not None:
        if args.config is not None or args.set or args.variant or seeds or args.out:
            _fail(
                "--resume DIR continues that run as configured: give no CONFIG, --set, "
                f"--variant, {seed_flag} or --out with it"
            )
        run_dir = Path(args.resume)
        check_run_dir(run_dir, resume=True)
        return load_run_config(run_dir, overrides={"distributed": distributed}), run_dir
    if args.config is None:
        preset = "two_room" if command == "train" else "two_room_distributed"
        _fail(f"a CONFIG file is needed, e.g. experiments/{preset}.yaml (or --resume DIR)")
    overrides: dict = {"variant": args.variant, "distributed": distributed}
    if seeds:
        overrides["seeds"] = seeds
    config = load_config(args.config, args.set, overrides)
    run_dir = Path(args.out) if args.out else _default_run_dir(config.variant)
    check_run_dir(run_dir, resume=False)
    return config, run_dir


def _cmd_train(args: argparse.Namespace) -> int:
    seeds = list(_parse_seeds(args.seeds)) if args.seeds is not None else None
    config, run_dir = _config_and_run_dir(args, "train", seeds, {})
    from distral.envs.two_room import LayoutError
    from distral.train import Trainer, run

    # Everything is checked and built before the first file is written.
    try:
        trainer = Trainer(config)
    except LayoutError as e:
        _fail(str(e))
    print(f"distral train: {config.variant}, seeds {list(config.seeds)}, run directory {run_dir}")
    try:
        result = run(
            config,
            run_dir,
            resume=args.resume is not None,
            progress=not args.quiet,
            trainer=trainer,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: distral train --resume {run_dir}", file=sys.stderr)
        return 130
    _print_summary(result.summary)
    print(f"curves: {result.run_dir / 'curves.png'}")
    return 0


def _timestamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def _default_run_dir(variant: str) -> Path:
    return Path("runs") / f"{variant}-{_timestamp()}"


def _fmt3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _print_summary(summary: dict) -> None:
    rows = [("seed", "mean return", "optimal", "env steps/task", "wall s")]
    for seed, ret in summary["final_mean_return_per_seed"].items():
        rows.append(
            (
                seed,
                _fmt3(ret),
                _fmt3(summary["optimal_mean_return"]),
                f"{summary['env_steps_per_task']:,}",
                f"{summary['wall_seconds']:.1f}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))


def _cmd_launch(args: argparse.Namespace) -> int:
    distributed = {
        k: v
        for k, v in (
            ("actors_per_task", args.actors_per_task),
            ("max_learner_steps", args.max_learner_steps),
        )
        if v is not None
    }
    seeds = [args.seed] if args.seed is not None else None
    config, run_dir = _config_and_run_dir(args, "launch", seeds, distributed)
    from distral.distributed.launch import LaunchError, launch
    from distral.envs.two_room import LayoutError

    d = config.distributed
    print(
        f"distral launch: {config.variant}, seed {config.seeds[0]}, backend {args.backend}, "
        f"{d.actors_per_task} actor(s) per task, run directory {run_dir}",
        flush=True,
    )
    try:
        summary = launch(
            config,
            run_dir,
            resume=args.resume is not None,
            backend=args.backend,
            ray_address=args.ray_address,
        )
    except LayoutError as e:
        _fail(str(e))
    except LaunchError as e:
        print(f"distral launch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopped; resume with: distral launch --resume {run_dir}", file=sys.stderr)
        return 130
    _print_summary(summary)
    print(f"learner steps: {summary['learner_steps']}; curves: {Path(run_dir) / 'curves.png'}")
    return 0


def _cmd_replay_server(args: argparse.Namespace) -> int:
    import signal
    import threading

    from distral.config import load_config
    from distral.distributed.launch import check_port_free
    from distral.experiment import make_experiment

    config = load_config(args.config, args.set)
    if not 1 <= args.port < 65536:
        _fail(f"--port {args.port} must lie in [1, 65535]")
    check_port_free(args.port)
    from distral.distributed import replay
    from distral.distributed.replay import make_replay_tables

    server = replay.start_server(make_replay_tables(make_experiment(config)), port=args.port)
    print(
        f"distral replay-server: listening on port {server.port} (all interfaces, no "
        f"authentication: keep it on a private network). Use it with "
        f"--set distributed.replay_address=HOST:{server.port}; Ctrl-C stops it.",
        flush=True,
    )
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from distral.config import Figure3Config, load_config
    from distral.reproduce import reproduce_two_room
    from distral.rundir import check_run_dir

    if args.experiment != "two-room":
        _fail(f"unknown experiment {args.experiment!r}; valid: two-room")
    overrides = {"seeds": args.seeds, "iterations": args.iterations}
    config = load_config(None, args.set, overrides, cls=Figure3Config)
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-two-room-{_timestamp()}"
    check_run_dir(out, resume=False)
    from distral.envs.two_room import LayoutError

    print(
        f"distral reproduce two-room: {config.seeds} seeds x {config.iterations} iterations, "
        f"Distral and Separately, output {out}",
        flush=True,
    )
    try:
        reproduce_two_room(config, out)
    except LayoutError as e:
        _fail(str(e))
    print((out / "README.md").read_text(), end="")
    print(f"figure: {out / 'figure3.png'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from distral.compare import compare, default_grid, parse_grid
    from distral.config import read_yaml

    read_yaml(args.config)  # a missing or broken CONFIG is reported before anything else
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    grid = None
    if args.grid is not None:
        if args.grid == "default":
            grid = default_grid(args.config, args.set)
        else:
            grid = parse_grid(args.grid)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{_timestamp()}"
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} is a file, not a directory")
    from distral.compare import CompareError, check_out, plan

    # Every run's config and directory is checked before the first one starts.
    specs = plan(args.config, args.set, variants, args.seeds, grid, args.mode, out)
    check_out(specs, args.mode)
    print(
        f"distral compare: {len(variants)} variant(s) x {args.seeds} seeds, "
        f"{len(specs)} setting(s), mode {args.mode}, output {out}",
        flush=True,
    )
    try:
        compare(
            args.config,
            out,
            variants=variants,
            seeds=args.seeds,
            grid=grid,
            mode=args.mode,
            sets=args.set,
            threshold=args.threshold,
            progress=not args.quiet,
        )
    except CompareError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print((out / "table.md").read_text(), end="")
    print(f"curves: {out / 'curves.png'}; table: {out / 'table.csv'}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from distral.plotting import PlotError, plot_per_task, plot_runs

    if args.per_task:
        column = "return" if args.column == "mean_return" else args.column
        name = f"{column}_per_task.png"
    else:
        column, name = args.column, f"{args.column}.png"
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / name
    try:
        if args.per_task:
            path = plot_per_task(args.run_dirs, out, column=column)
        else:
            path = plot_runs(args.run_dirs, out, column=column)
    except PlotError as e:
        _fail(str(e))
    print(path)
    return 0


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--set and --resume, shared by `train` and `launch`."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    p.add_argument("--resume", metavar="DIR", help="continue a stopped run from its checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distral",
        description="Distral: robust multitask RL (Teh et al., 2017) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"distral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "variants",
        help="list the seven algorithm variants, or resolve one with overrides",
        description="Without NAME: the seven variants of the paper (Table 1) and their "
        "parameters. With NAME: that variant after the given overrides.",
    )
    p.add_argument("name", nargs="?", help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--alpha", type=float, help="KL share c_KL/(c_KL+c_Ent), in [0, 1]")
    p.add_argument("--beta", type=float, help="inverse regularisation 1/(c_KL+c_Ent), > 0")
    p.add_argument("--entropy-cost", type=float, help="A3C entropy-bonus cost, >= 0")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_variants)

    p = sub.add_parser(
        "train",
        help="train a variant on a pure-JAX environment in one jitted program",
        description="The single-process trainer: rollouts and updates in one jit, seeds "
        "vmapped. Writes config.yaml, metrics.csv, tb/, checkpoints/, curves.png and "
        "summary.json into the run directory.",
        epilog="config fields (YAML keys; --set KEY=VALUE with dotted keys, e.g. "
        "--set env.num_tasks=4):\n" + describe_fields(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config, e.g. experiments/two_room.yaml")
    p.add_argument("--variant", help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", help="comma-separated seeds run together, e.g. 0,1,2")
    p.add_argument("--out", help="run directory (default runs/VARIANT-TIMESTAMP)")
    _add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "launch",
        help="the distributed run: Reverb server, actor processes, jitted learner",
        description="Starts a learner (with the Reverb server and the evaluator), actors "
        "(one task each) and, with distributed.evaluator=process, an evaluator process; "
        "supervises them (dead actors and evaluators are restarted; Ctrl-C stops everything "
        "and writes a checkpoint) and writes the run directory of distral train.",
        epilog="config fields (YAML keys; --set KEY=VALUE with dotted keys, e.g. "
        "--set distributed.batch_size=16):\n" + describe_fields(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config", nargs="?", help="YAML config, e.g. experiments/two_room_distributed.yaml"
    )
    p.add_argument("--variant", help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, help="the run's seed (one per launch)")
    p.add_argument("--actors-per-task", type=int, metavar="K", help="actor processes per task")
    p.add_argument("--backend", default="local", help="local (default) or ray")
    p.add_argument("--ray-address", metavar="A", help="host:port of a Ray cluster (ray backend)")
    p.add_argument("--max-learner-steps", type=int, metavar="N", help="stop after N learner steps")
    p.add_argument("--out", help="run directory (default runs/VARIANT-TIMESTAMP)")
    _add_run_arguments(p)
    p.set_defaults(func=_cmd_launch)

    p = sub.add_parser(
        "replay-server",
        help="a standalone Reverb server with the tables of a config",
        description="Runs the Reverb tables of CONFIG on --port until Ctrl-C; point a "
        "launch at it with --set distributed.replay_address=HOST:PORT.",
    )
    p.add_argument("config", help="YAML config the tables are built for")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_replay_server)

    p = sub.add_parser(
        "compare",
        help="run variants x seeds (x a hyperparameter grid) and aggregate them",
        description="Runs each variant for N seeds through distral train (--mode train, "
        "pure-JAX environments) or distral launch (--mode launch), into OUT/runs/; a re-run "
        "skips finished runs and resumes stopped ones. Writes curves.png, table.md, "
        "table.csv and summary.json (final return, AUC, env steps to a threshold, IQM with "
        "stratified-bootstrap CIs, probability of improvement; rliable), and with --grid "
        "grid.csv and robustness.png.",
    )
    p.add_argument("config", help="YAML config, e.g. experiments/two_room.yaml")
    p.add_argument(
        "--variants", default="all", help="all (default) or comma-separated variant names"
    )
    p.add_argument("--seeds", type=int, default=5, metavar="N", help="seeds per run (default 5)")
    p.add_argument(
        "--grid",
        nargs="?",
        const="default",
        metavar="SPEC",
        help="hyperparameter grid, e.g. beta=10,30,100,lr=3e-4,1e-3,3e-3 (keys: config "
        "fields, lr = learning_rate; beta applies to the Distral rows, entropy_cost to the "
        "A3C rows). Without SPEC: beta=10,30,100 x lr = the config's learning_rate x 1/3, "
        "1, 3; the A3C rows entropy_cost=0.003,0.01,0.03 x the same learning rates",
    )
    p.add_argument("--mode", default="train", help="train (default) or launch")
    p.add_argument("--threshold", type=float, help="return threshold (default optimum - 0.3)")
    p.add_argument("--out", help="output directory (default runs/compare-TIMESTAMP)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_compare)

    from distral.config import Figure3Config

    p = sub.add_parser(
        "reproduce",
        help="regenerate a figure of the paper (two-room: Figure 3)",
        description="two-room: the paper's Figure 3. Tabular Distral (alpha = 1, KL only) "
        "against Separately (soft Q-learning per task, no pi_0) on the two-room tasks, all "
        "seeds in one jitted program, plus pi_0 in the corridor. Writes figure3.png, "
        "pi0_corridor.png, curves.csv, summary.json and README.md into --out.",
        epilog="settings (--set KEY=VALUE):\n" + describe_fields(Figure3Config),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", metavar="EXPERIMENT", help="two-room")
    p.add_argument("--seeds", type=int, metavar="N", help="number of seeds (default 10)")
    p.add_argument("--iterations", type=int, metavar="I", help="iterations (default 1000)")
    p.add_argument("--out", help="output directory (default runs/reproduce-two-room-TIMESTAMP)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "plot",
        help="learning curves (mean and 95%% band over seeds) of one or more runs",
        description="Learning curves from run directories: mean over seeds with a 95%% "
        "confidence band, and the optimal return.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="output PNG (default RUN_DIR/COLUMN.png of the first run)")
    p.add_argument("--column", default="mean_return", help="metrics.csv column to plot")
    p.add_argument(
        "--per-task",
        action="store_true",
        help="one panel per task (game) of the COLUMN_task_i columns: return (the default "
        "here), eval_return, pi0_eval_return, kl",
    )
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (VariantError, ConfigError) as e:
        _fail(str(e))
    return EXIT_USAGE  # unreachable: _fail raises


if __name__ == "__main__":
    sys.exit(main())
