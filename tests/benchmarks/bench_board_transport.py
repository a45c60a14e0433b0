"""Wall time of one measurement per cost backend, side by side: the analytic model, the emulated board in
process, and the same board behind ``autoq board serve`` on loopback TCP and on a pty serial link.

    python tests/benchmarks/bench_board_transport.py [MODEL] [--repeats N]

The emulated board runs the driver, the register-level device and the measurement protocol; TCP and serial add
framing, JSON and the link. Ratios are against the in-process emulated board.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from autoq.common.backend import open_backend
from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.backends.remote import from_uri
from autoq.host.models.resolve import spec_for
from autoq.overlay.board import Board
from autoq.overlay.daemon import Daemon

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from boardkit import PtyMasterLink  # noqa: E402 - the shared test helpers live in tests/


def timed(backend, network, plan, repeats: int) -> float:
    backend.measure(network, plan)  # warm caches and connections
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.measure(network, plan)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="resnet18")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    network = spec_for(args.model)
    rng = np.random.default_rng(0)
    plan = QuantPlan.for_network(
        network, [LayerPlan(l.name, tuple(int(b) for b in rng.integers(2, 9, l.c_out)), 4) for l in network]
    )
    board = Board.emulated()
    daemon = Daemon(board)
    _, port = daemon.listen_tcp("127.0.0.1", 0)
    master, slave = os.openpty()
    link = PtyMasterLink(master)
    daemon.attach_link(link.recv, link.send, crc=True, peer="pty")
    backends = {
        "model": open_backend("model"),
        "emulated (in process)": open_backend("emulated"),
        "tcp loopback": from_uri(f"tcp://127.0.0.1:{port}"),
        "serial pty 115200": from_uri(f"serial://{os.ttyname(slave)}?baud=115200"),
    }
    try:
        results = {name: timed(backend, network, plan, args.repeats) for name, backend in backends.items()}
    finally:
        for backend in backends.values():
            backend.close()
        daemon.shutdown()
        board.close()
        os.close(master)
        os.close(slave)
    base = results["emulated (in process)"]
    print(f"{args.model}: {len(network)} layers, kernel-wise plan, median of {args.repeats} measurements")
    for name, seconds in results.items():
        print(f"  {name:24} {seconds * 1e3:9.1f} ms   x{seconds / base:6.2f} vs in-process emulated")


if __name__ == "__main__":
    main()
