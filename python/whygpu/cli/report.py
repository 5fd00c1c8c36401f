"""``whygpu report``: rebuild the report (HTML + Markdown) from saved JSON results."""

from __future__ import annotations

import argparse

from ._common import _common_args, _note, _prepare_out


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("report", parents=[_common_args()], help="rebuild the report from saved JSON results")
    s.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="JSON files written by whygpu (or folders of them) and pytest-benchmark JSON",
    )
    return s


def run(args) -> int:
    from ..report import build_report, load_results

    docs = load_results(args.results, log=_note(args))
    out = _prepare_out(args.out)
    res = build_report(docs, out)
    print(f"report from {', '.join(sorted(docs))}: {len(res['figures'])} figure(s)")
    print(f"wrote {res['markdown']}")
    print(f"wrote {res['html']}")
    return 0
