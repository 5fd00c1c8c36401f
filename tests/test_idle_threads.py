"""whygpu gives OpenMP's and OpenBLAS's idle threads a short spin (python/whygpu/_idle_threads.py):
the decision from planted facts, the environment left as it was, and the setting reaching libgomp.
Nothing here is timed: what the short spin buys is measured by benchmarks/alternation.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import whygpu
from whygpu import _idle_threads as idle

STEP_S = 25e-9  # a planted busy-wait step (a Zen 1 here: 26 ns)
TSC_HZ = 2e9


def plan(environ=None, *, step_s=STEP_S, tsc_hz=TSC_HZ, numpy_loaded=False, gomp_loaded=False, openmp_s=50e-6):
    return idle._plan(dict(environ or {}), step_s, tsc_hz, numpy_loaded, gomp_loaded, openmp_s)


def test_both_spins_are_set_to_the_target_from_the_measured_clocks():
    to_set, state = plan()
    steps = int(to_set["GOMP_SPINCOUNT"])
    assert steps == round(50e-6 / STEP_S) == 2000
    log2 = int(to_set["OPENBLAS_THREAD_TIMEOUT"])
    assert 2 ** (log2 - 1) < idle.OPENBLAS_SPIN_S * TSC_HZ * 2 and 2**log2 / TSC_HZ < 4 * idle.OPENBLAS_SPIN_S
    assert state["openmp"]["by"] == state["openblas"]["by"] == "whygpu"
    # the default it replaces, from the same clocks: 300,000 steps and 2**28 cycles
    assert state["openmp"]["default_spin_s"] == pytest.approx(300_000 * STEP_S)
    assert state["openblas"]["default_spin_s"] == pytest.approx(2**28 / TSC_HZ)


def test_by_default_libgomp_spins_2_ms_whatever_a_step_lasts():
    for step_s in (3e-9, 25e-9, 50e-9):  # a pause of ~10, ~100 and ~150 cycles
        to_set, state = plan(step_s=step_s, openmp_s=idle.OPENMP_SPIN_S)
        assert int(to_set["GOMP_SPINCOUNT"]) * step_s == pytest.approx(2e-3, rel=1e-3)
        assert "spin 2 ms after a call" in idle.describe(state)[0]


def test_whygpu_openmp_spin_us_is_read_and_a_bad_value_warns(monkeypatch):
    monkeypatch.setenv("WHYGPU_OPENMP_SPIN_US", "50")
    assert idle._openmp_target() == pytest.approx(50e-6)
    monkeypatch.setenv("WHYGPU_OPENMP_SPIN_US", "fast")
    with pytest.warns(RuntimeWarning, match="WHYGPU_OPENMP_SPIN_US"):
        assert idle._openmp_target() == idle.OPENMP_SPIN_S == 2e-3


def test_a_slower_pause_gets_fewer_steps_for_the_same_time():
    fast, _ = plan(step_s=2e-9)
    slow, _ = plan(step_s=50e-9)
    assert int(fast["GOMP_SPINCOUNT"]) == 25 * int(slow["GOMP_SPINCOUNT"])


@pytest.mark.parametrize(
    "environ",
    [
        {"GOMP_SPINCOUNT": "300000"},
        {"OMP_WAIT_POLICY": "active"},
        {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "0"},
    ],
)
def test_the_users_openmp_setting_is_kept(environ):
    to_set, state = plan(environ)
    assert "GOMP_SPINCOUNT" not in to_set and "OMP_WAIT_POLICY" not in to_set
    assert state["openmp"] == {"by": "user", "env": environ}
    assert "as you set" in idle.describe(state)[0]


def test_the_users_openblas_setting_is_kept():
    to_set, state = plan({"OPENBLAS_THREAD_TIMEOUT": "28"})
    assert "OPENBLAS_THREAD_TIMEOUT" not in to_set
    assert state["openblas"]["by"] == "user"


def test_numpy_imported_first_is_said_with_what_to_do():
    to_set, state = plan(numpy_loaded=True)
    assert "OPENBLAS_THREAD_TIMEOUT" not in to_set  # too late: OpenBLAS read it when NumPy loaded it
    line = idle.describe(state)[1]
    assert "imported before whygpu" in line and "import whygpu before numpy" in line
    assert f"OPENBLAS_THREAD_TIMEOUT={state['openblas']['suggest']}" in line


def test_libgomp_loaded_by_another_module_is_said():
    to_set, state = plan(gomp_loaded=True)
    assert "GOMP_SPINCOUNT" not in to_set
    assert "loaded by another module" in idle.describe(state)[0]


def test_no_clock_no_setting():
    to_set, state = plan(step_s=None, tsc_hz=None)
    assert to_set == {}
    assert all("default spin" in line for line in idle.describe(state))


def test_the_environment_is_restored_after_loading():
    env = {"PATH": "/bin"}
    with idle.applied(env):
        inside = dict(env)
    assert env == {"PATH": "/bin"}  # nothing leaks to subprocesses or libraries loaded later
    if idle.STATE.get("openmp", {}).get("by") == "whygpu":
        assert "GOMP_SPINCOUNT" in inside


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_DISPLAY_ENV")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


@pytest.mark.skipif("openmp" not in whygpu.available_kernels(), reason="built without OpenMP")
def test_libgomp_reads_the_spin_whygpu_chose_and_the_environment_is_clean_after():
    # OMP_DISPLAY_ENV makes libgomp print the settings it read when it was loaded.
    r = _run(
        "import os, whygpu; from whygpu import _idle_threads as t; "
        "print('STATE', t.STATE['openmp'].get('env')); "
        "print('LEFT', [k for k in ('GOMP_SPINCOUNT', 'OPENBLAS_THREAD_TIMEOUT') if k in os.environ])",
        OMP_DISPLAY_ENV="verbose",
        WHYGPU_OPENMP_SPIN_US="50",
    )
    assert r.returncode == 0, r.stderr
    if "OPENMP DISPLAY ENVIRONMENT" not in r.stderr + r.stdout:
        pytest.skip("this build's OpenMP runtime is not libgomp")
    chosen = [line for line in r.stdout.splitlines() if line.startswith("STATE")][0]
    steps = chosen.split("'GOMP_SPINCOUNT': '")[1].split("'")[0]
    assert f"GOMP_SPINCOUNT = '{steps}'" in r.stderr + r.stdout
    assert "LEFT []" in r.stdout


def test_whygpu_info_says_how_long_idle_threads_spin():
    r = _run("import whygpu.cli as c; c.main(['info'])")
    assert r.returncode == 0, r.stderr
    assert "idle threads spin" in r.stdout or "default spin" in r.stdout


def test_the_report_says_what_the_run_recorded_about_idle_threads():
    from whygpu.report import machine

    planted = {"openblas": {"by": "none", "why": "NumPy (and its BLAS) was imported before whygpu", "suggest": 15}}
    doc = {"machine": {"cpu": {"model": "planted"}, "idle_threads": planted}, "kernels": []}
    table = machine.section({"info": doc}, None, [], 0)[1][2]
    rows = [r for r in table if r[0] == "idle threads"]
    assert len(rows) == 1 and "OPENBLAS_THREAD_TIMEOUT=15" in rows[0][1]
    doc["machine"].pop("idle_threads")  # a document written before whygpu recorded it: no row, no error
    assert not [r for r in machine.section({"info": doc}, None, [], 0)[1][2] if r[0] == "idle threads"]
