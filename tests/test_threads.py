"""Threads: concurrent calls from several Python threads (thread safety of
the per-thread scratch buffers and of the dispatcher), the openmp kernel's
thread counts (1, 2, 3, 7: more threads than cores is allowed), determinism
across thread counts, and the default thread count (set_num_threads,
get_num_threads, WHYGPU_NUM_THREADS).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import whygpu
from whygpu import _registry

from ._support import DTYPES, block_edge_shapes, blocking_of, check_gemm, make_matrix, replace_kernel

KERNELS = whygpu.available_kernels(device="cpu")  # the CUDA rungs: tests/test_cuda.py
# These tests pass thread counts deliberately: to packed (one thread: the count has no effect) and beyond the
# cores (3, 7, 64 on a small machine).  whygpu warns about both (tests/test_student_inputs.py checks that).
pytestmark = pytest.mark.filterwarnings("ignore::whygpu.ThreadsWarning")
needs_openmp = pytest.mark.skipif("openmp" not in KERNELS, reason="built without OpenMP")
PARALLEL = [k for k in ("packed", "openmp") if k in KERNELS]


def _run_threads(worker, n):
    """Run worker(i) on n threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait(timeout=60)
            worker(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]


# ---- Concurrent calls ---------------------------------------------------------------


@pytest.mark.parametrize("n_threads", [4, 8])
def test_concurrent_calls_from_python_threads(n_threads):
    """Each Python thread multiplies its own shapes (different sizes -> different
    scratch sizes, both dtypes) with the packed and openmp kernels, many times;
    a shared scratch buffer or any global mutable state would corrupt results."""
    rng = np.random.default_rng(11)
    problems = []
    for i in range(n_threads):
        dtype = DTYPES[i % 2]
        bk = blocking_of(dtype)
        m, n, k = 5 + 7 * i, bk["nr"] * (i + 1) + 3, bk["kc"] // 2 + 31 * i  # distinct per thread
        a = make_matrix(rng, (m, k), dtype, order="CF"[i % 2])
        b = make_matrix(rng, (k, n), dtype, step=(1, 1 + i % 2))
        problems.append((a, b, [None] * 12))

    def worker(i):
        a, b, results = problems[i]
        for r in range(len(results)):
            kernel = PARALLEL[(i + r) % len(PARALLEL)]
            results[r] = whygpu.matmul(a, b, kernel=kernel, threads=1 + r % 2)

    _run_threads(worker, n_threads)
    for a, b, results in problems:
        for got in results:
            check_gemm(got, a, b)


def test_concurrent_gemm_into_disjoint_views_of_one_array():
    """Threads write disjoint row blocks of one shared output (gemm with beta=1)."""
    rng = np.random.default_rng(12)
    a = make_matrix(rng, (8 * 37, 300), np.float32)
    b = make_matrix(rng, (300, 129), np.float32)
    c0 = make_matrix(rng, (8 * 37, 129), np.float32)
    c = c0.copy()

    def worker(i):
        rows = slice(37 * i, 37 * (i + 1))
        whygpu.gemm(a[rows], b, c[rows], alpha=0.5, beta=1.0, kernel=PARALLEL[i % len(PARALLEL)], threads=2)

    _run_threads(worker, 8)
    check_gemm(c, a, b, alpha=0.5, beta=1.0, c0=c0)


def test_switching_arch_while_other_threads_compute(restore_arch):
    """A packed call reads the instruction set once; flipping it from another
    thread mid-flight must not mix micro-kernels with the wrong block sizes."""
    archs = whygpu.cpu_info()["supported_archs"]
    rng = np.random.default_rng(13)
    a = make_matrix(rng, (70, 500), np.float32)
    b = make_matrix(rng, (500, 150), np.float32)
    stop = threading.Event()
    flips = [0]

    def flipper():
        while not stop.is_set():
            whygpu.set_arch(archs[flips[0] % len(archs)])
            flips[0] += 1

    outs = [[] for _ in range(3)]

    def worker(i):
        for r in range(10):
            outs[i].append(whygpu.matmul(a, b, kernel=PARALLEL[r % len(PARALLEL)], threads=2))

    flip = threading.Thread(target=flipper)
    flip.start()
    try:
        _run_threads(worker, len(outs))
    finally:
        stop.set()
        flip.join()
    assert flips[0] > 0
    for o in outs:
        assert len(o) == 10
        for got in o:
            check_gemm(got, a, b)


# ---- openmp thread counts ------------------------------------------------------------------


def _openmp_shapes(dtype):
    bk = blocking_of(dtype)
    # tiny (fewer tiles than threads), uneven tile splits, several jc/pc panels
    return [(1, 1, 1), (3, 5, 7), (bk["mr"] + 1, bk["nr"] - 1, 13)] + block_edge_shapes(bk)[-3:] + [(97, 233, 61)]


