"""The dp x tp x pp layouts of issue 35 (whygpu.predict.split_layouts): the bytes per GPU equal the hand formula
on a planted model, the pipeline time is the real schedule's dependency timing (equal stages: (m + p - 1)(t_f +
t_b); one slow stage: the fill and drain plus m - 1 more of it), dp x 1 x 1 with one micro-batch is the
data-parallel extrapolation's simulated step, a layout that does not fit is never the fastest, bad arguments
are refused by name, and every input says where it came from."""

from __future__ import annotations

import importlib
import importlib.util
import math

import pytest

from whygpu.predict import SOURCES
from whygpu.predict.split_layouts import DEFAULT_WIDTHS, PARTS, layout_rows, pipeline_time, split_layouts

# the module, not the function whygpu.predict exports under the same name
split_layouts_module = importlib.import_module("whygpu.predict.split_layouts")


ZERO_LINK = {"alpha_s": 0.0, "bandwidth_Bps": math.inf, "source": "planted: a link that costs nothing"}


def test_memory_per_gpu_is_the_hand_formula():
    # widths 4-8-4-8-4: two (column, row) pairs; tp = 2, pp = 2 on 8 GPUs -> dp = 2; B = 16: 8 a replica, m = 4: b = 2
    def run(schedule, optimizer):
        r = split_layouts((4, 8, 4, 8, 4), 16, nodes=1, gpus_per_node=8, micro_batches=4, schedule=schedule,
                          optimizer=optimizer, layouts=[(2, 2)])  # fmt: skip
        (lay,) = r["layouts"]
        assert (lay["dp"], lay["tp"], lay["pp"], lay["m"], lay["micro_batch"]) == (2, 2, 2, 4, 2)
        return lay

    # a GPU of either stage: column 4 x 8/2 weights + 8/2 bias, row 8/2 x 4 weights + the whole bias 4: 40 parameters
    params, b = 4 * 4 + 4 + 4 * 4 + 4, 2
    # stashed per micro-batch: stage 0 keeps the column's input (4), its ReLU's input (8/2), the row's input (8/2)
    # and the next ReLU's input (4); stage 1 the same but no ReLU after the model's last Linear
    acts = [b * (4 + 4 + 4 + 4), b * (4 + 4 + 4)]
    lay = run("1f1b", "adam")
    stash = [min(4, 2 - r) for r in range(2)]  # 1F1B: min(m, p - r)
    want = [params * (4 + 4 + 8) + stash[r] * 4 * acts[r] for r in range(2)]
    assert [s["memory"]["total_bytes"] for s in lay["stages"]] == want == [896, 736]
    assert lay["memory"]["total_bytes"] == 896 and lay["memory"]["worst_stage"] == 0
    assert lay["memory"]["params_bytes"] == 4 * params and lay["memory"]["optimizer_bytes"] == 8 * params
    assert lay["memory"]["stash_micro_batches"] == 2
    lay = run("gpipe", "sgd")  # GPipe stashes all m; SGD keeps no state
    assert [s["memory"]["total_bytes"] for s in lay["stages"]] == [params * 8 + 4 * 4 * a for a in acts]


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
def test_pipeline_time_is_the_schedules_timing(name):
    for p in range(1, 6):
        for m in range(1, 9):
            got = pipeline_time([1.5] * p, [2.5] * p, m, name)
            assert got["pipeline_s"] == pytest.approx((m + p - 1) * (1.5 + 2.5), rel=1e-12)
            assert got["bubble"] == pytest.approx((p - 1) / (m + p - 1), rel=1e-12)
    # one slow stage, last: every micro-batch fills and drains through each stage once, and the slow one m - 1 more
    # times -- not the closed form (m + p - 1) x the slowest stage (54 here)
    for m in (1, 2, 4, 8):
        assert pipeline_time([1, 1, 3], [2, 2, 6], m, name)["pipeline_s"] == 15 + (m - 1) * 9
    # slow first: 1F1B runs the fast stages' work between the slow one's, GPipe cannot
    first = {n: pipeline_time([3, 1, 1], [6, 2, 2], 4, n)["pipeline_s"] for n in ("1f1b", "gpipe")}
    assert first["1f1b"] < first["gpipe"] == 42


