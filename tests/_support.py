"""Helpers shared by the test modules: the float64 reference, the error bound
every kernel must meet, strided/transposed test matrices, the shapes that
sit on the block-size edges of the packed kernels, and the CUDA emulation's
build helpers (tests/cuda_emu)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest

import whygpu

DTYPES = (np.float32, np.float64)

# Largest dimension each kernel is tested with: the interpreted and naive rungs are slow.
SIZE_CAP = {"python": 24, "cython": 200, "naive": 200}


def size_cap(kernel: str):
    """Largest m, n or k to give `kernel` (None: no limit)."""
    return SIZE_CAP.get(kernel)


def fits(kernel: str, shape) -> bool:
    cap = size_cap(kernel)
    return cap is None or max(shape) <= cap


# ---- The reference and the error bound ---------------------------------------


def _op(x, trans):
    x = np.asarray(x, dtype=np.float64)
    return x.T if trans else x


def gemm_reference(a, b, alpha=1.0, beta=0.0, c0=None, trans_a=False, trans_b=False):
    """(reference, bound, k) in float64: reference = alpha op(A) op(B) + beta C0 and
    bound = |alpha| |op(A)| |op(B)| + |beta| |C0|, elementwise."""
    A, B = _op(a, trans_a), _op(b, trans_b)
    ref = alpha * (A @ B)
    bound = abs(alpha) * (np.abs(A) @ np.abs(B))
    if c0 is not None and beta != 0.0:
        C = np.asarray(c0, dtype=np.float64)
        ref = ref + beta * C
        bound = bound + abs(beta) * np.abs(C)
    return ref, bound, A.shape[1]


def gemm_tolerance(bound, k, dtype):
    """Elementwise error allowed for a k-term dot product computed in `dtype`.

    Any summation order gives |error| <= k * u * |A||B| (u = eps/2); the float64
    reference adds at most as much again, and rounding alpha, beta and the
    final update a few u more.  eps * (k + 4) * bound covers all of that and
    no more, so a kernel that drops or repeats even one product fails (see
    test_tolerance_catches_a_dropped_term).
    """
    eps = np.finfo(dtype).eps
    return eps * (k + 4) * bound + np.finfo(dtype).tiny


def check_gemm(got, a, b, *, alpha=1.0, beta=0.0, c0=None, trans_a=False, trans_b=False, dtype=None):
    """Fail the test unless got == alpha op(a) op(b) + beta c0 (c0: C before the call)
    within gemm_tolerance, with the dtype and shape expected."""
    dtype = np.dtype(dtype if dtype is not None else np.asarray(a).dtype)
    ref, bound, k = gemm_reference(a, b, alpha, beta, c0, trans_a, trans_b)
    assert isinstance(got, np.ndarray)
    assert got.dtype == dtype, f"result dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape, f"result shape {got.shape}, expected {ref.shape}"
    if got.size == 0:
        return
    err = np.abs(got.astype(np.float64) - ref)
    tol = gemm_tolerance(bound, k, dtype)
    bad = ~(err <= tol)  # NaN in the result counts as bad
    if bad.any():
        i, j = np.argwhere(bad)[0]
        pytest.fail(
            f"{int(bad.sum())} of {got.size} entries wrong, shape {got.shape}, k={k}; first at "
            f"({i}, {j}): got {got[i, j]!r}, expected {ref[i, j]!r} (tolerance {tol[i, j]:.3g})"
        )


def make_matrix(rng, shape, dtype, *, order="C", step=(1, 1), flip=(False, False), offset=0):
    """A `shape` matrix of uniform(-1, 1) values in `dtype`, laid out as asked:
    order "C" or "F" (memory order of the parent array; "F" is also what a
    transposed C array looks like), step = slicing step per axis, flip =
    negative stride per axis, offset = elements skipped at the start of each
    axis.  With step/offset it is a view into a larger parent array."""
    m, n = shape
    s0, s1 = step
    pm, pn = offset + max(m, 1) * s0, offset + max(n, 1) * s1
    parent = np.array(rng.uniform(-1, 1, (pm, pn)).astype(dtype), order=order)
    view = parent[offset : offset + m * s0 : s0, offset : offset + n * s1 : s1]
    if flip[0]:
        view = view[::-1, :]
    if flip[1]:
        view = view[:, ::-1]
    assert view.shape == (m, n)
    return view


# ---- Shapes ---------------------------------------------------------------------

# (m, n, k): empty, ones, primes, odd mixes.
BASIC_SHAPES = [
    (0, 0, 0),
    (0, 5, 3),
    (4, 0, 3),
    (4, 5, 0),
    (1, 1, 1),
    (1, 1, 7),
    (1, 7, 1),
    (7, 1, 1),
    (2, 3, 5),
    (5, 3, 2),
    (7, 11, 13),
    (13, 7, 3),
    (17, 19, 23),
    (23, 2, 19),
    (97, 101, 103),
]
# The blocked rung's fixed tiles (BI=64, BK=128, BJ=256 in csrc/05_blocked.cpp), each side of them.
BLOCKED_TILE_SHAPES = [(63, 255, 127), (64, 256, 128), (65, 257, 129)]
# Deep-learning shapes: an MLP 784-512-256-10 at batch 32, forward and backward.
MLP_SHAPES = [
    (32, 512, 784),  # X (32, 784) @ W1 (784, 512)
    (32, 256, 512),
    (32, 10, 256),
    (784, 512, 32),  # dW1 = X.T (784, 32) @ dY (32, 512)
    (32, 784, 512),  # dX = dY (32, 512) @ W1.T (512, 784)
]


def block_edge_shapes(blocking: dict):
    """(m, n, k) shapes just below, on and above the packed kernels' block sizes
    (mr, nr: register tile; kc: panel depth; mc: rows of an A block; nc: panel width)."""
    mr, nr, kc, nc = blocking["mr"], blocking["nr"], blocking["kc"], blocking["nc"]
    mc = blocking.get("mc", 8 * mr)
    shapes = [
        (mr - 1, nr - 1, kc - 1),
        (mr, nr, kc),
        (mr + 1, nr + 1, kc + 1),
        (2 * mr + 1, nc - 1, 2 * kc + 1),  # two full panels plus one column of depth
        (mr - 1, nc + 1, kc),  # one column into the second B panel
        (3 * mr, nc, kc - 1),
        (1, nc + nr + 1, 3),
        (mr + 1, 1, kc + 1),
        (4 * mr + 3, 2 * nc + 1, 17),  # three jc panels, ragged last one
        (mc - 1, nr + 1, kc + 1),  # one A block, its last strip ragged
        (mc + 1, 2 * nr - 1, 9),  # one row into a second A block
        (2 * mc + mr + 1, nr, kc),  # three A blocks (split evenly), a ragged last strip
    ]
    return sorted({tuple(max(d, 1) for d in s) for s in shapes})


def blocking_of(dtype, arch=None) -> dict:
    """The packed kernels' block sizes for dtype under `arch` (default: the current one)."""
    name = np.dtype(dtype).name
    if arch is None:
        return whygpu.cpu_info()["blocking"][name]
    return dict(whygpu._core.blocking(name, arch))


