"""How much of a CPU training step is not matrix multiplication, and how it
scales with threads: the 784-512-256-10 MLP step on the ``openmp`` back end,
with the fewer-calls path (Linear + ReLU as the GEMM and one compiled pass,
every optimizer update in one call) and without it, side by side in one run.

    PYTHONPATH=python python3 benchmarks/step_overhead.py [--batches 256 1024] [--threads 1 2]

For each (threads, batch, path): ms per unprofiled step (median of rounds,
the paths in alternation), the matmul time per step (from the profiler,
which times each GEMM on its own), the rest (step - matmul), its share of the
step, and the compiled calls the back end gets per step.  The rest's scaling
is the ratio of its time at 1 thread to its time at each thread count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _train_common import threads, whygpu_step  # noqa: E402
from whygpu import nn, optim  # noqa: E402
from whygpu.nn import _backend  # noqa: E402

PATHS = ("unfused", "fused")


def _set_path(path: str) -> None:
    """Switch the fewer-calls path of the compiled back ends on or off (process-wide)."""
    fused = path == "fused"
    _backend.KernelBackend.fused_epilogue = fused
    optim.Optimizer._fused_backend = _FUSED if fused else (lambda self: None)


_FUSED = optim.Optimizer._fused_backend


def _calls_per_step(step, be) -> int:
    """Compiled calls the back end receives in one step (matmuls and element-wise ops)."""
    names = [
        n
        for n in dir(be)
        if not n.startswith("_")
        and callable(getattr(be, n))
        and n not in ("threads", "empty", "zeros", "asarray", "to_host", "adopt", "release")
    ]
    count = [0]
    for n in names:
        real = getattr(be, n)
        setattr(be, n, (lambda f: lambda *a, **k: (count.__setitem__(0, count[0] + 1), f(*a, **k))[1])(real))
    try:
        step()
    finally:
        for n in names:
            delattr(be, n)
    return count[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backend", default="openmp")
    args = ap.parse_args(argv)
    rows = {}
    for b in args.batches:
        for nt in args.threads:
            with threads(args.backend, nt):
                steps = {}
                for path in PATHS:
                    _set_path(path)
                    steps[path] = whygpu_step(args.backend, b)
                    for _ in range(3):
                        steps[path][0]()
                per = {p: [] for p in PATHS}
                for _ in range(args.rounds):
                    for path in PATHS:
                        _set_path(path)
                        step = steps[path][0]
                        step()
                        ts = []
                        for _ in range(args.steps):
                            t0 = time.perf_counter()
                            step()
                            ts.append(time.perf_counter() - t0)
                        per[path].append(float(np.median(ts)))
                for path in PATHS:
                    _set_path(path)
                    step, (model, x, y, loss_fn, opt) = steps[path]
                    prof = nn.step_breakdown(model, x, y, loss_fn, opt, steps=args.steps, warmup=1)
                    matmul = prof.breakdown()["matmul_s"] / prof.steps
                    step_s = float(np.median(per[path]))
                    calls = _calls_per_step(step, model._backend)
                    rows[(b, nt, path)] = (step_s, matmul, max(step_s - matmul, 0.0), calls)
    _set_path("fused")
    print(f"back end {args.backend}; ms per step (median); rest = step - matmul")
    print("| batch | threads | path | step | matmul | rest | rest share | rest x (vs 1 thread) | calls/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (b, nt, path), (s, m, r, c) in rows.items():
        base = rows.get((b, args.threads[0], path))
        scale = f"x{base[2] / r:.2f}" if base and r > 0 else "-"
        print(
            f"| {b} | {nt} | {path} | {1e3 * s:.3f} | {1e3 * m:.3f} | {1e3 * r:.3f} | {100 * r / s:.0f}% | "
            f"{scale} | {c} |"
        )


if __name__ == "__main__":
    main()
