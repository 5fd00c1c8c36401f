"""The held-out validation's acceptance table (issue 34): N consecutive ``whygpu scaleout --held-out``
runs, each configuration's step, exposed and update errors side by side, and the counts.

    python benchmarks/heldout_table.py --runs 5 --out /tmp/heldout [--ranks 2]   # runs them, then the table
    python benchmarks/heldout_table.py /tmp/heldout/run1/scaleout_heldout.json ...  # the table of saved runs

Each run measures its terms anew, predicts its configurations before running them, and judges every
term (:mod:`whygpu.scaleout_heldout`).  The table is computed from the JSON files only: nothing here is
typed in.  A value outside its term's tolerance is marked with a cross; a disturbed run (the quiet guard
measured other programs on the cores) is marked "(d)".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TERMS = ("step", "exposed", "update", "compute")


def run_all(n: int, out: Path, ranks: str) -> list[Path]:
    paths = []
    for i in range(1, n + 1):
        d = out / f"run{i}"
        cmd = [sys.executable, "-m", "whygpu", "scaleout", "--held-out", "--ranks", ranks, "--out", str(d)]
        print(f"run {i} of {n}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        paths.append(d / "scaleout_heldout.json")
    return paths


def _cell(row: dict, term: str) -> str:
    t = next((x for x in row["terms"] if x["term"] == term), None)
    if t is None or t["error"] is None:
        return "-"
    mark = "" if t["within"] else "✗"
    return f"{100 * t['error']:+.0f}%{mark}" + (" (d)" if row["disturbed"] else "")


def table(docs: list[dict]) -> str:
    labels = [r["label"] for r in docs[0]["heldout"]["rows"]]
    head = "| configuration | step: predicted / measured ms, run 1 | " + " | ".join(
        f"{t} error, runs 1-{len(docs)}" for t in TERMS
    )
    lines = [head + " |", "|" + "---|" * (2 + len(TERMS))]
    for label in labels:
        rows = [next((r for r in d["heldout"]["rows"] if r["label"] == label), None) for d in docs]
        first = next(r for r in rows if r is not None)
        st = next(x for x in first["terms"] if x["term"] == "step")
        cells = [f"{1e3 * st['predicted_s']:.3g} / {1e3 * st['measured_s']:.3g}"]
        for term in TERMS:
            cells.append(" ".join("n/a" if r is None else _cell(r, term) for r in rows))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts(docs: list[dict]) -> str:
    out = []
    all_rows = [r for d in docs for r in d["heldout"]["rows"]]
    quiet = [r for r in all_rows if not r["disturbed"]]
    out.append(f"{len(all_rows)} configurations run in {len(docs)} runs; {len(all_rows) - len(quiet)} disturbed.")
    for term in (*TERMS, "allreduce", "reduce_scatter", "allgather", "allgather_wait"):
        judged = [t for r in quiet for t in r["terms"] if t["term"] == term and t["within"] is not None]
        if judged:
            ok = sum(bool(t["within"]) for t in judged)
            errs = [t["error"] for t in judged if t["error"] is not None]
            span = f", errors {100 * min(errs):+.0f}% to {100 * max(errs):+.0f}%" if errs else ""
            out.append(f"- {term}: within its tolerance in {ok} of {len(judged)} quiet runs{span}")
    per_run = [sum(r["verdict"] == "ok" for r in d["heldout"]["rows"]) for d in docs]
    out.append(f"- every term within its tolerance: {sum(per_run)} of {len(all_rows)} (by run: "
               f"{', '.join(map(str, per_run))})")  # fmt: skip
    errs = [r for r in quiet if r["model_errors"]]
    named: dict[str, int] = {}
    for r in errs:
        for t in r["model_errors"]:
            named[t] = named.get(t, 0) + 1
    out.append(f"- model errors (each named in the JSON with its term): {len(errs)} configurations; by term {named}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="scaleout_heldout.json files (default: run --runs of them)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ranks", default="2")
    ap.add_argument("--out", type=Path, default=Path("heldout_runs"))
    a = ap.parse_args(argv)
    paths = a.files or run_all(a.runs, a.out, a.ranks)
    docs = [json.loads(p.read_text()) for p in paths]
    print(table(docs))
    print()
    print(counts(docs))


if __name__ == "__main__":
    main()