def replace_kernel(monkeypatch, name: str, **changes):
    """Swap registry entry `name` for a modified copy (e.g. unavailable=..., run=...)
    for one test; the registry keeps both a table and a by-name dict."""
    import dataclasses

    from whygpu import _registry

    if "run" in changes:  # a replaced run must not be bypassed by the C++ shortcut
        changes.setdefault("fast", None)
    new = dataclasses.replace(_registry.KERNELS[name], **changes)
    monkeypatch.setitem(_registry.KERNELS, name, new)
    monkeypatch.setattr(_registry, "_TABLE", [new if k.name == name else k for k in _registry._TABLE])
    return new


# ---- The CUDA emulation (tests/cuda_emu) -------------------------------------

EMU_DIR = pathlib.Path(__file__).resolve().parent / "cuda_emu"


def emu_compiler_ok(tmp: pathlib.Path) -> bool:
    """Whether g++ can build the emulation (C++20, and ucontext.h where the CPU is not x86-64)."""
    cxx = shutil.which("g++")
    if cxx is None:
        return False
    probe = tmp / "probe.cpp"
    probe.write_text("#include <bit>\n#include <ucontext.h>\nint main() { return std::popcount(1u) - 1; }\n")
    r = subprocess.run(
        [cxx, "-std=c++20", "-pthread", str(probe), "-o", str(tmp / "probe")], capture_output=True, text=True
    )
    return r.returncode == 0


