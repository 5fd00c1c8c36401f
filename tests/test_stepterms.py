"""The step simulator's terms measured apart (whygpu.bench.stepterms): planted timings give back exactly
the latency, bandwidth, per-call and per-byte costs and slowdowns they were made from (no figure here
depends on this machine's speed); a document round-trips through JSON into the simulator's inputs; and
the real worker under ``mpiexec -n 2`` (tiny sizes, few repeats) produces every term, finite and
positive, that the simulator then runs on."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from whygpu.bench.stepterms import (
    SCHEMA,
    assemble,
    fit_affine,
    fit_collective,
    fit_update,
    load_terms,
    save_terms,
    simulator_fields,
)
from whygpu.bench.stepterms_worker import slowdown
from whygpu.predict import (
    Interference,
    StepConfig,
    UpdateCost,
    inputs_from_fields,
    simulate,
)

MPIEXEC = shutil.which("mpiexec") or str(pathlib.Path(sys.executable).parent / "mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpiexec = pytest.mark.skipif(
    not (HAVE_MPI4PY and os.access(MPIEXEC, os.X_OK)),
    reason="needs mpi4py and mpiexec (pip install '.[mpi]' from the source folder)",
)
SIZES = [4, 64, 1024, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 32 << 20]


# -- fits: planted timings give back exactly what they were made from -----------------------------
@pytest.mark.parametrize("latency, bandwidth", [(25e-6, 3e9), (1e-3, 5e8), (0.0, 1e10)])
def test_the_collective_fit_gives_back_planted_latency_and_bandwidth(latency, bandwidth):
    pts = [{"bytes": s, "median_s": latency + s / bandwidth} for s in SIZES]
    f = fit_collective(pts)
    assert f["latency_s"] == pytest.approx(latency, rel=1e-9, abs=1e-15)
    assert f["bandwidth_Bps"] == pytest.approx(bandwidth, rel=1e-9)
    assert f["rms_rel_error"] < 1e-9 and f["points"] == len(SIZES)
    assert (f["min_bytes"], f["max_bytes"]) == (4, 32 << 20)


def test_the_collective_fit_takes_a_window_of_sizes():
    # a curve that bends (fast while in cache): the window fits the large sizes' line exactly
    pts = [{"bytes": s, "median_s": (1e-5 + s / 8e9) if s < (1 << 20) else (2e-4 + s / 2e9)} for s in SIZES]
    f = fit_collective(pts, min_bytes=1 << 20)
    assert f["latency_s"] == pytest.approx(2e-4, rel=1e-9)
    assert f["bandwidth_Bps"] == pytest.approx(2e9, rel=1e-9)
    assert f["points"] == 4


def test_a_flat_curve_has_infinite_bandwidth_and_a_falling_one_no_negative_latency():
    flat = fit_collective([{"bytes": s, "median_s": 7e-5} for s in SIZES])
    assert flat["latency_s"] == pytest.approx(7e-5, rel=1e-12) and math.isinf(flat["bandwidth_Bps"])
    pure = fit_affine([1.0, 2.0, 4.0], [2.0, 4.0, 8.0])  # through the origin
    assert pure["intercept"] == pytest.approx(0.0, abs=1e-12) and pure["slope"] == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="2 or more different sizes"):
        fit_affine([8.0, 8.0], [1.0, 1.0])


def test_the_update_fit_gives_back_planted_per_call_and_per_byte():
    pts = [{"bytes": b, "median_s": 4e-6 + b * 0.125e-9} for b in (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)]
    f = fit_update(pts)
    assert f["per_call_s"] == pytest.approx(4e-6, rel=1e-9)
    assert f["per_byte_s"] == pytest.approx(0.125e-9, rel=1e-9)


def test_the_slowdown_inverts_the_simulators_rate_model():
    # a GEMM of 10 (bare) starts at 0; a collective is in flight from 5 to 25: its first 5 run bare,
    # the other 5 of work at 1/1.5 take 7.5, so it ends at 12.5
    assert slowdown(10.0, [(0.0, 12.5)], [(5.0, 25.0)]) == pytest.approx(1.5, rel=1e-12)
    # three GEMMs back to back under two collectives one after another, slowdown 1.25 throughout
    spans = [(0.0, 12.5), (12.5, 25.0), (25.0, 37.5)]
    assert slowdown(10.0, spans, [(0.0, 20.0), (20.0, 40.0)]) == pytest.approx(1.25, rel=1e-12)
    # the collective's side: 4 of bare work with compute beside the whole time at 1/2: 8 long
    assert slowdown(4.0, [(1.0, 9.0)], [(0.0, 3.0), (3.0, 12.0)]) == pytest.approx(2.0, rel=1e-12)
    assert slowdown(10.0, [(0.0, 10.0)], [(20.0, 30.0)]) is None  # nothing overlapped
    assert slowdown(10.0, [(0.0, 9.0)], [(0.0, 9.0)]) == pytest.approx(0.9, rel=1e-12)  # faster: noise, kept
    assert slowdown(10.0, [(0.0, 12.0)], [(11.0, 12.0)]) is None  # no factor fits


# -- the document round-trips into the simulator's inputs -------------------------------------------
def planted_raw(P: int = 2) -> dict:
    """A worker's output with planted figures: two Linear layers around a fused ReLU."""
    ms = 1e-3
    layers = [
        {"name": "linear0", "type": "Linear", "param_bytes": 4_000_000, "fused_into_previous": False},
        {"name": "relu1", "type": "ReLU", "param_bytes": 0, "fused_into_previous": True},
        {"name": "linear2", "type": "Linear", "param_bytes": 4_000_000, "fused_into_previous": False},
    ]

    def rec(layer, part, s, nbytes=0):
        return {"layer": layer, "part": part, "note": "planted", "bytes": nbytes, "median_s": s, "min_s": s,
                "max_s": s, "repeats": 3}  # fmt: skip

    def pieces(stretch):
        out = [rec(0, "forward", 2 * ms * stretch), rec(1, "forward", 0.0), rec(2, "forward", 2 * ms * stretch)]
        out += [rec(-1, "loss", 0.1 * ms * stretch)]
        out += [rec(2, "backward_dw", 2 * ms * stretch), rec(2, "backward_dx", 2 * ms * stretch)]
        out += [rec(1, "backward_dx", 0.5 * ms * stretch), rec(0, "backward_dw", 2 * ms * stretch)]
        out += [rec(-1, "update", (1e-6 + b * 0.25e-9) * stretch, b) for b in (4096, 1 << 20, 16 << 20)]
        out += [rec(-1, "model_update", 2 * ms * stretch, 8_000_000)]
        return out

    def factor(v):
        return {"values": [v, v], "median_s": v, "min_s": v, "max_s": v, "repeats": 2, "median": v,
                "per_rank_median": [v] * P}  # fmt: skip

    colls = {
        kind: [{"bytes": s, "median_s": 50e-6 + s / bw, "min_s": 0.0, "max_s": 0.0, "repeats": 5} for s in SIZES]
        for kind, bw in (("allreduce", 1e9), ("reduce_scatter", 2e9), ("allgather", 2e9), ("sendrecv", 4e9))
    }
    probe = {"bytes": 1 << 20, "collectives_per_rep": 3, "compute_slowdown": factor(1.25), "comm_slowdown": factor(1.5)}
    return {
        "ranks": P,
        "threads": 1,
        "progress": "thread",
        "compute": {"rows": 256, "layers": layers, "alone": pieces(1.0), "beside": pieces(1.2)},
        "collectives": colls,
        "interference": {"gemm": {"m": 256, "n": 2048, "k": 2048}, "mode": "thread", "allreduce": probe},
    }


