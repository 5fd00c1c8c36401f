"""whygpu.scaleout_heldout_trace: the measured Chrome trace from the events every rank recorded.

Planted raw runs check the events' exact placement (compute events where they were recorded, the
collectives one at a time on the communication lane), that a gap no event covers stays a gap (and is
reported), and the approximate timeline of a run recorded without events.  One real 2-rank run under
mpiexec (the --quick model) checks that both ranks' traces validate and that each rank's compute lane
adds up to its measured step within 5%."""

from __future__ import annotations

import json
import math
import pathlib

import pytest

import whygpu.scaleout_heldout as h
from whygpu.bench.scaleout_worker import _args
from whygpu.predict import Event, validate_chrome_trace
from whygpu.scaleout_heldout_trace import APPROXIMATE, TOLERANCE, busy_s, measured_events, write_traces

from ._support import needs_mpiexec
from .test_scaleout_heldout import planted_terms

us = 1e-6


def _ev(name, lane, start_us, end_us, kind, **args) -> dict:
    d = {"name": name, "lane": lane, "start_s": start_us * us, "end_s": end_us * us, "kind": kind}
    return {**d, "args": args} if args else d


def _rank_events(shift: float = 0.0) -> list[dict]:
    """One rank's recorded step: two Linear layers and a ReLU, a gap of 20 us (no event) between the
    backward's set-up and the last layer, two allreduces that overlap in flight."""
    s = shift
    return [
        _ev("forward set-up (input checked)", "compute", 0, 10, "forward_setup"),
        _ev("forward linear0 (+ relu1, fused)", "compute", 10 + s, 110 + s, "forward", layer=0),
        _ev("forward linear2", "compute", 115 + s, 165 + s, "forward", layer=2),
        _ev("loss", "compute", 165 + s, 175 + s, "loss"),
        # 175 -> 195: nothing recorded
        _ev("dW linear2", "compute", 195 + s, 245 + s, "backward_dw", layer=2),
        _ev("post complete buckets (after dW linear2)", "compute", 245 + s, 250 + s, "post", layer=2),
        _ev("dX linear2", "compute", 250 + s, 300 + s, "backward_dx", layer=2),
        _ev("dW linear0", "compute", 300 + s, 400 + s, "backward_dw", layer=0),
        _ev("exposed wait", "compute", 400 + s, 500 + s, "exposed"),
        _ev("update", "compute", 500 + s, 560 + s, "update"),
        _ev("allreduce b0", "comm", 246 + s, 380 + s, "allreduce", bucket=0, bytes=1000),
        _ev("allreduce b1", "comm", 401 + s, 480 + s, "allreduce", bucket=1, bytes=4000),
        _ev("allreduce b2", "comm", 300 + s, 490 + s, "allreduce", bucket=2, bytes=8),  # posted in b0's flight
    ]


def _raw(events: bool = True) -> dict:
    steps = [{"step_s": x, "forward_s": 1.75e-4, "backward_s": 2e-4, "exposed_s": 1e-4, "update_s": 6e-5,
              "allreduce_s": 2.3e-4, "first_start_s": 5e-5, "last_done_s": 2.9e-4, "buckets": 2}
             for x in (560 * us, 540 * us, 700 * us)]  # fmt: skip
    raw: dict = {"steps": steps, "rank_step_s": [560 * us, 570 * us]}
    if events:
        raw["events"] = {"step": 0, "clock": "planted", "ranks": [
            {"rank": 0, "step_s": 560 * us, "events": _rank_events()},
            {"rank": 1, "step_s": 570 * us, "events": _rank_events(shift=5.0)},
        ]}  # fmt: skip
    return raw


def _row_and_result(tmp_label: str = "P=2 none, planted"):
    cfg = h.StepConfig(2, bucket_mb=0.0, first_bucket_mb=0.0)
    pred, res = h.predict(planted_terms(2), cfg)
    row = {"label": tmp_label, "how": "planted", "prediction": pred,
           "config": {"shard": "none", "prefetch": False, "bucket_mb": 0.0, "first_bucket_mb": 0.0}}  # fmt: skip
    return row, res


