"""The openmp rung against NumPy's BLAS (OpenBLAS) at each thread count:
square SGEMM and the MLP's own training GEMMs, float32, side by side in one
run (each round times both back to back, figures are medians over rounds;
the BLAS's threads are pinned with threadpoolctl).

    PYTHONPATH=python python3 benchmarks/openmp_vs_blas.py [--threads 1 2 4 8 16] [--rounds 3]

The MLP shapes are those of a 784-512-256-10 training step at batch B:
forward y = x W^T, weight gradient dW = dY^T X (k = B), input gradient
dX = dY W -- computed with the transpose flags, as whygpu.nn does.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whygpu  # noqa: E402
from ab_compare import busy_share, cpu_busy_snapshot, time_call  # noqa: E402

LAYERS = ((784, 512), (512, 256), (256, 10))


def cases(batches, sizes):
    """(label, a, b, trans_a, trans_b): op(a) @ op(b)."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    out = [(f"square n={n}", f(n, n), f(n, n), False, False) for n in sizes]
    for bs in batches:
        for fan_in, fan_out in LAYERS:
            x, w, dy = f(bs, fan_in), f(fan_out, fan_in), f(bs, fan_out)
            out.append((f"B={bs} fwd {bs}x{fan_in} . ({fan_out}x{fan_in})^T", x, w, False, True))
            out.append((f"B={bs} dW ({bs}x{fan_out})^T . {bs}x{fan_in}", dy, x, True, False))
            if fan_in != 784:  # the first layer's dX is not computed
                out.append((f"B={bs} dX {bs}x{fan_out} . {fan_out}x{fan_in}", dy, w, False, False))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, whygpu.get_num_threads()}))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    info = whygpu.cpu_info()
    libs = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    blas = "; ".join(f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')})" for d in libs)
    bk = info["blocking"]["float32"]
    isa = f"whygpu ISA {info['arch']} (best {info['best_arch']})"
    print(f"# {info['model']}, {info['cores']} cores; {isa}; BLAS {blas}")
    print(
        f"# blocking {bk['micro_kernel']}: kc={bk['kc']} mc={bk['mc']} nc={bk['nc']} ({bk['source']}); "
        f"caches " + ", ".join(f"{k} {v // 1024} KiB" for k, v in info["caches"].items())
    )
    print(f"# GFLOP/s, medians of {args.rounds} rounds; ratio = openmp / numpy (above 1: whygpu faster)")
    start = cpu_busy_snapshot()
    todo = cases(args.batches, args.sizes)
    head = "| GEMM | " + " | ".join(f"openmp x{t} | numpy x{t} | ratio x{t}" for t in args.threads) + " |"
    print(head)
    print("|---|" + "---:|---:|---:|" * len(args.threads))
    for label, a, b, ta, tb in todo:
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        flops = 2.0 * op_a.shape[0] * op_a.shape[1] * op_b.shape[1]
        cells = []
        for t in args.threads:
            fns = {
                "openmp": functools.partial(whygpu.gemm, a, b, trans_a=ta, trans_b=tb, kernel="openmp", threads=t),
                "numpy": functools.partial(np.matmul, op_a, op_b),
            }
            samples = {k: [] for k in fns}
            min_time = 0.05 if flops < 1e10 else 0.0
            with threadpool_limits(limits=t, user_api="blas"):
                for _ in range(args.rounds):
                    for k, fn in fns.items():
                        # No settling pause: alternated as a user calls them (time_call's first,
                        # untimed call wakes this one's threads).
                        samples[k].append(time_call(fn, min_time))
            g = {k: flops / statistics.median(v) / 1e9 for k, v in samples.items()}
            cells.append(f"{g['openmp']:.1f} | {g['numpy']:.1f} | {g['openmp'] / g['numpy']:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nother processes used {busy_share(start, cpu_busy_snapshot()):.0%} of the CPUs during the run")


if __name__ == "__main__":
    main()
