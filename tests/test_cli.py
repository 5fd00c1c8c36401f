"""The command line: every subcommand at tiny sizes, in-process through
``whygpu.cli.main`` (plus ``python -m whygpu`` once), checking that the JSON
parses with the expected fields and sane numbers, that the figures are real
PNGs, that the report embeds them, and that user errors give one line on
stderr and exit status 2.  Kept to well under a minute."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import whygpu
import whygpu.cuda
from whygpu.bench.measure import PLANT_ENV
from whygpu.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAVE_OPENMP = "openmp" in whygpu.available_kernels()
needs_openmp = pytest.mark.skipif(not HAVE_OPENMP, reason="built without OpenMP: no parallel kernel")
PACKAGE_ROOT = str(Path(whygpu.__file__).resolve().parent.parent)


def check_png(path: Path, min_bytes: int = 10_000) -> None:
    """A real, non-trivial PNG: signature, an IHDR of plausible size, and
    enough bytes to hold more than an empty canvas."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200, (width, height)
    assert len(data) >= min_bytes, f"{path} is only {len(data)} bytes"


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def load(path: Path) -> dict:
    text = Path(path).read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    return json.loads(text)


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- info
def test_info_prints_machine_and_writes_json(tmp_path, capsys):
    rc, out, err = run(["info", "--out", tmp_path], capsys)
    assert rc == 0, err
    for word in ("CPU", "cores", "instruction set", "caches", "OpenMP", "CUDA", "versions"):
        assert word in out
    doc = load(tmp_path / "info.json")
    assert doc["schema"] == "whygpu.info/1"
    cpu = doc["machine"]["cpu"]
    assert cpu["cores"] >= 1 and cpu["arch"] in cpu["supported_archs"]
    assert cpu["physical_cores"] is None or 1 <= cpu["physical_cores"] <= cpu["cores"]
    assert "packed" in doc["kernels"]
    assert doc["default_kernel"] == ("openmp" if "openmp" in doc["kernels"] else "packed")
    assert "default kernel" in out
    cuda = doc["machine"]["cuda"]
    assert cuda["available"] or cuda["reason"]  # says why not
    if not cuda["available"]:
        assert "CUDA" in out and "not available (" in out


def test_python_dash_m_whygpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-m", "whygpu", "info", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "instruction set" in res.stdout
    assert load(tmp_path / "info.json")["schema"] == "whygpu.info/1"