def test_compute_events_sit_where_they_were_recorded():
    ev = measured_events(_raw(), "none", False, rank=1)
    compute = [e for e in ev if e.lane == "compute"]
    planted = [e for e in _rank_events(shift=5.0) if e["lane"] == "compute"]
    assert [(e.name, e.kind, e.rank) for e in compute] == [(e["name"], e["kind"], 1) for e in planted]
    for e, p in zip(compute, planted):
        assert (e.start, e.end) == (p["start_s"], p["end_s"])
    assert compute[1].args == {"layer": 0}
    assert not any(e.name.startswith("other") for e in ev)


def test_collectives_are_drawn_one_at_a_time_first_posted_first():
    comm = [e for e in measured_events(_raw(), "none", False) if e.lane == "comm"]
    # b0 posted at 246, done 380; b2 posted at 300 (b0 in flight): drawn from 380; b1 posted at 401
    # while b2 is in flight: drawn from b2's completion at 490, done at 480 already: a zero-length mark
    assert [e.name for e in comm] == ["allreduce b0", "allreduce b2", "allreduce b1"]
    got = [(round(e.start / us, 6), round(e.end / us, 6)) for e in comm]
    assert got == [(246, 380), (380, 490), (490, 490)]
    assert comm[1].args["posted_s"] == pytest.approx(300 * us) and comm[1].args["done_s"] == pytest.approx(490 * us)
    assert comm[0].args["bytes"] == 1000 and comm[0].args["bucket"] == 0


def test_a_collective_posted_before_the_step_starts_at_the_step():
    raw = _raw()
    raw["events"]["ranks"][0]["events"].append(
        _ev("allgather b0", "comm", -300, 50, "allgather", bucket=0, bytes=64, prefetched=True)
    )
    ag = next(e for e in measured_events(raw, "optimizer", True) if e.name == "allgather b0")
    assert (ag.start, ag.end) == (0.0, 50 * us) and ag.args["posted_s"] == pytest.approx(-300 * us)


def test_gaps_stay_gaps_and_are_reported(tmp_path):
    row, res = _row_and_result()
    tr = write_traces(tmp_path, row, res, _raw())
    assert tr["recorded"] is True
    lanes = validate_chrome_trace(tr["measured"])
    assert set(lanes) == {(0, 1), (0, 2), (1, 1), (1, 2)}  # pid = rank, tid = lane
    for r in (0, 1):
        x = tr["ranks"][r]
        assert x["rank"] == r
        # busy: 10 + 100 + 50 + 10 + (560 - 195) = 535 us on both (rank 1's events 5 us later, its step longer)
        busy = 535 * us
        assert x["compute_busy_s"] == pytest.approx(busy, abs=1e-12)
        assert x["step_s"] == (560 if r == 0 else 570) * us
        assert x["uncovered_s"] == pytest.approx(x["step_s"] - busy, abs=1e-12)
        assert x["busy_vs_step"] == pytest.approx(busy / x["step_s"] - 1)
        assert x["within_tolerance"] == (abs(busy / x["step_s"] - 1) <= TOLERANCE)
    assert tr["measured_compute_lane_s"] == tr["ranks"][0]["compute_busy_s"]
    assert tr["measured_step_s"] == 560 * us
    assert tr["busy_within_tolerance"] is False  # rank 1 is 7% short: nothing fills its gaps
    doc = json.loads(pathlib.Path(tr["measured"]).read_text())
    meta = doc["otherData"]
    assert meta["kind"] == "measured" and "recorded" in meta and "approximate" not in meta
    assert [x["rank"] for x in meta["per_rank"]] == [0, 1]
    names = {(e["pid"], e["tid"], e["name"]) for e in doc["traceEvents"] if e["ph"] == "X"}
    assert (0, 2, "allreduce b1") in names and (1, 1, "dW linear0") in names
    assert not any(e["name"].startswith("other") for e in doc["traceEvents"])
    # no event reaches into the gap 175 -> 195 us on rank 0's compute lane
    assert not [e for e in doc["traceEvents"] if e["ph"] == "X" and e["pid"] == 0 and e["tid"] == 1
                and e["ts"] < 195 - 1e-3 and e["ts"] + e["dur"] > 175 + 1e-3]  # fmt: skip
    validate_chrome_trace(tr["simulated"])


