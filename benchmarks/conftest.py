"""pytest-benchmark set-up for the whygpu benchmarks.

* ``heavy`` marks the big sizes; under ``--benchmark-disable`` (each benchmark
  runs once, as a correctness smoke test) they are deselected so that run
  stays fast.
* The machine info saved with ``--benchmark-json`` gets whygpu's cpu_info
  and NumPy's BLAS (from threadpoolctl), so a result file says what it ran on.
* After a real run, GFLOP/s tables (benchmarks/report_table.py) are printed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "heavy: a big size, skipped when benchmarks are disabled")


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
