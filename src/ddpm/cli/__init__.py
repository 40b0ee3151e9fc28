"""`ddpm` command line: a thin layer over the Python API.

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; the parser it adds sets
``func`` to a callable taking the parsed namespace and returning an exit code. :func:`main` is the one
place where failures a user can fix become one line on stderr and exit code 2: any
:class:`ddpm.errors.UserError`, any ``OSError`` (full disk, read-only or missing folder, a name too
long, a path through a file, …: the line names the path and what to do, see
:func:`ddpm.outputs.describe_os_error`) and running out of memory. A closed pipe (``ddpm info RUN |
head -1``) ends the command quietly with the status a process killed by SIGPIPE has (141), as Unix
tools do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

from ddpm.errors import UserError

# Sub-command modules, in the order `ddpm --help` lists them.
COMMANDS = ("train", "distill", "sample", "info", "plot", "evaluate", "figures", "repro", "convert", "export")


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


SIGPIPE_STATUS = 128 + 13  # what a shell reports for a process killed by SIGPIPE


def _quiet_broken_pipe() -> int:
    """stdout's reader has gone: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return SIGPIPE_STATUS


def main(argv: list[str] | None = None) -> int:
    import shlex

    from ddpm import outputs

    parser = build_parser()
    args = parser.parse_args(argv)
    outputs.CURRENT_COMMAND = "ddpm " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    name = f"ddpm {args.command}"
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        from ddpm.outputs import describe_os_error

        print(f"{name}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{name}: error: out of memory; use fewer images (-n) or a smaller --batch-size", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if type(e).__name__ != "OutOfMemoryError":  # torch's CUDA/MPS OOM; any other RuntimeError is a bug
            raise
        print(f"{name}: error: the device ran out of memory ({str(e).splitlines()[0][:120]}); use a smaller "
              "--batch-size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
