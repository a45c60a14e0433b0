"""Argument types and options shared by several commands (a helper module: the CLI registers no command from it)."""
from __future__ import annotations

import argparse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_task_arguments(parser: argparse.ArgumentParser, *, positional_model: bool = False, model_default: str | None = "digits") -> None:
    """MODEL (positional or ``--model``), ``--arch`` and ``--data``: what ``autoq.host.tasks.load_task`` takes."""
    model_help = "'digits' (default), a built-in model name, or a .pt state dict with --arch"
    if positional_model:
        parser.add_argument("model", metavar="MODEL", nargs="?", default=model_default, help=model_help)
    else:
        parser.add_argument("--model", default=model_default, help=model_help)
    parser.add_argument("--arch", help="architecture of a .pt/.pth state dict: built-in name or package.module:callable")
    parser.add_argument("--data", metavar="PATH", help="ImageFolder-style directory or .npz (x, y); default: digits data")