def emu_cache() -> pathlib.Path:
    """Where the emulation's builds are cached, by content hash (build_emulated.default_cache():
    ~/.cache/whygpu-tests/cuda-emu, or $WHYGPU_EMU_CACHE)."""
    return emu_runner().build_emulated.default_cache()


def emu_runner():
    """tests/cuda_emu/run_gpu_tests.py as a module: make_site(), pytest_command()."""
    spec = importlib.util.spec_from_file_location("whygpu_run_gpu_tests", EMU_DIR / "run_gpu_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- Planted results ------------------------------------------------------------------


def planted_ladder_record(kernel: str, n: int, gflops: float, threads: int = 1, spread: float = 0.02) -> dict:
    """One ladder measurement as whygpu.bench.ladder writes it: n x n float32 at `gflops`, three samples
    `spread` apart (a planted result for report and figure tests; nothing is timed)."""
    flops = 2.0 * n**3
    t = flops / gflops / 1e9
    times = [t, t * (1 + spread), t * (1 - spread)]
    return {
        "kernel": kernel,
        "n": n,
        "dtype": "float32",
        "device": "cpu",
        "precision": "float32",
        "threads": threads,
        "flops": flops,
        "seconds": statistics.median(times),
        "seconds_min": min(times),
        "samples": 3,
        "times": times,
        "gflops": flops / statistics.median(times) / 1e9,
        "gflops_low": flops / max(times) / 1e9,
        "gflops_high": flops / min(times) / 1e9,
    }


def planted_sweep(args: list, ranks: int) -> dict:
    """What the scale-out worker's ``--mode sweep`` returns, from the ring model (5 us, 2 GB/s) instead
    of a bare Allreduce: the fake runners of the scale-out tests answer it with this."""
    from whygpu import scaleout as so

    sizes = [int(x) for x in args[args.index("--sizes") + 1].split(",")]
    secs = [so.ring_allreduce_s(s, ranks, 5e-6, 2e9) for s in sizes]
    return {"ranks": ranks, "bytes": sizes, "seconds": secs, "seconds_min": secs, "seconds_max": secs,
            "reps": [5] * len(sizes)}  # fmt: skip


# -- workers under the real mpiexec (tests/mpi/*.py) ------------------------------------------
MPIEXEC = shutil.which("mpiexec") or str(pathlib.Path(sys.executable).parent / "mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (pip install mpi4py mpich)")
needs_mpiexec = pytest.mark.skipif(
    not (HAVE_MPI4PY and os.access(MPIEXEC, os.X_OK)), reason="needs mpi4py and mpiexec (pip install mpi4py mpich)"
)


def mpi_run(worker, ranks: int, *args, pythonpath: str | None = None, timeout: float = 120, **env_extra):
    """``mpiexec -n ranks python worker args...`` with one thread per rank and the whygpu under test
    (or ``pythonpath``'s) on the path; a hang ends at ``timeout`` and fails the test."""
    env = dict(os.environ, WHYGPU_NUM_THREADS="1", OMP_NUM_THREADS="1", **env_extra)
    env["PYTHONPATH"] = pythonpath or str(pathlib.Path(whygpu.__file__).resolve().parent.parent)
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, str(worker), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def mpi_results(worker, ranks: int, *args, pythonpath: str | None = None, timeout: float = 120) -> list[dict]:
    """Every rank's dict from a worker whose rank 0 prints one line ``RESULT {"size": P, "ranks": [...]}``."""
    res = mpi_run(worker, ranks, *args, pythonpath=pythonpath, timeout=timeout)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(lines[0][len("RESULT ") :])
    assert report["size"] == ranks
    return report["ranks"]
