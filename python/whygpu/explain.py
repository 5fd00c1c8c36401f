"""``whygpu.explain(m, n, k)``: why each kernel takes the time it takes.

For one matrix product it lists, per kernel, the work (FLOPs), the bytes the
kernel's loops move and from where, the arithmetic intensity, the roof that
limits it, the time the roofline model predicts -- and the time measured,
side by side, with a sentence on why a kernel sits below its roof.  Next to
the speed, each measured kernel states the precision it multiplies in and
its error against a float64 reference (the max relative error,
:data:`whygpu.bench.ladder.ERROR_METRIC`): the tensor-core rungs trade
precision (bf16 about 1e-2, TF32 about 1e-3) for speed::

    >>> import whygpu
    >>> print(whygpu.explain(512, 512, 512))      # doctest: +SKIP

The roofs are measured once per process (about half a second) and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from ._memory import check_product_fits
from ._threads import check_threads, get_num_threads
from .bench.machine import isa_name
from .bench.trust import QuietGuard, quiet_caution
from .predict.roofline import COMPUTE_ROOFS, kernel_model, measure_machine
from .predict.roofline_trust import (
    MODEL_ERROR,
    measured_fields,
    pct_text,
    plain,
    settle_impossible,
)
from .why import NOT_SAID, _fmt_s, blas_why, busy_while, why_below, why_row  # noqa: F401

__all__ = [
    "explain",
    "Explanation",
    "why_below",
    "blas_why",
    "roof_label",
    "busy_while",
    "format_bytes",
    "format_error",
    "NOT_SAID",
]

# Measured roofs, reused within this process: threads -> the CPU's; "gpu" -> the GPU's (None: no usable GPU).
_MACHINES: dict[int | str, Any] = {}


def roof_label(row: dict) -> str:
    """The compute roof a row is held against: 'simd_1t', and for NumPy the ISA of its BLAS kernel's roof
    ('simd_1t (AVX2)')."""
    isa = row.get("roof_isa")
    return f"{row['compute_roof']} ({isa_name(isa)})" if isa else str(row["compute_roof"])


def format_error(e: float | None) -> str:
    """A relative error in two significant digits ('-' when not measured)."""
    if e is None:
        return "-"
    return "0" if e == 0 else f"{e:.2g}"


def format_flops(f: float) -> str:
    """``480 FLOP``, ``2.1 kFLOP``, ``524.3 MFLOP``, ``2,000.0 GFLOP``: a unit that fits the product."""
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if f >= scale:
            return f"{f / scale:,.1f} {unit}"
    return f"{f:.0f} FLOP"


def format_bytes(b: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= f:
            return f"{plain(b / f)} {unit}"
    return f"{b:.0f} B"


@dataclass
class Explanation:
    """The result of :func:`explain`: ``rows`` (one dict per kernel: the
    roofline model plus ``measured_s``/``measured_gflops`` or ``skipped``),
    ``roofs`` (the measured machine) and the shape.  ``str()`` is a table."""

    m: int
    n: int
    k: int
    dtype: str
    rows: list[dict] = field(default_factory=list)
    roofs: dict = field(default_factory=dict)
    # Kernels asked for (or known) that cannot run here: {"kernel", "device", "reason"}.
    unavailable: list[dict] = field(default_factory=list)
    quiet: dict | None = None
    # True when a figure came out impossible and the roofs were measured again (each: best of both).
    roofs_remeasured: bool = False

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    def as_dict(self) -> dict:
        from .bench.ladder import ERROR_METRIC

        return {
            "schema": "whygpu.explain/1",
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "dtype": self.dtype,
            "flops": self.flops,
            "rows": self.rows,
            "roofs": self.roofs,
            "unavailable": self.unavailable,
            "error_metric": ERROR_METRIC,
            "model_error": MODEL_ERROR,
            "roofs_remeasured": self.roofs_remeasured,
            "quiet": self.quiet,
        }

    @property
    def caution(self) -> str | None:
        """What to say when other programs (or a hypervisor) took the cores while this was measured."""
        return quiet_caution(self.quiet)

    def __str__(self) -> str:
        return self.text()

    def text(self, caution: bool = True) -> str:
        """The table and the notes; ``caution=False`` leaves out the busy-machine caution (the CLI
        prints it on stderr)."""
        s = 4 if self.dtype == "float32" else 8
        compulsory = s * (self.m * self.k + self.k * self.n + self.m * self.n)
        lines = [
            f"C = A @ B with A {self.m}x{self.k}, B {self.k}x{self.n} ({self.dtype}): "
            f"{format_flops(self.flops)} on {format_bytes(compulsory)} of data "
            f"(at best {self.flops / compulsory:.1f} flop/byte if each matrix moved once)",
            "",
        ]
        head = (
            "kernel",
            "roof",
            "roof GFLOP/s",
            "bytes moved",
            "flop/B",
            "bound",
            "predicted",
            "measured",
            "of roof",
            "precision",
            "max rel err",
        )
        table = [head]
        for r in self.rows:
            worst = max(r["traffic"], key=lambda t: t["seconds"]) if r["traffic"] else None
            moved = f"{format_bytes(worst['bytes'])} {worst['level']}" if worst else "(in L1)"
            meas = _fmt_s(r.get("measured_s")) if "measured_s" in r else "skipped"
            ratio = "-"
            if "measured_s" in r:
                ratio = pct_text(r["predicted_s"] / r["measured_s"]) + (" (disturbed)" if r.get("disturbed") else "")
            table.append(
                (
                    r["kernel"],
                    roof_label(r),
                    plain(r["compute_gflops"]),
                    moved,
                    plain(r["intensity"]) if r["intensity"] else "-",
                    r["bound"],
                    _fmt_s(r["predicted_s"]),
                    meas,
                    ratio,
                    r.get("precision", self.dtype),
                    format_error(r.get("max_rel_error")),
                )
            )
        for u in self.unavailable:
            table.append((u["kernel"], "unavailable", "", "", "", "", "", "", "", u.get("precision") or "", ""))
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
        for i, row in enumerate(table):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines.append(
            f"Roofs{' (float32; the SIMD roofs halve for float64)' if self.dtype == 'float64' else ''}: "
            + "; ".join(
                f"{name} = {plain(self.roofs['compute'][name])} GFLOP/s"
                for name in COMPUTE_ROOFS
                if name in self.roofs.get("compute", {})
            )
        )
        bw = self.roofs.get("bandwidth", {}).get("1", {})
        if bw:
            lines.append("Bandwidth (1 core): " + "; ".join(f"{lvl} {plain(v)} GB/s" for lvl, v in bw.items()))
        gpu = self.roofs.get("gpu")
        if gpu:
            tensor = gpu.get("tensor_gflops") or {}
            tc = (
                "; tensor-core (mma.sync) peak "
                + ", ".join(f"{p} {plain(v, 4)}" for p, v in tensor.items())
                + " GFLOP/s"
                if tensor
                else (f"; no tensor-core peak ({gpu['tensor_reason']})" if gpu.get("tensor_reason") else "")
            )
            lines.append(
                f"GPU ({gpu['device']}): float32 FMA peak {plain(gpu['fma_gflops'], 4)} GFLOP/s{tc}; bandwidth "
                + "; ".join(f"{lvl} {plain(v, 4)} GB/s" for lvl, v in gpu["bandwidth"].items())
                + " (read + write). The CUDA rows are timed on data already on the GPU."
            )
        if any("max_rel_error" in r for r in self.rows):
            from .bench.ladder import ERROR_METRIC
            from .cuda import UNIT_ROUNDOFF

            lines.append(
                f"Error: {ERROR_METRIC}, on this shape. Unit roundoff of the products' operands: "
                + ", ".join(f"{p} {u:.2g}" for p, u in UNIT_ROUNDOFF.items())
                + " (the sums are float32 in every case)."
            )
        if self.roofs_remeasured:
            lines.append(
                "A figure came out impossible (a kernel faster than its roof, or the all-core roof below one "
                "core's), so the roofs were measured again: each is the best of both."
            )
        if self.roofs.get("disturbed"):
            lines.append(f"The roofs are disturbed: {self.roofs['disturbed']}.")
        if any(r["kernel"] in ("packed", "openmp") for r in self.rows):
            from ._blocking import blocking_lines

            derivation = blocking_lines(self.dtype)
            if derivation:
                lines.append(
                    "Block sizes of packed and openmp (WHYGPU_BLOCKING=kc,mc,nc overrides them): " + derivation[0]
                )
                lines.extend(derivation[1:])
        notes = [why_row(r, self.quiet) for r in self.rows if "measured_s" in r]
        notes += [f"{r['kernel']} not measured: {r['skipped']}" for r in self.rows if "skipped" in r]
        notes += [f"{u['kernel']} is unavailable here: {u['reason']}" for u in self.unavailable]
        if caution and self.caution:
            notes.append(f"Caution: {self.caution}.")
        if notes:
            lines.append("")
            lines.extend(notes)
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython / Jupyter
        p.text(str(self))


def _positive(x, name: str) -> int:
    import numbers

    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {x!r}")
    if x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x}")
    return int(x)


_SMALL_S = 1e-3  # a measured call shorter than this gets its 1x1x1 call timed too (row["call_overhead_s"])


def explain(
    m: int,
    n: int,
    k: int,
    *,
    kernels: Sequence[str] | None = None,
    dtype: str = "float32",
    threads: int | None = None,
    measure: bool = True,
    budget: float = 1.0,
    repeats: int = 3,
    force: bool = False,
    machine: dict | None = None,
) -> Explanation:
    """Explain an (m, k) @ (k, n) product on each kernel: FLOPs, bytes moved,
    arithmetic intensity, the roofline's predicted time and (``measure=True``)
    the measured time, with the precision each kernel multiplies in and its max
    relative error against a float64 product of the same data (``max_rel_error``;
    ``error_bound`` is what that precision guarantees for the data).  Kernels that
    cannot run here are listed in ``unavailable`` with the reason.  A kernel predicted to take longer than ``budget``
    seconds per call is not measured (unless ``force``).  ``machine`` is a
    :func:`whygpu.predict.roofline.measure_machine` result; by default the roofs are
    measured once per process.

    Each measurement waits (a bounded time) for a quiet machine and records
    how busy it was (``quiet``).  A kernel measured faster than its roof is
    impossible: the roofs and that kernel are measured once more, and a row
    still impossible is flagged ``disturbed``, never explained
    (:func:`whygpu.predict.roofline_trust.settle_impossible`)."""
    from .bench.ladder import (
        measure_error,
        measure_matmul,
        resolve_kernels,
        scout,
        series_device,
        series_precision,
        split_unavailable,
        threads_used,
    )

    m, n, k = _positive(m, "m"), _positive(n, "n"), _positive(k, "k")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    threads = get_num_threads() if threads is None else check_threads(threads)
    if measure and force:  # measured at this size, however long: refused now if it cannot fit
        check_product_fits(m, n, k, dtype)
    # Each measurement block waits (a bounded time) for a quiet machine and records the load; nothing is
    # timed against the model without --measure, so then there is no record (and no caution).
    guard = QuietGuard() if measure else None

    def block(label: str):
        return guard.block(label) if guard is not None else nullcontext()

    cached = machine is None  # the roofs measured once per process: a re-measure improves the cache too
    if machine is None:
        if threads not in _MACHINES:
            with block("roofs"):
                _MACHINES[threads] = measure_machine(threads, quick=True)
        machine = _MACHINES[threads]
    kernels, unavailable = split_unavailable(kernels)  # listed with their reasons, never silently dropped
    for u in unavailable:
        u["precision"] = series_precision(u["kernel"], dtype)
    names = resolve_kernels(kernels, threads)
    blas = None
    if any(x.startswith("numpy") for x in names):  # NumPy's BLAS, detected once: the roof its kernel's ISA sets
        from .bench.machine import blas_facts

        blas = blas_facts()
    if dtype != "float32":  # the GPU rungs compute on float32 data only
        unavailable += [
            {
                "kernel": x,
                "device": "cuda",
                "precision": series_precision(x),
                "reason": f"it runs on the GPU on float32 data ({series_precision(x)} products); "
                f"{dtype} is for the CPU kernels",
            }
            for x in names
            if series_device(x) == "cuda"
        ]
        names = [x for x in names if series_device(x) == "cpu"]
    if any(series_device(x) == "cuda" for x in names) and not machine.get("gpu"):
        if "gpu" not in _MACHINES:
            from .bench.gpu import measure_gpu

            _MACHINES["gpu"] = measure_gpu(quick=True)
        if _MACHINES["gpu"] is None:
            unavailable += [
                {
                    "kernel": x,
                    "device": "cuda",
                    "precision": series_precision(x),
                    "reason": "the GPU's roofs could not be measured (no usable GPU)",
                }
                for x in names
                if series_device(x) == "cuda"
            ]
            names = [x for x in names if series_device(x) == "cpu"]
        else:
            machine = {**machine, "gpu": _MACHINES["gpu"]}
    out = Explanation(m, n, k, dtype, roofs=machine, unavailable=unavailable)
    recs: dict[str, dict] = {}  # kernel -> its measurement, to place it again if the roofs are measured again
    expect: dict[str, float] = {}
    for name in names:
        row = kernel_model(name, m, n, k, machine, dtype=dtype, threads=threads_used(name, threads), blas=blas)
        row["precision"] = series_precision(name, dtype)
        row["device"] = series_device(name)
        if measure:
            with block(f"{name} {m}x{k} @ {k}x{n}"):
                expected = scout(name, m, n, k, dtype=dtype, threads=threads, budget=budget)["expected_s"]
                if expected > budget and not force:
                    rec = None
                else:
                    check_product_fits(m, n, k, dtype)
                    rec = measure_matmul(
                        name, m, n, k, dtype=dtype, threads=threads, repeats=repeats, budget=budget, expected=expected
                    )
                    if rec["seconds_min"] < _SMALL_S:  # so short that the fixed cost of a call may be most of it
                        one = measure_matmul(
                            name, 1, 1, 1, dtype=dtype, threads=threads, repeats=repeats, budget=budget
                        )
                        row["call_overhead_s"] = one["seconds_min"]
            if rec is None:
                row["skipped"] = f"one call would take ~{_fmt_s(expected)}, over the budget of {_fmt_s(budget)}"
            else:
                recs[name], expect[name] = rec, expected
                # The best sample, like the roofs (see whygpu.predict.roofline_trust.measured_fields).
                row.update(measured_fields(row, rec))
                # Speed and accuracy side by side: the same shape against a float64 reference.
                err = measure_error(name, m, n, k, dtype=dtype, threads=threads)
                row.update(
                    max_rel_error=err["max_rel_error"],
                    error_bound=err["error_bound"],
                    unit_roundoff=err["unit_roundoff"],
                )
        out.rows.append(row)
    if guard is None:
        return out

    def remeasure(row: dict) -> dict:
        with block(f"{row['kernel']} {m}x{k} @ {k}x{n}, again"):
            return measure_matmul(
                row["kernel"],
                m,
                n,
                k,
                dtype=dtype,
                threads=threads,
                repeats=repeats,
                budget=budget,
                expected=expect[row["kernel"]],
            )

    def roofs_again() -> dict:
        with block("roofs, again"):
            return measure_machine(threads, quick=False)  # the full probes: more chances at a quiet moment

    def gpu_again() -> dict | None:
        from .bench.gpu import measure_gpu

        with block("GPU roofs, again"):
            return measure_gpu(quick=True)

    # A row faster than its roof is impossible: its roofs and its kernel are measured once more.
    machine, out.roofs_remeasured = settle_impossible(
        out.rows,
        recs,
        machine,
        remodel=lambda row, mach: kernel_model(
            row["kernel"], m, n, k, mach, dtype=dtype, threads=threads_used(row["kernel"], threads), blas=blas
        ),
        remeasure=remeasure,
        roofs_again=roofs_again,
        gpu_again=gpu_again,
    )
    if out.roofs_remeasured:
        out.roofs = machine
        if cached:
            _MACHINES[threads] = {k_: v for k_, v in machine.items() if k_ != "gpu"}
            if machine.get("gpu"):
                _MACHINES["gpu"] = machine["gpu"]
    out.quiet = guard.as_dict()
    return out
