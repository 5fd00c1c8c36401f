"""Benchmark: one training step (forward + backward + SGD) of the
784-512-256-10 MLP at batch 32, 256 and 1024, on 1 and 2 threads, on the
``numpy`` back end, the ``openmp`` back end and PyTorch CPU (skipped when
PyTorch is not installed).  The timings are pytest-benchmark's; each
whygpu benchmark's extra_info also records the matmul share of the step
(from whygpu.nn's profiler), and the fields of benchmarks/report_table.py
(suite "train"), so a full run prints them as a table with each row's ratio
to NumPy at the same thread count.

    python -m pytest benchmarks/test_bench_train.py

prints one table per batch: the three implementations at 1 and 2 threads side by side
(named impl-xT-Bbatch, e.g. openmp-x2-B256).  For a
table measured with A/B alternation see benchmarks/train_step_table.py.
"""

import os
import sys

import pytest

import whygpu
from whygpu import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _train_common import BATCHES, THREADS, matmul_share, step_flops, threads, torch_step, whygpu_step  # noqa: E402

IMPLS = ["numpy", "openmp", "torch"]
RUNG = {"openmp": 7, "numpy": 99, "torch": 100}  # report_table's row order: ours first, NumPy, then PyTorch


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("n_threads", THREADS, ids=lambda t: f"x{t}")
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(benchmark, impl, n_threads, batch):
    if impl == "torch":
        pytest.importorskip("torch", reason="PyTorch is optional: pip install torch to compare")
    elif impl not in nn.backends():
        pytest.skip(f"back end {impl!r} is unavailable: {whygpu.kernel_info(impl)}")
    benchmark.group = f"train step 784-512-256-10, batch {batch}"  # both thread counts: NumPy's at each
    benchmark.extra_info.update(
        suite="train",
        row=f"{impl} x{n_threads}",
        column=f"batch {batch}",
        kernel=impl,
        rung=RUNG[impl],
        threads=n_threads,
        batch=batch,
        flops=step_flops(batch),
    )
    with threads(impl, n_threads):
        if impl == "torch":
            step = torch_step(batch)
        else:
            step, _ = whygpu_step(impl, batch)
            steps = 1 if benchmark.disabled else 5
            benchmark.extra_info["matmul_share"] = round(matmul_share(impl, batch, steps), 3)
        for _ in range(2):  # warm up: buffers, thread pools, caches
            step()
        loss = benchmark(step)
    if not benchmark.disabled:
        benchmark.extra_info["ms_per_step"] = 1e3 * benchmark.stats["median"]
    assert 0.0 < loss < 10.0  # a real cross-entropy over 10 classes, not garbage