def test_busy_time_is_the_union_of_the_events():
    ev = [Event("a", "compute", 0.0, 2.0, "x"), Event("b", "compute", 1.0, 1.5, "x"),
          Event("c", "compute", 3.0, 4.0, "x"), Event("d", "comm", 0.0, 10.0, "x")]  # fmt: skip
    assert busy_s(ev) == 3.0 and busy_s(ev, "comm") == 10.0


def test_a_run_without_events_falls_back_to_the_approximate_timeline(tmp_path):
    raw = _raw(events=False)
    ev = measured_events(raw, "none", False)
    assert ev and ev[-1].name.startswith("other") and max(e.end for e in ev) == pytest.approx(560 * us)
    assert measured_events(raw, "none", False, rank=1) == []
    row, res = _row_and_result()
    tr = write_traces(tmp_path, row, res, raw)
    assert tr["recorded"] is False and [x["rank"] for x in tr["ranks"]] == [0]
    assert tr["measured_step_s"] == 560 * us and tr["measured_compute_lane_s"] == pytest.approx(560 * us)
    meta = json.loads(pathlib.Path(tr["measured"]).read_text())["otherData"]
    assert meta["approximate"] == APPROXIMATE and "approximate" in meta["approximate"]


def test_the_events_flag_is_what_the_worker_reads():
    cfg = h.StepConfig(2, shard="optimizer", prefetch=True, bucket_mb=0.0, first_bucket_mb=0.0)
    plain = h._worker_args(cfg, (8, 4), 8, 3, "numpy", "sgd")
    traced = h._worker_args(cfg, (8, 4), 8, 3, "numpy", "sgd", events=True)
    assert "--events" not in plain and traced == plain + ["--events"]
    assert _args([*traced, "--json", "x"]).events and not _args([*plain, "--json", "x"]).events


@needs_mpiexec
def test_a_real_two_rank_run_adds_up_on_every_rank(tmp_path):
    q = h.QUICK
    only = ["none, a bucket per layer", "gradients +prefetch, a bucket per layer"]
    doc = h.run_heldout(ranks=[2], layers=q["layers"], batch=q["batch"], steps=q["steps"],
                        terms_settings=q["terms"], timeout=120, only=only, trace_dir=tmp_path)  # fmt: skip
    rows = doc["heldout"]["rows"]
    assert [r["label"] for r in rows] == [f"P=2 {x}" for x in only]
    for r in rows:
        tr = r["traces"]
        assert tr["recorded"] is True
        validate_chrome_trace(tr["simulated"])
        lanes = validate_chrome_trace(tr["measured"])
        assert {(0, 1), (0, 2), (1, 1), (1, 2)} <= set(lanes)
        assert [x["rank"] for x in tr["ranks"]] == [0, 1]
        for x in tr["ranks"]:  # the compute lane's events add up to the rank's measured step
            assert x["step_s"] > 0 and math.isfinite(x["compute_busy_s"])
            assert x["compute_busy_s"] == pytest.approx(x["step_s"], rel=TOLERANCE), (r["label"], x)
        assert tr["busy_within_tolerance"] is True
        assert tr["measured_step_s"] == pytest.approx(r["measured"]["terms"]["step"], rel=1e-9)  # the median
        doc_tr = json.loads(pathlib.Path(tr["measured"]).read_text())
        for rank in (0, 1):
            names = [e["name"] for e in doc_tr["traceEvents"] if e["ph"] == "X" and e["pid"] == rank]
            for layer in ("linear0", "linear2", "linear4"):  # 64-256-256-10: per-layer events on each rank
                assert f"dW {layer}" in names and any(n.startswith(f"forward {layer}") for n in names)
            assert "dX linear4" in names and "dX linear0" not in names  # the first layer has no dX
            comm = [e for e in doc_tr["traceEvents"] if e["ph"] == "X" and e["pid"] == rank and e["tid"] == 2]
            kinds = {e["cat"] for e in comm}
            assert kinds >= ({"allreduce"} if "none" in r["label"] else {"reduce_scatter", "allgather"})
        if "prefetch" in r["label"]:
            assert "wait allgather before linear0" in [e["name"] for e in doc_tr["traceEvents"]]
