"""The package graph is a DAG with the board side at the bottom: every module of ``autoq.overlay`` and
``autoq.common`` imports in a fresh interpreter where the workstation packages (``autoq.host``,
``autoq.calibration``, ``autoq.hls``) and the workstation extras cannot be imported at all."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import autoq.common
import autoq.overlay

BLOCKED = ("autoq.host", "autoq.calibration", "autoq.hls", "torch", "scipy", "onnx", "onnxruntime", "sklearn",
           "matplotlib", "hls4ml", "amaranth")
BOARD_MODULES = sorted(
    info.name
    for package in (autoq.common, autoq.overlay)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
)
FINDER = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"board-side import of {{name}}")
        return None
sys.meta_path.insert(0, Block())
"""


def test_board_modules_are_found():
    assert {"autoq.overlay.board", "autoq.overlay.daemon", "autoq.overlay.emulated", "autoq.common.plan"} <= set(BOARD_MODULES)


@pytest.mark.parametrize("module", BOARD_MODULES)
def test_board_module_imports_without_workstation_packages(module):
    code = FINDER + f"import importlib\nimportlib.import_module({module!r})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_blocker_really_blocks():
    code = FINDER + "import autoq.calibration.costmodel\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "board-side import of autoq.calibration" in done.stderr
