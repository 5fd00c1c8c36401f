"""``whygpu``, the command line: the parser and ``main``, over one module per subcommand (``whygpu.cli.<name>``).

Measure this machine and explain, with tables, figures and a report, why
each kind of parallelism speeds up deep learning.

    whygpu info                      what this machine offers
    whygpu ladder  [--sizes ...]     GFLOP/s of every kernel over a range of sizes
    whygpu scaling [--n N]           speed-up against threads, Amdahl's law fitted
    whygpu roofline [--n N]          the machine's measured roofs, every kernel on them
    whygpu train   [--steps S]       the same MLP trained on each back end
    whygpu scaleout [--ranks 1,2]    data-parallel training on P MPI ranks, and its cost model
    whygpu explain M N K             one product: predicted vs measured, per kernel
    whygpu demo    [--quick]         all of the above, then a report (HTML + Markdown)
    whygpu report  RESULTS...        rebuild the report from saved JSON

Each measuring subcommand prints a table, writes ``<name>.json`` into the
output folder (``--out``, default ``./whygpu-report-YYYYmmdd-HHMMSS``) and,
with ``--plot``, PNG figures.  User errors (bad arguments, unknown kernels,
an unwritable folder) print one line and exit with status 2; set
WHYGPU_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

os.environ.setdefault("MPLBACKEND", "Agg")  # never open a window, even if pyplot gets imported

from . import demo, explain, info, ladder, report, roofline, scaleout, scaling, train  # noqa: E402
from ._common import _CREATED, CliError, _Parser, _remove_unfinished_outs  # noqa: E402

__all__ = ["main"]

# The subcommands, in the order `whygpu --help` lists them.  Each module has
# add_parser(subparsers) -> its parser (arguments and help) and run(args) -> exit status;
# a new subcommand is a new module added here.
COMMANDS = (info, ladder, scaling, roofline, train, scaleout, explain, demo, report)


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = _Parser(
        prog="whygpu",
        description="Measure why parallel hardware speeds up deep learning, on this machine.",
        epilog="Run 'whygpu demo' for everything at once and a report.",
    )
    p.add_argument("--version", action="version", version=f"whygpu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"whygpu: warning: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, or a usage error (already printed)
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    from .._registry import KernelUnavailableError
    from .._threads import ThreadsWarning, check_threads

    _CREATED.clear()
    try:
        with warnings.catch_warnings():  # a warning is one line, like an error; a thread count's only once
            warnings.showwarning = _show_warning
            warnings.filterwarnings("once", category=ThreadsWarning)
            if isinstance(getattr(args, "threads", None), int):
                check_threads(args.threads)  # warned before any measuring, not when the first kernel runs
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("whygpu: interrupted", file=sys.stderr)
        _remove_unfinished_outs()
        return 130
    except BrokenPipeError:  # e.g. `whygpu ladder | head`: stop quietly, like other command-line tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (CliError, ValueError, TypeError, KernelUnavailableError, OSError) as exc:
        if os.environ.get("WHYGPU_DEBUG"):
            raise
        _remove_unfinished_outs()  # e.g. a size refused for memory: no empty report folder left behind
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"whygpu: error: {msg}", file=sys.stderr)
        return 2
    except BaseException:  # a bug (the traceback follows) or SystemExit: no half-written folder either
        _remove_unfinished_outs()
        raise
