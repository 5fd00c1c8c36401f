"""whygpu scaleout --shard with planted timings and memory (no MPI, nothing depends on this machine's speed): the
reduce-scatter and allgather terms, the 1/P optimizer update, the sharded step's model next to the measured one
(re-measured, then flagged, as the allreduce's), the memory table measured next to the formula, the devices
public models need, in the CLI, JSON, figure and report."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from whygpu import scaleout as so
from whygpu.bench import scaleout as bso
from whygpu.cli import main
from whygpu.report import build_report, load_results
from whygpu.report._format import _ms as ms_text

from ._support import planted_sweep

N = so.mlp_params([784, 2048, 2048, 10])  # 5,824,522
GRAD = 4 * N


def planted_memory(shard: str, ranks: int, optimizer: str, extra: int = 0) -> dict:
    """Per-rank bytes as DataParallel.memory() reports them, worked by hand for fp32 (Adam: 8 bytes of state)."""
    k = {"sgd": 0, "momentum": 4, "adam": 8}[optimizer]
    shard_n = -(-N // ranks)
    m = {
        "params_bytes": 4 * N,
        "grads_bytes": 4 * (shard_n if shard == "gradients" else N) + extra,
        "optimizer_bytes": k * (shard_n if shard != "none" else N),
    }
    m["total_bytes"] = sum(m.values())
    peak = 3 * N if shard == "gradients" else None  # stage 2: the backward pass held 3/4 of the gradient at once
    return {"per_rank": [dict(m, shard=shard, ranks=ranks)] * ranks, "max": m, "n_params": N,
            "formula_bytes": None, "source": "planted", "grads_peak_bytes": peak}  # fmt: skip


class Plant:
    """A fake `launch`: step times per (ranks, threads, batch, kind) and try, kind "side" or the shard."""

    def __init__(self, steps: dict, terms: dict | None = None, extra: int = 0):
        self.steps, self.terms, self.calls, self.tries, self.extra = steps, terms or {}, [], {}, extra

    def __call__(self, mpiexec, ranks, threads, args, timeout, tick=None):
        mode = args[args.index("--mode") + 1]
        self.calls.append((mode, ranks, threads, args))
        if mode == "sweep":
            return planted_sweep(args, ranks)
        b = int(args[args.index("--batch") + 1])
        opt = args[args.index("--optimizer") + 1]
        side = "--independent" in args
        shard = args[args.index("--shard") + 1] if "--shard" in args else "none"
        kind = "side" if side else (shard if ranks > 1 else "plain")
        key = (ranks, threads, b, kind)
        k = self.tries[key] = self.tries.get(key, 0) + 1
        step = self.steps[key]
        step = step[min(k, len(step)) - 1] if isinstance(step, list) else step
        dp = ranks > 1 and not side
        t = dict(self.terms.get(kind, {}))
        rec = {"step_s": step, "forward_s": step / 3, "backward_s": step / 2, "update_s": t.get("update_s", 0.010),
               "allreduce_s": t.get("allreduce_s", 0.005) if dp else 0.0,
               "exposed_s": t.get("exposed_s", 0.005) if dp else 0.0,
               "bytes": GRAD if dp else 0, "buckets": 1 if dp else 0}  # fmt: skip
        if dp and shard != "none":
            rec.update(reduce_scatter_s=t.get("allreduce_s", 0.004), allgather_s=t.get("allgather_s", 0.003))
        if "--prefetch" in args:  # as DataParallel(prefetch=True) reports it: the allgather of the step before
            rec.update(allgather_s=math.nan, prefetched_allgather_s=t.get("allgather_s", 0.003),
                       allgather_wait_s=t.get("allgather_wait_s", 0.001))  # fmt: skip
        sharded = dp and shard != "none"
        mem = planted_memory(shard if dp else "none", ranks, opt, self.extra if sharded else 0)
        return {"ranks": ranks, "threads": threads, "data_parallel": dp, "backend": "openmp", "batch": b,
                "independent": side, "shard": shard if dp else "none", "optimizer": opt, "memory": mem,
                "steps": [dict(rec) for _ in range(3)], "bare_allreduce_s": [0.005] * 5 if dp else [],
                "bare_reduce_scatter_s": [t.get("bare_rs", 0.004)] * 5 if sharded else [],
                "bare_allgather_s": [t.get("bare_ag", 0.003)] * 5 if sharded else [],
                "rank_step_s": [step] * ranks, "weights_identical": True, "mpi_library": "planted MPI",
                "prefetch": "--prefetch" in args}  # fmt: skip


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setenv("WHYGPU_QUIET_WAIT", "0")
    monkeypatch.setattr(bso, "mpi_status", lambda: {"available": True, "mpiexec": "mpiexec", "install": ""})
    monkeypatch.setattr(bso, "_cpus_available", lambda: 2)
    monkeypatch.setattr(bso, "machine_info", lambda: {})
    import whygpu._threads

    monkeypatch.setattr(whygpu._threads, "_cpus_available", lambda: 2)

    def plant(steps, terms=None, extra=0):
        p = Plant(steps, terms, extra)
        monkeypatch.setattr(bso, "launch", p)
        return p

    return plant


# side by side: 62 ms a step, 10 ms of it the whole update; ZeRO-1: 4 ms reduce-scatter (all exposed), 5 ms
# update of the half, 3 ms allgather
STEPS = {
    (1, 1, 512, "plain"): 0.100,
    (1, 2, 512, "plain"): 0.055,
    (1, 1, 256, "plain"): 0.060,
    (2, 1, 512, "side"): 0.062,
    (2, 1, 512, "none"): 0.070,
    (2, 1, 512, "optimizer"): 0.066,
    (2, 1, 512, "gradients"): 0.066,
}
TERMS = {
    "optimizer": {"update_s": 0.005, "allreduce_s": 0.004, "exposed_s": 0.004, "allgather_s": 0.003},
    "gradients": {"update_s": 0.005, "allreduce_s": 0.004, "exposed_s": 0.004, "allgather_s": 0.003},
}


def dp_run(doc: dict, shard: str) -> dict:
    return next(r for r in doc["runs"] if r["ranks"] == 2 and r["data_parallel"] and r["shard"] == shard)


# ---------------------------------------------------------------- the terms
def test_reduce_scatter_and_allgather_are_the_two_halves_of_the_allreduce():
    S, a, B = 64e6, 5e-6, 2e9
    for P in (2, 3, 8, 1024):
        for lat in ("ring", "tree"):
            rs = so.reduce_scatter_s(S, P, a, B, latency=lat, buckets=3)
            ag = so.allgather_s(S, P, a, B, latency=lat, buckets=3)
            assert rs + ag == pytest.approx(so.allreduce_s(S, P, a, B, latency=lat, buckets=3))
    # by hand: P = 4, no latency, (P-1)/P S/B = 3/4 * 64e6 / 2e9 = 24 ms
    assert so.reduce_scatter_s(S, 4, 0.0, B) == pytest.approx(0.024)
    assert so.allgather_s(S, 4, a, 1e30) == pytest.approx(3 * a) and so.reduce_scatter_s(S, 1, a, B) == 0.0
    with pytest.raises(ValueError, match="ranks"):
        so.reduce_scatter_s(S, 0, a, B)
    with pytest.raises(ValueError, match="latency"):
        so.allgather_s(S, 2, a, B, latency="star")


def sharded_run(prefetch: bool = False) -> dict:
    """A measured ZeRO-1 run on 2 ranks, as summarize() writes it: only its configuration and the bare calls
    may reach the prediction."""
    return {"ranks": 2, "threads": 1, "data_parallel": True, "shard": "optimizer", "prefetch": prefetch,
            "bytes": GRAD, "step_s": 0.066, "exposed_s": 0.004, "reduce_scatter_s": 0.004, "allgather_s": 0.003,
            "exposed_allgather_s": 0.001 if prefetch else 0.003, "update_s": 0.005, "compute_s": 0.054,
            "bare_allreduce_s": 0.005, "bare_reduce_scatter_s": 0.004, "bare_allgather_s": 0.003}  # fmt: skip


def test_sharded_step_updates_one_pth():
    """One layer holding the whole gradient (no widths), one bucket: nothing to overlap, so the simulated step
    is the compute, the whole reduce-scatter (and the failure count's allreduce), half the update, and the
    whole allgather, each on the curve through its bare time (no sweep: latency 0)."""
    side = {"step_s": 0.062, "update_s": 0.010, "forward_s": 0.020, "backward_s": 0.032}
    p = so.check_run({}, side, sharded_run(), 2, bucket_mb=1000, first_bucket_mb=1000)
    flag = 4 * 0.005 / GRAD  # one float32 on the Allreduce's curve
    assert p["compute_s"] == pytest.approx(0.052) and p["update_s"] == pytest.approx(0.005)
    assert p["exposed_s"] == pytest.approx(0.004 + flag) and p["exposed_allgather_s"] == pytest.approx(0.003)
    assert p["step_s"] == pytest.approx(0.052 + 0.004 + flag + 0.005 + 0.003)
    assert p["allgather_exposed_fraction"] == 1.0 and p["buckets"] == 1
    assert p["terms"]["exposed_s"] == {"predicted": p["exposed_s"], "measured": 0.004,
                                       "error": pytest.approx(p["exposed_s"] / 0.004 - 1)}  # fmt: skip


def test_prefetch_exposes_only_the_allgather_still_in_flight():
    """With prefetch the allgather is posted at the step's start and the first layer waits for it: with one
    layer, all of it; the forward pass hides nothing before layer 0.  Two layers of equal bytes in two
    buckets: layer 0's allgather goes first, and layer 1's travels beside layer 0's forward."""
    side = {"step_s": 0.062, "update_s": 0.010, "forward_s": 0.020, "backward_s": 0.032}
    one = so.check_run({}, side, sharded_run(True), 2, bucket_mb=1000, first_bucket_mb=1000)
    assert one["exposed_allgather_s"] == pytest.approx(0.003) and one["allgather_exposed_fraction"] == 1.0
    run = dict(sharded_run(True), bytes=2 * 4 * (100 * 100 + 100))
    two = so.check_run({}, side, run, 2, widths=[100, 100, 100], bucket_mb=0, first_bucket_mb=0)
    assert two["buckets"] == 2
    assert two["exposed_allgather_s"] == pytest.approx(0.003 / 2)  # half the bytes: half the bare time
    assert two["allgather_exposed_fraction"] == pytest.approx(0.5)


# ---------------------------------------------------------------- the measurement, planted
def test_shard_all_models_each_run_and_measures_memory(planted):
    p = planted(STEPS, TERMS)
    doc = so.run_scaleout(ranks=[1, 2], steps=3, shards="all", optimizer="adam")
    # one side-by-side run, then DataParallel with each shard setting; Adam on every run
    steps = [c for c in p.calls if c[0] == "step" and c[1] == 2]
    assert [c[3][c[3].index("--shard") + 1] if "--shard" in c[3] else "side" for c in steps] == [
        "side", "none", "optimizer", "gradients"
    ]  # fmt: skip
    assert all(c[3][c[3].index("--optimizer") + 1] == "adam" for c in p.calls if c[0] == "step")
    r = dp_run(doc, "optimizer")
    # measured compute: 66 - 4 exposed - 3 allgather - 5 update = 54 ms; the simulated step: 62 - 10 = 52 ms of
    # compute; of the reduce-scatters only the last bucket's (layer 0's 6,430,720 bytes, on the curve through the
    # bare 4 ms at the whole gradient, 5 us latency from the sweep) and the failure count's allreduce waited for;
    # 10 / 2 update; both allgathers (3 ms at the whole gradient, one more latency) waited for
    a = doc["fit"]["alpha_s"]
    exposed = a + 6_430_720 * (0.004 - a) / GRAD + 2 * a + 4 * (0.005 - 2 * a) / GRAD
    predicted = 0.052 + exposed + 0.005 + 0.003 + a
    assert r["compute_s"] == pytest.approx(0.054)
    assert r["breakdown"]["model"]["compute_s"] == pytest.approx(0.052)
    assert r["breakdown"]["model"]["update_s"] == pytest.approx(0.005)
    assert r["breakdown"]["model"]["exposed_s"] == pytest.approx(exposed)
    assert r["predicted_s"] == pytest.approx(predicted)
    assert r["prediction_error"] == pytest.approx(predicted / 0.066 - 1) and r["model_within_tolerance"]
    assert set(r["breakdown"]["measured"]) == {
        "compute_s", "reduce_scatter_s", "exposed_s", "update_s", "allgather_s", "exposed_allgather_s", "step_s"
    }  # fmt: skip
    # without prefetch the allgather ends the step: all of it waited for, in the measurement and the model
    assert r["breakdown"]["measured"]["exposed_allgather_s"] == r["allgather_s"] == pytest.approx(0.003)
    assert r["model"]["allgather_exposed_fraction"] == 1.0 and not r["prefetch"]
    lost = r["lost"]
    parts = (lost["batch_s"], lost["beside_s"], lost["bookkeeping_s"], lost["update_s"], lost["exposed_s"])
    # 10 to the batch, 2 beside, 54 - 52 = 2 DataParallel's own, 5 - 10 = -5 saved by the update, 4 + 3 waiting
    assert parts == pytest.approx((0.010, 0.002, 0.002, -0.005, 0.007))
    assert sum(parts) == pytest.approx(lost["lost_s"]) and "reduce-scatter and the allgather" in lost["text"]
    # the unsharded run is still the reference for the allreduce's summary
    assert doc["summary"]["dp_over_bare_bandwidth"] == pytest.approx(1.0)
    sh = {x["shard"]: x for x in doc["summary"]["sharded"]}
    assert sh["optimizer"]["vs_1xall"] == pytest.approx(0.055 / 0.066)
    json.dumps(doc, allow_nan=False)


def test_prefetch_runs_the_sharded_runs_only_and_models_the_wait(planted, tmp_path, capsys):
    terms = dict(TERMS, optimizer=dict(TERMS["optimizer"], allgather_wait_s=0.001))
    p = planted({**STEPS, (2, 1, 512, "optimizer"): 0.064}, terms)
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--shard", "optimizer", "--prefetch",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    with_prefetch = [(c[1], "--independent" in c[3]) for c in p.calls if "--prefetch" in c[3]]
    assert with_prefetch == [(2, False)]  # the DataParallel run; not the baselines, nor the side-by-side run
    doc = json.loads((tmp_path / "scaleout.json").read_text())
    assert doc["params"]["prefetch"] is True
    r = dp_run(doc, "optimizer")
    assert r["prefetch"] and doc["summary"]["sharded"][0]["prefetch"]
    # in flight: the step before's allgather, 3 ms; waited for in this step's forward pass: 1 ms
    assert (r["allgather_s"], r["exposed_allgather_s"]) == pytest.approx((0.003, 0.001))
    # measured compute: 64 - 4 exposed - 1 waited - 5 update = 54 ms; the simulated step: the forward pass
    # waits for layer 0's allgather only (6,430,720 bytes of the 3 ms at the whole gradient); layer 1's travels
    # beside layer 0's forward
    a = doc["fit"]["alpha_s"]
    wait = a + 6_430_720 * (0.003 - a) / GRAD
    exposed = a + 6_430_720 * (0.004 - a) / GRAD + 2 * a + 4 * (0.005 - 2 * a) / GRAD
    assert r["compute_s"] == pytest.approx(0.054)
    assert r["model"]["allgather_exposed_fraction"] == pytest.approx(wait / (0.003 + a))
    assert r["breakdown"]["model"]["exposed_allgather_s"] == pytest.approx(wait)
    assert r["predicted_s"] == pytest.approx(0.052 + exposed + 0.005 + wait)
    assert "shard=optimizer (ZeRO stage 1), prefetch" in out
    row = next(x for x in out.splitlines() if x.startswith("exposed allgather"))
    assert row.split()[2:4] == ["1", f"{1e3 * wait:.3g}"] and "simulated: the next forward pass's waits" in row
    res = build_report(load_results([tmp_path / "scaleout.json"]), tmp_path / "rep")
    md = Path(res["markdown"]).read_text()
    step = r["predicted_s"]
    assert "| 2 x 1, optimizer (ZeRO-1), prefetch | 54 ms / 52 ms |" in md and "allgather waited for" in md
    assert "| 2 x 1, side by side | 62 ms (62 ms - 62 ms) | 62 ms | - | - |" in md  # no allreduce side by side
    # only sharded runs measured: the section's own term table is the sharded run's (it raised KeyError before)
    assert "| allgather waited for | 1 ms | 832 us |" in md and "the next forward pass's waits for it simulated" in md
    assert f"Together: {ms_text(step)} against 64 ms measured ({100 * (step / 0.064 - 1):+.0f}%" in md
    # without --shard there is no allgather to prefetch: refused before anything starts
    n = len(p.calls)
    assert main(["scaleout", "--prefetch", "--out", str(tmp_path / "x")]) == 2
    assert "--prefetch needs --shard" in capsys.readouterr().err and len(p.calls) == n
    with pytest.raises(ValueError, match="prefetch needs a sharded run"):
        bso.measure(prefetch=True)
    with pytest.raises(TypeError, match="prefetch must be True or False"):
        bso.measure(shards="optimizer", prefetch="yes")


def test_the_step_figure_reads_with_every_shard_setting(planted):
    """`--shard all --prefetch`, as the demo runs it (prefetch aside): one tick per run under its pair of bars,
    none touching the next; the legend over no bar; one "measured here" label per P, for the runs the curves
    model (plain data parallelism).  Before: six two-line ticks ran into each other, the legend sat on the
    bars, and three labels at P = 2 were drawn on top of one another."""
    pytest.importorskip("matplotlib")
    from matplotlib.patches import Rectangle

    from whygpu.plots._common import _renderer
    from whygpu.plots.scaleout import scaleout_figure

    planted(STEPS, TERMS)
    doc = so.run_scaleout(ranks=[1, 2], steps=3, shards="all", optimizer="adam", prefetch=True)
    fig = scaleout_figure(doc)
    axb, ax_s = fig.axes[0], fig.axes[1]
    r = _renderer(fig)
    ticks = [t for t in axb.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in ticks] == ["2 x 1", "2 x 1\nZeRO-1\n+ prefetch", "2 x 1\nZeRO-2\n+ prefetch"]
    boxes = [t.get_window_extent(r) for t in ticks]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    legend = axb.get_legend().get_window_extent(r)
    bars = [p for p in axb.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(bars) >= 6 and not any(legend.overlaps(b.get_window_extent(r)) for b in bars)
    labels = [t for t in ax_s.texts if t.get_text().startswith("measured here")]
    assert [t.get_text() for t in labels] == ["measured here: 2 x 1 thr, 71%"]  # 100 ms / 70 ms / 2


def test_memory_rows_measured_next_to_the_formula(planted):
    planted(STEPS, TERMS, extra=8)  # the sharded runs' gradient 8 bytes over the formula (padding)
    doc = so.run_scaleout(ranks=[1, 2], steps=3, shards="all", optimizer="adam")
    mem = doc["memory"]
    rows = {(r["ranks"], r["threads"], r["shard"]): r for r in mem["rows"]}
    assert set(rows) == {(1, 1, "none"), (1, 2, "none"), (2, 1, "none"), (2, 1, "optimizer"), (2, 1, "gradients")}
    one = rows[(2, 1, "optimizer")]
    # fp32 Adam at P = 2, by hand: 4 N + 4 N + 8 ceil(N/2) = 23,298,088 + 23,298,088 + 23,298,088
    assert one["formula"] == {"params_bytes": 23_298_088, "grads_bytes": 23_298_088, "optimizer_bytes": 23_298_088,
                              "total_bytes": 69_894_264}  # fmt: skip
    assert one["optimizer_vs_unsharded"] == pytest.approx(0.5) and one["zero_stage"] == 1
    two = rows[(2, 1, "gradients")]
    assert two["formula"]["grads_bytes"] == 4 * 2_912_261 and two["measured"]["grads_bytes"] == 4 * 2_912_261 + 8
    assert two["formula_error"] == pytest.approx(8 / two["formula"]["total_bytes"])
    assert rows[(2, 1, "none")]["formula_error"] == 0 and rows[(2, 1, "none")]["optimizer_vs_unsharded"] == 1
    lines = mem["lines"]["gradients"]
    i = lines["ranks"].index(4)
    assert lines["total_bytes"][i] == 4 * N + 12 * -(-N // 4)
    assert mem["lines"]["parameters"]["total_bytes"][lines["ranks"].index(16)] == 16 * -(-N // 16)
    assert mem["extrapolation"]["rows"] and "activations" in mem["extrapolation"]["not_counted"]


def test_a_sharded_run_wrong_twice_is_flagged(planted):
    # DataParallel's reduce-scatter 40 ms against a bare 4 ms: x0.1 of its bandwidth, and the model far off
    terms = dict(TERMS, optimizer={"update_s": 0.005, "allreduce_s": 0.040, "exposed_s": 0.040, "allgather_s": 0.003})
    p = planted({**STEPS, (2, 1, 512, "optimizer"): 0.150}, terms)
    notes: list[str] = []
    doc = so.run_scaleout(ranks=[1, 2], steps=3, shards=["optimizer"], optimizer="adam", log=notes.append)
    r = dp_run(doc, "optimizer")
    assert p.tries[(2, 1, 512, "optimizer")] == 2 and p.tries[(2, 1, 512, "side")] == 2
    assert r["remeasured"] and r["disturbed"] and any("reduce-scatter" in w for w in r["disturbed"])
    assert any("shard optimizer" in n for n in notes)
    assert [x["shard"] for x in doc["runs"] if x["data_parallel"]] == ["optimizer"]


def test_cli_shard_all_prints_memory_and_devices_and_json_holds_both(planted, tmp_path, capsys):
    planted(STEPS, TERMS)
    assert (
        main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--shard", "all", "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("whygpu scaleout: 8 MPI jobs") and "; adam;" in out.splitlines()[0]
    assert "shard=optimizer (ZeRO stage 1)" in out and "reduce-scatter" in out and "allgather" in out
    assert "Memory per rank" in out and "x0.5" in out
    # stage 2's gradient between steps, and its peak during the backward pass next to it
    row = next(x for x in out.splitlines() if "gradients (2)" in x and "/" in x)
    assert f"{2 * N / 1e6:.3g} / {2 * N / 1e6:.3g}, peak {3 * N / 1e6:.3g}" in row, row
    assert "grads (between steps; peak)" in out
    # the devices table: 70B mixed on 141 GB with ZeRO-2: 980, by hand
    line = next(x for x in out.splitlines() if x.startswith("70B model") and "mixed" in x and "141" in x)
    assert line.split()[-4:] == ["-", "-", "980", "8"]
    assert "lower bounds" in out and "activations" in out
    doc = json.loads((tmp_path / "scaleout.json").read_text())
    assert doc["params"]["optimizer"] == "adam" and doc["params"]["shards"] == ["none", "optimizer", "gradients"]
    assert doc["memory"]["rows"] and doc["memory"]["extrapolation"]["rows"]


def test_cli_default_optimizer_stays_sgd_without_shard_and_refuses_bad_shard(planted, tmp_path, capsys):
    p = planted(STEPS, TERMS)
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert all(c[3][c[3].index("--optimizer") + 1] == "sgd" for c in p.calls if c[0] == "step")
    assert not any("--shard" in c[3] and c[3][c[3].index("--shard") + 1] != "none" for c in p.calls)
    capsys.readouterr()
    assert main(["scaleout", "--shard", "parameters", "--out", str(tmp_path)]) == 2  # ZeRO-3: on paper only
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="shard must be one of"):
        bso.check_shards(["zero3"])
    assert bso.check_shards(["gradients", "none", "gradients"]) == ["none", "gradients"]


def test_report_memory_table_figure_and_glossary(planted, tmp_path):
    planted(STEPS, TERMS)
    assert (
        main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--shard", "all", "--out", str(tmp_path)])
        == 0
    )
    res = build_report(load_results([tmp_path / "scaleout.json"]), tmp_path / "rep")
    md = Path(res["markdown"]).read_text()
    sec = md[md.index("More than one machine") :]
    gloss = sec[: sec.index("![")]
    for word in ("Shard:", "ZeRO:", "Reduce-scatter:", "Allgather:"):
        assert word in gloss, word
    assert "](scaleout_memory.png)" in sec and str(tmp_path / "rep" / "scaleout_memory.png") in res["figures"]
    for cap in re.findall(r"\*Figure \d+\.\* (.*)", sec):
        assert len(cap.split()) <= 80, len(cap.split())
    assert "| shard (ZeRO stage) |" in sec and "980" in sec
    assert "gradients between steps (peak in the backward pass)" in sec and f", peak {3 * N / 1e6:.3g} MB" in sec
    # each DataParallel run's row says its setting (three bare "2 x 1" rows before)
    labels = [line.split("|")[1].strip() for line in sec.splitlines() if line.startswith("| 2 x 1") and "ms (" in line]
    assert labels == ["2 x 1, side by side", "2 x 1", "2 x 1, optimizer (ZeRO-1)", "2 x 1, gradients (ZeRO-2)"]


def test_memory_figure_lines_are_the_model_and_points_measured(planted):
    from whygpu.plots.scaleout import memory_figure

    planted(STEPS, TERMS)
    doc = json.loads(json.dumps(so.run_scaleout(ranks=[1, 2], steps=3, shards="all", optimizer="adam")))
    fig = memory_figure(doc)
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(x.startswith("model") for x in labels) and any(x.startswith("measured") for x in labels)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("ZeRO-1" in t for t in titles) and any("on paper" in t for t in titles)
    # measured points: one per part at each measured (P, shard), on the panel of its shard
    ax1 = next(ax for ax in fig.axes if "ZeRO-1" in ax.get_title())
    pts = [ln for ln in ax1.get_lines() if ln.get_linestyle() == "None"]
    assert pts and all(list(ln.get_xdata()) == [2] for ln in pts)


# ---------------------------------------------------------------- notebook 08, and the real mpiexec
def test_notebook_08_runs_without_mpi4py(tmp_path):
    """The formula part runs anywhere; the measured part says why it is skipped (as notebook 07 does)."""
    # beside tests/: a wheel's whygpu (site-packages) has no notebooks/ two folders up
    nb = Path(__file__).resolve().parent.parent / "notebooks" / "08_sharded_optimizer.ipynb"
    if not nb.exists():
        pytest.skip(f"no {nb.name} in {nb.parent}")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['mpi4py'] = None\n")
    cells = json.loads(nb.read_text())["cells"]
    script = tmp_path / "nb08.py"
    script.write_text("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    root = str(Path(so.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), root, os.environ.get("PYTHONPATH", "")]))
    env.pop(bso.NO_MPI_ENV, None)
    r = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Measured part skipped: mpi4py is not installed" in r.stdout
    # the formula's rows, by hand: 5,824,522 parameters x 16 bytes = 93.2 MB at any P without sharding
    assert re.search(r"none \(0\)\s+93\.2\s+93\.2", r.stdout) and "980" in r.stdout


MPI = bso.mpi_status()


@pytest.mark.skipif(not MPI["available"], reason=f"no MPI here: {MPI.get('reason')}")
@pytest.mark.parametrize("prefetch", [False, True], ids=["", "prefetch"])
def test_cli_shard_optimizer_under_mpiexec(tmp_path, prefetch):
    """The real worker and DataParallel(shard="optimizer"), with and without prefetch: memory measured equal
    to the formula, the sharded terms finite, the model checked or flagged (the times themselves are not
    asserted)."""
    import inspect

    import whygpu.distributed as dist

    if "shard" not in inspect.signature(dist.DataParallel).parameters:
        pytest.skip("this whygpu.distributed has no DataParallel(shard=...)")
    env = dict(os.environ)
    env.pop(bso.NO_MPI_ENV, None)
    cmd = [sys.executable, "-m", "whygpu", "scaleout", "--no-held-out", "--ranks", "1,2", "--layers", "64,32,10"]
    cmd += ["--batch", "64"]
    cmd += ["--steps", "3", "--sweep-max", str(1 << 16), "--timeout", "60", "--shard", "optimizer"]
    cmd += ["--prefetch"] if prefetch else []
    res = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Memory per rank" in res.stdout and "shard=optimizer (ZeRO stage 1)" in res.stdout
    doc = json.loads((tmp_path / "scaleout.json").read_text())
    r = dp_run(doc, "optimizer")
    for k in ("reduce_scatter_s", "allgather_s", "update_s", "bare_reduce_scatter_s", "bare_allgather_s"):
        assert r[k] > 0 and r[k] < 10, k
    # the allgather the step waited for: all of it, or with prefetch what the next forward pass waited for
    assert r["prefetch"] is prefetch and 0 <= r["exposed_allgather_s"] < 10
    if not prefetch:
        assert r["exposed_allgather_s"] == r["allgather_s"]
    assert 0 <= r["model"]["allgather_exposed_fraction"] <= 1
    assert abs(r["prediction_error"]) <= 0.25 or r.get("disturbed")
    row = next(x for x in doc["memory"]["rows"] if x["ranks"] == 2 and x["shard"] == "optimizer")
    n = so.mlp_params([64, 32, 10])  # 2,410: optimizer state 8 * 1,205 bytes per rank
    assert row["measured"]["optimizer_bytes"] == row["formula"]["optimizer_bytes"] == 8 * (n // 2)
    assert row["optimizer_vs_unsharded"] == pytest.approx(0.5)
