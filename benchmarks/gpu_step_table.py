"""The GPU training-step table: ms per step of the 784-512-256-10 MLP (ReLU,
softmax cross-entropy, SGD) by batch size, whygpu's ``cuda`` back end --
data resident or copied every step, each with and without the step captured
as one CUDA graph -- next to PyTorch on the same GPU in strict float32 (when
installed) and the CPU back ends at every core, measured in alternation in
one run.  Needs a usable GPU.

    PYTHONPATH=python python3 benchmarks/gpu_step_table.py [--batches 256 1024 8192] [--rounds 5]

Each cell is the median over rounds of the per-step median; every step ends
with its loss on the host and the GPU idle.  The last columns are the
speed-ups of the resident graph step over PyTorch and over the best CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whygpu  # noqa: E402
import whygpu.cuda as wc  # noqa: E402
from _train_common import threads, torch_step, whygpu_step  # noqa: E402
from whygpu import nn  # noqa: E402

CUDA = {
    "cuda, resident": (True, False),
    "cuda, resident, graph": (True, True),
    "cuda, copied": (False, False),
    "cuda, copied, graph": (False, True),
}


def median_ms(step, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 256, 1024, 8192])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--no-cpu", action="store_true", help="leave out the CPU back ends (slow at large batches)")
    args = ap.parse_args(argv)
    if not wc.is_available():
        raise SystemExit(f"no usable GPU: {wc.unavailable_reason()}")
    try:
        import torch

        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False
    cores = whygpu._threads._cpus_available()
    cpu = [] if args.no_cpu else [b for b in ("openmp", "numpy") if b in nn.backends()]
    impls = list(CUDA) + (["torch, resident", "torch, copied"] if has_torch else []) + cpu
    print(f"{wc.device_info()['name']}; CPU back ends on {cores} threads; ms per step")
    head = ["batch"] + impls + (["graph vs torch"] if has_torch else []) + (["graph vs best CPU"] if cpu else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for b in args.batches:
        steps = {}
        for impl in impls:
            if impl in CUDA:
                steps[impl] = whygpu_step("cuda", b, *CUDA[impl])[0]
            elif impl.startswith("torch"):
                steps[impl] = torch_step(b, "cuda", resident=impl.endswith("resident"))
            else:
                with threads(impl, cores):
                    steps[impl] = whygpu_step(impl, b)[0]
        for impl, step in steps.items():
            with threads(impl if impl in cpu else "cuda", cores):
                for _ in range(3):  # warm up (and capture the graphs)
                    step()
        per = {impl: [] for impl in impls}
        for _ in range(args.rounds):
            for impl, step in steps.items():
                with threads(impl if impl in cpu else "cuda", cores):
                    step()
                    per[impl].append(median_ms(step, args.steps if impl not in cpu or b <= 1024 else 3))
        ms = {impl: float(np.median(v)) for impl, v in per.items()}
        row = [str(b)] + [f"{ms[i]:.3f}" for i in impls]
        if has_torch:
            row.append(f"x{ms['torch, resident'] / ms['cuda, resident, graph']:.2f}")
        if cpu:
            row.append(f"x{min(ms[c] for c in cpu) / ms['cuda, resident, graph']:.1f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
