"""pytest-benchmark's tables fit a 120-column terminal (conftest.py chooses the columns, the names and the
time unit; issue 32: the defaults printed 19 tables about 250 columns wide).

Nothing here depends on this machine's speed: the configuration is read from a collection of the real
suites (no benchmark runs), and the table is drawn by pytest-benchmark's own code from planted times,
the slowest a group can hold beside its fastest (pure Python beside NumPy) and worse.  One end-to-end
run of two tiny benchmarks checks that a real run prints what the configuration says."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("whygpu_bench_conftest", HERE / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)
WIDTH = conftest.TABLE_WIDTH

# A pytest plugin for the subprocess: after collection, what the benchmark session will print with.
DUMP_PLUGIN = """
import json, os

def pytest_collection_finish(session):
    bs = session.config._benchmarksession
    names = [item.name for item in session.items if "benchmark" in getattr(item, "fixturenames", ())]
    with open(os.environ["WHYGPU_TABLE_DUMP"], "w") as f:
        json.dump({"columns": bs.columns, "name_format": bs.name_format.__name__, "names": names}, f)
"""


def _collected(tmp_path, *args, where: Path = HERE) -> dict:
    (tmp_path / "whygpu_table_dump.py").write_text(DUMP_PLUGIN)
    dump = tmp_path / "dump.json"
    env = dict(os.environ, WHYGPU_TABLE_DUMP=str(dump))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", str(where), "--collect-only", "-q", "-p", "no:cacheprovider"]
    res = subprocess.run([*cmd, "-p", "whygpu_table_dump", *args], env=env, capture_output=True, text=True,
                         timeout=120, cwd=HERE.parent)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(dump.read_text())


class _Lines:
    """The part of a terminal reporter TableResults writes to, keeping the lines."""

    def __init__(self):
        self.text = ""

    def write(self, s, **markup):
        self.text += s

    def write_line(self, s, **markup):
        self.text += s + "\n"

    def ensure_newline(self):
        pass


def _stats(name: str, seconds: float, rounds: int) -> dict:
    return {"name": name, "fullname": name, "source": None, "group": None, "has_error": False,
            "min": seconds * 0.9, "max": seconds * 40, "mean": seconds * 1.5, "stddev": seconds * 9,
            "median": seconds, "iqr": seconds * 2, "ops": 1 / (seconds * 1.5), "rounds": rounds,
            "iterations": 1, "outliers": "12;34"}  # fmt: skip


def _draw(names, columns, name_format, fastest_s, slowest_s, group="train step 784-512-256-10, batch 1024"):
    from pytest_benchmark.plugin import pytest_benchmark_scale_unit as theirs
    from pytest_benchmark.table import TableResults
    from pytest_benchmark.utils import NAME_FORMATTERS, report_noprogress

    def unit(**kw):
        return conftest.pytest_benchmark_scale_unit(config=None, **kw) or theirs(config=None, **kw)

    step = (slowest_s / fastest_s) ** (1 / max(1, len(names) - 1))
    benches = [_stats(n, fastest_s * step**i, 200 if i % 2 else 3) for i, n in enumerate(names)]
    out = _Lines()
    fmt = NAME_FORMATTERS[name_format.replace("name_formatter_", "")]
    table = TableResults(columns, "min", None, fmt, None, unit)
    table.display(out, [(group, benches)], progress_reporter=report_noprogress)
    return out.text.splitlines()


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    return _collected(tmp_path_factory.mktemp("collect"))


def test_the_configuration_chooses_few_columns_and_short_names(configured):
    assert configured["columns"] == conftest.TABLE_COLUMNS
    assert "median" in configured["columns"] and "max" not in configured["columns"]
    assert configured["name_format"] == "name_formatter_short"
    assert len(configured["names"]) > 50  # every suite collected (the heavy sizes too)


def test_a_choice_on_the_command_line_wins(tmp_path):
    args = ("--benchmark-columns=min,max,ops", "--benchmark-name=long")
    got = _collected(tmp_path, *args, where=HERE / "test_bench_train.py")
    assert got["columns"] == ["min", "max", "ops"] and got["name_format"] == "name_formatter_long"


@pytest.mark.parametrize(
    "fastest_s,slowest_s",
    [(2e-5, 0.25), (1e-6, 30.0), (3e-7, 2e-6), (0.9e-3, 0.999e-3), (1.5, 40.0)],
    ids=["python-beside-numpy", "microsecond-beside-half-a-minute", "nanoseconds", "milliseconds", "seconds"],
)
def test_every_table_line_fits_120_columns(configured, fastest_s, slowest_s):
    # all the suites' names in one group: no real group has a longer name than its longest
    lines = _draw(configured["names"], configured["columns"], configured["name_format"], fastest_s, slowest_s)
    widest = max(lines, key=len)
    assert len(widest) <= WIDTH, f"{len(widest)} columns: {widest}"
    assert any("(>1000.0)" in ln or "(1.0)" in ln for ln in lines)  # the ratios to the fastest are there


def test_the_defaults_did_not_fit(configured):
    """What the check guards against: pytest-benchmark's own defaults on the same planted table."""
    lines = _draw(configured["names"], conftest.DEFAULT_COLUMNS, "name_formatter_normal", 2e-5, 0.25)
    assert max(map(len, lines)) > 200


@pytest.mark.slow
def test_a_real_run_prints_narrow_tables(tmp_path):
    """Two tiny benchmarks of the ladder, measured (about a second on a quiet machine): the table as pytest
    prints it.  Its width does not depend on the times: the unit keeps every time below 100,000."""
    env = dict(os.environ, COLUMNS=str(WIDTH))
    cmd = [sys.executable, "-m", "pytest", str(HERE / "test_bench_ladder.py"), "-q", "-p", "no:cacheprovider",
           "--benchmark-enable", "-k", "numpy-x1-n64 or packed-n64"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if "benchmark 'ladder n=  64'" in ln)
    table = lines[start : start + 6]
    assert "Median" in table[1] and "Max" not in table[1] and "OPS" not in table[1]
    assert any(ln.startswith("ladder[numpy-x1-n64]") for ln in table), table  # NumPy's baseline, short name
    assert max(map(len, lines)) <= WIDTH, max(lines, key=len)
