"""The scale-out targets (issues 18 and 24): data-parallel MLP 784-2048-2048-10, global batch 512, openmp, ranks 1,2.

    python benchmarks/scaleout_table.py [--steps 10] [--bucket-mb 25,4] [--json out.json]

Runs ``whygpu.scaleout.run_scaleout`` (mpiexec launched from the environment's
bin/, 1 rank x 1 thread, 1 rank x all cores, one rank alone on its share, P
ranks side by side on their shares, P ranks x cores/P threads with
DataParallel, and an Allreduce sweep from 1 KB to 64 MiB) and prints each
target with the figure measured in this run.  Nothing is asserted: the figures
depend on how quiet the machine was (the quiet guard's reading of the ranks'
cores is printed; compare ratios from one run).

One run per bucket size (``--bucket-mb``, default 25 MiB: DataParallel's
default, PyTorch DDP's, with its 1 MiB first bucket; 4 MiB buckets for
comparison).
"""

from __future__ import annotations

import argparse
import json

from whygpu.bench.scaleout import mpi_status
from whygpu.scaleout import quiet_reading, run_scaleout

# (what, key in the summary or a callable on the document, comparison, target)
TARGETS = [
    ("2 ranks x 1 thread vs 1 x 1: speed-up", "speedup_vs_1x1", ">=", 1.6),
    ("2 ranks x 1 thread vs 1 x 2 threads: speed-up", "speedup_vs_1xall", ">=", 0.95),
    ("exposed / total allreduce time", "exposed_over_allreduce", "<=", 0.5),
    ("DataParallel allreduce bandwidth / bare Allreduce", "dp_over_bare_bandwidth", ">=", 0.8),
    ("model-predicted vs measured 2-rank step (|error|)", "prediction_error", "<=", 0.25),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--layers", default="784,2048,2048,10")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--bucket-mb", default="25", help="bucket sizes, MiB, comma-separated: one run each")
    ap.add_argument("--json", help="also write the whole document here")
    args = ap.parse_args(argv)
    st = mpi_status()
    if not st["available"]:
        print(f"cannot run: {st['reason']} ({st['install']})")
        return 2
    docs = []
    for mb in [float(x) for x in args.bucket_mb.split(",")]:
        doc = run_scaleout(
            ranks=[int(x) for x in args.ranks.split(",")],
            layers=[int(x) for x in args.layers.split(",")],
            batch=args.batch,
            steps=args.steps,
            bucket_mb=mb,
            timeout=600,
            log=lambda s: print(f"note: {s}"),
        )
        _print(doc)
        docs.append(doc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(docs, f, indent=1, default=float)
    return 0


def _print(doc: dict) -> None:
    p, s, fit = doc["params"], doc["summary"], doc["fit"]
    print(
        f"MLP {p['layers']}, global batch {p['batch']}, {p['backend']}, {p['cores']} cores, bucket {p['bucket_mb']:g} "
        f"MiB, {p['steps']} timed steps ({p['mpi_library']})"
    )
    print(f"{'run':<16} {'step ms (min-max)':>24} {'compute':>9} {'allreduce':>10} {'exposed':>8} {'model':>8}")
    for r in doc["runs"]:
        dp = r.get("data_parallel")
        ar = f"{1e3 * r['allreduce_s']:.1f}" if dp else "-"
        ex = f"{1e3 * r['exposed_s']:.1f}" if dp else "-"
        md = f"{1e3 * r['predicted_s']:.1f}" if r.get("predicted_s") else "input"
        what = f"{r['ranks']} x {r['threads']}" + (
            " side by side" if r.get("side_by_side") else f" ({r['batch']})" if r.get("share_of") else ""
        )
        span = f"{1e3 * r['step_s']:.1f} ({1e3 * r['step_s_min']:.0f}-{1e3 * r['step_s_max']:.0f})"
        print(f"{what:<16} {span:>24} {1e3 * r['compute_s']:>9.1f} {ar:>10} {ex:>8} {md:>8}")
    print(
        f"allreduce fit: alpha {1e6 * fit['alpha_s']:.3g} us, B {fit['bandwidth_Bps'] / 1e9:.3g} GB/s "
        f"(rms {100 * fit['rms_rel_error']:.0f}%); gradient {doc['model']['gradient_bytes'] / 1e6:.3g} MB"
    )
    print(f"\n{'target':<52} {'measured':>9}  {'goal':>7}  met")
    for what, key, op, goal in TARGETS:
        v = s.get(key)
        if v is None:
            print(f"{what:<52} {'n/a':>9}  {op} {goal:<4}  -")
            continue
        v = abs(v) if key == "prediction_error" else v
        ok = v >= goal if op == ">=" else v <= goal
        print(f"{what:<52} {v:>9.3f}  {op} {goal:<4}  {'yes' if ok else 'NO'}")
    print(f"\n{quiet_reading(doc)}")
    if doc["runs"][-1].get("buckets", 1) > 1:
        print(
            "(with several buckets DataParallel's allreduce is in flight while the backward pass computes on the "
            "same cores, so its 'bandwidth' reads low next to a bare Allreduce on idle cores)"
        )
    print()


if __name__ == "__main__":
    raise SystemExit(main())
