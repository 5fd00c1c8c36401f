"""``whygpu info``: what this machine offers (CPU, caches, OpenMP, BLAS, CUDA, kernels, versions)."""

from __future__ import annotations

import argparse

from .. import _idle_threads
from ._common import _common_args, _prepare_out, _save


def add_parser(sub) -> argparse.ArgumentParser:
    return sub.add_parser(
        "info", parents=[_common_args()], help="CPU, cores, instruction set, caches, OpenMP, CUDA, versions"
    )


def _info_doc() -> dict:
    from .._registry import KERNELS, default_kernel
    from ..bench.machine import machine_info

    return {
        "schema": "whygpu.info/1",
        "machine": machine_info(),
        "kernels": [k for k, v in KERNELS.items() if v.available],
        "default_kernel": default_kernel(),
        "unavailable": {k: v.unavailable() for k, v in KERNELS.items() if not v.available},
    }


def _gpu_details(d: dict) -> str:
    parts = []
    if d.get("multiprocessors"):
        parts.append(f"{d['multiprocessors']} SMs")
    if d.get("memory_bytes"):
        parts.append(f"{d['memory_bytes'] / 2**30:.0f} GiB")
    if d.get("driver_version"):
        parts.append(f"driver CUDA {d['driver_version']}")
    return f" ({', '.join(parts)})" if parts else ""


def _blas_line(m: dict) -> str:
    """Each BLAS loaded, NumPy's with its kernel's instruction set against the CPU's best and, when it is
    narrower, why: 'openblas 0.3.31 (Haswell kernel, AVX2, below this CPU's AVX-512: OPENBLAS_CORETYPE=Haswell
    is set; 2 threads)'."""
    from ..bench.machine import blas_summary, numpy_blas

    libs = m.get("blas") or []
    ours, facts = numpy_blas(libs), m.get("blas_facts")
    parts = []
    for b in libs:
        kernel = blas_summary(facts) if b is ours and facts else str(b.get("architecture"))
        n = b.get("num_threads")
        parts.append(f"{b.get('internal_api')} {b.get('version')} ({kernel}; {n} thread{'' if n == 1 else 's'})")
    if not parts and facts and facts.get("library") != "unknown":  # Accelerate: known from NumPy's build only
        parts.append(f"{facts['library']} ({blas_summary(facts)})")
    return "; ".join(parts) or "unknown"


def _print_info(doc: dict) -> None:
    from .._blocking import blocking_lines
    from ..bench.measure import format_binary_bytes

    m, cpu = doc["machine"], doc["machine"]["cpu"]

    blk = cpu.get("blocking", {}).get("float32", {})
    cuda = m["cuda"]
    rows = [
        ("CPU", f"{cpu.get('model', '?')} ({cpu.get('machine', '?')})"),
        (
            "cores",
            f"{cpu.get('cores', '?')} usable"
            + (
                f" on {cpu['physical_cores']} physical cores (SMT: {cpu['cores'] // cpu['physical_cores']} threads "
                f"per core share one core's FMA units)"
                if cpu.get("physical_cores") and cpu.get("cores") and cpu["physical_cores"] < cpu["cores"]
                else ""
            )
            + f"; default threads {m.get('threads_default')}",
        ),
        (
            "instruction set",
            f"{cpu.get('arch', '?')} (best {cpu.get('best_arch', '?')}; supported: "
            f"{', '.join(cpu.get('supported_archs', []))})",
        ),
        (
            "micro-kernel",
            f"{blk.get('micro_kernel', '?')} (MR={blk.get('mr')}, NR={blk.get('nr')}, "
            f"KC={blk.get('kc')}, MC={blk.get('mc')}, NC={blk.get('nc')}; how, below)"
            if blk
            else "n/a",
        ),
        ("caches", ", ".join(f"{k} {format_binary_bytes(v)}" for k, v in cpu.get("caches", {}).items()) or "unknown"),
        ("OpenMP", "yes" if cpu.get("openmp") else "no (the openmp kernel is unavailable)"),
        ("BLAS (NumPy)", _blas_line(m)),
        # how long each library's idle threads hold a core after a call (they fight when alternated)
        *(("idle threads", line) for line in _idle_threads.describe()),
        (
            "CUDA",
            f"available: {cuda.get('device', 'GPU')}{_gpu_details(cuda.get('device_info') or {})}"
            if cuda.get("available")
            else f"not available ({cuda.get('reason')})",
        ),
        ("kernels", ", ".join(doc["kernels"])),
        (
            "default kernel",
            doc["default_kernel"]
            if doc["default_kernel"] == "openmp"
            else f"{doc['default_kernel']} (this build has no OpenMP: whygpu.matmul without kernel= runs on one core)",
        ),
    ]
    by_reason: dict[str, list[str]] = {}
    for k, why in doc["unavailable"].items():  # one line per reason, not per kernel
        by_reason.setdefault(why, []).append(k)
    rows += [("unavailable", f"{', '.join(ks)}: {why}") for why, ks in by_reason.items()]
    rows.append(
        (
            "versions",
            f"whygpu {m['versions']['whygpu']}, Python {m['python']}, NumPy "
            f"{m['versions']['numpy']}, matplotlib {m['versions']['matplotlib']}, "
            f"{m.get('compiler')}",
        )
    )
    rows.append(("OS", m.get("os", "?")))
    w = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    derivation = blocking_lines("float32", cpu)
    if derivation:
        print("\nblock sizes of the packed and openmp kernels (WHYGPU_BLOCKING=kc,mc,nc overrides them):")
        print("\n".join("  " + line for line in derivation))


def run(args) -> int:
    out = _prepare_out(args.out) if args.out else None  # a look at the machine: no report folder unless asked
    doc = _info_doc()
    _print_info(doc)
    if out is not None:
        _save(out, "info", doc, plot=False)
    return 0
