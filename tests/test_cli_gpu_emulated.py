"""The command line with a usable GPU, without one: every subcommand, ``demo
--quick`` and ``report`` run against a whygpu whose ``_cuda`` is the real
binding (src/cuda_module.cpp) built over the CPU emulation of CUDA
(tests/cuda_emu).  The emulated "GPU" is slow and its figures mean nothing;
what is checked is that every path a GPU turns on runs -- the GPU probes, the
CUDA rungs in the ladder, roofline and explain, GPU training in ``train`` and
its batch sweep, the report's GPU sections -- and writes sane, complete
results.  (``whygpu demo`` and ``whygpu train`` once crashed on a real GPU
while the kernels' own emulated tests passed: this file is why that cannot
happen unnoticed again.)
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

import whygpu

HERE = pathlib.Path(__file__).resolve().parent
EMU = HERE / "cuda_emu"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(emulated_site):
    """The whygpu with the emulated GPU (tests/conftest.py builds it once per run)."""
    return emulated_site


def whygpu_cli(site, *args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(site), MPLBACKEND="Agg", WHYGPU_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "whygpu", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


def load(path):
    text = pathlib.Path(path).read_text()
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def is_png(path) -> bool:
    data = pathlib.Path(path).read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_info_sees_the_emulated_gpu(site, tmp_path):
    res = ok(whygpu_cli(site, "info", "--out", tmp_path, cwd=tmp_path))
    assert "available: Emulated GPU" in res.stdout
    doc = load(tmp_path / "info.json")
    assert doc["machine"]["cuda"]["available"]
    assert "cuda_warptile" in doc["kernels"]


def test_ladder_measures_the_cuda_rungs_against_the_gpu_peak(site, tmp_path):
    res = ok(whygpu_cli(site, "ladder", "--sizes", "16,32", "--gpu-sizes", "16,48", "--kernels",
                        "packed,cuda_naive,cuda_warptile,numpy", "--repeats", "2", "--budget", "0.5", "--plot",
                        "--out", tmp_path, cwd=tmp_path))
    doc = load(tmp_path / "ladder.json")
    assert doc["params"]["gpu_sizes"] == [16, 48]
    got = {(m["kernel"], m["n"]): m for m in doc["measurements"]}
    for k in ("cuda_naive", "cuda_warptile"):
        assert got[(k, 16)]["device"] == got[(k, 48)]["device"] == "cuda"
        assert (k, 32) not in got  # the GPU series run at the GPU sizes
    assert positive(doc["peak"]["gpu_gflops"])
    rows = {r["kernel"]: r for r in doc["summary"]["rows"]}
    assert positive(rows["cuda_warptile"]["pct_peak"])  # % of the measured GPU peak, no longer "n/a"
    assert rows["cuda_warptile"]["prev"] == "cuda_naive"
    g = doc["summary"]["gpu"]
    assert g["best"] in ("cuda_naive", "cuda_warptile") and g["n"] == 48 and positive(g["vs_cpu"])
    assert "Best GPU rung:" in res.stdout and "the GPU (Emulated GPU" in res.stdout
    assert is_png(tmp_path / "ladder.png")


def test_roofline_measures_the_gpu_and_places_the_cuda_rungs(site, tmp_path):
    res = ok(whygpu_cli(site, "roofline", "--n", "48", "--gpu-n", "64", "--kernels", "packed,cuda_smem,cuda_warptile",
                        "--quick", "--repeats", "2", "--budget", "1", "--plot", "--out", tmp_path, cwd=tmp_path))
    doc = load(tmp_path / "roofline.json")
    gpu = doc["gpu_roofs"]
    assert positive(gpu["fma_gflops"]) and gpu["emulated"]
    assert positive(gpu["bandwidth"]["DRAM"]) and positive(gpu["bandwidth"]["L2"])
    for d in ("h2d", "d2h"):
        assert all(positive(gpu["host"][d][m]) for m in ("pageable", "pinned", "staged"))
    pts = {p["kernel"]: p for p in doc["points"]}
    assert pts["packed"]["device"] == "cpu" and pts["packed"]["n"] == 48
    for k in ("cuda_smem", "cuda_warptile"):
        p = pts[k]
        assert p["device"] == "cuda" and p["compute_roof"] == "gpu_fma"
        assert positive(p["measured_s"]) and positive(p["predicted_s"]) and positive(p["intensity"])
        assert p["compute_gflops"] == pytest.approx(gpu["fma_gflops"])
    # the warp-tiled rung reuses each load over a 4x bigger tile: a quarter of the bytes from L2
    l2 = {k: next(t["bytes"] for t in pts[k]["traffic"] if t["level"] == "L2") for k in ("cuda_smem", "cuda_warptile")}
    assert l2["cuda_warptile"] == pytest.approx(l2["cuda_smem"] / 4)
    assert "Roofs of the GPU" in res.stdout and "pinned" in res.stdout
    assert is_png(tmp_path / "roofline_gpu.png") and is_png(tmp_path / "roofline.png")


def test_explain_covers_the_cuda_rungs(site, tmp_path):
    res = ok(whygpu_cli(site, "explain", "48", "40", "56", "--kernels", "packed,cuda_warptile", "--budget", "1",
                        "--out", tmp_path, cwd=tmp_path))
    doc = load(tmp_path / "explain.json")
    rows = {r["kernel"]: r for r in doc["rows"]}
    w = rows["cuda_warptile"]
    assert w["compute_roof"] == "gpu_fma" and positive(w["measured_s"]) and positive(w["predicted_s"])
    assert "cuda_warptile" in res.stdout and "GPU (Emulated GPU" in res.stdout


def test_scaling_refuses_a_gpu_kernel_clearly(site, tmp_path):
    res = whygpu_cli(site, "scaling", "--kernel", "cuda_warptile", "--out", tmp_path, cwd=tmp_path)
    assert res.returncode == 2
    assert "runs on the GPU" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory):
    """`whygpu train` with the cuda back end and the batch sweep, at tiny sizes."""
    out = tmp_path_factory.mktemp("train")
    res = ok(whygpu_cli(site, "train", "--layers", "24,16,10", "--batch", "16", "--steps", "2", "--backends",
                        "numpy,openmp,cuda,cuda_smem" if "openmp" in whygpu.available_kernels() else
                        "numpy,cuda,cuda_smem", "--batches", "8,32", "--budget", "20", "--plot", "--out", out,
                        cwd=out))
    return out, res


def test_train_runs_on_the_gpu_and_sweeps_batches(trained):
    out, res = trained
    doc = load(out / "train.json")
    runs = {r["backend"]: r for r in doc["runs"]}
    for b in ("cuda", "cuda_smem"):
        assert not runs[b].get("skipped"), runs[b]
        assert runs[b]["device"] == "cuda" and positive(runs[b]["step_s"])
        assert 0 < runs[b]["matmul_share"] < 1
    # the same weights and batches: the GPU computes what the CPU does
    assert runs["cuda"]["final_loss"] == pytest.approx(runs["numpy"]["final_loss"], rel=1e-3)
    sw = doc["sweep"]
    series = {s["label"]: s for s in sw["series"]}
    gpu = ("cuda, copied", "cuda, resident", "cuda, copied, graph", "cuda, resident, graph")
    assert {*gpu, "numpy"} <= set(series)
    assert [series[lbl]["graph"] for lbl in gpu] == [False, False, True, True]
    for lbl in (*gpu, "numpy"):
        assert [p["batch"] for p in series[lbl]["points"]] == [8, 32]
        assert all(positive(p["step_s"]) for p in series[lbl]["points"])
    rows = {r["batch"]: r for r in sw["summary"]["rows"]}
    for b in (8, 32):
        assert positive(rows[b]["speedup_resident"]) and positive(rows[b]["speedup_copied"])
        assert 0 <= rows[b]["copy_share"] < 1
        assert positive(rows[b]["graph_gain"]) and positive(rows[b]["speedup_resident_graph"])
    assert sw["summary"]["at_batch"] == 32
    assert "GPU resident vs best CPU" in res.stdout and "graph gain" in res.stdout
    assert is_png(out / "train_sweep.png")


def test_report_has_the_gpu_sections_with_figures(site, trained, tmp_path):
    train_dir, _ = trained
    roof = tmp_path / "roof"
    ok(whygpu_cli(site, "roofline", "--n", "32", "--gpu-n", "32", "--kernels", "packed,cuda_warptile", "--quick",
                  "--repeats", "2", "--budget", "1", "--out", roof, cwd=tmp_path))
    res = ok(whygpu_cli(site, "report", train_dir / "train.json", roof / "roofline.json", "--out", tmp_path / "rep",
                        cwd=tmp_path))
    assert "figure" in res.stdout
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "The GPU, measured on this machine" in md
    assert "public figures" not in md
    assert "CPU emulation of CUDA" in md  # an emulated GPU is called what it is
    for fig in ("roofline_gpu.png", "train_sweep.png"):
        assert f"]({fig})" in md and is_png(tmp_path / "rep" / fig)
    assert "float32 FMA peak (probe)" in md and "GB/s" in md
    assert "GPU (data resident) over the best CPU back end" in md
    assert "step as one CUDA graph" in md and "GPU, resident, graph" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3


def test_demo_quick_with_a_gpu(site, tmp_path):
    res = ok(whygpu_cli(site, "demo", "--quick", "--out", tmp_path / "demo", cwd=tmp_path, timeout=900))
    out = tmp_path / "demo"
    assert "Roofs of the GPU" in res.stdout
    ladder = load(out / "ladder.json")
    assert positive(ladder["peak"]["gpu_gflops"])
    assert ladder["params"]["gpu_sizes"] == [128, 1024, 4096]
    gpu_meas = [m for m in ladder["measurements"] if m["device"] == "cuda"]
    assert gpu_meas, "no CUDA rung was measured"
    # what the emulation cannot do in the budget is skipped with a reason, never silently left out
    measured = {(m["kernel"], m["n"]) for m in ladder["measurements"]}
    skipped = {(s["kernel"], s["n"]) for s in ladder["skipped"]}
    for k in (k for k in ladder["params"]["kernels"] if k.startswith("cuda")):
        for n in (128, 1024, 4096):
            assert (k, n) in measured | skipped
    roof = load(out / "roofline.json")
    assert positive(roof["gpu_roofs"]["fma_gflops"])
    assert any(p["device"] == "cuda" for p in roof["points"])
    train = load(out / "train.json")
    assert train["sweep"] and train["sweep"]["batches"] == [32, 256, 1024, 8192]
    md = (out / "report.md").read_text()
    assert "The GPU, measured on this machine" in md and "](roofline_gpu.png)" in md
    assert is_png(out / "roofline_gpu.png")
    assert load(out / "demo.json")["seconds"] > 0
