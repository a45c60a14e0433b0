"""Skip tests that need hardware or vendor tools, with the reason, unless those are present."""
from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_board = bool(os.environ.get("AUTOQ_BOARD"))
    has_vivado = bool(shutil.which("vivado"))
    for item in items:
        if "board" in item.keywords and not has_board:
            item.add_marker(pytest.mark.skip(reason="needs a PYNQ-Z1: set AUTOQ_BOARD=host:port of `autoq board serve`"))
        if "vivado" in item.keywords and not has_vivado:
            item.add_marker(pytest.mark.skip(reason="needs Vivado on PATH"))


@pytest.fixture
def one_torch_thread():
    """torch on one thread during the test (as ``autoq search`` runs: small networks on a shared machine), the
    session's setting back afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
