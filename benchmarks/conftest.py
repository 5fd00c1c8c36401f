"""pytest-benchmark set-up for the whygpu benchmarks.

* ``heavy`` marks the big sizes; under ``--benchmark-disable`` (each benchmark
  runs once, as a correctness smoke test) they are deselected so that run
  stays fast.
* The machine info saved with ``--benchmark-json`` gets whygpu's cpu_info
  and NumPy's BLAS (from threadpoolctl), so a result file says what it ran on.
* After a real run, GFLOP/s tables (benchmarks/report_table.py) are printed.
* pytest-benchmark's own tables fit a 120-column terminal: the columns are
  TABLE_COLUMNS and names drop ``test_`` (unless ``--benchmark-columns`` or
  ``--benchmark-name`` is given), and a group's times are shown in the unit
  that keeps its slowest below 100,000 (benchmarks/test_table_width.py checks
  the width on planted times, so it does not depend on this machine's speed).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# pytest-benchmark's defaults: min, max, mean, stddev, median, iqr, outliers, ops, rounds, iterations (about
# 250 columns).  The median is what report_table.py turns into GFLOP/s, the IQR its spread, the min the best
# time (gflops_best); each with its ratio to the group's fastest (every group holds NumPy's baseline).
TABLE_COLUMNS = ["median", "iqr", "min", "rounds"]
DEFAULT_COLUMNS = ["min", "max", "mean", "stddev", "median", "iqr", "outliers", "ops", "rounds", "iterations"]
TABLE_WIDTH = 120
_TIME_COLUMNS = ("min", "max", "mean", "stddev", "median", "iqr")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's, which reads the options into its session
def pytest_configure(config):
    config.addinivalue_line("markers", "heavy: a big size, skipped when benchmarks are disabled")
    option = config.option
    # Not chosen on the command line: pytest-benchmark's default list (5.2) or None, resolved later (5.3).
    if getattr(option, "benchmark_columns", DEFAULT_COLUMNS) in (None, DEFAULT_COLUMNS):
        option.benchmark_columns = list(TABLE_COLUMNS)
    if getattr(option, "benchmark_name", None) == "normal":  # the default
        option.benchmark_name = "short"  # "ladder[numpy-x1-n64]", not "test_ladder[numpy-x1-n64]"


def pytest_benchmark_scale_unit(config, unit, benchmarks, best, worst, sort):
    """The time unit of a group's table: pytest-benchmark's (that of the fastest) unless the slowest shown
    would then take more than five digits before the point (a pure-Python rung beside NumPy: 250,000 us):
    then the next larger unit, so each column stays narrow.  Operations per second: pytest-benchmark's."""
    if unit != "seconds":
        return None
    shown = [c for c in (config.getoption("benchmark_columns") if config else TABLE_COLUMNS) if c in _TIME_COLUMNS]
    slowest = max((worst[c] for c in shown if c in worst), default=0.0)
    fastest = best.get(sort if sort in best else "min", 0.0)
    units = [("n", 1e9), ("u", 1e6), ("m", 1e3), ("", 1.0)]
    i = next((j for j, (_, scale) in enumerate(units[:-1]) if fastest * scale < 1e3), len(units) - 1)
    while i < len(units) - 1 and slowest * units[i][1] >= 1e5:
        i += 1
    return units[i]


def _benchmarks_disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable", False)) and not config.getoption("benchmark_enable", False)


def pytest_collection_modifyitems(config, items):
    if not _benchmarks_disabled(config):
        return
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("heavy")]


def pytest_benchmark_update_machine_info(config, machine_info):
    import threadpoolctl

    import whygpu

    machine_info["whygpu"] = {
        "version": whygpu.__version__,
        "cpu_info": whygpu.cpu_info(),
        "num_threads": whygpu.get_num_threads(),
    }
    machine_info["blas"] = [
        {k: lib.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "architecture")}
        for lib in threadpoolctl.threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def _report_table():
    path = os.path.join(os.path.dirname(__file__), "report_table.py")
    spec = importlib.util.spec_from_file_location("whygpu_bench_report_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's, if it ran
    if session is None or session.disabled or not session.benchmarks:
        return
    entries = [bench.as_dict(include_data=False) for bench in session.benchmarks if bench]
    text = _report_table().markdown_tables(entries)
    if text:
        terminalreporter.write_sep("-", "whygpu: GFLOP/s (see benchmarks/README.md)")
        terminalreporter.write_line(text)
