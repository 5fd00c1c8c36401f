"""The extrapolation by the step simulator (whygpu.predict.extrapolate) and the check of a measured run from
terms measured apart (whygpu.scaleout.check_run): planted inputs with answers worked by hand, the sources
each curve carries, and a prediction that does not move when the run's own measurements do."""

from __future__ import annotations

import json
import math
import time

import pytest

from whygpu import scaleout as so
from whygpu.predict import extrapolate as ex
from whygpu.predict.scaleout_model import INTERCONNECTS, SYSTEMS, hierarchical_allreduce_s

GPU = next(s for s in SYSTEMS if s["device"] == "gpu")
WIDTHS = [784, 2048, 2048, 10]
CPU = ex.CpuFigures(c0_s=0.02, c1_s_per_sample=1.6e-4, flops_per_sample=so.mlp_step_flops(WIDTHS, 1),
                    bytes=4 * so.mlp_params(WIDTHS), threads=1, update_s=0.004)  # fmt: skip
LOCAL = {"alpha_s": 2e-6, "bandwidth_Bps": 4e9, "source": "measured here: planted sweep fit"}


def planted_link(alpha_s: float, bandwidth_Bps: float, latency: str = "ring") -> dict:
    return {"name": "planted", "device": "cpu", "latency": latency,
            "link": {"name": "planted link", "alpha_s": alpha_s, "bandwidth_Bps": bandwidth_Bps,
                     "source": "public figure: planted"}}  # fmt: skip


