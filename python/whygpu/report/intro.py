"""The opening of the report: the title, the machine in one line, and why matrix products matter."""

from __future__ import annotations

from pathlib import Path

from ..bench.trust import QUIET_THRESHOLD, merge_quiet, quiet_caution
from ._format import Block, Docs, _cache, _pct


def _machine_line(doc: dict) -> str:
    m = doc.get("machine", {})
    cpu = m.get("cpu", {})
    caches = cpu.get("caches", {})
    cache_txt = ", ".join(f"{k} {_cache(v)}" for k, v in caches.items())
    return (
        f"{cpu.get('model', 'unknown CPU')}, {cpu.get('cores', '?')} cores usable, "
        f"instruction set {cpu.get('arch', '?')}" + (f", caches {cache_txt}" if cache_txt else "")
    )


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """The title and the opening paragraphs (not numbered; always there)."""
    any_doc = next(iter(docs.values()))
    m = any_doc.get("machine", {})
    blocks: list[Block] = [("h1", "Why parallel hardware speeds up deep learning, measured on this machine")]
    if not m and "benchmark" in docs:  # pytest-benchmark describes the machine its own way
        mi = docs["benchmark"].get("machine_info", {})
        cpu = mi.get("cpu", {}) if isinstance(mi.get("cpu"), dict) else {}
        blocks.append(
            (
                "p",
                "Machine (from pytest-benchmark): "
                + ", ".join(
                    str(x)
                    for x in (
                        cpu.get("brand_raw") or mi.get("processor"),
                        f"{cpu.get('count')} CPUs" if cpu.get("count") else None,
                        f"Python {mi.get('python_version')}" if mi.get("python_version") else None,
                    )
                    if x
                )
                + ".",
            )
        )
    if m:
        blocks.append(
            (
                "p",
                f"Machine: {_machine_line(any_doc)}. Measured {m.get('time', '')} with whygpu "
                f"{m.get('versions', {}).get('whygpu', '?')}, NumPy {m.get('versions', {}).get('numpy', '?')}"
                f", compiler {m.get('compiler', '?')}.",
            )
        )
    # The quiet guard's records (whygpu.bench.trust): other programs' CPU time and steal time before and
    # during every measurement block; an older document has only the load when its run started.
    caution = quiet_caution(merge_quiet([d.get("quiet") for d in docs.values()]))
    busy = [d.get("machine", {}).get("cpu_busy_before") for d in docs.values() if not d.get("quiet")]
    busy = [x for x in busy if isinstance(x, (int, float))]
    if caution is None and busy and max(busy) > QUIET_THRESHOLD:
        caution = (
            f"the machine was not quiet: other programs used up to {100 * max(busy):.0f}% of its "
            f"{m.get('cpu', {}).get('cores') or 1} cores just before a measurement started"
        )
    if caution:
        blocks.append(
            (
                "p",
                f"Caution: {caution}. Other programs take cores and caches away, so the multi-thread figures "
                "(openmp, NumPy on all threads, scaling) come out lower and noisier than this machine can do.",
            )
        )
    runs = [r for r in docs.get("train", {}).get("runs", []) if not r.get("skipped")]
    text = (
        "Training a neural network is, mostly, multiplying matrices: every layer's forward pass is one "
        "matrix product and its backward pass two more. "
    )
    if runs:
        fast = min(runs, key=lambda r: r["step_s"])
        lo, hi = min(r["matmul_share"] for r in runs), max(r["matmul_share"] for r in runs)
        text += (
            f"On this machine {_pct(100 * fast['matmul_share'])} of a training step on the fastest back end "
            f"({fast['backend']}) was spent inside matrix multiplication, and {_pct(100 * lo)} to "
            f"{_pct(100 * hi)} across all back ends (see the training section). "
        )
    text += (
        "A matrix product is also massively parallel: every element of the result can be computed "
        "independently. This report measures how much each kind of parallel hardware -- vector (SIMD) "
        "units, several cores, and memory that keeps them fed -- speeds matrix multiplication up, on "
        "this computer, rung by rung; a GPU is the same idea taken to thousands of lanes."
    )
    blocks.append(("p", text))
    return blocks