def test_a_document_round_trips_through_json_into_the_simulators_inputs(tmp_path):
    doc = assemble(planted_raw(), {"layers": [1000, 1000, 1000], "batch": 512, "backend": "openmp",
                                   "optimizer": "sgd", "repeats": 3})  # fmt: skip
    assert doc["schema"] == SCHEMA
    back = load_terms(save_terms(doc, tmp_path / "terms.json"))
    assert back == doc
    for where, stretch in (("alone", 1.0), ("beside", 1.2)):
        compute, update, costs, shared = inputs_from_fields(simulator_fields(back, compute=where))
        assert [x.name for x in compute.layers] == ["linear0", "relu1", "linear2"]
        assert compute.layers[2].forward_s == pytest.approx(2e-3 * stretch, rel=1e-12)
        assert compute.layers[1].forward_s == 0.0 and compute.layers[1].backward_dx_s == pytest.approx(0.5e-3 * stretch)
        assert compute.layers[0].backward_dx_s == 0.0 and compute.layers[0].param_bytes == 4_000_000
        assert compute.loss_s == pytest.approx(0.1e-3 * stretch, rel=1e-12)
        assert update.per_call_s == pytest.approx(1e-6 * stretch, rel=1e-9)
        assert update.per_byte_s == pytest.approx(0.25e-9 * stretch, rel=1e-9)
        assert costs.curve("reduce_scatter", 2).bandwidth_Bps == pytest.approx(2e9, rel=1e-9)
        assert costs.curve("sendrecv", 2).latency_s == pytest.approx(50e-6, rel=1e-9)
        assert (shared.compute_slowdown, shared.comm_slowdown) == (1.25, 1.5)
        for src in (compute.source, update.source, shared.source, *(c.source for c in costs.curves)):
            assert src.startswith("measured apart: ")
        assert (where == "beside") == ("beside" in compute.source)
        for cfg in (StepConfig(ranks=2, bucket_mb=0), StepConfig(ranks=2, shard="optimizer", prefetch=True)):
            r = simulate(compute, update, costs, shared, cfg)
            assert r.step_s > 0 and math.isfinite(r.step_s)


