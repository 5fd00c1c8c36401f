"""``whygpu explain``: one product M x K @ K x N, predicted against measured for each kernel."""

from __future__ import annotations

import argparse
import sys

from ._common import (
    CliError,
    _common_args,
    _dtype_arg,
    _measure_args,
    _name_list,
    _positive_int,
    _prepare_out,
    _save,
    _threads_arg,
)


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "explain",
        parents=[_common_args(), _threads_arg(), _measure_args(1.0), _dtype_arg()],
        help="one product M x K @ K x N: FLOPs, bytes, intensity, predicted vs measured",
    )
    s.add_argument("m", type=_positive_int, metavar="M", help="rows of A and of C (C = A @ B is M x N)")
    s.add_argument("n", type=_positive_int, metavar="N", help="columns of B and of C")
    s.add_argument(
        "k", type=_positive_int, metavar="K", help="columns of A = rows of B: the length of each dot product"
    )
    s.add_argument("--kernels", type=_name_list, default=None, help="comma-separated kernels (default: all)")
    s.add_argument("--no-measure", action="store_true", help="only the model's predictions")
    return s


def run(args) -> int:
    from ..explain import explain

    # Predictions only (--no-measure): nothing measured, so no report folder unless --out asks for one.
    # (made after explain(): a command where nothing asked for can run leaves no folder behind)
    ex = explain(
        args.m,
        args.n,
        args.k,
        kernels=args.kernels,
        dtype=args.dtype,
        threads=args.threads,
        measure=not args.no_measure,
        budget=args.budget,
        force=args.all,
    )
    if not ex.rows:  # every kernel asked for is unusable here (a CUDA rung without a GPU, say)
        why = "; ".join(f"{u['kernel']}: {u['reason']}" for u in ex.unavailable)
        raise CliError(f"none of the kernels asked for can run here ({why})")
    out = _prepare_out(args.out) if args.out or not args.no_measure else None
    print(ex.text(caution=False))  # the busy-machine caution goes to stderr, as for every command
    if any(r.get("skipped") for r in ex.rows):
        print("note: --all measures the kernels skipped for the budget (or raise --budget)", file=sys.stderr)
    if out is not None:
        _save(out, "explain", ex.as_dict(), plot=False)  # prints the caution from the document's "quiet"
    elif ex.caution:
        print(f"caution: {ex.caution}", file=sys.stderr, flush=True)
    return 0
