"""whygpu's openmp kernel and NumPy's BLAS called in turn in one process, as a notebook calls them:
each one's speed alternated against its speed alone, in both orders (issue 32's thread fight).

    python benchmarks/alternation.py                      # this process, sizes 128 256 1024
    python benchmarks/alternation.py --ab --rounds 3      # settings side by side, in fresh processes

Alone: the median of single calls made back to back.  Alternated: the median of single calls, each
right after one of the other library's.  A ratio near 1 means the other library's idle threads left
the cores alone; 0.02 means a call waited on them for most of its time.

``--ab`` runs this script in fresh processes, rounds interleaved, under each setting of the idle
spins (python/whygpu/_idle_threads.py), since both runtimes read theirs once, when loaded:
``default`` (whygpu's: OpenBLAS 20 us, libgomp 2 ms), ``keep`` (WHYGPU_KEEP_SPIN=1: both as shipped,
what whygpu did before) and ``short`` (WHYGPU_OPENMP_SPIN_US=50: libgomp 50 us).  It also times
each setting's 128^3 openmp call and openmp training step alone, so a setting that ends the fight by
slowing the kernels shows it.  whygpu is imported before NumPy here on purpose: after NumPy,
OpenBLAS's spin can no longer be changed (`whygpu info` says which case a process is in).
"""

from __future__ import annotations

# ruff: noqa: I001  (whygpu is imported first, before NumPy: see above)
import whygpu

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

SETTINGS = {"default": {}, "keep": {"WHYGPU_KEEP_SPIN": "1"}, "short": {"WHYGPU_OPENMP_SPIN_US": "50"}}


def _call_s(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def alternation(n: int, threads: int, reps: int) -> dict:
    """Alone and alternated medians (seconds per call) of openmp and a @ b at n, in both orders."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    calls = {"openmp": lambda: whygpu.matmul(a, b, kernel="openmp", threads=threads), "numpy": lambda: a @ b}
    return _alone_and_alternated(calls, reps, warm_alone=5, warm_pair=3)


def _alone_and_alternated(calls: dict, reps: int, warm_alone: int, warm_pair: int) -> dict:
    """Medians (seconds per call) of each of the two calls alone (back to back, after ``warm_alone``
    untimed calls) and alternated with the other (after ``warm_pair`` untimed pairs), in both orders."""
    (a, b) = calls
    out: dict = {}
    for first, second in ((a, b), (b, a)):
        for k, f in calls.items():
            for _ in range(warm_alone):
                f()
            out.setdefault(f"{k} alone", []).append(statistics.median(_call_s(f) for _ in range(reps)))
        for _ in range(warm_pair):
            calls[first]()
            calls[second]()
        t1, t2 = [], []
        for _ in range(reps):
            t1.append(_call_s(calls[first]))
            t2.append(_call_s(calls[second]))
        out[f"{first} after {second}"] = statistics.median(t1)  # first's call follows second's previous one
        out[f"{second} after {first}"] = statistics.median(t2)
    return {k: (statistics.median(v) if isinstance(v, list) else v) for k, v in out.items()}


def alone_costs(threads: int) -> dict:
    """A 128^3 openmp call and the openmp MLP training step alone (medians, seconds)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _train_common import threads as pinned
    from _train_common import whygpu_step

    a = np.ones((128, 128), np.float32)
    for _ in range(50):
        whygpu.matmul(a, a, kernel="openmp", threads=threads)
    blocks = []
    for _ in range(15):
        t0 = time.perf_counter()
        for _ in range(100):
            whygpu.matmul(a, a, kernel="openmp", threads=threads)
        blocks.append((time.perf_counter() - t0) / 100)
    out = {"128^3 call": statistics.median(blocks)}
    for batch, steps in ((64, 60), (256, 20), (1024, 6)):
        with pinned("openmp", threads):
            step, _ = whygpu_step("openmp", batch)
            for _ in range(3):
                step()
            blocks = []
            for _ in range(9):
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                blocks.append((time.perf_counter() - t0) / steps)
        out[f"step B={batch}"] = statistics.median(blocks)
    return out


def torch_alternation(batch: int, threads: int, reps: int) -> dict | None:
    """whygpu's openmp training step and PyTorch's CPU step of the same MLP, alone and in turn (medians, s);
    None without PyTorch.  PyTorch's own OpenMP keeps its shipped spin (whygpu sets nothing for it)."""
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _train_common import torch_step, whygpu_step

    torch.set_num_threads(threads)
    whygpu.set_num_threads(threads)
    calls = {"whygpu": whygpu_step("openmp", batch)[0], "torch": torch_step(batch)}
    return _alone_and_alternated(calls, reps, warm_alone=3, warm_pair=2)


def run_here(args) -> None:
    from whygpu import _idle_threads

    print("\n".join(_idle_threads.describe()))
    with threadpool_limits(args.threads, user_api="blas"):
        for n in args.sizes:
            r = alternation(n, args.threads, args.reps)
            cells = [
                f"{who} {r[f'{who} alone'] / r[f'{who} after {other}']:.2f}x"
                for who, other in (("openmp", "numpy"), ("numpy", "openmp"))
            ]
            gf = {k: 2 * n**3 / r[f"{k} alone"] / 1e9 for k in ("openmp", "numpy")}
            print(f"n={n}: alone openmp {gf['openmp']:.1f}, numpy {gf['numpy']:.1f} GFLOP/s; "
                  f"alternated / alone: {', '.join(cells)}", flush=True)  # fmt: skip
    for batch in args.torch:
        r = torch_alternation(batch, args.threads, args.reps)
        if r is None:
            print("PyTorch is not installed: no training-step alternation with it")
            break
        cells = [
            f"{who} {r[f'{who} alone'] / r[f'{who} after {other}']:.2f}x"
            for who, other in (("whygpu", "torch"), ("torch", "whygpu"))
        ]
        alone = f"whygpu {r['whygpu alone'] * 1e3:.2f} ms, torch {r['torch alone'] * 1e3:.2f} ms"
        print(f"MLP step B={batch}: alone {alone}; alternated / alone: {', '.join(cells)}", flush=True)
    if args.costs:
        for k, s in alone_costs(args.threads).items():
            print(f"alone {k}: {s * 1e3:.3f} ms", flush=True)


def run_ab(args) -> None:
    base = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads), "--reps", str(args.reps),
            "--costs", "--sizes", *map(str, args.sizes), "--torch", *map(str, args.torch)]  # fmt: skip
    for r in range(1, args.rounds + 1):
        for name in args.settings:
            env = {k: v for k, v in os.environ.items() if k not in ("WHYGPU_KEEP_SPIN", "WHYGPU_OPENMP_SPIN_US")}
            env.update(SETTINGS[name])
            res = subprocess.run(base, env=env, capture_output=True, text=True, timeout=600)
            print(f"== round {r}, {name}")
            print(res.stdout.strip() or res.stderr[-2000:], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9, help="alternations per median (default 9)")
    ap.add_argument("--torch", type=int, nargs="*", default=[], metavar="B",
                    help="also alternate the MLP training step with PyTorch's at these batch sizes")  # fmt: skip
    ap.add_argument("--costs", action="store_true", help="also time the 128^3 call and training step alone")
    ap.add_argument("--ab", action="store_true", help="compare the idle-spin settings in fresh processes")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["keep", "default", "short"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run_ab(args) if args.ab else run_here(args)


if __name__ == "__main__":
    main()