def test_the_inputs_can_be_fitted_to_a_window_of_sizes():
    raw = planted_raw()
    for rows in raw["collectives"].values():  # 4x slower above 16 MiB (another algorithm)
        for r in rows:
            r["median_s"] *= 4 if r["bytes"] > 16 << 20 else 1
    doc = assemble(raw, {"layers": [1, 1], "batch": 2, "backend": "openmp", "optimizer": "sgd", "repeats": 3})
    bent = simulator_fields(doc)["collectives"][0]
    assert bent["kind"] == "allreduce" and bent["bandwidth_Bps"] < 0.96e9  # bent by the 32 MiB point
    f = simulator_fields(doc, collective_window=(1 << 10, 16 << 20), update_window=(1 << 20, 16 << 20))
    ar = f["collectives"][0]
    assert ar["latency_s"] == pytest.approx(50e-6, rel=1e-9) and ar["bandwidth_Bps"] == pytest.approx(1e9, rel=1e-9)
    assert "6 sizes 1024-16777216 B" in ar["source"] and "1048576-16777216 B" in f["update"]["source"]
    assert f["update"]["per_byte_s"] == pytest.approx(0.25e-9 * 1.2, rel=1e-9)
    m = UpdateCost(**simulator_fields(doc, update_from="model")["update"])  # the model's own step, per byte
    assert (m.per_call_s, m.per_byte_s) == (0.0, pytest.approx(2.4e-3 / 8e6, rel=1e-12))
    assert "on the model's 8000000 B of parameters" in m.source and m.source.startswith("measured apart: ")
    with pytest.raises(ValueError, match="update_from"):
        simulator_fields(doc, update_from="run")


def test_an_unmeasurable_slowdown_is_one_and_says_so(tmp_path):
    raw = planted_raw()
    raw["interference"]["allreduce"]["comm_slowdown"]["median"] = None
    raw["interference"]["allreduce"]["compute_slowdown"]["median"] = 0.97  # faster beside: noise
    doc = assemble(raw, {"layers": [1, 1], "batch": 2, "backend": "openmp", "optimizer": "sgd", "repeats": 3})
    f = simulator_fields(load_terms(save_terms(doc, tmp_path / "t.json")))
    shared = Interference(**f["interference"])
    assert (shared.compute_slowdown, shared.comm_slowdown) == (1.0, 1.0)
    assert "comm_slowdown not measurable taken as 1" in shared.source and "0.97 taken as 1" in shared.source
    with pytest.raises(ValueError, match="no interference probe of 'allgather'"):
        simulator_fields(doc, probe="allgather")
    with pytest.raises(ValueError, match="alone' or 'beside"):
        simulator_fields(doc, compute="both")
    (tmp_path / "x.json").write_text('{"schema": "whygpu.scaleout/1"}')
    with pytest.raises(ValueError, match="not a whygpu.stepterms/1 document"):
        load_terms(tmp_path / "x.json")