# ---------------------------------------------------------------- ladder
def test_ladder_tiny(tmp_path, capsys):
    par = ",openmp" if HAVE_OPENMP else ""
    rc, out, err = run(
        [
            "ladder",
            "--sizes",
            "16,32",
            "--kernels",
            f"naive,packed{par},numpy",
            "--repeats",
            "2",
            "--budget",
            "0.2",
            "--all",  # every rung at every size, however fast this machine is: the budget is not tested here
            "--plot",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    assert "GFLOP/s" in out and "n=16" in out and "n=32" in out
    doc = load(tmp_path / "ladder.json")
    assert doc["schema"] == "whygpu.ladder/1"
    assert doc["params"]["sizes"] == [16, 32]
    got = {(m["kernel"], m["n"]) for m in doc["measurements"]}
    for k in ("naive", "packed", "numpy-1t") + (("openmp",) if HAVE_OPENMP else ()):
        assert {(k, 16), (k, 32)} <= got
    for m in doc["measurements"]:
        assert positive(m["seconds"]) and positive(m["gflops"])
        assert m["gflops"] == pytest.approx(2 * m["n"] ** 3 / m["seconds"] / 1e9)
    assert positive(doc["peak"]["gflops_1t"]) and positive(doc["peak"]["gflops_all"])
    rows = {r["kernel"]: r for r in doc["summary"]["rows"]}
    assert positive(rows["packed"]["speedup_prev"]) and rows["packed"]["prev"] == "naive"
    check_png(tmp_path / "ladder.png")
    check_png(tmp_path / "ladder_steps.png")


def test_ladder_skips_what_would_exceed_the_budget(tmp_path, capsys, monkeypatch):
    # The speed the skip decision sees is planted: 1 MFLOP/s, so n=8 (1 kFLOP, ~1 ms) fits the
    # 50 ms budget and n=512 (268 MFLOP, ~4.5 min) does not -- on a fast machine and on a slow one.
    monkeypatch.setenv(PLANT_ENV, "python=0.001")
    rc, out, err = run(
        [
            "ladder",
            "--sizes",
            "8,512",
            "--kernels",
            "python",
            "--no-numpy",
            "--repeats",
            "1",
            "--budget",
            "0.05",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    doc = load(tmp_path / "ladder.json")
    assert [(m["kernel"], m["n"]) for m in doc["measurements"]] == [("python", 8)]
    assert [(s["kernel"], s["n"]) for s in doc["skipped"]] == [("python", 512)]
    assert doc["skipped"][0]["predicted_s"] == pytest.approx(2 * 512**3 / 1e6)
    assert "skip" in out and "skipped python at n=512" in err and "--all" in err


# ---------------------------------------------------------------- roofline
def test_roofline_tiny(tmp_path, capsys):
    par = ",openmp" if HAVE_OPENMP else ""
    rc, out, err = run(
        [
            "roofline",
            "--n",
            "64",
            "--kernels",
            f"naive,packed{par},numpy",
            "--quick",
            "--repeats",
            "2",
            "--budget",
            "0.2",
            "--all",  # each kernel at n=64 however fast this machine is (over the budget it would be measured smaller)
            "--plot",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    assert "compute roof" in out and "bandwidth" in out
    doc = load(tmp_path / "roofline.json")
    assert doc["schema"] == "whygpu.roofline/1"
    roofs = doc["roofs"]
    for name in ("interpreter", "scalar", "simd_baseline", "simd_1t", "simd_all"):
        assert positive(roofs["compute"][name])
    # the roofs are ordered as the hardware says they must be
    assert roofs["compute"]["interpreter"] < roofs["compute"]["scalar"] < roofs["compute"]["simd_1t"]
    for level in ("L2", "DRAM"):
        assert positive(roofs["bandwidth"]["1"][level]) and positive(roofs["bandwidth"]["all"][level])
    pts = {p["kernel"]: p for p in doc["points"]}
    assert {"naive", "packed", "numpy-1t"} <= set(pts) and (not HAVE_OPENMP or "openmp" in pts)
    for p in pts.values():
        assert positive(p["predicted_s"]) and positive(p["measured_s"]) and p["n"] == 64
        assert p["bound"] in ("compute", "L2", "L3", "DRAM")
    assert pts["packed"]["compute_roof"] == "simd_1t"
    if HAVE_OPENMP:
        assert pts["openmp"]["compute_roof"] == "simd_all"
    assert pts["naive"]["compute_roof"] == "scalar"
    check_png(tmp_path / "roofline.png")


# ---------------------------------------------------------------- scaling
@needs_openmp
def test_scaling_tiny(tmp_path, capsys):
    rc, out, err = run(
        [
            "scaling",
            "--n",
            "64",
            "--threads",
            "1,2",
            "--repeats",
            "2",
            "--budget",
            "0.2",
            "--batch",
            "16",
            "--plot",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    assert "serial" in out
    doc = load(tmp_path / "scaling.json")
    assert doc["schema"] == "whygpu.scaling/1"
    assert doc["params"]["threads"] == [1, 2]
    kinds = {s["kind"] for s in doc["series"]}
    assert {"kernel", "reference", "peak", "train"} <= kinds
    for s in doc["series"]:
        assert s["threads"] == [1, 2] and len(s["speedup"]) == 2
        assert s["speedup"][0] == pytest.approx(1.0)
        assert all(positive(x) for x in s["seconds"] + s["speedup"])
        # 1 and 2 threads: two points cannot separate the serial part from the noise, so no fit
        assert s["serial_fraction"] is None and not s["fitted"] and s["max_speedup"] is None
        assert len(s["speedup_low"]) == len(s["speedup_high"]) == len(s["disturbed"]) == 2
    assert ("cannot separate" in doc["note"] or doc["cores"] < 2) and doc["quiet"]["blocks"]
    train = next(s for s in doc["series"] if s["kind"] == "train")
    assert all(0 < x <= 1 for x in train["matmul_share"])
    check_png(tmp_path / "scaling.png")


def test_amdahl_fit_recovers_the_serial_fraction():
    from whygpu.bench.scaling import amdahl, fit_amdahl

    ps = [1, 2, 4, 8, 16]
    assert fit_amdahl(ps, [amdahl(p, 0.1) for p in ps]) == pytest.approx(0.1)
    assert fit_amdahl(ps, ps) == pytest.approx(0.0)
    assert fit_amdahl([1], [1.0]) is None


# ---------------------------------------------------------------- train
def test_train_tiny(tmp_path, capsys):
    backends = "numpy,packed,openmp" if HAVE_OPENMP else "numpy,packed"
    rc, out, err = run(
        [
            "train",
            "--steps",
            "3",
            "--batch",
            "16",
            "--layers",
            "32,16,4",
            "--backends",
            backends,
            "--all",  # every back end trains, however fast this machine is
            "--plot",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    assert "samples/s" in out
    doc = load(tmp_path / "train.json")
    assert doc["schema"] == "whygpu.train/1"
    runs = {r["backend"]: r for r in doc["runs"]}
    assert set(runs) == set(backends.split(","))
    for r in runs.values():
        assert positive(r["step_s"]) and positive(r["samples_per_s"])
        assert 0 < r["matmul_share"] <= 1 and 0 <= r["accuracy"] <= 1
    # same weights, same batches: every back end computes the same training run
    assert runs["packed"]["final_loss"] == pytest.approx(runs["numpy"]["final_loss"], rel=1e-3)
    check_png(tmp_path / "train.png")


def test_train_skips_a_backend_over_budget(tmp_path, capsys, monkeypatch):
    # Planted speeds for the estimates: python at 1 MFLOP/s (52 steps of the 784-512-256-10 MLP at
    # batch 64: hours) and packed at 100 GFLOP/s (~0.1 s): the one skipped, the other kept, on any machine.
    monkeypatch.setenv(PLANT_ENV, "python=0.001,packed=100")
    rc, out, err = run(
        [
            "train",
            "--steps",
            "50",
            "--batch",
            "64",
            "--backends",
            "python,packed",
            "--budget",
            "0.5",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    runs = {r["backend"]: r for r in load(tmp_path / "train.json")["runs"]}
    assert "skipped" in runs["python"] and "step_s" not in runs["python"]
    assert positive(runs["packed"]["step_s"]) and "over_budget" not in runs["packed"]
    assert runs["packed"]["estimated_step_s"] < runs["python"]["estimated_step_s"] / 1e4  # the planted speeds
    assert "skipped training on python" in err


def test_train_batches_and_widths_beyond_a_thread_count(tmp_path, capsys):
    """A batch or a layer width is not a thread count: 1024 is no limit (the
    GPU demo's sweep goes to batch 8192)."""
    rc, out, err = run(
        ["train", "--steps", "1", "--batch", "1500", "--layers", "8,1100,2", "--backends", "numpy", "--out", tmp_path],
        capsys,
    )
    assert rc == 0, err
    assert load(tmp_path / "train.json")["params"]["batch"] == 1500


def test_train_sweep_of_the_cpu_back_ends_without_a_gpu(tmp_path, capsys):
    backends = "numpy,openmp" if HAVE_OPENMP else "numpy"
    rc, out, err = run(
        [
            "train",
            "--steps",
            "1",
            "--batch",
            "8",
            "--layers",
            "16,8,2",
            "--backends",
            backends,
            "--batches",
            "4,2048",
            "--plot",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0, err
    sw = load(tmp_path / "train.json")["sweep"]
    assert sw["batches"] == [4, 2048]
    gpu = whygpu.cuda.is_available()
    labels = [s["label"] for s in sw["series"] if s["device"] == "cpu"]
    assert sorted(labels) == sorted(backends.split(","))
    if not gpu:  # no cuda series, and nothing pretends otherwise
        assert len(sw["series"]) == len(labels)
    for s in sw["series"]:
        assert [p["batch"] for p in s["points"]] == [4, 2048]
        assert all(positive(p["step_s"]) for p in s["points"])
    rows = sw["summary"]["rows"]
    assert all(r["best_cpu"] in labels for r in rows)
    if not gpu:
        assert all("speedup_resident" not in r for r in rows)
        assert sw["summary"]["overtakes_resident"] is None
        assert "GPU resident vs best CPU" not in out and "no GPU is usable here" in out
    check_png(tmp_path / "train_sweep.png")
    rc, out, err = run(["train", "--batches", "0", "--out", tmp_path], capsys)
    assert rc == 2 and "positive integer" in err


# ---------------------------------------------------------------- explain
def test_explain_cli(tmp_path, capsys):
    rc, out, err = run(["explain", "48", "32", "16", "--kernels", "naive,packed", "--out", tmp_path], capsys)
    assert rc == 0, err
    assert "predicted" in out and "measured" in out and "flop/B" in out
    doc = load(tmp_path / "explain.json")
    assert doc["schema"] == "whygpu.explain/1" and (doc["m"], doc["n"], doc["k"]) == (48, 32, 16)
    assert doc["flops"] == 2 * 48 * 32 * 16
    for r in doc["rows"]:
        assert positive(r["predicted_s"]) and positive(r["measured_s"])
        assert r["traffic"] == [] or all(positive(t["bytes"]) for t in r["traffic"])


def test_explain_api():
    ex = whygpu.explain(300, 200, 100, kernels=["blocked", "packed"], measure=False)
    assert [r["kernel"] for r in ex.rows] == ["blocked", "packed"]
    assert all("measured_s" not in r for r in ex.rows)
    text = str(ex)
    assert "300x100" in text and "packed" in text
    packed = next(r for r in ex.rows if r["kernel"] == "packed")
    assert packed["flops"] == 2 * 300 * 200 * 100
    assert packed["predicted_s"] >= packed["flops"] / (packed["compute_gflops"] * 1e9) * 0.999
    with pytest.raises(ValueError):
        whygpu.explain(0, 4, 4)
    with pytest.raises(TypeError):
        whygpu.explain(4.5, 4, 4)
    with pytest.raises(ValueError):
        whygpu.explain(4, 4, 4, kernels=["nope"])


# ---------------------------------------------------------------- demo and report
# (demo_dir: one `whygpu demo --quick` per session, in conftest.py: the browser test reads it too)
def test_demo_quick_writes_everything(demo_dir):
    for name in ("info", "ladder", "roofline", "train", "demo") + (("scaling",) if HAVE_OPENMP else ()):
        assert (demo_dir / f"{name}.json").exists(), name
    demo = load(demo_dir / "demo.json")
    assert demo["schema"] == "whygpu.demo/1" and demo["quick"] is True
    # (how long it took is the machine's speed, not the code's: docs/cli.md gives the figures measured)
    assert demo["seconds"] > 0
    # every measurement was guarded, the demo's own roofs measurement too
    for name in ("ladder", "roofline", "train") + (("scaling",) if HAVE_OPENMP else ()):
        assert load(demo_dir / f"{name}.json")["quiet"]["blocks"], name
    assert load(demo_dir / "roofline.json")["quiet"]["blocks"][0]["label"] == "roofs (demo)"
    pngs = sorted(demo_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"ladder.png", "ladder_steps.png", "roofline.png", "train.png"} | (
        {"scaling.png"} if HAVE_OPENMP else set()
    )
    for p in pngs:
        check_png(p)
    html = (demo_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    md = (demo_dir / "report.md").read_text()
    for p in pngs:
        assert f"]({p.name})" in md
    assert md.count("*Figure ") == len(pngs)
    # captions carry this run's numbers
    peak = load(demo_dir / "roofline.json")["roofs"]["compute"]["simd_1t"]
    assert f"{peak:.1f}" in md or f"{peak:,.0f}" in md


def test_report_rebuilds_from_json_and_pytest_benchmark(demo_dir, tmp_path, capsys):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "test_tiny_bench.py").write_text(
        textwrap.dedent("""
        import numpy as np
        import pytest
        import whygpu

        @pytest.mark.parametrize("kernel", ["naive", "packed"])
        def test_matmul(benchmark, kernel):
            a = np.ones((32, 32), np.float32)
            benchmark.extra_info["flops"] = 2 * 32 ** 3
            benchmark(whygpu.matmul, a, a, kernel=kernel)
    """)
    )
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bench_json = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(bench_dir),
            f"--benchmark-json={bench_json}",
            "--benchmark-min-rounds=3",
            "--benchmark-max-time=0.05",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=bench_dir,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out_dir = tmp_path / "rebuilt"
    files = [demo_dir / f"{n}.json" for n in ("ladder", "roofline", "train")] + [bench_json]
    rc, out, err = run(["report", *files, "--out", out_dir], capsys)
    assert rc == 0, err
    html = (out_dir / "report.html").read_text()
    md = (out_dir / "report.md").read_text()
    assert "pytest-benchmark" in md and "test_matmul[packed]" in md
    check_png(out_dir / "benchmarks.png", min_bytes=5_000)
    assert html.count("data:image/png;base64,") == len(list(out_dir.glob("*.png")))
    # a folder works too
    rc, out, err = run(["report", demo_dir, "--out", tmp_path / "again"], capsys)
    assert rc == 0, err
    assert (tmp_path / "again" / "report.html").exists()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv, words",
    [
        (["frobnicate"], "invalid choice"),
        (["ladder", "--kernels", "nope"], "unknown kernel"),
        (["ladder", "--sizes", "-4"], "positive integer"),
        (["ladder", "--sizes", "64,0"], "positive integer"),
        (["ladder", "--budget", "-1"], "positive number"),
        (["explain", "4", "-2", "4"], "positive integer"),
        (["explain", "4", "4"], "required"),
        (["scaling", "--kernel", "packed"], "not parallel"),
        (["scaling", "--kernel", "nope"], "unknown kernel"),
        (["train", "--backends", "nope"], "unknown back end"),
        (["report", "/nonexistent/whygpu.json"], "no such file"),
        ([], "required"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, words, tmp_path, capsys):
    if argv and argv[0] not in ("frobnicate",) and "--out" not in argv and argv[0] != "report":
        argv = argv + ["--out", str(tmp_path)]
    rc, out, err = run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("whygpu") and "error" in lines[0] and words in lines[0]
    assert "Traceback" not in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, out, err = run(["info", "--out", blocker / "sub"], capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "cannot write to output folder" in err


def test_report_rejects_foreign_json(tmp_path, capsys):
    f = tmp_path / "other.json"
    f.write_text('{"hello": 1}')
    rc, out, err = run(["report", f, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "neither a whygpu result" in err and err.count("\n") == 1
    g = tmp_path / "broken.json"
    g.write_text("{not json")
    rc, out, err = run(["report", g, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "not valid JSON" in err


def test_report_says_which_of_two_results_of_one_kind_it_keeps(demo_dir, tmp_path, capsys):
    """Two info.json (a folder and a file after it): the report keeps the last one given, and says so."""
    other = tmp_path / "info.json"
    doc = load(demo_dir / "info.json")
    other.write_text(json.dumps(doc))
    rc, out, err = run(["report", demo_dir, other, "--out", tmp_path / "r"], capsys)
    assert rc == 0
    assert f"note: {other} replaces {demo_dir / 'info.json'}: the report has one info result" in err
    rc, out, err = run(["report", demo_dir, "--out", tmp_path / "r2"], capsys)
    assert rc == 0 and "replaces" not in err  # one of each: nothing to say


def test_help_and_version(capsys):
    rc, out, err = run(["--help"], capsys)
    assert rc == 0 and "demo" in out and "roofline" in out
    rc, out, err = run(["--version"], capsys)
    assert rc == 0 and whygpu.__version__ in out


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    rc, out, err = run(
        [
            "ladder",
            "--sizes",
            "16",
            "--kernels",
            "packed",
            "--no-numpy",
            "--repeats",
            "1",
            "--progress",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert rc == 0
    assert "ladder" in err and "left" in err  # the bar, with our time estimate
    assert "left" not in out  # stdout stays the table


def test_each_subcommand_keeps_its_own_defaults():
    from whygpu.cli import _parser

    p = _parser()
    assert p.parse_args(["ladder"]).budget == 2.0
    assert p.parse_args(["explain", "1", "2", "3"]).budget == 1.0
    assert p.parse_args(["train"]).budget == 10.0
    assert p.parse_args(["ladder", "--sizes", "8:64"]).sizes == [8, 16, 32, 64]
