"""The ``autoq`` console script. Each module in this package adds one subcommand through ``register(subparsers)``;
modules named with a leading underscore are helpers, not commands.

Command modules import nothing heavy at module level (the board runs ``autoq board serve`` without torch);
handlers are thin wrappers over library functions and return an exit code. ``main`` turns the failures a user can
cause into one line on stderr: ``AutoQError`` (exit 2), a host-only module missing on the board's base install
(exit 2, naming the ``[host]`` extra), a reader that closed the pipe (``autoq ... | head``: quiet, exit 141, as a
shell reports SIGPIPE) and Ctrl-C (exit 130). ``autoq.host.advice.SettingWarning``s print as
``autoq CMD: warning: ...``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings
from typing import Sequence

from autoq.common.errors import AutoQError

#: Top-level modules that only the ``[host]`` extra installs (setup.py's HOST list, by import name).
HOST_ONLY_MODULES = frozenset({"torch", "onnx", "onnxruntime", "onnxscript", "hls4ml", "sklearn", "scipy", "matplotlib",
                               "tqdm", "PIL"})
HOST_INSTALL = 'pip install "autoq-hil[host]"'
SIGPIPE_EXIT = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoq", description="Kernel-wise mixed-precision search with an FPGA in the loop.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def _warning_printer(command: str, default=warnings.showwarning):
    """``warnings.showwarning`` for one command: setting warnings as one plain line, others as Python prints them."""

    def show(message, category, filename, lineno, file=None, line=None):
        from autoq.host.advice import SettingWarning  # only once a warning is shown

        if issubclass(category, SettingWarning):
            print(f"autoq {command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(args.command)
            code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except AutoQError as exc:
        print(f"autoq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in HOST_ONLY_MODULES:
            raise
        print(f"autoq {args.command}: error: this command needs the workstation packages (module {exc.name!r} is not "
              f"installed): {HOST_INSTALL}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader (`| head`) has seen enough: silence the rest of stdout, including Python's flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        print(f"autoq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
