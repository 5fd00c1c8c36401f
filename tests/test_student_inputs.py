"""Inputs a student will type (issue 19): sizes that cannot fit in memory are refused in one line before
anything is allocated; thread counts that will not do what they seem earn a warning; commands that only look
write no report folder; a tiny product is described in units and words that fit it.

Memory is simulated with WHYGPU_AVAILABLE_MEMORY: nothing here comes near exhausting the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import whygpu
from whygpu import TooLargeError, _memory
from whygpu._threads import _CPUS, ThreadsWarning
from whygpu.explain import format_flops, why_below

HAVE_OPENMP = "openmp" in whygpu.available_kernels()
needs_openmp = pytest.mark.skipif(not HAVE_OPENMP, reason="built without OpenMP")


def _cli(*args, cwd, **env):
    pkg_parent = os.path.dirname(os.path.dirname(whygpu.__file__))
    full_env = dict(os.environ, MPLBACKEND="Agg")
    rest = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    full_env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *rest])
    full_env.pop("WHYGPU_DEBUG", None)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "whygpu", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _reports(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("whygpu-report-"))


# ---- 1. Sizes that cannot fit in memory ----------------------------------------------------------------


def test_available_bytes(monkeypatch):
    monkeypatch.delenv("WHYGPU_AVAILABLE_MEMORY", raising=False)
    got = _memory.available_bytes()
    assert got is None or got > 0
    for text, expected in (("512M", 512 << 20), ("2G", 2 << 30), ("2GiB", 2 << 30), ("1000", 1000)):
        monkeypatch.setenv("WHYGPU_AVAILABLE_MEMORY", text)
        assert _memory.available_bytes() == expected
    monkeypatch.setenv("WHYGPU_AVAILABLE_MEMORY", "lots")  # not a size: the machine's own figure
    assert _memory.available_bytes() == got or got is None


def test_check_fits(monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 << 30)
    _memory.check_fits(1 << 20, "a small thing")
    with pytest.raises(TooLargeError, match=r"a big thing needs 2 GiB of memory but only 1 GiB is available"):
        _memory.check_fits(2 << 30, "a big thing")
    assert issubclass(TooLargeError, MemoryError) and issubclass(TooLargeError, ValueError)
    monkeypatch.setattr(_memory, "available_bytes", lambda: None)  # unknown: no check
    _memory.check_fits(1 << 60, "anything")


@pytest.mark.parametrize(
    "args",
    [
        ["ladder", "--sizes", "100000"],
        pytest.param(["scaling", "--n", "100000"], marks=needs_openmp),
        ["explain", "100000", "100000", "100000", "--all"],
        ["roofline", "--n", "100000", "--all"],
        ["train", "--batch", "1000000"],
    ],
    ids=lambda a: a[0],
)
def test_cli_refuses_sizes_that_cannot_fit(tmp_path, args):
    res = _cli(*args, "--out", tmp_path / "out", cwd=tmp_path, WHYGPU_AVAILABLE_MEMORY="4G")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("whygpu: error: "), res.stderr
    size = "1000000" if args[0] == "train" else "100000"
    assert size in lines[0] and "GiB of memory but only 4 GiB is available" in lines[0]
    assert not (tmp_path / "out").exists()  # the folder it made for the results is gone again
    res = _cli(*args, cwd=tmp_path, WHYGPU_AVAILABLE_MEMORY="4G")
    assert res.returncode == 2 and _reports(tmp_path) == []


def test_api_refuses_sizes_that_cannot_fit(monkeypatch):
    from whygpu.bench.ladder import run_ladder
    from whygpu.bench.train import run_train
    from whygpu.predict.roofline import run_roofline

    monkeypatch.setenv("WHYGPU_AVAILABLE_MEMORY", "1M")
    with pytest.raises(TooLargeError, match=r"\(2048, 2048\) @ \(2048, 2048\) float32 product .* needs 48 MiB"):
        run_ladder(sizes=[2048], kernels=["naive"])
    with pytest.raises(TooLargeError, match="available"):
        run_roofline(n=2048, force=True, kernels=["naive"])
    with pytest.raises(TooLargeError, match="available"):
        whygpu.explain(2048, 2048, 2048, kernels=["naive"], force=True)
    with pytest.raises(TooLargeError, match="training at batch 100000"):
        run_train(batch=100000, backends=["numpy"], sweep_batches=[])
    ex = whygpu.explain(2048, 2048, 2048, kernels=["naive"], measure=False)  # predictions allocate nothing
    assert ex.rows[0]["kernel"] == "naive"


@needs_openmp
def test_scaling_refuses_sizes_that_cannot_fit(monkeypatch):
    from whygpu.bench.scaling import run_scaling

    monkeypatch.setenv("WHYGPU_AVAILABLE_MEMORY", "1M")
    with pytest.raises(TooLargeError, match="available"):
        run_scaling(n=2048, threads_list=[1])


@pytest.mark.parametrize("kernel", ["naive", "packed"])
def test_matmul_refuses_an_output_that_cannot_fit(monkeypatch, kernel):
    a = np.ones((6000, 1), np.float32)  # tiny inputs, a 137 MiB result
    b = np.ones((1, 6000), np.float32)
    monkeypatch.setenv("WHYGPU_AVAILABLE_MEMORY", "64M")
    with pytest.raises(TooLargeError, match=r"the 6000 x 6000 float32 result .* needs 137 MiB"):
        whygpu.matmul(a, b, kernel=kernel)
    with pytest.raises(MemoryError):
        whygpu.gemm(a, b, kernel=kernel)
    c = np.empty((6000, 6000), np.float32)  # an output the caller provides is not counted
    monkeypatch.setenv("WHYGPU_AVAILABLE_MEMORY", "1M")
    np.testing.assert_array_equal(whygpu.gemm(a[:3], b, c[:3]), np.ones((3, 6000), np.float32))
    assert whygpu.matmul(a[:4], b[:, :4], kernel=kernel).shape == (4, 4)  # small results: no check at all


# ---- 2. Commands that only look write no report folder -------------------------------------------------


def test_info_and_explain_no_measure_write_no_folder(tmp_path):
    for args in (["info"], ["explain", "8", "8", "8", "--no-measure", "--kernels", "naive"]):
        res = _cli(*args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "wrote" not in res.stdout
    assert _reports(tmp_path) == []
    res = _cli("info", "--out", tmp_path / "given", cwd=tmp_path)  # --out still writes
    assert res.returncode == 0 and (tmp_path / "given" / "info.json").exists()
    res = _cli("explain", "8", "8", "8", "--no-measure", "--out", tmp_path / "ex", cwd=tmp_path)
    assert res.returncode == 0 and (tmp_path / "ex" / "explain.json").exists()


# ---- 3. Notes are prefixed once ------------------------------------------------------------------------


@needs_openmp
def test_scaling_note_has_one_prefix():
    from whygpu.bench.scaling import run_scaling

    notes = []
    run_scaling(n=16, threads_list=[1, _CPUS + 1], numpy=False, peak=False, repeats=1, budget=0.05, log=notes.append)
    over = [n for n in notes if "threads on" in n]
    assert over and not over[0].startswith("note:"), notes


# ---- 4, 5, 6. Thread counts ----------------------------------------------------------------------------


def test_more_threads_than_cores_warns(restore_num_threads):
    n = _CPUS + 1
    with pytest.warns(ThreadsWarning, match=rf"^{n} threads on {_CPUS} cores: "):
        whygpu.set_num_threads(n)
    whygpu.set_num_threads(_CPUS)  # up to the cores: silent
    a = np.ones((3, 3), np.float32)
    if HAVE_OPENMP:
        with pytest.warns(ThreadsWarning, match=rf"{n} threads on {_CPUS} cores") as rec:
            whygpu.matmul(a, a, kernel="openmp", threads=n)
        assert rec[0].filename == __file__  # points at the caller's line, not into whygpu
        with pytest.warns(ThreadsWarning, match=rf"{n} threads on {_CPUS} cores"):
            whygpu.gemm(a, a, kernel="openmp", threads=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whygpu.matmul(a, a, kernel="openmp" if HAVE_OPENMP else "packed", threads=1)


def test_cli_warns_once_about_more_threads_than_cores(tmp_path):
    n = _CPUS + 1
    res = _cli("explain", "8", "8", "8", "--no-measure", "--kernels", "naive,packed", "--threads", n, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "threads on" in ln]
    assert warned == [f"whygpu: warning: {n} threads on {_CPUS} cores: " + warned[0].split(" cores: ", 1)[1]]


@pytest.mark.parametrize("call", ["matmul", "gemm"])
def test_threads_for_a_one_thread_kernel_warns(call):
    a = np.ones((3, 3), np.float32)
    fn = getattr(whygpu, call)
    with pytest.warns(ThreadsWarning, match=r"threads=2 has no effect: kernel 'packed' runs on one thread"):
        fn(a, a, kernel="packed", threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(a, a, kernel="packed", threads=1)
        fn(a, a, kernel="packed")  # the default count is for the parallel kernels: not a mistake here


@pytest.mark.parametrize("value", ["abc", "0", "2000"])
def test_bad_whygpu_num_threads_warns(tmp_path, value):
    res = subprocess.run(
        [sys.executable, "-c", "import whygpu; print(whygpu.get_num_threads())"],
        env=dict(
            os.environ,
            WHYGPU_NUM_THREADS=value,
            PYTHONPATH=os.path.dirname(os.path.dirname(whygpu.__file__)),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == _CPUS
    assert f"RuntimeWarning: WHYGPU_NUM_THREADS={value!r} ignored" in res.stderr
    assert "using the" in res.stderr


# ---- 7. A tiny product ---------------------------------------------------------------------------------


def test_flop_units():
    assert format_flops(480) == "480 FLOP"
    assert format_flops(2000) == "2.0 kFLOP"
    assert format_flops(2 * 64**3) == "524.3 kFLOP"
    assert format_flops(2 * 1024**3) == "2.1 GFLOP"


def test_tiny_product_is_explained_by_call_overhead():
    text = str(whygpu.explain(10, 10, 10, kernels=["naive"], measure=False))
    assert "2.0 kFLOP" in text and "MFLOP" not in text
    assert "fixed cost of a call" in why_below("packed", 0.01, overhead_s=3e-6, measured_s=4e-6)
    assert "fixed cost" not in why_below("packed", 0.5, overhead_s=1e-6, measured_s=1e-2)
    assert "0.5%" in why_below("packed", 0.005, overhead_s=3e-6, measured_s=4e-6)
    ex = whygpu.explain(4, 4, 4, kernels=["packed"], budget=0.2, repeats=3)
    row = ex.rows[0]
    assert row["call_overhead_s"] > 0 and "measured_s" in row
    assert "fixed cost of a call" in str(ex)
