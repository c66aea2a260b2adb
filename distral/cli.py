"""The `distral` command line.

Bad input is one line on stderr, `distral: error: ...`, and exit code 2, before anything
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from distral import __version__
from distral.config import ConfigError, Figure3Config, TrainConfig, describe_fields
from distral.core.variants import (
    PAPER_VARIANTS,
    VARIANTS,
    VariantError,
    format_table,
    get_variant,
)

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(message)


def _fail(message: str) -> NoReturn:
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
        if args.init_from is not None:
            _fail("--resume DIR continues that run as configured: give no --init-from with it")
        run_dir = Path(args.resume)
        check_run_dir(run_dir, resume=True)
        return load_run_config(run_dir, overrides={"distributed": distributed}), run_dir
    if args.config is None:
        preset = "two_room" if command == "train" else "two_room_distributed"
        _fail(f"a CONFIG file is needed, e.g. experiments/{preset}.yaml (or --resume DIR)")
    overrides: dict = {"variant": args.variant, "distributed": distributed}
    if args.init_from is not None:
        overrides["init_from"] = args.init_from
    if seeds:
        overrides["seeds"] = seeds
    config = load_config(args.config, args.set, overrides)
    if config.init_from is not None:  # as --set or in the file: absolute, as --init-from's
        config = dataclasses.replace(config, init_from=str(Path(config.init_from).absolute()))
    run_dir = Path(args.out) if args.out else _default_run_dir(config.method)
    check_run_dir(run_dir, resume=False)
    return config, run_dir


def _run_in_process(command: str, run_dir: Path, start: Callable[[], Any]) -> Any:
    """`start()`'s result, or the exit code of a run stopped by Ctrl-C (130) or by a
    non-finite value (1), with the line that says how to resume it."""
    from distral.guard import DivergenceError

    # Ctrl-C stops the run even when started with SIGINT ignored (a parent that ignores it,
    # as pytest-xdist's workers do, passes that on through exec), as `distral launch` does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return start()
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: distral {command} --resume {run_dir}", file=sys.stderr)
        return 130
    except DivergenceError as e:
        print(f"distral {command}: error: {e}; resume from the last good one with: distral "
              f"{command} --resume {run_dir}", file=sys.stderr)  # fmt: skip
        return 1


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
    print(f"distral train: {config.method}, seeds {list(config.seeds)}, run directory {run_dir}")
    result = _run_in_process(
        "train",
        run_dir,
        lambda: run(
            config, run_dir, resume=args.resume is not None, progress=not args.quiet,
            trainer=trainer,
        ),
    )  # fmt: skip
    if isinstance(result, int):
        return result
    _print_summary(result.summary)
    print(f"curves: {result.run_dir / 'curves.png'}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from distral.config import load_config, load_run_config
    from distral.distill import Distiller, run
    from distral.rundir import check_run_dir

    seeds = list(_parse_seeds(args.seeds)) if args.seeds is not None else None
    given = {"loss": args.loss, "tau": args.tau}
    distill = {k: v for k, v in given.items() if v is not None}
    if args.resume is not None:
        if args.config is not None or args.set or distill or args.teacher or seeds or args.out:
            _fail(
                "--resume DIR continues that run as configured: give no CONFIG, --set, "
                "--teacher, --loss, --tau, --seeds or --out with it"
            )
        run_dir = Path(args.resume)
        check_run_dir(run_dir, resume=True)
        config = load_run_config(run_dir)
    else:
        if args.config is None:
            _fail("a CONFIG file is needed, e.g. experiments/two_room_distill.yaml (or --resume)")
        # A preset of Ape-X distillation keeps its family; any other file is a student.
        apex = load_config(args.config, args.set).algorithm == "apex_distill"
        algorithm = "apex_distill" if apex else "distill"
        overrides: dict = {"algorithm": algorithm, "distill": distill, "seeds": seeds}
        config = load_config(args.config, args.set, overrides)
        # The file's teachers and --teacher's, by absolute path: a resumed run finds them
        # from any directory.
        given_teachers = [*config.distill.teachers, *(args.teacher or [])]
        teachers = tuple(str(Path(t).absolute()) for t in given_teachers)
        config = dataclasses.replace(
            config, distill=dataclasses.replace(config.distill, teachers=teachers)
        )
        name = f"{algorithm}-{config.distill.loss}"
        run_dir = Path(args.out) if args.out else _default_run_dir(name)
        check_run_dir(run_dir, resume=False)
    if config.env.name != "two_room" or config.algorithm == "apex_distill":
        # the games: actors, Reverb and a learner (the launcher refuses Ape-X on two_room)
        summary = _launch_student(config, run_dir, resume=args.resume is not None)
        if isinstance(summary, int):
            return summary
        _print_student(summary)
        print(f"learner steps: {summary['learner_steps']}; curves: {run_dir / 'curves.png'}")
        return 0
    from distral.envs.two_room import LayoutError

    try:
        distiller = Distiller(config)  # reads the teachers: a bad one is a one-line error
    except LayoutError as e:
        _fail(str(e))
    print(
        f"distral distill: {config.distill.loss} from {len(config.distill.teachers)} teacher "
        f"run(s), seeds {list(config.seeds)}, run directory {run_dir}"
    )
    result = _run_in_process(
        "distill",
        run_dir,
        lambda: run(
            config, run_dir, resume=args.resume is not None, progress=not args.quiet,
            distiller=distiller,
        ),
    )  # fmt: skip
    if isinstance(result, int):
        return result
    _print_student(result.summary)
    print(f"curves: {result.run_dir / 'curves.png'}")
    return 0


def _launch_student(config: Any, run_dir: Path, *, resume: bool) -> dict | int:
    """`distral distill` on the games: `distral launch`'s processes (local) with the
    student's actors; its summary, or the exit code of a failed or stopped run."""
    d = config.distributed
    print(
        f"distral distill: {config.distill.loss} from {len(config.distill.teachers)} teacher "
        f"run(s), seed {config.seeds[0]}, {d.actors_per_task} actor(s) per task, run "
        f"directory {run_dir}",
        flush=True,
    )
    return _launch_or_code("distill", config, run_dir, resume=resume)


