"""Side-by-side training-step table: numpy vs openmp (vs PyTorch CPU when
installed) for the 784-512-256-10 MLP, batches 32/256/1024, 1 and 2 threads.

    PYTHONPATH=python python3 benchmarks/train_step_table.py [--rounds 5]

Implementations are measured in alternation (A, B, C, A, B, C, ...) so that a
burst of load from another process hits all of them alike; each round times
a block of steps and the table shows the median over rounds of the per-step
median.  The matmul share comes from whygpu.nn's profiler.  Compare ratios
from one run; check that nothing else was running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _train_common import BATCHES, THREADS, matmul_share, threads, torch_step, whygpu_step  # noqa: E402
from whygpu import nn  # noqa: E402

STEPS = {32: 100, 256: 20, 1024: 6}


def measure(step, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    ap.add_argument("--impls", nargs="+", default=["numpy", "openmp", "torch"])
    args = ap.parse_args(argv)
    impls = []
    for impl in args.impls:
        if impl == "torch":
            try:
                import torch  # noqa: F401
            except ImportError:
                print("(PyTorch not installed: skipping it)", file=sys.stderr)
                continue
        elif impl not in nn.backends():
            print(f"(back end {impl!r} unavailable: skipping it)", file=sys.stderr)
            continue
        impls.append(impl)

    print("| implementation | threads | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|---|" + "---|" * len(args.batches))
    for nt in args.threads:
        cells = {impl: [] for impl in impls}
        for b in args.batches:
            steps = {}
            for impl in impls:
                with threads(impl, nt):
                    steps[impl] = torch_step(b) if impl == "torch" else whygpu_step(impl, b)[0]
                    for _ in range(3):
                        steps[impl]()
            rounds = {impl: [] for impl in impls}
            for _ in range(args.rounds):
                for impl in impls:
                    with threads(impl, nt):
                        # No settling pause: measured as a user alternates them (whygpu keeps both
                        # libraries' idle spins short, python/whygpu/_idle_threads.py).
                        steps[impl]()  # one untimed step after switching: idle threads wake up
                        rounds[impl].append(measure(steps[impl], STEPS.get(b, 10)))
            for impl in impls:
                ms = 1e3 * float(np.median(rounds[impl]))
                share = ""
                if impl != "torch":
                    with threads(impl, nt):
                        share = f" ({100 * matmul_share(impl, b, 5):.0f}% matmul)"
                cells[impl].append(f"{ms:.2f}{share}")
        for impl in impls:
            print(f"| {impl} | {nt} | " + " | ".join(cells[impl]) + " |", flush=True)


if __name__ == "__main__":
    main()
