"""report_table.py on a synthetic pytest-benchmark JSON: the GFLOP/s, the
ratio to NumPy with the same thread count, and the command line."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    "whygpu_bench_report_table", os.path.join(os.path.dirname(__file__), "report_table.py")
)
report_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_table)


def _entry(suite, kernel, threads, n, seconds, row=None, rung=1):
    flops = 2 * n**3
    return {
        "extra_info": {
            "suite": suite,
            "kernel": kernel,
            "threads": threads,
            "row": row or f"{kernel} x{threads}",
            "column": f"n={n}",
            "flops": flops,
            "rung": rung,
        },
        "stats": {"median": seconds, "min": seconds / 2, "mean": seconds},
    }


SYNTHETIC = [
    _entry("ladder", "numpy", 1, 100, 2e-5, rung=99),  # 100 GFLOP/s
    _entry("ladder", "numpy", 2, 100, 1e-5, rung=99),  # 200 GFLOP/s
    _entry("ladder", "packed", 1, 100, 4e-5, row="packed", rung=6),  # 50 GFLOP/s -> 0.50x of numpy x1
    _entry("ladder", "openmp", 2, 100, 4e-5, rung=7),  # 50 GFLOP/s -> 0.25x of numpy x2
    _entry("ladder", "packed", 1, 10, 2e-6, row="packed", rung=6),  # a smaller size: first column
    {"extra_info": {}, "stats": {"median": 1.0}},  # not ours: ignored
]


def test_markdown_table_values_and_ratios():
    text = report_table.markdown_tables(SYNTHETIC)
    lines = text.splitlines()
    assert lines[0].startswith("### The ladder")
    assert "| kernel | n=10 | n=100 |" in lines
    assert "| packed | 1.00 | 50.0 (0.50x) |" in lines
    assert "| openmp x2 | - | 50.0 (0.25x) |" in lines
    assert "| numpy x1 | - | 100.0 |" in lines
    # ladder order: packed (rung 6) before openmp (rung 7) before NumPy
    assert [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ") and "kernel" not in ln] == [
        "packed",
        "openmp x2",
        "numpy x1",
        "numpy x2",
    ]


def test_min_stat():
    assert "| packed | 2.00 | 100.0 (0.50x) |" in report_table.markdown_tables(SYNTHETIC, stat="min").splitlines()


def test_command_line(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": SYNTHETIC, "machine_info": {}}))
    assert report_table.main([str(path)]) == 0
    assert "| packed | 1.00 | 50.0 (0.50x) |" in capsys.readouterr().out
    path.write_text(json.dumps({"benchmarks": [{"extra_info": {"suite": "ladder"}, "stats": None}]}))
    assert report_table.main([str(path)]) == 1
    assert "--benchmark-disable" in capsys.readouterr().err


def test_gflops_needs_timings():
    assert report_table.gflops({"extra_info": {"flops": 10}, "stats": None}) is None
    assert report_table.gflops(SYNTHETIC[0]) == pytest.approx(100.0)