@needs_openmp
@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_openmp_thread_counts(rng, dtype, threads):
    for m, n, k in _openmp_shapes(dtype):
        a = make_matrix(rng, (m, k), dtype)
        b = make_matrix(rng, (k, n), dtype, order="F")
        got = whygpu.matmul(a, b, kernel="openmp", threads=threads)
        check_gemm(got, a, b)
        c0 = make_matrix(rng, (m, n), dtype)
        c = c0.copy()
        whygpu.gemm(a, b, c, alpha=-2.0, beta=0.5, kernel="openmp", threads=threads)
        check_gemm(c, a, b, alpha=-2.0, beta=0.5, c0=c0)


@needs_openmp
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_openmp_is_bitwise_deterministic_across_thread_counts(rng, dtype):
    """Threads split the tiles of C, never the k loop (07_openmp.cpp), so every
    tile is summed in the same order: any thread count gives the packed
    kernel's exact bits, run after run."""
    bk = blocking_of(dtype)
    a = make_matrix(rng, (3 * bk["mr"] + 5, 2 * bk["kc"] + 9), dtype)
    b = make_matrix(rng, (2 * bk["kc"] + 9, bk["nc"] + 2 * bk["nr"] + 3), dtype)
    expected = whygpu.matmul(a, b, kernel="packed")
    for threads in (1, 2, 3, 7, 16):
        np.testing.assert_array_equal(whygpu.matmul(a, b, kernel="openmp", threads=threads), expected)


def test_more_threads_than_work(rng):
    a = make_matrix(rng, (2, 3), np.float64)
    b = make_matrix(rng, (3, 2), np.float64)
    for kernel in PARALLEL:
        check_gemm(whygpu.matmul(a, b, kernel=kernel, threads=64), a, b)


# ---- The default thread count ------------------------------------------------------------


def test_set_get_num_threads_round_trip(restore_num_threads):
    for n in (1, 3, 7, 2, np.int32(5)):
        whygpu.set_num_threads(n)
        assert whygpu.get_num_threads() == n
        assert type(whygpu.get_num_threads()) is int


@pytest.mark.parametrize(
    "bad,exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (1025, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("4", TypeError),
        (None, TypeError),
    ],
    ids=repr,
)
def test_set_num_threads_rejects_bad_values(restore_num_threads, bad, exc):
    before = whygpu.get_num_threads()
    with pytest.raises(exc, match=r"n must be"):
        whygpu.set_num_threads(bad)
    assert whygpu.get_num_threads() == before  # a rejected value changes nothing


def test_default_thread_count_is_what_kernels_receive(monkeypatch, restore_num_threads):
    """threads=None means get_num_threads(); an explicit count wins."""
    seen = []
    real = _registry.KERNELS["packed"].run

    def spy(a, b, c, alpha, beta, threads):
        seen.append(threads)
        real(a, b, c, alpha, beta, threads)

    replace_kernel(monkeypatch, "openmp", run=spy, unavailable=lambda: None)
    a = np.ones((4, 3), np.float32)
    whygpu.set_num_threads(3)
    np.testing.assert_array_equal(whygpu.matmul(a, a.T, kernel="openmp"), np.full((4, 4), 3.0, np.float32))
    whygpu.gemm(a, a, trans_b=True, kernel="openmp", threads=5)
    whygpu.set_num_threads(1)
    whygpu.matmul(a, a.T, kernel="openmp", threads=None)
    assert seen == [3, 5, 1]


def test_default_is_the_usable_cpu_count():
    assert whygpu.cpu_info()["cores"] >= 1
    env = os.environ.get("WHYGPU_NUM_THREADS", "").strip()
    if not env:
        assert whygpu.get_num_threads() == whygpu.cpu_info()["cores"]


def _subprocess_env(**extra):
    pkg_parent = os.path.dirname(os.path.dirname(whygpu.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "value,expected",
    [("3", "3"), (" 7 ", "7"), ("0", "cores"), ("-2", "cores"), ("lots", "cores"), ("", "cores"), ("99999", "cores")],
)
def test_whygpu_num_threads_environment_variable(value, expected):
    """WHYGPU_NUM_THREADS sets the default; a bad value falls back to the CPU count
    instead of breaking `import whygpu`, with a warning that names it."""
    code = "import whygpu; print(whygpu.get_num_threads(), whygpu.cpu_info()['cores'])"
    bad = expected == "cores" and value.strip() != ""
    out = subprocess.run(
        [sys.executable, "-W", "default" if bad else "error", "-c", code],
        env=_subprocess_env(WHYGPU_NUM_THREADS=value),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got, cores = out.stdout.split()
    assert got == (cores if expected == "cores" else expected)
    if bad:
        assert f"RuntimeWarning: WHYGPU_NUM_THREADS={value!r} ignored" in out.stderr
