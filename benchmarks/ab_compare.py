"""Side-by-side A/B figures for the kernel ladder's performance targets.

    python benchmarks/ab_compare.py            # ~1-2 minutes on a 2-core machine

pytest-benchmark times one configuration after another; on a shared, noisy
machine a burst of load then lands on one side only.  Here every round times
all configurations of a size back to back (packed 1 thread, NumPy 1 thread,
openmp N threads, NumPy N threads), and the figures are medians over rounds,
so load hits all of them alike.  NumPy's BLAS is pinned with threadpoolctl.
The share of the CPUs used by other processes during the run is printed:
figures taken while it is high are not worth quoting.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import whygpu


def cpu_busy_snapshot():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[3] + v[4], time.process_time()


def busy_share(start, end) -> float:
    """Share of all CPU time used by other processes between two snapshots."""
    total, idle, own = (e - s for s, e in zip(start, end))
    ticks = os.sysconf("SC_CLK_TCK")
    other = (total - idle) - own * ticks
    return max(0.0, other / total) if total else 0.0


def time_call(fn, min_time=0.05) -> float:
    """Seconds per call: calls repeated until min_time has passed."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / reps


def configs(a, b, threads):
    """name -> (function, BLAS thread limit to hold while timing it)."""
    return {
        "packed x1": (lambda: whygpu.matmul(a, b, kernel="packed"), None),
        "numpy x1": (lambda: np.matmul(a, b), 1),
        f"openmp x{threads}": (lambda: whygpu.matmul(a, b, kernel="openmp", threads=threads), None),
        f"numpy x{threads}": (lambda: np.matmul(a, b), threads),
    }


def measure(shapes, rounds, threads, extra=()):
    rng = np.random.default_rng(0)
    results = {}
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        cfg = configs(a, b, threads)
        for name in extra:
            cfg[name] = (functools.partial(whygpu.matmul, a, b, kernel=name), None)
        samples = {name: [] for name in cfg}
        for _ in range(rounds):
            for name, (fn, blas_threads) in cfg.items():  # A/B/C/D back to back, every round
                # The BLAS pin is set outside the timed calls: entering
                # threadpool_limits costs far more than a small matmul.
                with threadpool_limits(limits=blas_threads or 1, user_api="blas"):
                    samples[name].append(time_call(fn))
        results[(m, k, n)] = {name: statistics.median(v) for name, v in samples.items()}
    return results


def gflops(shape, seconds):
    m, k, n = shape
    return 2.0 * m * n * k / seconds / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=whygpu.get_num_threads())
    args = p.parse_args(argv)
    T = args.threads
    info = whygpu.cpu_info()
    print(
        f"# {info['model']}, {info['cores']} cores, arch {info['arch']}, "
        f"{args.rounds} rounds, medians; openmp and NumPy at {T} threads"
    )

    start = cpu_busy_snapshot()
    square = measure([(n, n, n) for n in (512, 1024, 2048)], args.rounds, T)
    print(
        f"\n| n | packed x1 | numpy x1 | packed/numpy | openmp x{T} | numpy x{T} | openmp/numpy "
        f"| openmp x{T} / packed x1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape, r in square.items():
        g = {k: gflops(shape, v) for k, v in r.items()}
        print(
            f"| {shape[0]} | {g['packed x1']:.1f} | {g['numpy x1']:.1f} | {g['packed x1'] / g['numpy x1']:.2f} "
            f"| {g[f'openmp x{T}']:.1f} | {g[f'numpy x{T}']:.1f} | {g[f'openmp x{T}'] / g[f'numpy x{T}']:.2f} "
            f"| {g[f'openmp x{T}'] / g['packed x1']:.2f} |"
        )

    mlp = measure([(bs, i, o) for bs in (32, 256) for (i, o) in ((784, 512), (512, 256), (256, 10))], args.rounds, T)
    print(f"\n| shape (batch x in @ in x out) | openmp x{T} us | numpy x{T} us | time ratio openmp/numpy |")
    print("|---|---:|---:|---:|")
    for (m, k, n), r in mlp.items():
        o, npy = r[f"openmp x{T}"], r[f"numpy x{T}"]
        print(f"| {m}x{k} @ {k}x{n} | {o * 1e6:.1f} | {npy * 1e6:.1f} | {o / npy:.2f} |")

    span = measure([(1024, 1024, 1024)], max(3, args.rounds // 3), T, extra=("naive",))[(1024, 1024, 1024)]
    print(
        f"\nladder span at n=1024: naive {gflops((1024,) * 3, span['naive']):.2f} GFLOP/s, "
        f"openmp x{T} {gflops((1024,) * 3, span[f'openmp x{T}']):.1f} GFLOP/s: "
        f"{span['naive'] / span[f'openmp x{T}']:.0f}x"
    )
    print(f"\nother processes used {busy_share(start, cpu_busy_snapshot()):.0%} of the CPUs during the run")


if __name__ == "__main__":
    main()
