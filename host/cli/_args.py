"""Argument types and options shared by several commands (a helper module: the CLI registers no command from it)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


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


def output_file(text: str) -> str:
    """An output file path, checked at parse time (before any work): its folder must exist and be writable, and the
    path must not be a folder. As an argparse ``type``; the text comes back unchanged."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path")
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} is not writable")
    return text


def output_file_or_stdout(text: str) -> str:
    """``-`` (stdout) or an ``output_file``."""
    return text if text == "-" else output_file(text)


def output_dir(text: str) -> str:
    """An output folder, checked at parse time: it may not exist yet (it is created with its parents), but it must
    not be a file and its nearest existing ancestor must be a writable folder."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    ancestor = next(p for p in (path, *path.parents) if p.exists())  # the last parent is "." or "/"
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create folder {text}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text}: folder {ancestor} is not writable")
    return text


def add_task_arguments(parser: argparse.ArgumentParser, *, positional_model: bool = False, model_default: str | None = "digits",
                       shown_default: str | None = None) -> None:
    """MODEL (positional or ``--model``), ``--arch`` and ``--data``: what ``autoq.host.tasks.load_task`` takes.
    ``shown_default`` is the task the help names as default when ``model_default`` is None (decided later)."""
    default = model_default or shown_default or "digits"
    model_help = (f"a bundled task: 'fashion' (Fashion-MNIST) or 'digits' (small, quick); default {default!r}; "
                  "or a built-in model name, or a .pt state dict with --arch")
    if positional_model:
        parser.add_argument("model", metavar="MODEL", nargs="?", default=model_default, help=model_help)
    else:
        parser.add_argument("--model", default=model_default, help=model_help)
    parser.add_argument("--arch", help="architecture of a .pt/.pth state dict: built-in name or package.module:callable")
    parser.add_argument("--data", metavar="PATH", help="ImageFolder-style directory or .npz (x, y), or fashion-mnist[:DIR] "
                        "(Fashion-MNIST's fixed splits; DIR: its IDX files); default: the bundled task's own data")