def test_a_layouts_pipeline_comes_from_its_stages_timing():
    from whygpu import schedules as S

    figs = {"intra": ZERO_LINK, "inter": ZERO_LINK}
    r = split_layouts((64,) * 9, 64, nodes=2, gpus_per_node=4, micro_batches=8, layouts=[(2, 4)], figures=figs)
    (lay,) = r["layouts"]
    assert lay["parts"]["tp_allreduce_s"] == lay["parts"]["p2p_s"] == 0.0  # the planted links cost nothing
    fwd, bwd = [s["forward_s"] for s in lay["stages"]], [s["backward_s"] for s in lay["stages"]]
    assert len(set(fwd)) == 1 and bwd[0] < bwd[1] == bwd[3]  # the model's first Linear computes no dX
    timing = S.timed(S.schedule("1f1b", 4, 8).ranks, fwd, bwd)
    assert lay["pipeline_s"] == max(t.end for lane in timing for t in lane)
    assert lay["bubble_fraction"] == S.measured_bubble(timing)
    # the step is the latest stage's end: pipeline, then its exposed allreduce and update; its parts add up to it
    crit = lay["stages"][lay["critical_stage"]]
    assert lay["step_s"] == crit["finish_s"] == max(s["finish_s"] for s in lay["stages"])
    for s in lay["stages"]:
        assert math.fsum(s["parts"][k] for k in PARTS) == pytest.approx(s["finish_s"], rel=1e-12)
        assert s["parts"]["compute_s"] == pytest.approx(8 * (s["forward_s"] + s["backward_s"]), rel=1e-12)


def test_pure_data_parallel_is_the_extrapolations_simulated_step():
    from whygpu.predict.extrapolate import mlp_model, simulate_system
    from whygpu.predict.scaleout_model import SYSTEMS

    h100 = next(s for s in SYSTEMS if s["device"] == "gpu")
    widths = (784, 4096, 4096, 10)
    # tolerance 1e-9 relative: the same figures and schedule, only the order of float sums differs
    for nodes, per in ((1, 1), (1, 8), (4, 8)):
        gpus = nodes * per
        r = split_layouts(widths, 64 * gpus, nodes=nodes, gpus_per_node=per, micro_batches=1, layouts=[(1, 1)])
        (lay,) = r["layouts"]
        res, _ = simulate_system(h100, mlp_model(widths), gpus, 64, optimizer="adam")
        assert lay["step_s"] == pytest.approx(res.step_s, rel=1e-9)
        assert lay["parts"]["compute_s"] == pytest.approx(res.compute_s, rel=1e-9)
        assert lay["parts"]["dp_exposed_s"] == pytest.approx(res.exposed_s, rel=1e-9)
        assert lay["parts"]["update_s"] == pytest.approx(res.update_s, rel=1e-9)
    # m micro-batches: m times one micro-batch's compute (gradient accumulation; the allreduce after the last)
    r = split_layouts(widths, 64 * 32, nodes=4, micro_batches=4, layouts=[(1, 1)])
    res, _ = simulate_system(h100, mlp_model(widths), 32, 16, optimizer="adam")
    assert r["layouts"][0]["parts"]["compute_s"] == pytest.approx(4 * res.compute_s, rel=1e-9)


