"""``whygpu scaleout``: data-parallel training on P ranks under mpiexec, measured and set against the cost model."""

from __future__ import annotations

import argparse

from ._common import (
    CliError,
    _common_args,
    _g,
    _int_list,
    _note,
    _plot_arg,
    _positive_float,
    _positive_int,
    _prepare_out,
    _progress,
    _roundtrip,
    _save,
    _table,
)


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "scaleout",
        parents=[_common_args(), _plot_arg()],
        help="data-parallel training on P MPI ranks: measured, and the cost model up to 1024 ranks",
    )
    s.add_argument("--ranks", type=_int_list, default=[1, 2], help="rank counts, e.g. '1,2' (default 1,2)")
    s.add_argument(
        "--layers", type=_int_list, default=[784, 2048, 2048, 10], help="MLP widths (default 784,2048,2048,10)"
    )
    s.add_argument("--batch", type=_positive_int, default=512, help="the GLOBAL batch, split over the ranks (512)")
    s.add_argument("--steps", type=_positive_int, default=10, help="timed steps per run, after 2 warm-up (10)")
    s.add_argument("--bucket-mb", type=_positive_float, default=25.0, help="DataParallel's bucket size (25 MiB)")
    s.add_argument(
        "--sweep-max", type=_positive_int, default=64 << 20, help="largest allreduce of the sweep, bytes (64 MiB)"
    )
    s.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds allowed per mpiexec job (600)")
    return s


def _ms(s) -> str:
    return "n/a" if s is None else f"{1e3 * s:.3g}"


def _print_scaleout(doc: dict) -> None:
    p = doc["params"]
    print(
        f"Data-parallel MLP {p['layers']}, global batch {p['batch']}, {p['backend']} back end, "
        f"{p['cores']} cores ({p.get('mpi_library') or 'MPI'})"
    )
    print(f"medians over {p['steps']} steps after {p['warmup_steps']} warm-up; ms per step (min-max)")
    rows = []
    for r in doc["runs"]:
        err = r.get("prediction_error")
        rows.append(
            [
                f"{r['ranks']} x {r['threads']}",
                f"{_ms(r['step_s'])} ({_ms(r['step_s_min'])}-{_ms(r['step_s_max'])})",
                _ms(r["compute_s"]),
                _ms(r["allreduce_s"]) if r["ranks"] > 1 else "-",
                _ms(r["exposed_s"]) if r["ranks"] > 1 else "-",
                f"x{_g(r['speedup_vs_1x1'])}" if r.get("speedup_vs_1x1") else "n/a",
                (f"{_ms(r['predicted_s'])} ({100 * err:+.0f}%)" if err is not None else "n/a")
                if r["ranks"] > 1
                else "(input)",
            ]
        )
    head = ["ranks x threads", "step", "compute", "allreduce", "exposed", "vs 1x1", "model (error)"]
    print(_table(head, rows, right=range(1, 7)))
    f, s = doc["fit"], doc["summary"]
    print(
        f"\nallreduce sweep on {f['ranks']} ranks ({len(doc['sweep']['bytes'])} sizes, 1 KB to "
        f"{doc['sweep']['bytes'][-1] / 2**20:.3g} MiB): alpha = {1e6 * f['alpha_s']:.3g} us, "
        f"B = {f['bandwidth_Bps'] / 1e9:.3g} GB/s (rms error of the fit {100 * f['rms_rel_error']:.0f}%)"
    )
    dp = [r for r in doc["runs"] if r["ranks"] > 1]
    if dp:
        r = dp[-1]
        print(
            f"DataParallel's allreduce of {r['bytes'] / 1e6:.3g} MB in {r['buckets']} bucket(s): "
            f"{_ms(r['allreduce_s'])} ms vs a bare Allreduce {_ms(r['bare_allreduce_s'])} ms "
            f"(x{_g(s.get('dp_over_bare_bandwidth'))} of its bandwidth"
            f"{', understated: overlapped buckets count backward time' if r['buckets'] > 1 else ''}); "
            "exposed / allreduce "
            f"{_g(s.get('exposed_over_allreduce'))}; weights identical on all ranks: {r.get('weights_spread') == 0}"
        )
    m = doc["model"]
    print(f"model: {m['formula']}; {m['overlap']} (e = {_g(m['exposed_fraction'])})")
    ex = doc.get("extrapolation") or {}
    if ex:
        print(f"\nModelled scaling efficiency, strong scaling (global batch {ex['batch']}), {ex['compute_note']}:")
        marks = [P for P in (2, 8, 64, 1024) if P in ex["ranks"]]
        rows = []
        for c in ex["curves"]:
            if c["scaling"] != "strong":
                continue
            rows.append(
                [c["interconnect"], c["model"]] + [f"{100 * c['efficiency'][ex['ranks'].index(P)]:.0f}%" for P in marks]
            )
        print(_table(["interconnect", "model"] + [f"P={P}" for P in marks], rows, right=range(2, 2 + len(marks))))
        print("(interconnects other than this machine: public figures, not measured here)")
    la, lb = doc["machine"].get("load_average"), doc.get("load_average_after")
    if la is not None and la > 0.5 * p["cores"]:
        print(
            f"note: load average {la:.1f} (after: {lb if lb is None else round(lb, 1)}) on {p['cores']} cores: "
            "other programs shared the cores, so these times are contended"
        )


def run(args) -> int:
    from ..bench.scaleout import INSTALL_HINT, ScaleoutError, mpi_status
    from ..scaleout import run_scaleout

    st = mpi_status()
    if not st["available"]:
        raise CliError(f"scaleout needs mpi4py and mpiexec: {st['reason']}; install them with {INSTALL_HINT}")
    if len(args.layers) < 2:
        raise CliError("--layers needs at least an input and an output width")
    out = _prepare_out(args.out)
    try:
        doc = run_scaleout(
            ranks=args.ranks,
            layers=args.layers,
            batch=args.batch,
            steps=args.steps,
            sweep_max=args.sweep_max,
            bucket_mb=args.bucket_mb,
            timeout=args.timeout,
            log=_note(args),
            progress=_progress(args),
        )
    except ScaleoutError as exc:
        raise CliError(str(exc)) from None
    _print_scaleout(doc)
    _save(out, "scaleout", doc, False)
    if args.plot:
        from ..plots_scaleout import plot_scaleout

        print(f"wrote {plot_scaleout(_roundtrip(doc), out / 'scaleout.png')}")
    return 0
