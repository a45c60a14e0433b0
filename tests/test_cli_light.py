"""The ``autoq`` CLI imports and parses on the board: every subcommand module registers without the workstation
extras (torch, scipy, onnx, hls4ml, ...), each tried in a fresh interpreter where importing them fails."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import autoq.host.cli

HOST_ONLY = ("torch", "scipy", "onnx", "onnxruntime", "onnxscript", "hls4ml", "sklearn", "matplotlib")
BLOCK = f"import sys\nfor name in {HOST_ONLY!r}: sys.modules[name] = None\n"
COMMAND_MODULES = sorted(info.name for info in pkgutil.iter_modules(autoq.host.cli.__path__) if not info.name.startswith("_"))


def run_without_host_extras(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def registration_errors() -> dict[str, str]:
    """For each command module, the error its import + ``register`` raised without the host extras ('' if none)."""
    code = (
        "import argparse, importlib, json, traceback\n"
        "errors = {}\n"
        f"for name in {COMMAND_MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module(f'autoq.host.cli.{name}').register(argparse.ArgumentParser().add_subparsers())\n"
        "        errors[name] = ''\n"
        "    except Exception:\n"
        "        errors[name] = traceback.format_exc(limit=-3)\n"
        "print(json.dumps(errors))\n"
    )
    out = run_without_host_extras(code)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_module_registers_without_host_extras(registration_errors, module):
    assert registration_errors[module] == "", registration_errors[module]


def test_build_parser_without_host_extras():
    out = run_without_host_extras("from autoq.host.cli import build_parser\nbuild_parser()\n")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("argv", [["board", "serve", "--help"], ["board", "info", "--help"]], ids=["serve", "info"])
def test_board_commands_parse_without_host_extras(argv):
    out = run_without_host_extras(f"from autoq.host.cli import main\nmain({argv!r})\n")
    assert out.returncode == 0 and "usage: autoq board" in out.stdout, out.stderr


@pytest.mark.parametrize("argv", [
    ["inspect", "resnet18"], ["cost", "digits", "--uniform", "4/4"], ["eval", "--uniform", "4/4"],
    ["search", "--episodes", "1"], ["calibrate", "m.csv", "-o", "cal.json"], ["bench", "overlay", "--plot", "b.png"],
], ids=lambda argv: argv[0])
def test_host_commands_on_the_base_install_name_the_extra(tmp_path, argv):
    out = subprocess.run([sys.executable, "-c", BLOCK + f"from autoq.host.cli import main\nsys.exit(main({argv!r}))\n"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and f"autoq {argv[0]}: error: this command needs the workstation" in out.stderr
    assert 'pip install "autoq-hil[host]"' in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv", [["inspect", "resnet18", "--json"], ["cost", "digits", "--uniform", "4/4", "--json"],
                                  ["bench", "overlay"]], ids=lambda argv: argv[0])
def test_a_closed_pipe_ends_quietly(argv):
    """`autoq ... | head`: the reader is gone before the first write (no reader at all here, so it is certain)."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run([sys.executable, "-c", "import sys\nfrom autoq.host.cli import main\nsys.exit(main())\n", *argv],
                             stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (out.returncode, out.stderr) == (141, "")