def test_a_layout_that_does_not_fit_is_never_the_fastest():
    r = split_layouts()  # the default model: 8.6e9 parameters, 137 GB of fp32 Adam state
    assert r["model"]["params"] > 8e9 and r["model"]["state_bytes"] > 80e9
    pure = next(x for x in r["layouts"] if x["tp"] == x["pp"] == 1)
    assert not pure["fits"] and "pure data parallel does not fit: 16 bytes/param x 8.59e+09 params" in r["why"]
    assert any(x["fits"] and x["tp"] * x["pp"] > 1 for x in r["layouts"])
    best = next(x for x in r["layouts"] if x["label"] == r["fastest"])
    assert best["fits"] and best["step_s"] == min(x["step_s"] for x in r["layouts"] if x["fits"])
    assert r["why"].startswith(best["label"])
    # a smaller model whose fastest layout is not its smallest: squeeze the memory under the fastest's
    small = ((2048,) * 9, 4096)
    r = split_layouts(*small, nodes=2, gpus_per_node=4)
    best = next(x for x in r["layouts"] if x["label"] == r["fastest"])
    assert all(x["fits"] for x in r["layouts"]) and best["label"] == "dp 4 x tp 2 x pp 1"
    gb = best["memory"]["total_bytes"] / 1e9
    r2 = split_layouts(*small, nodes=2, gpus_per_node=4, memory_gb=gb * 0.999)
    for x in r2["layouts"]:
        assert x["fits"] == (x["memory"]["total_bytes"] <= gb * 0.999e9)
    was = next(x for x in r2["layouts"] if x["label"] == best["label"])
    assert not was["fits"] and r2["fastest"] not in (None, best["label"])
    assert next(x for x in r2["layouts"] if x["label"] == r2["fastest"])["fits"]
    assert f"{best['label']} would be faster" in r2["why"]
    rows = layout_rows(r2)
    assert rows[0][:4] == ["dp x tp x pp", "m", "GB per GPU", "fits"] and len(rows) == len(r2["layouts"]) + 1
    cell = {x["label"]: f"{x['dp']} x {x['tp']} x {x['pp']}" for x in r2["layouts"]}
    assert [row[0] for row in rows if row[0].endswith(" *")] == [cell[r2["fastest"]] + " *"]
    assert next(row for row in rows if row[0] == cell[best["label"]])[3] == "no"
    none = split_layouts(*small, nodes=2, gpus_per_node=4, memory_gb=0.01)
    assert none["fastest"] is None and "no layout fits" in none["why"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nodes": 0}, "nodes must be a whole number of at least 1"),
        ({"gpus_per_node": 0}, "gpus_per_node must be"),
        ({"layouts": [(3, 1)]}, "tp = 3 does not divide gpus_per_node = 8"),
        ({"layouts": [(1, 32)]}, "pp = 32 stages but the model has only 16"),
        ({"micro_batches": 0}, r"micro_batches \(m; None: 4 x pp\) must be a whole number of at least 1"),
        ({"schedule": "zero-bubble"}, "unknown pipeline schedule 'zero-bubble': the schedules are gpipe, 1f1b"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        ({"precision": "bf16"}, "precision must be 'fp32'"),
        ({"memory_gb": 0}, "memory_gb must be"),
        ({"widths": [5]}, "widths must list at least 2"),
        ({"figures": {"gpu": {"source": "a blog"}}}, "needs a source starting with one of"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message, monkeypatch):
    def drawn(*args, **kw):
        raise AssertionError("a layout was drawn before the arguments were checked")

    monkeypatch.setattr(split_layouts_module, "_evaluate", drawn)  # refused up front: no layout, no MPI
    with pytest.raises(ValueError, match=message):
        split_layouts(**kwargs)


def test_every_input_says_where_it_came_from():
    r = split_layouts((64,) * 9, 64, nodes=2, gpus_per_node=4)
    assert r["inputs"] and len({i["name"] for i in r["inputs"]}) == len(r["inputs"])
    for item in r["inputs"]:
        src = item["source"]
        assert isinstance(src, str) and any(src == s or src.startswith(s + ": ") for s in SOURCES), item
    named = " ".join(i["name"] for i in r["inputs"])
    for what in ("compute", "launch", "HBM", "NVLink", "InfiniBand", "memory", "model", "batch", "micro-batches"):
        assert what in named
    assert tuple(split_layouts(layouts=[(8, 4)])["layouts"][0]["stages"][0]["layers"]) == (0, 1, 2, 3, 4, 5, 6, 7)
    assert len(DEFAULT_WIDTHS) == 33
