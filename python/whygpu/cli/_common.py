"""What every subcommand shares: the user-error type, argument types, parent parsers, output folder and
JSON saving, tables and notes."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _int_list(text: str) -> list[int]:
    """'64,128,256' or '64:1024' (powers of two from 64 to 1024)."""
    text = text.strip()
    if ":" in text:
        lo_s, hi_s = text.split(":", 1)
        lo, hi = _positive_int(lo_s), _positive_int(hi_s)
        if lo > hi:
            raise argparse.ArgumentTypeError(f"range {text!r} is empty (start > end)")
        out = []
        v = lo
        while v <= hi:
            out.append(v)
            v *= 2
        return out
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    return [_positive_int(p.strip()) for p in parts]


def _name_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


# --------------------------------------------------------------------------
# Parent parsers: the options several subcommands share.  Each call builds a
# fresh parent: parents share their argument objects, so one subcommand's
# default must not leak into another's.
# --------------------------------------------------------------------------
def _common_args() -> _Parser:
    """--out and --progress (every subcommand)."""
    common = _Parser(add_help=False)
    common.add_argument("--out", metavar="DIR", help="output folder (default: ./whygpu-report-YYYYmmdd-HHMMSS)")
    common.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )
    return common


def _threads_arg() -> _Parser:
    threads = _Parser(add_help=False)
    threads.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="threads for the parallel kernels (default: all usable cores)",
    )
    return threads


def _measure_args(budget: float, per: str = "measurement") -> _Parser:
    """--repeats, --budget (default `budget` seconds per `per`) and --all."""
    m = _Parser(add_help=False)
    m.add_argument("--repeats", type=_positive_int, default=5, help="timed samples per measurement (default 5)")
    m.add_argument(
        "--budget",
        type=_positive_float,
        default=budget,
        help=f"seconds allowed per {per}; slower ones are skipped (default {budget:g})",
    )
    m.add_argument(
        "--all",
        "--force",
        dest="all",
        action="store_true",
        help="run measurements even when predicted to exceed the budget",
    )
    return m


def _plot_arg() -> _Parser:
    plot = _Parser(add_help=False)
    plot.add_argument("--plot", action="store_true", help="also write PNG figures")
    return plot


def _dtype_arg() -> _Parser:
    dtype = _Parser(add_help=False)
    dtype.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="the matrices' number type: float32 (4 bytes, default) or float64 (8 bytes, half the SIMD lanes)",
    )
    return dtype


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------
def _default_out() -> Path:
    return Path.cwd() / f"whygpu-report-{_dt.datetime.now():%Y%m%d-%H%M%S}"


_CREATED: list[Path] = []  # folders _prepare_out made: removed again if the command does not finish


def _remove_unfinished_outs() -> None:
    """After a failed or interrupted command: the output folders it created go, with what it had
    written in them so far (a half-written report folder would read as a finished one), and it
    says so.  A folder that existed before the command is left as it is."""
    import shutil

    while _CREATED:
        p = _CREATED.pop()
        if not p.exists():
            continue
        if any(p.iterdir()):
            shutil.rmtree(p, ignore_errors=True)
            print(f"whygpu: removed the unfinished output folder {p}", file=sys.stderr, flush=True)
        else:
            try:
                p.rmdir()
            except OSError:
                pass


def _prepare_out(path: str | None) -> Path:
    """The output folder, created and checked writable *before* any measuring."""
    p = Path(path) if path else _default_out()
    try:
        if not p.exists():
            _CREATED.append(p)
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".whygpu-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write to output folder {str(p)!r}: {exc.strerror or exc}") from None
    return p


def _clean(x):
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN/Infinity)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # NumPy scalars
        return _clean(x.item())
    return x


def _write_json(out: Path, name: str, doc: dict) -> Path:
    path = out / f"{name}.json"
    try:
        path.write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _roundtrip(doc: dict) -> dict:
    """The document as it will read back from JSON (what the report sees)."""
    return json.loads(json.dumps(_clean(doc), allow_nan=False))


def _save(out: Path, name: str, doc: dict, plot: bool, figures=()) -> None:
    """Write <name>.json and, with --plot, each figure: (plots function name, file name).
    A document whose quiet guard saw a busy machine gets a caution on stderr."""
    from ..bench.trust import quiet_caution

    caution = quiet_caution(doc.get("quiet"))
    if caution:
        print(f"caution: {caution}", file=sys.stderr, flush=True)
    print(f"\nwrote {_write_json(out, name, doc)}")
    if plot and figures:
        from .. import plots

        d = _roundtrip(doc)
        for fn, filename in figures:
            print(f"wrote {getattr(plots, fn)(d, out / filename)}")


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------
def _table(head: Sequence[str], rows: Sequence[Sequence], right: Sequence[int] = ()) -> str:
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    return "\n".join(lines)


def _g(x) -> str:
    from ..bench.measure import format_figure

    return format_figure(x)


def _say(args, text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _note(args) -> Callable[[str], None]:
    """Notes (skips, warnings) go to stderr, so stdout stays the tables."""

    def log(msg: str) -> None:
        print(f"note: {msg}", file=sys.stderr, flush=True)

    return log


def _progress(args) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()
