"""The scaling section: speed-up on more cores, and Amdahl's law."""

from __future__ import annotations

from pathlib import Path

from .. import plots
from ._format import Block, Docs, _g, _ms, _pct


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Speed-up by threads and the serial fractions fitted to it (from ``whygpu scaling``)."""
    if "scaling" not in docs:
        return []
    doc = docs["scaling"]
    figs.append(plots.plot_scaling(doc, out / "scaling.png"))
    ser = {s["name"]: s for s in doc["series"]}
    P = max(doc["params"]["threads"])
    blocks: list[Block] = [("h2", f"{num}. More cores: speed-up and Amdahl's law")]
    k = ser.get(doc["params"]["kernel"])
    cap = ""
    if k:
        S, Pk = k["speedup"][-1], k["threads"][-1]
        cap += (
            f"Speed-up of the {k['name']} kernel at n = {doc['params']['n']} on 1 to {P} threads: "
            f"x{_g(S)} on {Pk} threads ({_pct(100 * k['efficiency'][-1])} parallel efficiency). "
        )
        if S < 1:
            cap += (
                f"It ran slower on {Pk} threads than on one: another program was using the cores, so this "
                "shows contention, not the kernel's scaling. "
            )
        elif k["max_speedup"] is not None:
            cap += (
                f"Amdahl's law fitted to it gives a serial fraction of {_pct(100 * k['serial_fraction'])}, so no "
                f"number of cores could make it more than x{_g(k['max_speedup'])} faster. "
            )
        else:
            cap += "Amdahl's law finds no serial fraction here: it scales like the ideal line. "
    if "peak" in ser:
        cap += (
            f"The FMA microbenchmark (no memory traffic, no synchronisation) scales "
            f"x{_g(ser['peak']['speedup'][-1])}: the hardware's own limit. "
        )
    if "numpy" in ser:
        cap += f"NumPy's BLAS scales x{_g(ser['numpy']['speedup'][-1])}. "
    if "train" in ser:
        t = ser["train"]
        cap += (
            f"A whole training step scales x{_g(t['speedup'][-1])} (Amdahl serial fraction "
            f"{_pct(100 * t['serial_fraction'])})"
        )
        steps = t.get("steps") or []
        if len(steps) >= 2 and all("matmul_s" in x for x in (steps[0], steps[-1])):
            a, b = steps[0], steps[-1]
            cap += (
                f": inside it, matrix multiplication went from {_ms(a['matmul_s'])} to {_ms(b['matmul_s'])} per "
                f"step (x{_g(a['matmul_s'] / b['matmul_s'])}) and everything else from {_ms(a['other_s'])} to "
                f"{_ms(b['other_s'])} (x{_g(a['other_s'] / b['other_s'])}) -- the part that scales worse "
                "sets the limit"
            )
        X = max(16, 4 * P)
        cap += (
            f". Extrapolated with Amdahl's law (dashed curves, shaded region), {X} cores would make the step "
            f"x{_g(1 / (t['serial_fraction'] + (1 - t['serial_fraction']) / X))} faster, not x{X}"
        )
        cap += "."
    blocks.append(("fig", "scaling.png", cap.strip()))
    rows = []
    for s in doc["series"]:
        rows.append(
            (
                s["label"],
                ", ".join(f"{p}: x{_g(v)}" for p, v in zip(s["threads"], s["speedup"])),
                _pct(100 * s["serial_fraction"]),
                "none" if s["max_speedup"] is None else f"x{_g(s['max_speedup'])}",
            )
        )
    blocks.append(("table", ("series", "speed-up by threads", "serial fraction (Amdahl)", "limit on any cores"), rows))
    if doc.get("note"):
        blocks.append(("p", "Note: " + doc["note"] + "."))
    return blocks
