"""The pipeline's acceptance table (issue 35): N consecutive ``whygpu scaleout --strategy pp`` runs, each
(schedule, m)'s measured bubble against (p - 1)/(m + p - 1) and its step against the step simulated from terms
measured apart before the run, side by side, and the counts.

    python benchmarks/split_table.py --runs 5 --out /tmp/split [--ranks 2]   # runs them, then the table
    python benchmarks/split_table.py /tmp/split/run1/scaleout_split.json ...  # the table of saved runs

The table is computed from the JSON files only (:func:`whygpu.scaleout_split.checks`, applied to each file's runs):
nothing here is typed in.  A value outside its tolerance is marked with a cross; each cell also gives the bubble
simulated from the stages' measured times (which the formula takes as equal).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run_all(n: int, out: Path, ranks: str, steps: int) -> list[Path]:
    paths = []
    for i in range(1, n + 1):
        d = out / f"run{i}"
        cmd = [sys.executable, "-m", "whygpu", "scaleout", "--strategy", "pp", "--ranks", ranks, "--steps", str(steps)]
        cmd += ["--out", str(d)]
        print(f"run {i} of {n}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        paths.append(d / "scaleout_split.json")
    return paths


def table(docs: list[dict]) -> str:
    """One row per (schedule, m); per run, the measured bubble and the step's error against the simulation."""
    from whygpu.scaleout_split import checks

    rows: dict[tuple[str, int], list[dict]] = {}
    verdicts = [checks(doc) for doc in docs]
    for ck in verdicts:
        for c in ck["pipeline"]:
            rows.setdefault((c["schedule"], c["micro_batches"]), []).append(c)
    ck = verdicts[0]
    n_runs = len(docs)
    head = ["schedule", "m", "formula"] + [f"run {i + 1}: bubble (simulated), step vs simulated" for i in range(n_runs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bubble_ok = sim_ok = step_ok = total = 0
    for (name, m), cs in sorted(rows.items(), key=lambda kv: (kv[0][0] != "gpipe", kv[0][1])):
        cells = []
        for c in cs:
            b = f"{c['bubble']:.3f}" + ("" if c["bubble_ok"] else " ✗") + f" ({c['bubble_simulated']:.3f})"
            s = f"{100 * c['step_error']:+.0f}%" + ("" if c["step_ok"] else " ✗")
            cells.append(f"{b}, {s}")
            bubble_ok += c["bubble_ok"]
            sim_ok += c["bubble_simulated_ok"]
            step_ok += c["step_ok"]
            total += 1
        lines.append(f"| {name} | {m} | {cs[0]['bubble_formula']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"measured bubble within {ck['bubble_tol']} of the formula: {bubble_ok} of {total}, of the simulated bubble: "
        f"{sim_ok} of {total}; simulated step within "
        f"{ck['step_tol']:.0%} of the measured: {step_ok} of {total} ({n_runs} runs)"
    )
    imb = sorted(c["stage_imbalance"] for ck in verdicts for c in ck["pipeline"])
    missed = [c for ck in verdicts for c in ck["pipeline"] if not c["bubble_ok"]]
    lines.append(
        f"stages measured apart: the slowest's forward + backward {imb[len(imb) // 2]:.0%} longer than the fastest's "
        f"(median; {imb[0]:.0%} to {imb[-1]:.0%}); of the {len(missed)} misses of the formula, "
        f"{sum(c['stage_imbalance'] > 0.05 for c in missed)} had stages unequal by more than 5%"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path, help="saved scaleout_split.json files (else: run them)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("split-runs"))
    p.add_argument("--ranks", default="2")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    paths = args.files or run_all(args.runs, args.out, args.ranks, args.steps)
    docs = [json.loads(Path(f).read_text()) for f in paths]
    cpu = docs[0].get("machine", {}).get("cpu", {})
    model = "-".join(map(str, docs[0]["layers"]))
    print(f"machine: {cpu.get('model', '?')}, {cpu.get('cores', '?')} cores; MLP {model}, global batch "
          f"{docs[0]['batch']}, {docs[0]['ranks']} ranks x {docs[0]['threads']} thread\n")  # fmt: skip
    print(table(docs))


if __name__ == "__main__":
    main()
