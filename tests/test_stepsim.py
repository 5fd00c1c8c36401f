"""The step simulator (whygpu.predict) on planted timelines with answers worked out by hand, checked
exactly: where the communication hides and where it shows, how interference stretches both lanes,
ZeRO's waits with and without prefetch, the bucket layout against whygpu's own GradBuckets, the
Chrome trace of a timeline, bad inputs, and that a prediction reads nothing but its inputs."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whygpu.predict import (
    CollectiveCosts,
    CollectiveCurve,
    ComputeTimes,
    Event,
    Interference,
    LayerTimes,
    Skew,
    StepConfig,
    UpdateCost,
    bucket_layout,
    chrome_trace,
    simulate,
    validate_chrome_trace,
    write_chrome_trace,
)
from whygpu.predict.trace import TIDS

EXACT = 1e-12
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
NO_INTERFERENCE = Interference("planted")
NO_UPDATE = UpdateCost("planted")


def costs(ranks=2, **kinds):
    """CollectiveCosts from kind=(latency_s, bandwidth_Bps)."""
    return CollectiveCosts(tuple(CollectiveCurve(k, ranks, lat, bw, "planted") for k, (lat, bw) in kinds.items()))


def model(*layers, loss_s=0.0):
    return ComputeTimes(tuple(LayerTimes(*row) for row in layers), "planted", loss_s=loss_s)


def close(a, b):
    return abs(a - b) <= EXACT


def spans(result):
    return {c.name: (c.posted_s, c.start_s, c.end_s) for c in result.collectives}


def approx_spans(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert all(close(a, b) for a, b in zip(got[k], want[k])), (k, got[k], want[k])


def check_identity(r):
    """The compute lane is always computing or waiting: the terms add up to the step."""
    assert close(r.step_s, r.compute_s + r.update_s + r.exposed_s + r.allgather_wait_s)


# -- where the communication shows ----------------------------------------------------------------


def test_one_bucket_at_the_end_exposes_the_whole_allreduce():
    m = model((1.0, 2.0, 3.0, 4000, "fc1"), (0.5, 0.0, 0.5, 0, "relu"), (1.0, 2.0, 3.0, 4000, "fc2"), loss_s=0.5)
    cfg = StepConfig(2, bucket_mb=math.inf, first_bucket_mb=math.inf)
    r = simulate(m, NO_UPDATE, costs(allreduce=(0.25, 1000.0)), NO_INTERFERENCE, cfg)
    assert [b.layers for b in r.buckets] == [(2, 0)]
    (ar,) = r.collectives
    assert ar.nbytes == 8004  # both layers' gradients and the failure count
    assert close(ar.bare_s, 0.25 + 8.004)
    # forward 2.5 + loss 0.5; backward: dW fc2 2, dX fc2 3, dX relu 0.5, dW fc1 2 (no dX: the first layer)
    assert close(r.backward_start_s, 3.0) and close(r.backward_end_s, 10.5)
    assert close(ar.posted_s, 10.5) and close(ar.end_s, 10.5 + 8.254)
    assert close(r.exposed_s, ar.bare_s) and close(r.step_s, 18.754)
    assert close(r.compute_s, 10.5) and close(r.in_flight_s, ar.bare_s)
    check_identity(r)


def test_buckets_much_faster_than_the_backward_expose_only_the_last():
    layers = [(1.0, 1.0, 1.0, 4000, f"fc{i}") for i in range(4)]
    c = costs(allreduce=(0.01, 1e6))
    r = simulate(model(*layers), NO_UPDATE, c, NO_INTERFERENCE, StepConfig(2, bucket_mb=0.0))
    assert [b.layers for b in r.buckets] == [(3,), (2,), (1,), (0,)]
    # each layer's bucket posted after its dW: at 5, 7, 9, 11; the backward pass ends at 11
    assert [round(c.posted_s, 9) for c in r.collectives] == [5.0, 7.0, 9.0, 11.0]
    assert close(r.backward_end_s, 11.0)
    assert all(c.end_s < r.backward_end_s for c in r.collectives[:-1])
    last = r.collectives[-1]
    assert last.nbytes == 4004 and close(last.bare_s, 0.01 + 4004 / 1e6)
    assert close(r.exposed_s, last.bare_s) and close(r.step_s, 11.0 + last.bare_s)
    check_identity(r)
    # with the first layer's dX computed (input_grad), the last one hides too
    r2 = simulate(model(*layers), NO_UPDATE, c, NO_INTERFERENCE, StepConfig(2, bucket_mb=0.0, input_grad=True))
    assert r2.exposed_s == 0.0 and close(r2.step_s, 12.0)


def test_a_collective_slower_than_the_whole_backward_exposes_the_difference():
    # fc2's bucket (10000 bytes at 1000 B/s: 10 s) leaves after its dW, with 4 s of backward left;
    # the small buckets of fc1 and fc0 queue behind it on the communication lane
    m = model((1.0, 1.0, 1.0, 4, "fc0"), (1.0, 1.0, 1.0, 4, "fc1"), (1.0, 1.0, 1.0, 10000, "fc2"))
    r = simulate(m, NO_UPDATE, costs(allreduce=(0.0, 1000.0)), NO_INTERFERENCE, StepConfig(2, bucket_mb=0.0))
    approx_spans(
        spans(r),
        {
            "allreduce b0": (4.0, 4.0, 14.0),
            "allreduce b1": (6.0, 14.0, 14.004),  # posted at 6, waits for the lane (FIFO)
            "allreduce b2": (8.0, 14.004, 14.012),  # fc0's 4 bytes and the failure count's 4
        },
    )
    assert close(r.backward_end_s, 8.0)
    assert close(r.exposed_s, (10.0 - 4.0) + 0.004 + 0.008) and close(r.step_s, 14.012)
    assert close(r.in_flight_s, 10.012)
    check_identity(r)


def test_a_lagging_rank_delays_each_collective_by_its_share_of_the_compute_since_the_ranks_met():
    # as the one-bucket test, the other rank 20% behind: it posts the bucket 0.2 x 10.5 s of compute later
    m = model((1.0, 2.0, 3.0, 4000, "fc1"), (0.5, 0.0, 0.5, 0, "relu"), (1.0, 2.0, 3.0, 4000, "fc2"), loss_s=0.5)
    cfg = StepConfig(2, bucket_mb=math.inf, first_bucket_mb=math.inf)
    lag = Skew("planted", lag_fraction=0.2)
    r = simulate(m, NO_UPDATE, costs(allreduce=(0.25, 1000.0)), NO_INTERFERENCE, cfg, lag)
    (ar,) = r.collectives
    assert close(ar.posted_s, 10.5) and close(ar.start_s, 10.5 + 2.1) and close(ar.end_s, 12.6 + 8.254)
    assert close(r.exposed_s, 2.1 + 8.254) and close(r.in_flight_s, 2.1 + 8.254)
    check_identity(r)
    # a bucket per layer: each posted bucket waits for the lag so far; after the ranks met in the exposed
    # wait, the lag starts again from nothing (the allgathers of ZeRO: only the update's share)
    layers = [(1.0, 1.0, 1.0, 4000, f"fc{i}") for i in range(2)]
    upd = UpdateCost("planted", per_call_s=1.0)
    fast = costs(reduce_scatter=(0.0, 1e9), allgather=(0.0, 1e9), allreduce=(0.0, 1e9))
    z = simulate(
        model(*layers), upd, fast, NO_INTERFERENCE, StepConfig(2, "optimizer", bucket_mb=0.0), Skew("planted", 0.5)
    )
    starts = {c.name: (c.posted_s, c.start_s) for c in z.collectives}
    # forward 2, dW fc1 at 3 (3 s of compute: lag 1.5), dX fc1 at 4, dW fc0 at 5 (lag 2.5)
    assert close(starts["reduce_scatter b0"][1] - starts["reduce_scatter b0"][0], 1.5)
    assert close(starts["reduce_scatter b1"][1] - starts["reduce_scatter b1"][0], 2.5)
    gathers = [c for c in z.collectives if c.kind == "allgather"]
    first = min(gathers, key=lambda c: c.start_s)  # two shard updates (2 s) since the ranks met: lag 1 s
    assert close(first.start_s - first.posted_s, 0.5 * 2.0)
    with pytest.raises(ValueError, match="lag_fraction"):
        Skew("planted", lag_fraction=-0.1)


def test_interference_slows_both_lanes_as_the_rates_say():
    m = model((1.0, 1.0, 0.0, 4, "fc0"), (1.0, 1.0, 2.0, 4, "fc1"))
    slow = Interference("planted", compute_slowdown=2.0, comm_slowdown=2.0)
    cfg = StepConfig(2, bucket_mb=0.0)
    # fc1's allreduce (1 s bare) posted at 3 beside fc1's dX (2 s bare), both at half speed: the allreduce
    # ends at 5 with 1 s of dX done, the last 1 s of dX runs alone (5..6); fc0's dW 6..7, its allreduce 7..8
    r = simulate(m, NO_UPDATE, costs(allreduce=(1.0, math.inf)), slow, cfg)
    approx_spans(spans(r), {"allreduce b0": (3.0, 3.0, 5.0), "allreduce b1": (7.0, 7.0, 8.0)})
    dx = next(e for e in r.timeline if e.name == "dX fc1")
    assert close(dx.start, 3.0) and close(dx.end, 6.0) and dx.args["bare_s"] == 2.0
    assert close(r.compute_s, 7.0) and close(r.compute_bare_s, 6.0)
    assert close(r.exposed_s, 1.0) and close(r.step_s, 8.0)
    check_identity(r)
    # a collective longer than the compute beside it: 3 s bare posted at 3 beside 1 s of dX (ends at 5,
    # 1 s of the allreduce done) and fc0's 1 s dW (ends at 7, 2 s done); the last 1 s alone (7..8),
    # then fc0's allreduce (8..11)
    m2 = model((1.0, 1.0, 0.0, 4, "fc0"), (1.0, 1.0, 1.0, 4, "fc1"))
    r2 = simulate(m2, NO_UPDATE, costs(allreduce=(3.0, math.inf)), slow, cfg)
    approx_spans(spans(r2), {"allreduce b0": (3.0, 3.0, 8.0), "allreduce b1": (7.0, 8.0, 11.0)})
    assert close(r2.backward_end_s, 7.0) and close(r2.exposed_s, 4.0) and close(r2.step_s, 11.0)
    assert close(r2.compute_s, 7.0) and close(r2.compute_bare_s, 5.0)
    check_identity(r2)
    # without interference: fc1's allreduce 3..6, fc0's posted at 5, queued until 6, done at 9
    r3 = simulate(m2, NO_UPDATE, costs(allreduce=(3.0, math.inf)), NO_INTERFERENCE, cfg)
    approx_spans(spans(r3), {"allreduce b0": (3.0, 3.0, 6.0), "allreduce b1": (5.0, 6.0, 9.0)})
    assert close(r3.step_s, 9.0) and close(r3.exposed_s, 4.0)


# -- ZeRO ---------------------------------------------------------------------------------------------

ZERO_COSTS = costs(reduce_scatter=(0.5, 16.0), allgather=(0.25, 8.0), allreduce=(0.125, 32.0))
ZERO_UPDATE = UpdateCost("planted", per_byte_s=0.125, per_call_s=0.5)
ZERO_MODEL = model((1.0, 1.0, 1.0, 12, "fc0"), (1.0, 1.0, 1.0, 12, "fc1"))  # 3 float32 each


@pytest.mark.parametrize("stage", ["optimizer", "gradients"])
def test_zero_without_prefetch(stage):
    r = simulate(ZERO_MODEL, ZERO_UPDATE, ZERO_COSTS, NO_INTERFERENCE, StepConfig(2, stage, bucket_mb=0.0))
    # 3 elements on 2 ranks: shards of 2, buffers of 4 (16 bytes); a reduce-scatter 0.5 + 1 s, an
    # allgather 0.25 + 2 s, the failure count's allreduce of 4 bytes 0.125 + 0.125 s, an update of
    # one 8-byte shard 0.5 + 1 s
    assert {c.nbytes for c in r.collectives if c.kind != "allreduce"} == {16}
    approx_spans(
        spans(r),
        {
            "reduce_scatter b0": (3.0, 3.0, 4.5),
            "reduce_scatter b1": (5.0, 5.0, 6.5),
            "allreduce failure count": (5.0, 6.5, 6.75),
            "allgather b1": (9.75, 9.75, 12.0),  # the first layer's bucket first
            "allgather b0": (9.75, 12.0, 14.25),
        },
    )
    assert close(r.exposed_s, 1.75) and close(r.update_s, 3.0)
    assert close(r.allgather_wait_s, 4.5) and close(r.allgather_s, 4.5)
    assert close(r.backward_comm_s, 1.5 + 1.75) and close(r.step_s, 14.25)
    assert [e.name for e in r.timeline if e.kind == "update"] == ["update shard b0", "update shard b1"]
    check_identity(r)


@pytest.mark.parametrize("stage", ["optimizer", "gradients"])
def test_zero_with_prefetch_waits_layer_by_layer(stage):
    cfg = StepConfig(2, stage, prefetch=True, bucket_mb=0.0)
    r = simulate(ZERO_MODEL, ZERO_UPDATE, ZERO_COSTS, NO_INTERFERENCE, cfg)
    # the previous step's allgathers posted at 0: fc0's bucket 0..2.25, fc1's 2.25..4.5; fc0 waits 2.25,
    # runs 2.25..3.25; fc1 waits 3.25..4.5 and runs 4.5..5.5
    waits = [(e.name, e.start, e.end) for e in r.timeline if e.kind == "prefetch_wait"]
    assert [w[0] for w in waits] == ["wait allgather b1 before fc0", "wait allgather b0 before fc1"]
    assert all(close(a, b) for w, want in zip(waits, [(0.0, 2.25), (3.25, 4.5)]) for a, b in zip(w[1:], want))
    assert close(r.allgather_wait_s, 3.5) and close(r.backward_start_s, 5.5)
    approx_spans(
        spans(r),
        {
            "allgather b1": (0.0, 0.0, 2.25),
            "allgather b0": (0.0, 2.25, 4.5),
            "reduce_scatter b0": (6.5, 6.5, 8.0),
            "reduce_scatter b1": (8.5, 8.5, 10.0),
            "allreduce failure count": (8.5, 10.0, 10.25),
        },
    )
    assert close(r.exposed_s, 1.75) and close(r.update_s, 3.0) and close(r.step_s, 13.25)
    check_identity(r)


# -- the buckets ----------------------------------------------------------------------------------------


def test_bucket_layout_planted():
    # from the last layer: 50 (< the first bucket's 60), nothing, 200 -> closes (250); then 100 < 150: the rest
    assert bucket_layout([100, 0, 200, 0, 50], 150, 60) == [((4, 2), 250, 2), ((0,), 100, 0)]
    assert bucket_layout([8, 0, 8], 0, 0) == [((2,), 8, 2), ((0,), 8, 0)]  # one per layer with parameters
    assert bucket_layout([8, 0, 8], math.inf, 8) == [((2,), 8, 2), ((0,), 8, 0)]  # a small first, then the rest
    assert bucket_layout([8, 0, 8], math.inf, 2**20) == [((2, 0), 16, 0)]  # the first bucket never filled
    assert bucket_layout([8, 0, 8], math.inf, math.inf) == [((2, 0), 16, 0)]  # one bucket
    with pytest.raises(ValueError, match="no parameters"):
        bucket_layout([0, 0], 10, 10)


@pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (pip install '.[mpi]' from the source folder)")
@pytest.mark.parametrize(
    "widths",
    [(4, 8, 3), (784, 64, 64, 10), (16, 200, 3, 50, 7)],
)
def test_bucket_layout_matches_whygpus_buckets(widths):
    import numpy as np

    import whygpu.distributed as dist
    from whygpu import nn
    from whygpu.distributed._buckets import GradBuckets

    comm = dist.init()
    mods = []
    for a, b in zip(widths[:-1], widths[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*mods[:-1])
    layers = [layer.parameters() for layer in net.layers]
    where = {id(p): i for i, params in enumerate(layers) for p in params}
    sizes = [sum(p.size * 4 for p in params) for params in layers]
    for bucket, first in [(0, 0), (100, 64), (1000, 2**20), (5000, 200), (math.inf, 2**20), (math.inf, math.inf)]:
        real = GradBuckets(layers, np.dtype(np.float32), bucket, comm, False, first_bucket_bytes=first)
        got = [(tuple(dict.fromkeys(where[id(p)] for p in b.params)), b.nbytes, b.lowest_layer) for b in real.buckets]
        assert bucket_layout(sizes, bucket, first) == got, (widths, bucket, first)


# -- the trace ------------------------------------------------------------------------------------------


def test_chrome_trace_validates_and_adds_up_to_the_step(tmp_path):
    cfg = StepConfig(3, "gradients", prefetch=True, bucket_mb=0.0)
    c3 = CollectiveCosts(
        tuple(CollectiveCurve(c.kind, 3, c.latency_s, c.bandwidth_Bps, "planted") for c in ZERO_COSTS.curves)
    )
    r = simulate(ZERO_MODEL, ZERO_UPDATE, c3, Interference("planted", 1.25, 1.5), cfg)
    path = tmp_path / "step.json"
    write_chrome_trace(path, r.rank_timelines(), metadata={"kind": "simulated", "config": cfg.label})
    trace = json.loads(path.read_text())
    assert trace["displayTimeUnit"] == "ms" and trace["otherData"]["kind"] == "simulated"
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in xs} == {0, 1, 2} and {e["tid"] for e in xs} == set(TIDS.values())
    for e in xs:
        assert {"name", "ph", "ts", "dur", "pid", "tid", "cat", "args"} <= e.keys() and e["dur"] >= 0
    busy = validate_chrome_trace(path)
    for rank in range(3):  # the compute lane computes or waits all step; the communication lane is FIFO
        assert abs(busy[(rank, TIDS["compute"])] - r.step_s) <= 1e-9
        assert abs(busy[(rank, TIDS["comm"])] - sum(c.end_s - c.start_s for c in r.collectives)) <= 1e-9
        assert abs(busy[(rank, TIDS["comm"])] - r.in_flight_s) <= 1e-9
    # a measured timeline, given as the same events
    measured = [
        Event("forward fc0", "compute", 0.0, 0.002, "forward"),
        Event("allreduce b0", "comm", 0.001, 0.003, "allreduce"),
    ]
    assert validate_chrome_trace(chrome_trace(measured)) == pytest.approx({(0, 1): 0.002, (0, 2): 0.002})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"events": []}, "traceEvents"),
        ({"traceEvents": [{"ph": "Z", "ts": 0}]}, "'ph'"),
        ({"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": -1, "pid": 0, "tid": 1}]}, "'dur'"),
        ({"traceEvents": [{"name": "a", "ph": "X", "ts": "0", "dur": 1, "pid": 0, "tid": 1}]}, "'ts'"),
        ({"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": 1, "pid": 0}]}, "'tid'"),
        ({"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": 1, "pid": 0, "tid": 1.5}]}, "'tid'"),
        ({"traceEvents": [], "displayTimeUnit": "s"}, "displayTimeUnit"),
        (
            {
                "traceEvents": [
                    {"name": "a", "ph": "X", "ts": 0, "dur": 2, "pid": 0, "tid": 1},
                    {"name": "b", "ph": "X", "ts": 1, "dur": 2, "pid": 0, "tid": 1},
                ]
            },
            "half-overlaps",
        ),
    ],
)
def test_the_trace_validator_refuses_what_the_format_does_not_allow(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_chrome_trace(bad)


def test_nested_events_count_once():
    trace = [
        {"name": "step", "ph": "X", "ts": 0, "dur": 10, "pid": 0, "tid": 1},
        {"name": "layer", "ph": "X", "ts": 2, "dur": 3, "pid": 0, "tid": 1},
        {"name": "later", "ph": "X", "ts": 20, "dur": 5, "pid": 0, "tid": 1},
    ]
    assert validate_chrome_trace(trace) == {(0, 1): pytest.approx(15e-6)}


# -- bad inputs ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors():
    with pytest.raises(ValueError, match="forward_s"):
        LayerTimes(-1.0)
    with pytest.raises(ValueError, match="backward_dx_s"):
        LayerTimes(1.0, 0.0, math.nan, 4)
    with pytest.raises(ValueError, match="param_bytes"):
        LayerTimes(1.0, 1.0, 1.0, -4)
    with pytest.raises(ValueError, match="empty model"):
        ComputeTimes((), "planted")
    with pytest.raises(ValueError, match="no parameters"):
        model((1.0, 0.0, 1.0, 0))
    with pytest.raises(ValueError, match="source"):
        ComputeTimes((LayerTimes(1.0, 1.0, 1.0, 4),), "guessed")
    with pytest.raises(ValueError, match="shard"):
        StepConfig(2, "zero3")
    with pytest.raises(ValueError, match="ranks"):
        StepConfig(0)
    with pytest.raises(ValueError, match="prefetch"):
        StepConfig(2, "none", prefetch=True)
    with pytest.raises(ValueError, match="bandwidth"):
        CollectiveCurve("allreduce", 2, 0.0, 0.0, "planted")
    with pytest.raises(ValueError, match="kind"):
        CollectiveCurve("broadcast", 2, 0.0, 1.0, "planted")
    with pytest.raises(ValueError, match="latency"):
        CollectiveCurve("allreduce", 2, -1e-6, 1.0, "planted")
    with pytest.raises(ValueError, match="slowdown"):
        Interference("planted", compute_slowdown=0.5)
    with pytest.raises(ValueError, match="per_byte_s"):
        UpdateCost("planted", per_byte_s=-1.0)
    m = model((1.0, 1.0, 1.0, 12))
    with pytest.raises(ValueError, match="no reduce_scatter curve for 2 ranks"):
        simulate(m, NO_UPDATE, costs(allreduce=(0.0, 1.0)), NO_INTERFERENCE, StepConfig(2, "optimizer"))
    with pytest.raises(ValueError, match="no allreduce curve for 4 ranks"):
        simulate(m, NO_UPDATE, costs(allreduce=(0.0, 1.0)), NO_INTERFERENCE, StepConfig(4))
    with pytest.raises(ValueError, match="whole number"):
        simulate(model((1.0, 1.0, 1.0, 10)), NO_UPDATE, ZERO_COSTS, NO_INTERFERENCE, StepConfig(2, "optimizer"))
    with pytest.raises(ValueError, match="ComputeTimes"):
        simulate({"layers": []}, NO_UPDATE, ZERO_COSTS, NO_INTERFERENCE, StepConfig(2))  # type: ignore[arg-type]


def test_numpy_scalars_from_a_measurement_are_taken_as_numbers():
    np = pytest.importorskip("numpy")
    layer = LayerTimes(np.float32(0.5), np.float64(0.25), 0, np.int64(8), "fc")
    assert type(layer.forward_s) is float and layer.forward_s == 0.5 and type(layer.param_bytes) is int
    curve = CollectiveCurve("allreduce", np.int32(2), np.float32(0.5), np.float64(8.0), "measured apart: planted here")
    assert type(curve.ranks) is int and curve.seconds(8) == 1.5


# -- the prediction reads its inputs only -------------------------------------------------------------------


def test_simulate_reads_only_its_inputs():
    params = inspect.signature(simulate).parameters
    assert list(params) == ["compute", "update", "collectives", "interference", "config", "skew"]
    assert [p.annotation for p in params.values()] == [
        "ComputeTimes",
        "UpdateCost",
        "CollectiveCosts",
        "Interference",
        "StepConfig",
        "Skew | None",
    ]
    measured_run = {"step_s": 9.0, "exposed_s": 1.0, "allreduce_s": 2.0}  # the run being predicted
    args = (ZERO_MODEL, ZERO_UPDATE, ZERO_COSTS, NO_INTERFERENCE, StepConfig(2, "optimizer", bucket_mb=0.0))
    before = simulate(*args)
    measured_run.update(step_s=100.0, exposed_s=50.0, allreduce_s=0.0)
    after = simulate(*args)
    assert before == after and before.to_dict() == after.to_dict()
    assert before.step_s != measured_run["step_s"]


# -- properties on random planted models --------------------------------------------------------------------

layer_rows = st.tuples(st.floats(0, 2), st.floats(0, 2), st.floats(0, 2), st.integers(0, 64).map(lambda n: 4 * n)).map(
    lambda t: LayerTimes(t[0], t[1] if t[3] else 0.0, t[2], t[3])
)


@settings(max_examples=60)
@given(
    layers=st.lists(layer_rows, min_size=1, max_size=6).filter(lambda ls: any(x.param_bytes for x in ls)),
    shard=st.sampled_from(["none", "optimizer", "gradients"]),
    prefetch=st.booleans(),
    bucket=st.sampled_from([0.0, 1e-4, math.inf]),
    slow=st.tuples(st.floats(1, 3), st.floats(1, 3)),
    ranks=st.integers(1, 4),
)
def test_the_terms_always_add_up(layers, shard, prefetch, bucket, slow, ranks):
    prefetch = prefetch and shard != "none"
    kinds = ("allreduce", "reduce_scatter", "allgather")
    c = CollectiveCosts(tuple(CollectiveCurve(k, ranks, 0.01, 1e4, "planted") for k in kinds))
    cfg = StepConfig(ranks, shard, prefetch, bucket, bucket)
    m = ComputeTimes(tuple(layers), "planted")
    r = simulate(m, UpdateCost("planted", 1e-4, 0.01), c, Interference("planted", *slow), cfg)
    assert math.isclose(r.step_s, r.compute_s + r.update_s + r.exposed_s + r.allgather_wait_s, abs_tol=1e-9)
    assert r.compute_s >= r.compute_bare_s - 1e-9 and r.exposed_s >= 0 and r.allgather_wait_s >= 0
    assert all(c.posted_s <= c.start_s <= c.end_s <= r.step_s + 1e-9 for c in r.collectives)
    assert all(c.end_s - c.start_s >= c.bare_s - 1e-9 for c in r.collectives)  # never faster than bare
    lane = sorted((c.start_s, c.end_s) for c in r.collectives)
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(lane, lane[1:]))  # one at a time
    if slow == (1.0, 1.0):
        assert math.isclose(r.compute_s, r.compute_bare_s, abs_tol=1e-9)
