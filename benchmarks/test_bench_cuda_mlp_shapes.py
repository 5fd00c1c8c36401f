"""Benchmark: the GEMMs of one training step of the 784-512-256-10 MLP at
batch 1024 and 8192, on ``cuda_warptile`` with split-k chosen by the kernel,
with split-k off (``split_k=1``), and on cuBLAS (strict float32, through CuPy
or PyTorch when either is installed).  Skipped without a GPU.

The weight gradients dW = dY^T X are the shapes split-k is for: few tiles of
C (512 x 784 is 28 tiles of 128 x 128, 10 x 256 is 2) and k = the batch.
Data stay on the GPU; each sample is a batch of calls, one synchronisation.
test_mlp_shapes_table prints microseconds per product side by side, with
the ratios, and records them in extra_info:

    python -m pytest benchmarks/test_bench_cuda_mlp_shapes.py -s --benchmark-json=mlp_shapes.json
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import whygpu.cuda as wc

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not wc.is_available(), reason=f"no usable GPU: {wc.unavailable_reason()}"),
]

# name: (m, n, k, trans_a, trans_b) as the cuda back end calls them (row-major, no copies)
SHAPES = {}
for _b in (1024, 8192):
    SHAPES.update(
        {
            f"forward x.W1^T, batch {_b}": (_b, 512, 784, False, True),
            f"dW1 = dY^T.X, batch {_b}": (512, 784, _b, True, False),
            f"dX2 = dY.W2, batch {_b}": (_b, 512, 256, False, False),
            f"forward h.W3^T, batch {_b}": (_b, 10, 256, False, True),
            f"dW3 = dY^T.h, batch {_b}": (10, 256, _b, True, False),
        }
    )


def _operands(m, n, k, ta, tb, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _cublas(a, b, ta, tb):
    """run() doing op(a) @ op(b) with cuBLAS on resident data, or None."""
    lib = wc.vendor_library()
    if lib == "cupy":
        import cupy as cp

        ca, cb = cp.asarray(a), cp.asarray(b)
        oa, ob = (ca.T if ta else ca), (cb.T if tb else cb)

        def run():
            cp.matmul(oa, ob)

        return run, lambda: cp.cuda.Device().synchronize()
    if lib == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        torch.backends.cuda.matmul.allow_tf32 = False
        ta_, tb_ = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
        oa, ob = (ta_.T if ta else ta_), (tb_.T if tb else tb_)

        def run():
            torch.matmul(oa, ob)

        return run, torch.cuda.synchronize
    return None


def _seconds(run, sync, calls: int = 20, samples: int = 7) -> float:
    run()
    sync()
    best = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        sync()
        best.append((time.perf_counter() - t0) / calls)
    return float(np.median(best))


def _impls(name):
    m, n, k, ta, tb = SHAPES[name]
    a, b = _operands(m, n, k, ta, tb)
    da, db, dc = wc.to_device(a), wc.to_device(b), wc.empty((m, n))
    out = {
        "warptile, split-k chosen": (lambda: wc.gemm(da, db, dc, trans_a=ta, trans_b=tb, split_k=0), wc.synchronize),
        "warptile, no split": (lambda: wc.gemm(da, db, dc, trans_a=ta, trans_b=tb, split_k=1), wc.synchronize),
    }
    cub = _cublas(a, b, ta, tb)
    if cub is not None:
        out["cuBLAS"] = cub
    return out


@pytest.mark.parametrize("name", list(SHAPES))
def test_mlp_shape(benchmark, name):
    m, n, k, ta, tb = SHAPES[name]
    run, sync = _impls(name)["warptile, split-k chosen"]

    def call():
        run()
        sync()

    benchmark.group = "MLP GEMM shapes on the GPU"
    benchmark.extra_info.update(kernel="cuda_warptile", m=m, n=n, k=k, trans_a=ta, trans_b=tb, flops=2 * m * n * k)
    benchmark.pedantic(call, rounds=1 if benchmark.disabled else 50, iterations=1, warmup_rounds=1)


def test_mlp_shapes_table(benchmark):
    """Microseconds per product for each implementation, side by side in one run."""
    table = {}
    for name in SHAPES:
        table[name] = {
            impl: 1e6
            * _seconds(run, sync, calls=2 if benchmark.disabled else 20, samples=1 if benchmark.disabled else 7)
            for impl, (run, sync) in _impls(name).items()
        }
    impls = list(next(iter(table.values())))
    print("\nµs per product (median); ratio = cuBLAS time / warptile time (1 = as fast as cuBLAS)")
    print(f"{'shape':32s}" + "".join(f"{i:>26s}" for i in impls) + "   split-k gain   vs cuBLAS")
    for name, row in table.items():
        gain = row["warptile, no split"] / row["warptile, split-k chosen"]
        vs = f"{row['cuBLAS'] / row['warptile, split-k chosen']:.2f}" if "cuBLAS" in row else "n/a"
        print(f"{name:32s}" + "".join(f"{row[i]:26.1f}" for i in impls) + f"   x{gain:<11.2f}  {vs}")
    benchmark.group = "MLP GEMM shapes on the GPU: table"
    benchmark.extra_info["us_per_product"] = {k: {i: round(v, 2) for i, v in r.items()} for k, r in table.items()}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert all(v > 0 for r in table.values() for v in r.values())
