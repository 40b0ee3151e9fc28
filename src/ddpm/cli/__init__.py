"""`ddpm` command line: a thin layer over the Python API.

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; the parser it adds sets
``func`` to a callable taking the parsed namespace and returning an exit code. Any
:class:`ddpm.errors.UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ddpm.errors import UserError

# Sub-command modules, in the order `ddpm --help` lists them.
COMMANDS = ("train", "sample", "info", "evaluate", "figures", "repro", "convert")


class _Parser(argparse.ArgumentParser):
    """argparse that reports misuse as a single line (no usage dump) with exit code 2."""

    def error(self, message):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddpm", description="Denoising Diffusion Probabilistic Models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ddpm.cli.{name}")
        except ModuleNotFoundError as e:  # a sub-command module not written yet
            if e.name != f"ddpm.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