def _launch_or_code(command: str, config: Any, run_dir: Path, **kwargs: Any) -> dict | int:
    """`launch.launch(config, run_dir, **kwargs)`'s summary, or the exit code of a run that
    failed (1) or was stopped (130), with the line that says how to resume it."""
    from distral.distributed.launch import LaunchError, launch
    from distral.envs.two_room import LayoutError

    try:
        return launch(config, run_dir, **kwargs)
    except LayoutError as e:
        _fail(str(e))
    except LaunchError as e:
        print(f"distral {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopped; resume with: distral {command} --resume {run_dir}", file=sys.stderr)
        return 130


def _print_student(summary: dict) -> None:
    """The run's summary, then the student's and the teachers' returns per task."""
    _print_summary(summary)
    print("task  student  teacher")
    for name, a, b in zip(
        summary["tasks"],
        summary["student_returns_per_task"],
        summary["teacher_returns_per_task"],
        strict=True,
    ):
        print(f"{name}  {a:.3f}  {b:.3f}")
    print(
        f"student parameters {summary['student_params']:,}, teachers' {summary['teacher_params']:,}"
    )


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
    d = config.distributed
    print(
        f"distral launch: {config.method}, seed {config.seeds[0]}, backend {args.backend}, "
        f"{d.actors_per_task} actor(s) per task, run directory {run_dir}",
        flush=True,
    )
    summary = _launch_or_code(
        "launch",
        config,
        run_dir,
        resume=args.resume is not None,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    if isinstance(summary, int):
        return summary
    (_print_student if "student_returns_per_task" in summary else _print_summary)(summary)
    print(f"learner steps: {summary['learner_steps']}; curves: {Path(run_dir) / 'curves.png'}")
    return 0


def _cmd_replay_server(args: argparse.Namespace) -> int:
    import signal
    import threading

    from distral.config import load_config
    from distral.distill import experiment_and_teachers
    from distral.distributed.launch import check_port_free

    config = load_config(args.config, args.set)
    if not 1 <= args.port < 65536:
        _fail(f"--port {args.port} must lie in [1, 65535]")
    check_port_free(args.port)
    from distral.distributed import replay
    from distral.distributed.replay import make_replay_tables

    # A student's tables hold its teachers' features: their sizes come from their runs.
    experiment, _ = experiment_and_teachers(config)
    server = replay.start_server(make_replay_tables(experiment), port=args.port)
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
    from distral.config import load_config, read_yaml

    read_yaml(args.config)  # a missing or broken CONFIG is reported before anything else
    named = {"paper": list(PAPER_VARIANTS), "all": list(VARIANTS)}
    variants = named.get(args.variants) or args.variants.split(",")
    grid = None
    if args.grid is not None:
        if args.grid == "default":
            if load_config(args.config, args.set).algorithm == "distill":
                _fail("--grid alone is Distral's beta x learning-rate grid: a distill config "
                      "needs its settings, e.g. --grid distill.loss=nll,mse,kl")  # fmt: skip
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
        f"distral compare: {len({s.variant for s in specs})} method(s) x {args.seeds} seeds, "
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

    if args.gates:
        from distral.gates import plot_gates

        if len(args.run_dirs) != 1:
            _fail(f"--gates takes one RUN_DIR, got {len(args.run_dirs)}")
        try:
            print(plot_gates(args.run_dirs[0], args.out, steps_per_task=args.gate_steps))
        except (PlotError, ConfigError) as e:
            _fail(str(e))
        return 0
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


Argument = tuple[tuple[str, ...], dict[str, Any]]


def _arg(*flags: str, **options: Any) -> Argument:
    """One `add_argument` call, as data: its flags and its keyword options."""
    return flags, options


def _set_arg(help: str | None) -> Argument:
    return _arg("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


class _Command(NamedTuple):
    """One subcommand: its `add_parser` texts, its arguments and the function it runs."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    arguments: list[Argument]
    fields: tuple[str, type] | None = None  # --help epilog: (heading, config class)


_ONE_OF = f"one of: {', '.join(VARIANTS)}"
_VARIANT = _arg("--variant", help=_ONE_OF)
_RUN_OUT = _arg(
    "--out", help="run directory (default runs/METHOD-TIMESTAMP, METHOD the variant or family)"
)
_RUN_SET = _set_arg("override a config field (repeatable)")
_RESUME = _arg("--resume", metavar="DIR", help="continue a stopped run from its checkpoint")
_INIT_FROM = _arg(
    "--init-from",
    metavar="RUN_DIR",
    help="transfer: start h from a finished run's (init_from; --set freeze_distilled=true "
    "keeps it fixed as the KL prior)",
)
_FIELDS = "config fields (YAML keys; --set KEY=VALUE with dotted keys, e.g. --set {})"
_GRID_HELP = (
    "hyperparameter grid, e.g. beta=10,30,100,lr=3e-4,1e-3,3e-3 (keys: config fields, lr = "
    "learning_rate; beta applies to the Distral rows, entropy_cost to the A3C rows). Without "
    "SPEC: beta=10,30,100 x lr = the config's learning_rate x 1/3, 1, 3; the A3C rows "
    "entropy_cost=0.003,0.01,0.03 x the same learning rates"
)

_COMMANDS = (
    _Command(
        "variants",
        _cmd_variants,
        "list the seven algorithm variants, or resolve one with overrides",
        "Without NAME: the seven variants of the paper (Table 1) and their parameters. With "
        "NAME: that variant after the given overrides.",
        [
            _arg("name", nargs="?", help=_ONE_OF),
            _arg("--alpha", type=float, help="KL share c_KL/(c_KL+c_Ent), in [0, 1]"),
            _arg("--beta", type=float, help="inverse regularisation 1/(c_KL+c_Ent), > 0"),
            _arg("--entropy-cost", type=float, help="A3C entropy-bonus cost, >= 0"),
            _arg("--json", action="store_true", help="print JSON instead of a table"),
        ],
    ),
    _Command(
        "train",
        _cmd_train,
        "train a variant on a pure-JAX environment in one jitted program",
        "The single-process trainer: rollouts and updates in one jit, seeds vmapped. Writes "
        "config.yaml, metrics.csv, tb/, checkpoints/, curves.png and summary.json into the "
        "run directory.",
        [
            _arg("config", nargs="?", help="YAML config, e.g. experiments/two_room.yaml"),
            _VARIANT,
            _arg("--seeds", help="comma-separated seeds run together, e.g. 0,1,2"),
            _RUN_OUT,
            _RUN_SET,
            _RESUME,
            _INIT_FROM,
            _arg("--quiet", action="store_true", help="no progress bar"),
        ],
        (_FIELDS.format("env.num_tasks=4"), TrainConfig),
    ),
    _Command(
        "launch",
        _cmd_launch,
        "the distributed run: Reverb server, actor processes, jitted learner",
        "Starts a learner (with the Reverb server and the evaluator), actors (one task each) "
        "and, with distributed.evaluator=process, an evaluator process; supervises them (dead "
        "actors and evaluators are restarted; Ctrl-C stops everything and writes a "
        "checkpoint) and writes the run directory of distral train.",
        [
            _arg(
                "config", nargs="?", help="YAML config, e.g. experiments/two_room_distributed.yaml"
            ),
            _VARIANT,
            _arg("--seed", type=int, help="the run's seed (one per launch)"),
            _arg("--actors-per-task", type=int, metavar="K", help="actor processes per task"),
            _arg("--backend", default="local", help="local (default) or ray"),
            _arg("--ray-address", metavar="A", help="host:port of a Ray cluster (ray backend)"),
            _arg("--max-learner-steps", type=int, metavar="N", help="stop after N learner steps"),
            _RUN_OUT,
            _RUN_SET,
            _RESUME,
            _INIT_FROM,
        ],
        (_FIELDS.format("distributed.batch_size=16"), TrainConfig),
    ),
    _Command(
        "distill",
        _cmd_distill,
        "distil finished runs (teachers) into one multitask student",
        "Policy Distillation (Rusu et al., 2016: nll, mse, kl at temperature tau) and "
        "Actor-Mimic (Parisotto et al., 2016) on a pure-JAX environment, in one jitted "
        "program: the student acts (distill.behaviour), the teachers label every state, one "
        "replay per task, updates interleave the tasks. Teachers are run directories of "
        "distral train or launch, matched to the student's tasks by name. Writes the run "
        "directory of distral train, with per-task student and teacher returns in "
        "summary.json. On the games (MinAtar, Atari) the student runs through distral "
        "launch's processes; a preset with algorithm apex_distill "
        "(experiments/minatar_apex_distill.yaml) is Ape-X policy distillation: prioritised "
        "replay with KL priorities, optionally beside the student's own DQN loss.",
        [
            _arg("config", nargs="?", help="YAML config, e.g. experiments/two_room_distill.yaml"),
            _arg(
                "--teacher", action="append", metavar="RUN_DIR", help="a teacher run (repeatable)"
            ),
            _arg("--loss", help="nll, mse, kl or actor_mimic (distill.loss)"),
            _arg("--tau", type=float, help="teacher temperature of kl and actor_mimic"),
            _arg("--seeds", help="comma-separated seeds run together, e.g. 0,1,2"),
            _arg("--out", help="run directory (default runs/distill-LOSS-TIMESTAMP)"),
            _RUN_SET,
            _RESUME,
            _arg("--quiet", action="store_true", help="no progress bar"),
        ],
        (_FIELDS.format("distill.batch_per_task=64"), TrainConfig),
    ),
    _Command(
        "replay-server",
        _cmd_replay_server,
        "a standalone Reverb server with the tables of a config",
        "Runs the Reverb tables of CONFIG on --port until Ctrl-C; point a launch at it with "
        "--set distributed.replay_address=HOST:PORT.",
        [
            _arg("config", help="YAML config the tables are built for"),
            _arg("--port", type=int, required=True, help="TCP port to listen on"),
            _set_arg(None),
        ],
    ),
    _Command(
        "compare",
        _cmd_compare,
        "run variants x seeds (x a hyperparameter grid) and aggregate them",
        "Runs each variant for N seeds through distral train (--mode train, pure-JAX "
        "environments) or distral launch (--mode launch), into OUT/runs/; a re-run skips "
        "finished runs and resumes stopped ones. Writes curves.png, table.md, table.csv and "
        "summary.json (final return, AUC, env steps to a threshold, IQM with "
        "stratified-bootstrap CIs, probability of improvement; rliable), and with --grid "
        "grid.csv and robustness.png.",
        [
            _arg("config", help="YAML config, e.g. experiments/two_room.yaml"),
            _arg(
                "--variants",
                default="paper",
                help="paper (default: the paper's seven), all (with the gated ones) or "
                "comma-separated variant names",
            ),
            _arg("--seeds", type=int, default=5, metavar="N", help="seeds per run (default 5)"),
            _arg("--grid", nargs="?", const="default", metavar="SPEC", help=_GRID_HELP),
            _arg("--mode", default="train", help="train (default) or launch"),
            _arg("--threshold", type=float, help="return threshold (default optimum - 0.3)"),
            _arg("--out", help="output directory (default runs/compare-TIMESTAMP)"),
            _set_arg("override a config field"),
            _arg("--quiet", action="store_true", help="no progress bars"),
        ],
    ),
    _Command(
        "reproduce",
        _cmd_reproduce,
        "regenerate a figure of the paper (two-room: Figure 3)",
        "two-room: the paper's Figure 3. Tabular Distral (alpha = 1, KL only) against "
        "Separately (soft Q-learning per task, no pi_0) on the two-room tasks, all seeds in "
        "one jitted program, plus pi_0 in the corridor. Writes figure3.png, "
        "pi0_corridor.png, curves.csv, summary.json and README.md into --out.",
        [
            _arg("experiment", metavar="EXPERIMENT", help="two-room"),
            _arg("--seeds", type=int, metavar="N", help="number of seeds (default 10)"),
            _arg("--iterations", type=int, metavar="I", help="iterations (default 1000)"),
            _arg("--out", help="output directory (default runs/reproduce-two-room-TIMESTAMP)"),
            _set_arg("override a setting"),
        ],
        ("settings (--set KEY=VALUE)", Figure3Config),
    ),
    _Command(
        "plot",
        _cmd_plot,
        "learning curves (mean and 95%% band over seeds) of one or more runs",
        "Learning curves from run directories: mean over seeds with a 95%% confidence band, "
        "and the optimal return.",
        [
            _arg("run_dirs", nargs="+", metavar="RUN_DIR"),
            _arg("--out", help="output PNG (default RUN_DIR/COLUMN.png of the first run)"),
            _arg("--column", default="mean_return", help="metrics.csv column to plot"),
            _arg(
                "--per-task",
                action="store_true",
                help="one panel per task (game) of the COLUMN_task_i columns: return (the "
                "default here), eval_return, pi0_eval_return, kl",
            ),
            _arg(
                "--gates",
                action="store_true",
                help="a gated run (variants gated, gated_task): heat map of the mean gate "
                "activation per task and sub-policy of its final policy (RUN_DIR/gates.png "
                "and gates.csv)",
            ),
            _arg(
                "--gate-steps",
                type=int,
                default=1000,
                metavar="N",
                help="--gates: agent steps played on each task (default 1000)",
            ),
        ],
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """`distral`'s parser: one subparser per `_COMMANDS` entry; errors are one line."""
    parser = _Parser(
        prog="distral",
        description="Distral: robust multitask RL (Teh et al., 2017) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"distral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in _COMMANDS:
        layout: dict[str, Any] = {}
        if command.fields is not None:  # the field list keeps its own line breaks
            heading, cls = command.fields
            layout = dict(
                epilog=f"{heading}:\n" + describe_fields(cls),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        p = sub.add_parser(
            command.name, help=command.help, description=command.description, **layout
        )
        for flags, options in command.arguments:
            p.add_argument(*flags, **options)
        p.set_defaults(func=command.run)
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
