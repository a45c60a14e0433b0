"""The ``autoq`` console script. Each module in this package adds one subcommand through ``register(subparsers)``;
modules named with a leading underscore are helpers, not commands.

Command modules import nothing heavy at module level (the board runs ``autoq board serve`` without torch);
handlers are thin wrappers over library functions and return an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from autoq.common.errors import AutoQError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoq", description="Kernel-wise mixed-precision search with an FPGA in the loop.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AutoQError as exc:
        print(f"autoq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
