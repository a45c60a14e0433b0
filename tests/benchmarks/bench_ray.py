"""Wall time of the same batched search on 1, 2 and 3 boards, side by side: ``autoq board serve --emulate
--delay-ms D`` daemons on loopback, the pool's boards as Ray actors on a local Ray instance, accuracy on Ray workers.

    python tests/benchmarks/bench_ray.py [--episodes N] [--delay-ms D] [--batch K] [--budget 0.8x] [--boards 1,2,3] [--no-ray]

Every run proposes ``--batch`` plans per learning step (default 3), so the runs are the same search (the script checks
that their histories are equal) and only the number of boards measuring them differs. ``wall`` is the whole
``run_search`` (task, Ray workers, search, results; no final fine-tune); ``search`` is the span of the trace, first
measurement to last. The ratio is against the first board count. ``--no-ray`` measures the same with threads.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def serve(delay_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", "from autoq.host.cli import main; raise SystemExit(main())", "board", "serve",
                                "--emulate", "--tcp", "127.0.0.1:0", "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    found = re.search(r"tcp (127\.0\.0\.1:\d+)", process.stdout.readline() if process.stdout else "")
    if not found:
        process.kill()
        raise SystemExit("autoq board serve --emulate did not start")
    return process, f"tcp://{found.group(1)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--budget", default="0.8x", help="latency budget (its enforcement sets the measurements an episode)")
    parser.add_argument("--boards", default="1,2,3")
    parser.add_argument("--agent", default="autoq")
    parser.add_argument("--no-ray", action="store_true", help="threads instead of Ray")
    args = parser.parse_args()
    counts = [int(n) for n in args.boards.split(",")]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    warnings.simplefilter("ignore")

    import torch

    from autoq.host.search.parallel import RayOptions
    from autoq.host.search.rewards import BudgetSpec, RewardSetting
    from autoq.host.search.runner import SearchConfig, run_search
    from autoq.host.search.sensitivity import SENSITIVITY_NAME
    from autoq.host.traces import TraceStore

    torch.set_num_threads(1)
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    boards = [serve(args.delay_ms) for _ in range(max(counts))]
    reward = RewardSetting.resource_constrained(BudgetSpec.parse("latency", args.budget))
    rows, histories = [], []
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        for n in counts:
            out = work / f"boards{n}"
            out.mkdir()
            if (work / SENSITIVITY_NAME).exists():  # the task's sensitivity, estimated by the first run, is no board work
                shutil.copy(work / SENSITIVITY_NAME, out / SENSITIVITY_NAME)
            config = SearchConfig(agent=args.agent, model="digits", episodes=args.episodes, reward=reward, final_finetune_steps=0,
                                  batch=args.batch, backend="pool:" + ",".join(uri for _, uri in boards[:n]))
            start = time.perf_counter()
            result = run_search(config, out, record=out / "trace.sqlite", progress=False, ray=None if args.no_ray else RayOptions())
            wall = time.perf_counter() - start
            shutil.copy(out / SENSITIVITY_NAME, work / SENSITIVITY_NAME)
            with TraceStore(out / "trace.sqlite", "r") as store:
                records = list(store.records())
            per_board = [sum(r.backend_uri == uri for r in records) for _, uri in boards[:n]]
            rows.append((n, wall, records[-1].recorded_at - records[0].recorded_at, len(records), per_board))
            histories.append([(r.plan.hash, r.accuracy, r.reward) for r in result.records])
    finally:
        for process, _ in boards:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.agent}, digits, {args.episodes} episodes, batch {args.batch}, latency budget {args.budget}, "
          f"--delay-ms {args.delay_ms:g}, {'threads' if args.no_ray else 'Ray (local, num_cpus=2)'}; load {os.getloadavg()[0]:.1f}")
    print(f"{'boards':>6} {'wall s':>8} {'ratio':>6} {'search s':>9} {'ratio':>6} {'measurements':>13}  per board")
    for n, wall, span, measured, per_board in rows:
        print(f"{n:>6} {wall:>8.1f} {rows[0][1] / wall:>6.2f} {span:>9.1f} {rows[0][2] / span:>6.2f} {measured:>13}  {per_board}")
    print("same search on every board count:", "yes" if all(h == histories[0] for h in histories) else "NO")


if __name__ == "__main__":
    main()
