"""Benchmarks of the kernel ladder against NumPy (pytest-benchmark), float32.

Three suites (extra_info["suite"]):
  ladder  every kernel on square n x n @ n x n, n = 64 .. 2048 (slow rungs
          stop where one call would take seconds); NumPy with 1 thread and
          with the parallel thread count in the same group as baselines.
  mlp     the layer shapes of an MLP 784-512-256-10 at batch 32 and 256:
          packed (1 thread) vs NumPy 1 thread, openmp vs NumPy, same threads.
  isa     the packed kernel under each instruction set the CPU supports, at
          n = 512: what SIMD buys.

NumPy's BLAS threads are pinned with threadpoolctl around each measurement,
so "numpy x1" really is one core.  extra_info records kernel, threads,
shape, flops and (after a real run) gflops.  Every benchmark checks its
result against a float64 reference, also under --benchmark-disable, where
each runs once and the heavy sizes are deselected (see conftest.py).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import whygpu

DTYPE = np.float32
SIZES = (64, 128, 256, 512, 1024, 2048)
# Largest n per kernel: one call at the next size up would take seconds.
MAX_N = {"python": 128, "cython": 512, "naive": 512, "reordered": 1024, "blocked": 1024}
# Sizes above these are "heavy": skipped under --benchmark-disable.
LIGHT_N = {"python": 64}
LIGHT_N_DEFAULT = 256

KERNELS = whygpu.available_kernels(device="cpu")  # the GPU: benchmarks/test_bench_cuda.py
PARALLEL_KERNELS = [k for k in KERNELS if whygpu._registry.KERNELS[k].parallel]
THREADS = whygpu.get_num_threads()  # the parallel thread count (WHYGPU_NUM_THREADS, else usable CPUs)
RUNG = {name: i for i, name in enumerate(whygpu.all_kernels(), start=1)}

BUDGET_S = 0.5  # measured time per benchmark, roughly
MIN_ROUND_S = 2e-4  # tiny calls are repeated within a round so the timer overhead vanishes


# ---- Problems and their reference, built once per shape ---------------------------------


@functools.lru_cache(maxsize=4)
def _problem(m: int, k: int, n: int):
    rng = np.random.default_rng(m * 1_000_003 + k * 1009 + n)
    a = rng.uniform(-1, 1, (m, k)).astype(DTYPE)
    b = rng.uniform(-1, 1, (k, n)).astype(DTYPE)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    # the same k-scaled elementwise bound as tests/_support.py: eps * (k + 4) * |A||B|
    tol = np.finfo(DTYPE).eps * (k + 4) * (np.abs(a64) @ np.abs(b64)) + np.finfo(DTYPE).tiny
    for x in (a, b, ref, tol):
        x.flags.writeable = False  # shared by several benchmarks: nobody may change them
    return a, b, ref, tol


def _check(result, m, k, n):
    _, _, ref, tol = _problem(m, k, n)
    assert result.shape == ref.shape and result.dtype == DTYPE
    err = np.abs(result.astype(np.float64) - ref)
    assert (err <= tol).all(), f"wrong result: max error {err.max():.3g}, allowed {tol.max():.3g}"


# ---- The measurement ---------------------------------------------------------------------


def _measure(benchmark, fn, *, m, k, n, suite, row, column, kernel, threads, group, rank=0):
    """Time fn() (which returns the product) with pedantic rounds sized to BUDGET_S,
    NumPy's BLAS pinned to `threads`; record what was run; check the result."""
    flops = 2 * m * n * k
    benchmark.group = group
    benchmark.extra_info.update(
        suite=suite,
        row=row,
        column=column,
        kernel=kernel,
        rung=RUNG.get(kernel, 99),
        rank=rank,
        threads=threads,
        dtype=np.dtype(DTYPE).name,
        m=m,
        n=n,
        k=k,
        flops=flops,
        arch=whygpu.cpu_info()["arch"],
    )
    with threadpool_limits(limits=threads, user_api="blas"):
        rounds = iterations = 1
        if benchmark.enabled:
            start = time.perf_counter()
            fn()  # warm-up: first-touch page faults, thread pools, scratch buffers
            once = max(time.perf_counter() - start, 1e-7)
            iterations = max(1, int(MIN_ROUND_S / once))
            rounds = int(min(200, max(3, BUDGET_S / (once * iterations))))
        result = benchmark.pedantic(fn, rounds=rounds, iterations=iterations)
    _check(result, m, k, n)
    if benchmark.enabled:
        benchmark.extra_info["gflops"] = flops / benchmark.stats["median"] / 1e9
        benchmark.extra_info["gflops_best"] = flops / benchmark.stats["min"] / 1e9
    return result


