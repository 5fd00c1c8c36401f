"""Benchmark: the training step of the 784-512-256-10 MLP at batch 1024 on
the GPU (``cuda`` back end), next to the best CPU back end in the same run.
Skipped without a usable GPU.

Three ways to run the step:

* ``openmp`` / ``numpy`` at every core: the CPU references (the faster of
  the two is "the best CPU back end");
* ``cuda, copied``: the batch is a NumPy array, copied to the GPU every step
  (and the labels with it), as when data come from host memory;
* ``cuda, resident``: the batch was copied once and stays in GPU memory;
* ``cuda, copied, graph`` / ``cuda, resident, graph``: the same, with the
  whole step replayed as one CUDA graph (``nn.GraphStep``, as ``fit`` does).

Every step ends with the loss on the host and the GPU idle (the step waits
for its asynchronous work).  Each benchmark's extra_info records ms/step
and, for the GPU, the profiler's breakdown (matmul share, share of time in
host <-> device copies, bytes copied per step).  The speedup over the best
CPU back end -- the issue's "at least 10x" figure -- is measured by
test_gpu_training_speedup with the implementations in alternation, printed
and recorded in its extra_info, not asserted: speed is measured here, and
whatever it is, it is reported.

    python -m pytest benchmarks/test_bench_train_cuda.py -s --benchmark-json=train_gpu.json
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

import whygpu
import whygpu.cuda as wc
from whygpu import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _train_common import SIZES, breakdown, step_flops, threads, whygpu_step  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not wc.is_available(), reason=f"no usable GPU: {wc.unavailable_reason()}"),
]

BATCH = 1024
ALL_CORES = whygpu._threads._cpus_available()
CPU = [b for b in ("openmp", "numpy") if b in nn.backends()]
IMPLS = {  # name: (back end, threads, data resident on the GPU, step as a CUDA graph)
    **{cpu: (cpu, ALL_CORES, False, False) for cpu in CPU},
    "cuda, copied": ("cuda", 1, False, False),
    "cuda, resident": ("cuda", 1, True, False),
    "cuda, copied, graph": ("cuda", 1, False, True),
    "cuda, resident, graph": ("cuda", 1, True, True),
}
RUNG = {
    "openmp": 7,
    "numpy": 99,
    "cuda, copied": 14,
    "cuda, resident": 14,
    "cuda, copied, graph": 14,
    "cuda, resident, graph": 14,
}


def _step(impl):
    backend, n_threads, resident, graph = IMPLS[impl]
    with threads(backend, n_threads):
        step, _ = whygpu_step(backend, BATCH, resident, graph)
    return step


def _gpu_info(extra: dict, resident: bool) -> None:
    b = breakdown("cuda", BATCH, resident, steps=5)
    extra.update(
        profiled_ms_per_step=round(b["step_ms"], 4),
        matmul_share=round(b["matmul_share"], 3),
        transfer_share=round(b["transfer_share"], 4),
        transfer_ms_per_step=round(1e3 * b["transfer_s"] / b["steps"], 4),
        transfer_bytes_per_step=b["transfer_bytes"] // b["steps"],
    )


@pytest.mark.parametrize("impl", list(IMPLS))
def test_train_step_gpu(benchmark, impl):
    backend, n_threads, resident, graph = IMPLS[impl]
    benchmark.group = f"train step 784-512-256-10, batch {BATCH}, GPU vs CPU"
    benchmark.extra_info.update(
        suite="train-gpu",
        row=impl if backend == "cuda" else f"{impl} x{n_threads}",
        column=f"batch {BATCH}",
        kernel=wc.DEFAULT_KERNEL if backend == "cuda" else backend,
        rung=RUNG[impl],
        threads=n_threads,
        batch=BATCH,
        flops=step_flops(BATCH),
        resident=resident,
        cuda_graph=graph,
    )
    step = _step(impl)
    with threads(backend, n_threads):
        for _ in range(3):  # warm up: buffers, the GPU's memory pool, thread pools
            step()
        loss = benchmark.pedantic(step, rounds=1 if benchmark.disabled else 20, iterations=1, warmup_rounds=1)
    if benchmark.enabled:
        benchmark.extra_info["ms_per_step"] = 1e3 * benchmark.stats["median"]
    if backend == "cuda" and not graph:  # (a profiled step is never a graph)
        _gpu_info(benchmark.extra_info, resident)
    assert 0.0 < loss < 10.0  # a real cross-entropy over 10 classes


def _median_ms(step, backend, n_threads, n):
    with threads(backend, n_threads):
        step()  # one untimed step after switching (no settling pause: as a user alternates them)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def test_gpu_training_speedup(benchmark):
    """ms/step of each implementation, measured in alternation (rounds of
    A, B, C, ...) so that load from elsewhere hits all alike; the speedup of
    the GPU over the best CPU back end, with data copied every step and with
    data kept on the GPU; and how much of the copied step is the copy."""
    rounds, n = (1, 2) if benchmark.disabled else (5, 10)
    steps = {impl: _step(impl) for impl in IMPLS}
    for impl, step in steps.items():
        with threads(IMPLS[impl][0], IMPLS[impl][1]):
            for _ in range(3):
                step()
    per_round = {impl: [] for impl in IMPLS}
    for _ in range(rounds):
        for impl, step in steps.items():
            backend, n_threads, _, _ = IMPLS[impl]
            per_round[impl].append(_median_ms(step, backend, n_threads, n))
    ms = {impl: float(np.median(v)) for impl, v in per_round.items()}
    best_cpu = min(CPU, key=lambda c: ms[c])
    copied, resident = ms["cuda, copied"], ms["cuda, resident"]
    info = {
        "gpu": wc.device_info()["name"],
        "batch": BATCH,
        "sizes": list(SIZES),
        "cpu_threads": ALL_CORES,
        "ms_per_step": {k: round(v, 4) for k, v in ms.items()},
        "best_cpu": best_cpu,
        "speedup_copied": ms[best_cpu] / copied,
        "speedup_resident": ms[best_cpu] / resident,
        # the copy's cost, as the unprofiled difference between the two ways of feeding the GPU
        "copy_share_of_copied_step": max(copied - resident, 0.0) / copied,
        "speedup_copied_graph": ms[best_cpu] / ms["cuda, copied, graph"],
        "speedup_resident_graph": ms[best_cpu] / ms["cuda, resident, graph"],
        "graph_gain_resident": resident / ms["cuda, resident, graph"],
        "graph_gain_copied": copied / ms["cuda, copied, graph"],
        "target_speedup": 10.0,
    }
    b = {}
    _gpu_info(b, resident=False)
    info["profiled_transfer_share_copied"] = b["transfer_share"]
    info["transfer_bytes_per_step_copied"] = b["transfer_bytes_per_step"]
    benchmark.group = f"train step 784-512-256-10, batch {BATCH}: GPU speedup"
    benchmark.extra_info.update(info)
    print(f"\n{info['gpu']}: training step 784-512-256-10, batch {BATCH} (ms/step, median of {rounds} rounds)")
    for impl in IMPLS:
        print(f"  {impl:16s} {ms[impl]:9.3f}" + (f"   ({ALL_CORES} threads)" if impl in CPU else ""))
    print(
        f"  GPU speedup over the best CPU back end ({best_cpu}): {info['speedup_copied']:.1f}x with the data "
        f"copied every step, {info['speedup_resident']:.1f}x with the data kept on the GPU (target: >= 10x)"
    )
    print(
        f"  with the step as one CUDA graph: {info['speedup_copied_graph']:.1f}x copied, "
        f"{info['speedup_resident_graph']:.1f}x resident; the graph made the step "
        f"x{info['graph_gain_copied']:.2f} (copied) and x{info['graph_gain_resident']:.2f} (resident) faster"
    )
    print(
        f"  copying the batch: {100 * info['copy_share_of_copied_step']:.1f}% of the copied step "
        f"(profiled: {100 * info['profiled_transfer_share_copied']:.1f}%, "
        f"{info['transfer_bytes_per_step_copied'] / 1e6:.2f} MB per step)"
    )
    resident_step = steps["cuda, resident"]
    loss = benchmark.pedantic(resident_step, rounds=1 if benchmark.disabled else 10, iterations=1)
    assert 0.0 < loss < 10.0
    assert all(v > 0 for v in ms.values())
