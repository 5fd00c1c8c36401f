"""The command line with a usable GPU, without one: every subcommand, ``demo
--quick`` and ``report`` run against a whygpu whose ``_cuda`` is the real
binding (src/cuda/*.cpp) built over the CPU emulation of CUDA
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
from whygpu.bench.measure import PLANT_ENV

HERE = pathlib.Path(__file__).resolve().parent
EMU = HERE / "cuda_emu"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(emulated_site):
    """The whygpu with the emulated GPU (tests/conftest.py builds it once per run)."""
    return emulated_site


def whygpu_cli(site, *args, cwd, timeout=600, env=None):
    env = dict(os.environ, PYTHONPATH=str(site), MPLBACKEND="Agg", WHYGPU_NUM_THREADS="2", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "whygpu", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    res = ok(
        whygpu_cli(
            site,
            "ladder",
            "--sizes",
            "16,32",
            "--gpu-sizes",
            "16,48",
            "--kernels",
            "packed,cuda_naive,cuda_warptile,numpy",
            "--repeats",
            "2",
            "--budget",
            "0.5",
            "--all",  # the emulation's speed means nothing: every rung at every size, on any machine
            "--plot",
            "--out",
            tmp_path,
            cwd=tmp_path,
        )
    )
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
    res = ok(
        whygpu_cli(
            site,
            "roofline",
            "--n",
            "48",
            "--gpu-n",
            "64",
            "--kernels",
            "packed,cuda_smem,cuda_warptile",
            "--quick",
            "--repeats",
            "2",
            "--budget",
            "1",
            "--plot",
            "--out",
            tmp_path,
            cwd=tmp_path,
        )
    )
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
    res = ok(
        whygpu_cli(
            site,
            "explain",
            "48",
            "40",
            "56",
            "--kernels",
            "packed,cuda_warptile",
            "--budget",
            "1",
            "--all",  # measured however slow the emulation is on this machine
            "--out",
            tmp_path,
            cwd=tmp_path,
        )
    )
    doc = load(tmp_path / "explain.json")
    rows = {r["kernel"]: r for r in doc["rows"]}
    w = rows["cuda_warptile"]
    assert w["compute_roof"] == "gpu_fma" and positive(w["measured_s"]) and positive(w["predicted_s"])
    assert "cuda_warptile" in res.stdout and "GPU (Emulated GPU" in res.stdout


U = {"float32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-8}  # operand unit roundoff (whygpu.cuda.UNIT_ROUNDOFF)


def gamma(prec: str, k: int) -> float:
    """Entry-wise error bound relative to (|A| |B|)_ij: operands rounded to u, float32 sums."""
    u = U[prec]
    return 2 * u + u * u + 2 * (k + 2) * 2.0**-24 * (1 + 2 * u)


def test_explain_states_precision_and_error_of_the_tensor_core_rungs(site, tmp_path):
    res = ok(
        whygpu_cli(
            site,
            "explain",
            "48",
            "40",
            "56",
            "--kernels",
            "cuda_warptile,cuda_mma,cuda_mma_bf16,cuda_wgmma",
            "--budget",
            "2",
            "--all",  # measured however slow the emulation is on this machine
            "--out",
            tmp_path,
            cwd=tmp_path,
        )
    )
    doc = load(tmp_path / "explain.json")
    rows = {r["kernel"]: r for r in doc["rows"]}
    tensor = doc["roofs"]["gpu"]["tensor_gflops"]
    assert positive(tensor["bf16"]) and positive(tensor["tf32"])
    want = {
        "cuda_warptile": ("float32", "gpu_fma"),
        "cuda_mma": ("tf32", "gpu_tensor_tf32"),
        "cuda_mma_bf16": ("bf16", "gpu_tensor_bf16"),
    }
    for k, (prec, roof) in want.items():
        r = rows[k]
        assert (r["precision"], r["compute_roof"]) == (prec, roof)
        assert positive(r["measured_s"])
        # the tensor-core rungs sit under the tensor-core roof of their precision, not the FMA roof
        expect_roof = doc["roofs"]["gpu"]["fma_gflops"] if prec == "float32" else tensor[prec]
        assert r["compute_gflops"] == pytest.approx(expect_roof)
    err = {k: rows[k]["max_rel_error"] for k in want}
    # each within what its precision guarantees on this data; the bounds differ only by gamma
    scale = {k: rows[k]["error_bound"] / gamma(want[k][0], 56) for k in want}
    for k in want:
        assert 0 < err[k] <= rows[k]["error_bound"], (k, err[k], rows[k]["error_bound"])
        assert scale[k] == pytest.approx(scale["cuda_warptile"], rel=1e-6)
    # fewer significant bits, more error: bf16 (8 bits) > TF32 (11) > float32 (24), each by a wide margin
    assert err["cuda_mma_bf16"] > 3 * err["cuda_mma"] > 3 * 30 * err["cuda_warptile"]
    assert err["cuda_warptile"] < 1e-5 and err["cuda_mma"] < 1e-2 and err["cuda_mma_bf16"] < 5e-2
    # the table shows speed and error side by side
    assert "precision" in res.stdout and "max rel err" in res.stdout
    line = next(x for x in res.stdout.splitlines() if x.startswith("cuda_mma_bf16 "))
    assert " bf16 " in line and f"{err['cuda_mma_bf16']:.2g}" in line
    # rung 16 cannot run under the emulation: listed with the reason, not dropped
    (u,) = doc["unavailable"]
    assert u["kernel"] == "cuda_wgmma" and "emulation cannot run wgmma" in u["reason"]
    assert f"cuda_wgmma is unavailable here: {u['reason']}" in res.stdout


def test_roofline_has_a_tensor_core_roof_from_the_probe(site, tmp_path):
    res = ok(
        whygpu_cli(
            site,
            "roofline",
            "--n",
            "32",
            "--gpu-n",
            "32",
            "--kernels",
            "cuda_warptile,cuda_mma_bf16,cuda_wgmma",
            "--quick",
            "--repeats",
            "2",
            "--budget",
            "1",
            "--plot",
            "--out",
            tmp_path,
            cwd=tmp_path,
        )
    )
    doc = load(tmp_path / "roofline.json")
    gpu = doc["gpu_roofs"]
    assert positive(gpu["tensor_gflops"]["bf16"]) and positive(gpu["tensor_gflops"]["tf32"])
    assert gpu["tensor_reason"] is None
    pts = {p["kernel"]: p for p in doc["points"]}
    assert pts["cuda_mma_bf16"]["compute_roof"] == "gpu_tensor_bf16" and pts["cuda_mma_bf16"]["precision"] == "bf16"
    assert pts["cuda_mma_bf16"]["compute_gflops"] == pytest.approx(gpu["tensor_gflops"]["bf16"])
    assert pts["cuda_warptile"]["compute_gflops"] == pytest.approx(gpu["fma_gflops"])
    # same 128 x 128 block tiles, 2-byte operands: half the L2 bytes of the float32 warp-tiled rung
    l2 = {
        k: next(t["bytes"] for t in pts[k]["traffic"] if t["level"] == "L2") for k in ("cuda_warptile", "cuda_mma_bf16")
    }
    assert l2["cuda_mma_bf16"] == pytest.approx(l2["cuda_warptile"] / 2)
    assert [u["kernel"] for u in doc["unavailable"]] == ["cuda_wgmma"] and "cuda_wgmma" not in pts
    assert "bf16 tensor-core peak (mma.sync)" in res.stdout and "cuda_wgmma not measured" in res.stdout
    assert is_png(tmp_path / "roofline_gpu.png")


def test_scaling_refuses_a_gpu_kernel_clearly(site, tmp_path):
    res = whygpu_cli(site, "scaling", "--kernel", "cuda_warptile", "--out", tmp_path, cwd=tmp_path)
    assert res.returncode == 2
    assert "runs on the GPU" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory):
    """`whygpu train` with the cuda back end and the batch sweep, at tiny sizes."""
    out = tmp_path_factory.mktemp("train")
    res = ok(
        whygpu_cli(
            site,
            "train",
            "--layers",
            "24,16,10",
            "--batch",
            "16",
            "--steps",
            "2",
            "--backends",
            "numpy,openmp,cuda,cuda_smem" if "openmp" in whygpu.available_kernels() else "numpy,cuda,cuda_smem",
            "--batches",
            "8,32",
            "--budget",
            "20",
            "--all",  # every back end and batch trains, however slow the emulation is on this machine
            "--plot",
            "--out",
            out,
            cwd=out,
        )
    )
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
    gpu = (
        "cuda, copied",
        "cuda, resident",
        "cuda, copied, graph",
        "cuda, resident, graph",
        "cuda, resident, graph, bf16",
    )
    assert {*gpu, "numpy"} <= set(series)
    assert [series[lbl]["graph"] for lbl in gpu] == [False, False, True, True, True]
    assert series["cuda, resident, graph, bf16"]["backend"] == "cuda_mma_bf16"  # mixed precision
    for lbl in (*gpu, "numpy"):
        assert [p["batch"] for p in series[lbl]["points"]] == [8, 32]
        assert all(positive(p["step_s"]) for p in series[lbl]["points"])
    rows = {r["batch"]: r for r in sw["summary"]["rows"]}
    for b in (8, 32):
        assert positive(rows[b]["speedup_resident"]) and positive(rows[b]["speedup_copied"])
        assert 0 <= rows[b]["copy_share"] < 1
        assert positive(rows[b]["graph_gain"]) and positive(rows[b]["speedup_resident_graph"])
        assert rows[b]["bf16_gain"] == pytest.approx(rows[b]["resident_graph_s"] / rows[b]["resident_graph_bf16_s"])
    assert sw["summary"]["at_batch"] == 32 and positive(sw["summary"]["bf16_gain"])
    assert "GPU resident vs best CPU" in res.stdout and "graph gain" in res.stdout and "bf16 gain" in res.stdout
    assert is_png(out / "train_sweep.png")


def test_report_has_the_gpu_sections_with_figures(site, trained, tmp_path):
    train_dir, _ = trained
    roof = tmp_path / "roof"
    ok(
        whygpu_cli(
            site,
            "roofline",
            "--n",
            "32",
            "--gpu-n",
            "32",
            "--kernels",
            "packed,cuda_warptile,cuda_mma_bf16,cuda_wgmma",
            "--quick",
            "--repeats",
            "2",
            "--budget",
            "1",
            "--out",
            roof,
            cwd=tmp_path,
        )
    )
    res = ok(
        whygpu_cli(
            site, "report", train_dir / "train.json", roof / "roofline.json", "--out", tmp_path / "rep", cwd=tmp_path
        )
    )
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
    assert "mixed precision: the step with bf16 tensor-core matmuls over float32" in md and "bf16 gain" in md
    # the tensor cores: explained, their measured roof, rung 15 against it, rung 16 listed with its reason
    assert "What a tensor core is" in md and "bf16 tensor-core peak (mma.sync probe)" in md
    assert "| cuda_mma_bf16 | 32 | bf16 | gpu_tensor_bf16" in md
    assert "cuda_wgmma (the CUDA emulation cannot run wgmma or TMA)" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3


def test_demo_quick_with_a_gpu(site, tmp_path):
    # The demo skips what its budget (0.4 s a call) cannot afford, and the emulation's speed depends on
    # the machine: the warp-tiled rung's is planted (0.1 GFLOP/s: n=128 fits, n=1024 does not), so one
    # CUDA rung is measured and the sizes beyond the budget are skipped on any machine.
    # (WHYGPU_NO_MPI: the MPI ranks run on the CPU back ends, which the CPU demo's tests measure; here they
    # would only add their seconds)
    planted = {PLANT_ENV: "cuda_warptile=0.1", "WHYGPU_NO_MPI": "1"}
    res = ok(whygpu_cli(site, "demo", "--quick", "--out", tmp_path / "demo", cwd=tmp_path, timeout=900, env=planted))
    out = tmp_path / "demo"
    assert "Roofs of the GPU" in res.stdout
    ladder = load(out / "ladder.json")
    assert positive(ladder["peak"]["gpu_gflops"])
    assert ladder["params"]["gpu_sizes"] == [128, 1024, 4096]
    gpu_meas = [m for m in ladder["measurements"] if m["device"] == "cuda"]
    assert ("cuda_warptile", 128) in {(m["kernel"], m["n"]) for m in gpu_meas}, "the planted rung was not measured"
    # what the emulation cannot do in the budget is skipped with a reason, never silently left out
    measured = {(m["kernel"], m["n"]) for m in ladder["measurements"]}
    skipped = {(s["kernel"], s["n"]) for s in ladder["skipped"]}
    assert {("cuda_warptile", 1024), ("cuda_warptile", 4096)} <= skipped  # over the budget at the planted speed
    for k in (k for k in ladder["params"]["kernels"] if k.startswith("cuda")):
        for n in (128, 1024, 4096):
            assert (k, n) in measured | skipped
    # the tensor-core rungs are on the ladder with their precision and error; rung 16 says why it is not
    assert positive(ladder["peak"]["gpu_tensor_gflops"]["bf16"])
    errs = ladder["errors"]
    assert {errs[k]["precision"] for k in ("cuda_mma", "cuda_mma_bf16", "cuda_warptile")} == {"tf32", "bf16", "float32"}
    rel = {k: e["max_rel_error"] for k, e in errs.items()}
    assert rel["cuda_mma_bf16"] > rel["cuda_mma"] > rel["cuda_warptile"]
    for e in errs.values():
        assert e["max_rel_error"] <= e["error_bound"]
    assert any(u["kernel"] == "cuda_wgmma" and u["reason"] for u in ladder["unavailable"])
    assert {"cuda_mma", "cuda_mma_bf16"} <= set(ladder["params"]["kernels"])  # measured or skipped (loop above)
    roof = load(out / "roofline.json")
    assert positive(roof["gpu_roofs"]["fma_gflops"])
    assert any(p["device"] == "cuda" for p in roof["points"])
    tc = {p["kernel"]: p for p in roof["points"] if p["kernel"] in ("cuda_mma", "cuda_mma_bf16")}
    assert set(tc) == {"cuda_mma", "cuda_mma_bf16"}  # on the GPU roofline, each under its own tensor-core roof
    assert tc["cuda_mma"]["compute_roof"] == "gpu_tensor_tf32"
    assert tc["cuda_mma_bf16"]["compute_roof"] == "gpu_tensor_bf16"
    train = load(out / "train.json")
    assert train["sweep"] and train["sweep"]["batches"] == [32, 256, 1024, 8192]
    md = (out / "report.md").read_text()
    assert "The GPU, measured on this machine" in md and "](roofline_gpu.png)" in md
    assert "What a tensor core is" in md and "cuda_wgmma (" in md and "max rel. error" in md
    assert is_png(out / "roofline_gpu.png")
    assert load(out / "demo.json")["seconds"] > 0
