"""Cost of the per-episode checkpoint late in a search: the whole history pickled into the checkpoint every
episode (the single-file layout) against the history appended to its sidecar (``CheckpointWriter``). Not a test.

A short AutoQ search on the digits task with the model backend gives a real payload (agent networks, optimisers,
replay buffers, episode records); its records are repeated (as distinct objects) to ``--history`` episodes.

    python tests/benchmarks/bench_checkpoint.py [--episodes 3] [--history 1000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import copy
import io
import tempfile
import time
from pathlib import Path

import torch

from autoq.common.fileio import atomic_write_bytes
from autoq.host.search.checkpoint import CHECKPOINT_NAME, CheckpointWriter, history_path, load_checkpoint
from autoq.host.search.runner import SearchConfig, run_search


def best_of(repeats: int, action) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run_search(SearchConfig(episodes=args.episodes, final_finetune_steps=0), tmp, progress=False)
        payload = load_checkpoint(Path(tmp) / CHECKPOINT_NAME)
        records = payload["history"]
        history = [copy.deepcopy(records[i % len(records)]) for i in range(args.history)]
        payload = {k: v for k, v in payload.items() if k not in ("format", "history_bytes")}

        single = Path(tmp) / "single.pt"

        def save_single() -> None:
            buffer = io.BytesIO()
            torch.save({**payload, "history": history}, buffer)
            atomic_write_bytes(single, buffer.getvalue())

        sidecar = Path(tmp) / "sidecar.pt"
        writer = CheckpointWriter(sidecar)
        writer.save({**payload, "history": history[:-1]})
        resume_from = {**load_checkpoint(sidecar), "history": history[:-1]}

        def save_sidecar() -> None:
            CheckpointWriter(sidecar, resume_from).save({**payload, "history": history})  # appends one record

        t_single, t_sidecar = best_of(args.repeats, save_single), best_of(args.repeats, save_sidecar)
        print(f"checkpoint at episode {args.history} (AutoQ, digits): best of {args.repeats}")
        print(f"  single file      {single.stat().st_size / 1e6:6.2f} MB written  {t_single * 1e3:7.1f} ms")
        print(f"  history sidecar  {sidecar.stat().st_size / 1e6:6.2f} MB written  {t_sidecar * 1e3:7.1f} ms  "
              f"(+ one record appended; sidecar {history_path(sidecar).stat().st_size / 1e6:.2f} MB)")
        print(f"  ratio single / sidecar: {t_single / t_sidecar:.1f}x")


if __name__ == "__main__":
    main()