def _runner(kernel, a, b, threads):
    out = np.empty((a.shape[0], b.shape[1]), dtype=DTYPE)
    if kernel == "numpy":
        return lambda: np.matmul(a, b, out=out)
    return lambda: whygpu.matmul(a, b, kernel=kernel, threads=threads, out=out)


def _row(kernel, threads):
    parallel = kernel == "numpy" or kernel in PARALLEL_KERNELS
    return f"{kernel} x{threads}" if parallel else kernel


# ---- Suite 1: the ladder -------------------------------------------------------------------


def _ladder_cases():
    numpy_threads = sorted({1, THREADS})
    for n in SIZES:
        marks = [] if n <= LIGHT_N_DEFAULT else [pytest.mark.heavy]
        for kernel in KERNELS:
            if n > MAX_N.get(kernel, max(SIZES)):
                continue
            heavy = n > LIGHT_N.get(kernel, LIGHT_N_DEFAULT)
            threads = THREADS if kernel in PARALLEL_KERNELS else 1
            yield pytest.param(kernel, n, threads, marks=[pytest.mark.heavy] if heavy else [], id=f"{kernel}-n{n}")
        for t in numpy_threads:
            yield pytest.param("numpy", n, t, marks=marks, id=f"numpy-x{t}-n{n}")


@pytest.mark.parametrize("kernel,n,threads", list(_ladder_cases()))
def test_ladder(benchmark, kernel, n, threads):
    a, b, _, _ = _problem(n, n, n)
    _measure(
        benchmark,
        _runner(kernel, a, b, threads),
        m=n,
        k=n,
        n=n,
        suite="ladder",
        row=_row(kernel, threads),
        column=f"n={n}",
        kernel=kernel,
        threads=threads,
        group=f"ladder n={n:>4}",
    )


# ---- Suite 2: MLP layer shapes ---------------------------------------------------------------

MLP_LAYERS = [(784, 512), (512, 256), (256, 10)]  # (in, out) of each dense layer
MLP_BATCHES = (32, 256)


def _mlp_cases():
    contenders = [("packed", 1), ("numpy", 1)]
    if "openmp" in KERNELS:
        contenders += [("openmp", THREADS)]
    if THREADS != 1:
        contenders += [("numpy", THREADS)]
    for batch in MLP_BATCHES:
        for fan_in, fan_out in MLP_LAYERS:
            for kernel, t in contenders:
                yield pytest.param(kernel, t, batch, fan_in, fan_out, id=f"{kernel}-x{t}-B{batch}-{fan_in}x{fan_out}")


@pytest.mark.parametrize("kernel,threads,batch,fan_in,fan_out", list(_mlp_cases()))
def test_mlp_layer(benchmark, kernel, threads, batch, fan_in, fan_out):
    a, b, _, _ = _problem(batch, fan_in, fan_out)  # X (batch, in) @ W (in, out)
    shape = f"{batch}x{fan_in} @ {fan_in}x{fan_out}"
    _measure(
        benchmark,
        _runner(kernel, a, b, threads),
        m=batch,
        k=fan_in,
        n=fan_out,
        suite="mlp",
        row=_row(kernel, threads),
        column=shape,
        kernel=kernel,
        threads=threads,
        group=f"mlp {shape}",
    )


# ---- Suite 3: instruction sets ------------------------------------------------------------------

ISA_N = 512


@pytest.fixture
def arch_restored():
    before = whygpu.cpu_info()["arch"]
    yield
    whygpu.set_arch(before)


ARCHS = whygpu.cpu_info()["supported_archs"]


@pytest.mark.parametrize("arch", ARCHS + ["numpy"])
def test_isa(benchmark, arch_restored, arch):
    a, b, _, _ = _problem(ISA_N, ISA_N, ISA_N)
    if arch == "numpy":
        kernel, row = "numpy", "numpy x1"
    else:
        whygpu.set_arch(arch)
        kernel, row = "packed", f"packed [{arch}]"
    _measure(
        benchmark,
        _runner(kernel, a, b, 1),
        m=ISA_N,
        k=ISA_N,
        n=ISA_N,
        suite="isa",
        row=row,
        column=f"n={ISA_N}",
        kernel=kernel,
        threads=1,
        group=f"isa n={ISA_N}",
        rank=ARCHS.index(arch) if arch in ARCHS else 0,
    )
    if arch != "numpy":
        assert benchmark.extra_info["arch"] == arch
