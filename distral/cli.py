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

from distral import __version__
from distral.variants import VARIANTS, VariantError, format_table, get_variant

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VariantError as e:
        _fail(str(e))
    return EXIT_USAGE  # unreachable: _fail raises


if __name__ == "__main__":
    sys.exit(main())