# ---------------------------------------------------------------- planted curves, exact
@pytest.mark.parametrize("latency", ["ring", "tree"])
def test_one_layer_one_bucket_exposes_the_whole_allreduce(latency):
    """One layer (no dX: nothing runs after its dW), one bucket: no overlap is possible, so each point is the
    compute plus the whole allreduce of the gradient (and the failure count's 4 bytes riding with it)."""
    model = ex.mlp_model([100, 10])  # 1,010 parameters: 4,040 bytes, far below the first bucket's 1 MiB
    cpu = ex.CpuFigures(c0_s=0.0, c1_s_per_sample=1e-4, flops_per_sample=model["flops_per_sample"], bytes=4040)
    a, B = 3e-6, 1e9
    strong, weak = ex.system_curves(planted_link(a, B, latency), model, [1, 2, 4, 64, 128], 64, cpu=cpu)
    assert strong["ranks"] == [1, 2, 4, 64] and weak["ranks"] == [1, 2, 4, 64, 128]
    for c, share in ((strong, lambda p: 64 // p), (weak, lambda p: 64)):
        for p, step, exposed, nb in zip(c["ranks"], c["step_s"], c["exposed_s"], c["buckets"]):
            ar = so.allreduce_s(4044, p, a, B, latency=latency)
            assert nb == 1
            assert exposed == pytest.approx(ar, rel=1e-12, abs=1e-15)
            assert step == pytest.approx(1e-4 * share(p) + ar, rel=1e-12)
    assert weak["efficiency"][0] == 1.0 and strong["speedup"][0] == 1.0


def test_the_last_bucket_alone_is_exposed_when_the_link_is_fast():
    """Two layers of equal bytes in a bucket each (the first bucket closes after the last layer): the last
    layer's allreduce travels beside the first layer's dW and is hidden when shorter; layer 0's is waited for."""
    model = ex.mlp_model([512, 512, 512])  # 262,656 parameters per layer: 1,050,624 bytes >= 1 MiB each
    cpu = ex.CpuFigures(c0_s=0.0, c1_s_per_sample=1e-3, flops_per_sample=model["flops_per_sample"], bytes=1)
    (strong, _) = ex.system_curves(planted_link(0.0, 1e12), model, [2], 8, cpu=cpu)
    assert strong["buckets"] == [2]
    assert strong["exposed_s"][0] == pytest.approx(2 * 1 / 2 * (1_050_624 + 4) / 1e12)


def test_the_hierarchical_curve_is_the_hierarchical_allreduce():
    nv, ib = INTERCONNECTS["NVLink 4"], INTERCONNECTS["InfiniBand NDR"]
    for P in (1, 2, 8, 16, 64, 512, 1024):
        costs, src = ex.collective_costs(GPU, P)
        for S in (4, 1 << 20, 100e6):
            assert costs.seconds("allreduce", S, P) == pytest.approx(hierarchical_allreduce_s(S, P, nv, ib), rel=1e-12)
            half = costs.seconds("reduce_scatter", S, P) + costs.seconds("allgather", S, P)
            assert half == pytest.approx(costs.seconds("allreduce", S, P), rel=1e-12)
        assert src.startswith("public figure") and ("hierarchical" in src) == (P > 8)


# ---------------------------------------------------------------- the extrapolation document
@pytest.fixture(scope="module")
def doc():
    return ex.extrapolation(WIDTHS, 512, cpu=CPU, local_link=LOCAL, max_local_ranks=2)


def test_the_gpu_curves_say_public_figure(doc):
    gpu = [c for c in doc["curves"] if c["device"] == "gpu"]
    assert len(gpu) == 6  # three models, strong and weak
    for c in gpu:
        src = c["sources"]
        for k in ("compute", "update", "collectives"):
            assert src[k].startswith("public figure"), (k, src[k])
        assert "efficiency" in src["compute"] and "67 TFLOP/s" in src["compute"]
        assert "HBM" in src["update"] and "NVLink" in src["collectives"] and "InfiniBand" in src["collectives"]
        assert src["interference"].startswith("assumed") and "NCCL" in src["interference"]
    resnet = next(c for c in gpu if c["model"].startswith("ResNet"))
    assert "equal layers" in resnet["sources"]["model"]
    for c in doc["curves"]:
        if c["device"] == "cpu":
            assert c["sources"]["compute"].startswith("measured here")
            assert c["sources"]["interference"].startswith("not measured")
            assert c["sources"]["update"].startswith("measured here")
    assert set(doc["sources"]) == {"public figure", "measured here", "assumed"}


def test_no_exposed_fraction_is_carried_from_here(doc):
    assert "exposed_fraction" not in json.dumps(doc)
    for c in doc["curves"]:
        assert len(c["exposed_s"]) == len(c["step_s"]) == len(c["ranks"]) == len(c["efficiency"])
        assert all(0 <= e <= s for e, s in zip(c["exposed_s"], c["step_s"]))
        assert all(0 < e <= 1 + 1e-9 for e in c["efficiency"])
    json.dumps(doc, allow_nan=False)


def test_overlap_follows_from_the_schedule(doc):
    """On the H100 nodes, weak scaling of the 4096-wide MLP: the allreduces of its first buckets hide behind
    the rest of the backward pass, so less than the whole allreduce is exposed -- simulated, not assumed."""
    c = next(x for x in doc["curves"] if x["device"] == "gpu" and "4096" in x["model"] and x["scaling"] == "weak")
    big = next(m for m in doc["models"] if "4096" in m["name"])
    for p, exposed in zip(c["ranks"], c["exposed_s"]):
        whole = hierarchical_allreduce_s(big["bytes"], p, INTERCONNECTS["NVLink 4"], INTERCONNECTS["InfiniBand NDR"])
        assert exposed < whole or p == 1


def test_the_curves_compute_fast():
    t0 = time.perf_counter()
    ex.extrapolation(WIDTHS, 512, cpu=CPU, local_link=LOCAL, max_local_ranks=2)
    assert time.perf_counter() - t0 < 2.0


def test_scaling_curve_with_nothing_hidden():
    """The hand formula kept for notebook 07: compute on the share plus the whole allreduce."""
    strong = so.scaling_curve(lambda b: 0.01 + 0.001 * b, lambda p: 0.0, [1, 2, 8, 64, 1024], 64)
    assert strong["ranks"] == [1, 2, 8, 64] and strong["step_s"][-1] == pytest.approx(0.011)
    weak = so.scaling_curve(lambda b: 0.01, lambda p: 0.001 * (p > 1), [1, 2], 64, scaling="weak")
    assert weak["efficiency"] == pytest.approx([1.0, 0.01 / 0.011])
    with pytest.raises(ValueError):
        so.scaling_curve(lambda b: 0.0, lambda p: 0.0, [1], 64, scaling="sideways")


# ---------------------------------------------------------------- a measured run, predicted from terms apart
SIDE = {"step_s": 0.062, "update_s": 0.010, "forward_s": 0.020, "backward_s": 0.032}
SHARE = {"step_s": 0.030, "update_s": 0.005, "forward_s": 0.010, "backward_s": 0.015}
GRAD = 4 * so.mlp_params(WIDTHS)


def measured_run(shard: str = "none", prefetch: bool = False) -> dict:
    r = {"ranks": 2, "threads": 1, "data_parallel": True, "shard": shard, "prefetch": prefetch, "bytes": GRAD,
         "step_s": 0.070, "exposed_s": 0.004, "allreduce_s": 0.005, "compute_s": 0.066, "update_s": 0.010,
         "bare_allreduce_s": 0.005}  # fmt: skip
    if shard != "none":
        r.update(reduce_scatter_s=0.004, allgather_s=0.003, exposed_allgather_s=0.001,
                 bare_reduce_scatter_s=0.004, bare_allgather_s=0.003)  # fmt: skip
    return r


def _prediction(p: dict) -> dict:
    """A check's prediction without what it is compared with."""
    return {k: v for k, v in p.items() if k not in ("terms", "error")} | {
        "terms": {k: t["predicted"] for k, t in p["terms"].items()}
    }


@pytest.mark.parametrize(("shard", "prefetch"), [("none", False), ("optimizer", False), ("gradients", True)])
@pytest.mark.parametrize("side", [SIDE, None])
def test_the_prediction_ignores_the_runs_own_measurements(shard, prefetch, side):
    kw = {"widths": WIDTHS, "fit": {"alpha_s": 5e-6}}
    run = measured_run(shard, prefetch)
    before = so.check_run(SHARE, side, run, 2, **kw)
    altered = dict(run)
    for k in ("step_s", "exposed_s", "allreduce_s", "compute_s", "update_s", "reduce_scatter_s", "allgather_s",
              "exposed_allgather_s"):  # fmt: skip
        if k in altered:
            altered[k] *= 7.3
    after = so.check_run(SHARE, side, altered, 2, **kw)
    assert _prediction(after) == _prediction(before)
    assert after["error"] != before["error"]
    assert after["terms"]["step_s"]["measured"] == pytest.approx(7.3 * 0.070)
    assert before["terms"]["exposed_s"]["measured"] == 0.004 and "exposed_s" in before["terms"]


def test_a_missed_run_is_a_model_error():
    run = measured_run()
    run["step_s"] = 0.200
    why = so.judge_run(SHARE, SIDE, run, 2, widths=WIDTHS)
    assert len(why) == 1 and why[0].startswith("model error") and "simulated step" in why[0]
    run["step_s"] = 0.064
    assert so.judge_run(SHARE, SIDE, run, 2, widths=WIDTHS) == []


def test_interference_enters_only_when_measured():
    run = measured_run()
    bare = so.check_run(SHARE, SIDE, run, 2, widths=WIDTHS)
    assert bare["sources"]["interference"].startswith("not measured")
    assert any("interference" in a for a in bare["assumptions"])
    probe = {"compute_slowdown": 1.5, "comm_slowdown": 2.0, "source": "measured apart: planted probe"}
    slow = so.check_run(SHARE, SIDE, run, 2, widths=WIDTHS, interference=probe)
    assert slow["sources"]["interference"].startswith("measured apart")
    assert slow["step_s"] > bare["step_s"] and not math.isclose(slow["compute_s"], bare["compute_s"])
