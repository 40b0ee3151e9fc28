"""`ddpm` command line: a thin layer over the Python API.

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; the parser it adds sets
``func`` to a callable taking the parsed namespace and returning an exit code. Any
:class:`ddpm.errors.UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings

from ddpm.errors import UserError

# Sub-command modules, in the order `ddpm --help` lists them.
COMMANDS = ("train", "distill", "sample", "info", "evaluate", "figures", "repro", "convert")


def plain(text: str | None) -> str | None:
    """Docstring markup (reST roles and double back-quotes) as plain text for ``--help``."""
    if not text:
        return text
    text = re.sub(r":(?:mod|func|class|meth|data|attr):`~?([^`]+)`", r"\1", text)
    return text.replace("``", "`")


class _Parser(argparse.ArgumentParser):
    """argparse that reports misuse as a single line (no usage dump) with exit code 2, and shows
    module docstrings used as descriptions without their markup."""

    def __init__(self, *args, **kwargs):
        if "description" in kwargs:
            kwargs["description"] = plain(kwargs["description"])
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line on stderr, without the source line Python prints by default."""
    print(f"ddpm: warning: {message}", file=sys.stderr if file is None else file)


def build_parser() -> argparse.ArgumentParser:
    from ddpm import __version__

    parser = _Parser(prog="ddpm", description="Denoising Diffusion Probabilistic Models")
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
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
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