# -- the real worker under mpiexec -n 2 ---------------------------------------------------------------
@needs_mpiexec
def test_the_worker_measures_every_term_under_mpiexec(tmp_path):
    from whygpu.bench.stepterms import measure_terms

    doc = measure_terms(ranks=2, layers=(16, 32, 8), batch=16, threads=1, repeats=3, sizes=(4, 4096, 1 << 20),
                        budget=0.01, max_reps=5, update_elements=(256, 1 << 16), probe_bytes=1 << 16, probe_reps=2,
                        timeout=120, machine=False)  # fmt: skip
    assert doc["params"]["ranks"] == 2 and doc["params"]["share_rows"] == 8
    assert [x["type"] for x in doc["layers"]] == ["Linear", "ReLU", "Linear"]
    for where in ("alone", "beside"):
        recs = doc["compute"][where]
        timed = [r for r in recs if not r.get("fused")]
        assert {(r["layer"], r["part"]) for r in timed} == {
            (0, "forward"), (2, "forward"), (-1, "loss"), (2, "backward_dw"), (2, "backward_dx"), (1, "backward_dx"),
            (0, "backward_dw"),
        }  # fmt: skip
        assert all(0 < r["min_s"] <= r["median_s"] <= r["max_s"] < 1 for r in timed if where == "alone")
        assert all(0 < r["median_s"] < 1 and len(r["per_rank_median_s"]) == 2 for r in timed if where == "beside")
        up = doc["update"][where]
        assert len(up["points"]) == 2 and all(0 < p["median_s"] < 1 for p in up["points"])
        assert up["model_update"]["median_s"] > 0
    for kind in ("allreduce", "reduce_scatter", "allgather", "sendrecv"):
        c = doc["collectives"][kind]
        assert [p["bytes"] for p in c["points"]] == ([4, 4096, 1 << 20] if kind in ("allreduce", "sendrecv")
                                                      else [8, 4096, 1 << 20])  # fmt: skip
        assert all(0 < p["median_s"] < 1 for p in c["points"])
        assert 0 <= c["fit"]["latency_s"] < 1 and c["fit"]["bandwidth_Bps"] > 0
    for kind in ("allreduce", "reduce_scatter", "allgather"):
        probe = doc["interference"][kind]
        assert probe["gemm_bare"]["median_s"] > 0 and probe["comm_bare"]["median_s"] > 0
        for key in ("compute_slowdown", "comm_slowdown"):
            assert all(v is None or (math.isfinite(v) and v > 0) for v in probe[key]["values"])
    fields = simulator_fields(load_terms(save_terms(doc, tmp_path / "terms.json")))
    compute, update, costs, shared = inputs_from_fields(fields)
    assert compute.layers[2].forward_s > 0 and compute.layers[0].backward_dw_s > 0 and update.per_byte_s >= 0
    for cfg in (StepConfig(ranks=2), StepConfig(ranks=2, shard="gradients"), StepConfig(ranks=2, shard="optimizer",
                                                                                        prefetch=True)):  # fmt: skip
        r = simulate(compute, update, costs, shared, cfg)
        assert 0 < r.step_s < 10 and math.isfinite(r.exposed_s)
    # the skew: whole passes of both ranks at once, every pass's lag of the slowest rank behind rank 0
    sk = doc["skew"]
    assert len(sk["per_rank_s"]) == 2 and all(len(p) == 11 and all(0 < t < 1 for t in p) for p in sk["per_rank_s"])
    want = [(max(a, b) - a) / a for a, b in zip(*sk["per_rank_s"])]
    assert sk["lags"] == pytest.approx(want) and sk["lag_fraction"] == pytest.approx(float(np.median(want)))
    assert fields["skew"]["lag_fraction"] == sk["lag_fraction"] and "passes" in fields["skew"]["source"]
    # compute only (the held-out validation's second measurement before each configuration)
    again = measure_terms(ranks=2, layers=(16, 32, 8), batch=16, threads=1, repeats=3, update_elements=(256, 4096),
                          timeout=120, machine=False, compute_only=True)  # fmt: skip
    assert again["collectives"] == {} and again["interference"] == {} and again["skew"]["lags"]
    assert {(r["layer"], r["part"]) for r in again["compute"]["beside"]} == {
        (r["layer"], r["part"]) for r in doc["compute"]["beside"]}  # fmt: skip


def test_the_skew_is_the_median_lag_of_the_slowest_rank_behind_rank_0():
    from whygpu.bench.stepterms import skew_of

    s = skew_of([[1.0, 2.0, 1.0], [1.5, 1.0, 1.1]])  # rank 0's passes, rank 1's
    assert s["lags"] == pytest.approx([0.5, 0.0, 0.1]) and s["lag_fraction"] == pytest.approx(0.1)
    assert skew_of(None) is None and skew_of([[1.0, 2.0]]) is None
