"""Time to score one plan on the bundled digits task against one plain float pass over the same test data.

    python tests/benchmarks/bench_evaluate.py [--repeats N] [--finetune N]

Prints medians side by side and their ratio. Each plan is a new random kernel-wise plan (no cache hit); the
first ones also pay the per-bit-width clip searches, later ones reuse them, as in a search.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from autoq.common.plan import LayerPlan, QuantPlan
from autoq.host.evaluate import Evaluator
from autoq.host.tasks import load_task


def random_plan(network, generator: torch.Generator) -> QuantPlan:
    return QuantPlan.for_network(network, [
        LayerPlan(l.name, tuple(torch.randint(2, 9, (l.c_out,), generator=generator).tolist()),
                  int(torch.randint(2, 9, (1,), generator=generator))) for l in network])


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--finetune", type=int, default=0, help="fine-tune steps per plan evaluation")
    args = parser.parse_args()

    task = load_task()
    evaluator = Evaluator.for_task(task)
    qmodel = evaluator.qmodel
    generator = torch.Generator().manual_seed(0)

    def float_pass() -> None:
        with torch.no_grad(), qmodel.float_mode():
            for start in range(0, len(task.test), evaluator.config.batch_size):
                qmodel(task.test.x[start : start + evaluator.config.batch_size]).argmax(1)

    cold = seconds(lambda: evaluator.accuracy(random_plan(task.network, generator), args.finetune))
    float_times, plan_times, apply_times = [], [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        float_times.append(seconds(float_pass))
        plan = random_plan(task.network, generator)
        plan_times.append(seconds(lambda plan=plan: evaluator.accuracy(plan, args.finetune)))  # bound explicitly (B023)
        apply_times.append(seconds(lambda plan=plan: qmodel.apply(plan)))
    float_s, plan_s = statistics.median(float_times), statistics.median(plan_times)
    print(f"digits test split: {len(task.test)} images, torch threads {torch.get_num_threads()}, fine-tune {args.finetune} steps")
    print(f"float pass (median of {args.repeats})        {float_s * 1e3:8.1f} ms")
    print(f"one plan evaluation (median)          {plan_s * 1e3:8.1f} ms   ratio {plan_s / float_s:5.2f}x")
    print(f"first plan evaluation (clip searches) {cold * 1e3:8.1f} ms   ratio {cold / float_s:5.2f}x")
    print(f"apply(plan) alone (median)            {statistics.median(apply_times) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
