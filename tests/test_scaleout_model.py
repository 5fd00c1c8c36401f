"""whygpu scaleout with planted timings (no MPI, no dependence on this machine's speed): the step is simulated
from the terms measured apart (the side-by-side run, the bare Allreduce, the sweep's latency), a run it misses
by more than 25% (a model error) or whose DataParallel bandwidth is below half the bare one is measured once
more and then flagged disturbed, the breakdown and where the efficiency went appear in the CLI, JSON, figure and report,
the extrapolation uses each device's own compute, and progress shows before the first job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from whygpu import scaleout as so
from whygpu.bench import scaleout as bso
from whygpu.bench.trust import DISTURBED
from whygpu.cli import main
from whygpu.report import build_report, load_results

from ._support import planted_sweep

GRAD = 4 * so.mlp_params([784, 2048, 2048, 10])


class Plant:
    """A fake `launch`: step times per (ranks, threads, batch) and try; records the calls."""

    def __init__(self, steps: dict, dp: dict | None = None, cores: int = 2):
        self.steps, self.dp, self.calls, self.tries = steps, dp or {}, [], {}
        self.cores = cores

    def __call__(self, mpiexec, ranks, threads, args, timeout, tick=None):
        mode = args[args.index("--mode") + 1]
        self.calls.append((mode, ranks, threads))
        if mode == "sweep":
            return planted_sweep(args, ranks)
        b = int(args[args.index("--batch") + 1])
        side = "--independent" in args
        key = (ranks, threads, b, "side") if side else (ranks, threads, b)
        k = self.tries[key] = self.tries.get(key, 0) + 1
        step = self.steps[key]
        step = step[min(k, len(step)) - 1] if isinstance(step, list) else step
        dp = ranks > 1 and not side
        d = self.dp.get(k, self.dp.get(1, {"allreduce_s": 0.005, "exposed_s": 0.005, "bare": 0.005}))
        rec = {"step_s": step, "forward_s": step / 3, "backward_s": step / 2,
               "allreduce_s": d["allreduce_s"] if dp else 0.0, "exposed_s": d["exposed_s"] if dp else 0.0,
               "bytes": GRAD if dp else 0, "buckets": 1 if dp else 0}  # fmt: skip
        return {"ranks": ranks, "threads": threads, "data_parallel": dp, "backend": "openmp", "batch": b,
                "independent": side,
                "steps": [dict(rec) for _ in range(3)], "bare_allreduce_s": [d["bare"]] * 5 if dp else [],
                "rank_step_s": [step] * ranks, "weights_identical": True, "mpi_library": "planted MPI"}  # fmt: skip


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setenv("WHYGPU_QUIET_WAIT", "0")
    monkeypatch.setattr(bso, "mpi_status", lambda: {"available": True, "mpiexec": "mpiexec", "install": ""})
    monkeypatch.setattr(bso, "_cpus_available", lambda: 2)
    monkeypatch.setattr(bso, "machine_info", lambda: {})
    monkeypatch.setattr(so, "_cpus_available", lambda: 2, raising=False)
    import whygpu._threads

    monkeypatch.setattr(whygpu._threads, "_cpus_available", lambda: 2)

    def plant(steps, dp=None):
        p = Plant(steps, dp)
        monkeypatch.setattr(bso, "launch", p)
        return p

    return plant


BASE = {(1, 1, 512): 0.100, (1, 2, 512): 0.055}


def run(**kw):
    return so.run_scaleout(ranks=[1, 2], steps=3, **kw)


def test_the_model_takes_the_share_runs_not_t_over_p(planted):
    planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.070})
    doc = run()
    r = next(x for x in doc["runs"] if x["ranks"] == 2 and x["data_parallel"])
    # the step simulated: the 2 ranks side by side on 256 samples each (62 ms, not 100/2), no update timed; the
    # gradient in DDP's two buckets (the last two layers, then layer 0's 6,430,720 bytes), each allreduce on the
    # curve through the bare 5 ms at the whole gradient with the sweep's latency (2 x 5 us on 2 ranks); the first
    # bucket travels beside dX1 and dW0, the second (with the failure count) is waited for after the backward pass
    a = doc["fit"]["alpha_s"]
    assert a == pytest.approx(5e-6)
    exposed = 2 * a + (6_430_720 + 4) * (0.005 - 2 * a) / GRAD
    assert r["predicted_s"] == pytest.approx(0.062 + exposed)
    assert r["prediction_error"] == pytest.approx((0.062 + exposed) / 0.070 - 1)
    m = r["breakdown"]["model"]
    assert (m["compute_s"], m["exposed_s"], m["step_s"]) == pytest.approx((0.062, exposed, 0.062 + exposed))
    assert m["comm_s"] > exposed and r["model"]["buckets"] == 2
    # per term, predicted next to measured; the split over the layers stated as an assumption
    t = r["model"]["terms"]
    assert t["step_s"]["measured"] == pytest.approx(0.070) and t["exposed_s"]["measured"] == pytest.approx(0.005)
    assert t["exposed_s"]["predicted"] == pytest.approx(exposed)
    assert any("by their FLOPs" in x for x in r["model"]["assumptions"])
    assert r["model"]["sources"]["collectives"]["allreduce"].startswith("measured apart: bare MPI Allreduce")
    assert r["breakdown"]["measured"]["compute_s"] == pytest.approx(0.065)
    # where the 20 ms lost against 100 / 2 went: 10 to the smaller batch (alone on 256: 60 ms), 2 beside the
    # other rank, 3 to DataParallel's own work, 5 waiting
    lost = r["lost"]
    parts = (lost["batch_s"], lost["beside_s"], lost["bookkeeping_s"], lost["exposed_s"])
    assert parts == pytest.approx((0.010, 0.002, 0.003, 0.005))
    assert sum(parts) == pytest.approx(lost["lost_s"])
    assert "smaller batch per rank" in lost["text"] and "waiting for the allreduce" in lost["text"]
    assert not r.get("remeasured") and not r.get("disturbed") and r["model_within_tolerance"]
    share = next(x for x in doc["runs"] if x.get("share_of") == 2)
    assert share["batch"] == 256 and share["threads"] == 1
    json.dumps(doc, allow_nan=False)


def test_oversubscribed_ranks_take_turns_in_the_model(planted):
    # without a side-by-side run (an older document), one rank alone, stretched by P*T/cores
    share = {"step_s": 0.03, "batch": 128}
    run4 = {"ranks": 4, "threads": 1, "step_s": 0.07, "exposed_s": 0.0, "allreduce_s": 0.0, "bare_allreduce_s": 0.01,
            "bytes": GRAD}  # fmt: skip
    pred = so.check_run(share, None, run4, 2)
    assert pred["stretch"] == 2.0 and pred["compute_s"] == pytest.approx(0.06)


def test_a_missed_run_is_measured_again_and_kept_when_the_second_fits(planted):
    p = planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): [0.150, 0.068]})
    notes: list[str] = []
    doc = run(log=notes.append)
    r = next(x for x in doc["runs"] if x["ranks"] == 2 and x["data_parallel"])
    assert p.calls.count(("step", 2, 1)) == 4 and p.tries[(1, 1, 256)] == 2  # the pair, measured again
    assert r["step_s"] == pytest.approx(0.068) and r["remeasured"]["step_s"] == pytest.approx(0.150)
    assert "model error" in r["remeasured"]["reasons"][0] and not r["disturbed"]
    assert len([x for x in doc["runs"] if x.get("share_of")]) == 2  # the first share runs replaced
    assert any("once more" in n for n in notes)


@pytest.mark.parametrize("why", ["model", "bandwidth"])
def test_a_run_wrong_twice_is_flagged_disturbed(planted, why, tmp_path, capsys, monkeypatch):
    if why == "model":
        planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.150})
    else:  # DataParallel's allreduce 20 ms against a bare 5 ms: x0.25 of its bandwidth
        planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.080},
                dp={1: {"allreduce_s": 0.020, "exposed_s": 0.020, "bare": 0.005}})  # fmt: skip
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path), "--plot"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "scaleout.json").read_text())
    r = next(x for x in doc["runs"] if x["ranks"] == 2 and x["data_parallel"])
    word = "model error" if why == "model" else "bandwidth"
    assert r["disturbed"] and word in r["disturbed"][0] and doc["summary"]["disturbed"]
    assert "DISTURBED" in out and DISTURBED in out
    res = build_report(load_results([tmp_path / "scaleout.json"]), tmp_path / "rep")
    assert "disturbed" in Path(res["markdown"]).read_text()


def test_cli_json_and_report_show_the_breakdown_side_by_side(planted, tmp_path, capsys):
    planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.070})
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path), "--plot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("whygpu scaleout: 6 MPI jobs")  # said before anything is measured
    assert "measured here, and the model" in out and "exposed allreduce" in out
    assert "Against perfect scaling" in out and "quiet guard" in out and "load average" not in out
    doc = json.loads((tmp_path / "scaleout.json").read_text())
    assert {"measured", "model"} <= set(doc["runs"][-1]["breakdown"])
    res = build_report(load_results([tmp_path / "scaleout.json"]), tmp_path / "rep")
    md = Path(res["markdown"]).read_text()
    sec = md[md.index("More than one machine") :]
    # the glossary comes before the first figure, each word with one sentence
    gloss = sec[: sec.index("![")]
    for word in ("Rank:", "Allreduce:", "Ring:", "Bucket:", "Exposed:", "Alpha (latency):", "Bandwidth:"):
        assert word in gloss, word
    cap = re.search(r"\*Figure \d+\.\* (.*)", sec).group(1)
    assert len(cap.split()) <= 80, len(cap.split())
    assert "| measured here | model |" in sec and "Against perfect scaling" in sec
    assert "load average" not in sec and "Quiet guard" in sec


def test_extrapolation_uses_each_devices_compute_and_caps_ranks(planted):
    planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.070})
    doc = run()
    ex = doc["extrapolation"]
    curves = {(c["system"], c["model"], c["scaling"]): c for c in ex["curves"]}
    mlp = ex["models"][0]
    here = "this machine (shared memory)"
    # this machine: never past its cores; strong scaling: never past the global batch
    assert curves[(here, mlp["name"], "strong")]["ranks"] == [1, 2]
    assert curves[(here, mlp["name"], "weak")]["ranks"] == [1, 2]
    for c in ex["curves"]:
        if c["scaling"] == "strong":
            assert max(c["ranks"]) <= ex["batch"]
    # CPU rows compute like a rank here (c0 + c1 b through the two measured points), the H100 row at its rate
    assert mlp["cpu_step_s"] == pytest.approx(0.100)
    # the H100 at its public rate: 8 kernels (3 forward, 3 dW, 2 dX: the first layer has no dX) of 2 b fan_in
    # fan_out FLOPs each plus a launch, and 3 updates at the HBM bandwidth (SGD: 3 bytes per byte)
    products = 784 * 2048 + 2048 * 2048 + 2048 * 10
    flops = 2 * 512 * (3 * products - 784 * 2048)
    rate = so.H100["peak_gflops"] * 1e9 * so.H100["efficiency"]
    update = 3 * GRAD / so.H100["hbm_Bps"] + 3 * so.H100["launch_s"]
    assert mlp["gpu_step_s"] == pytest.approx(flops / rate + 8 * so.H100["launch_s"] + update)
    assert ex["compute_fit"]["c0_s"] == pytest.approx(0.020)  # 2 x 60 - 100 ms
    gpu = next(s for s in ex["systems"] if s["device"] == "gpu")
    assert gpu["public"] and gpu["per_node"] == 8
    # nothing measured on 2 CPU ranks is carried to 512 GPUs: no exposed fraction anywhere in the extrapolation
    assert "exposed_fraction" not in json.dumps(ex)
    assert not next(s for s in ex["systems"] if s["name"] == here)["public"]
    # the public figures beside their own kind of scaling
    assert {p["scaling"] for p in ex["public_points"]} == {"weak"}


def test_figure_legends_say_model_and_measured_where_they_are(planted):
    from whygpu.plots.scaleout import scaleout_figure

    planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.070})
    fig = scaleout_figure(json.loads(json.dumps(run())))
    bars, strong, weak = fig.axes
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    curves = [x for x in labels if "shared memory" in x or "nodes" in x or "H100" in x]
    assert curves and all(x.startswith("model: ") for x in curves)
    assert not any("measured here" in x for x in curves)
    notes_s = [t.get_text() for t in strong.texts]
    notes_w = [t.get_text() for t in weak.texts]
    assert any(t.startswith("measured here: 2 x 1") for t in notes_s)
    assert any("Horovod" in t and "weak" in t for t in notes_w) and not any("Horovod" in t for t in notes_s)
    # one tick per run under its pair of bars; the legend tells the measured bar from the model's
    assert [t.get_text() for t in bars.get_xticklabels()] == ["2 x 1"]
    keys = [t.get_text() for t in bars.get_legend().get_texts()]
    assert "plain: measured here" in keys and "hatched: the model (terms measured apart)" in keys


def test_progress_shows_before_the_first_job(planted, capsys):
    seen = []

    def first_launch(*a, **k):
        seen.append(capsys.readouterr().err)
        raise bso.ScaleoutError("stop here")

    import whygpu.bench.scaleout as b

    b.launch = first_launch  # restored by monkeypatch (planted set it)
    with pytest.raises(bso.ScaleoutError):
        run(progress=True)
    assert "scaleout" in seen[0] and "1 rank(s) x 1 thread(s)" in seen[0]


class CountingBar:
    """A stand-in for bench.progress.Progress that keeps the total it was given and what it counted."""

    made: list[CountingBar] = []

    def __init__(self, total, desc, enabled):
        self.total, self.counted = total, 0
        CountingBar.made.append(self)

    def show(self, label, remaining_s):
        pass

    def advance(self, n=1):
        self.counted += n

    def extend(self, n):
        self.total += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("again", [False, True])
def test_progress_counts_the_jobs_the_cli_announced(planted, tmp_path, capsys, monkeypatch, again):
    """The CLI says "whygpu scaleout: N MPI jobs" and the bar counts to N (it used to count the configurations, 5 of
    the 6 jobs); a run measured once more adds its three jobs to the total, and the note says so."""
    step = [0.150, 0.068] if again else 0.070
    p = planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): step})
    CountingBar.made.clear()
    monkeypatch.setattr(bso, "Progress", CountingBar)
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    announced = int(re.match(r"whygpu scaleout: (\d+) MPI jobs", out.out).group(1))
    (bar,) = CountingBar.made
    assert announced == 6 and len(p.calls) == announced + (3 if again else 0)
    assert bar.counted == bar.total == len(p.calls)
    assert ("3 more jobs" in out.err) == again


def test_job_count_follows_the_cores_and_the_shard_settings():
    # 4 cores, P = 2 and 4: baselines 1x1, 1x4 and 1x2; each P a share run, a side-by-side run and one run
    # per shard setting; the sweep
    assert bso.job_count([1, 2, 4], 512, "all", cores=4) == 3 + 2 * (1 + 1 + 3) + 1
    assert bso.job_count([2], 512, "none", cores=2) == 2 + (1 + 1 + 1) + 1
    assert bso.job_count([2, 2, 1], 512, ["none"], cores=2) == 6


def test_an_overlapped_allreduce_is_not_held_to_the_bare_bandwidth(planted, tmp_path, capsys):
    """An allreduce in flight for 20 ms beside a bare 5 ms (x0.25) but only 4 ms of it waited for: it shared
    the cores with the backward pass, which is no disturbance; the model (within 25%) judges the step."""
    p = planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.068},
                dp={1: {"allreduce_s": 0.020, "exposed_s": 0.004, "bare": 0.005}})  # fmt: skip
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "scaleout.json").read_text())
    r = next(x for x in doc["runs"] if x["ranks"] == 2 and x["data_parallel"])
    assert r["bandwidth_ratio"] == pytest.approx(0.25)
    assert not r.get("disturbed") and not r.get("remeasured")
    assert p.tries[(2, 1, 512)] == 1  # not measured again


def test_every_scaleout_run_ends_with_the_held_out_validation(planted, tmp_path, capsys, monkeypatch):
    """`whygpu scaleout` runs the held-out validation after its runs (at each P > 1, with the run's model,
    batch, steps and optimizer), prints its table and writes scaleout_heldout.json; --no-held-out skips it."""
    import whygpu.scaleout_heldout as h

    planted({**BASE, (1, 1, 256): 0.060, (2, 1, 512, "side"): 0.062, (2, 1, 512): 0.070})
    seen: list[dict] = []

    def fake_heldout(**kw):
        seen.append(kw)
        row = {"label": "P=2 none, planted", "verdict": "model error: exposed", "model_errors": ["exposed"],
               "disturbed": None, "terms": [{"term": "step", "predicted_s": 0.07, "measured_s": 0.07, "error": 0.0,
                                             "within": True}]}  # fmt: skip
        return {"schema": h.SCHEMA, "available": True,
                "params": {"layers": kw["layers"], "batch": kw["batch"], "steps": kw["steps"], "backend": "openmp",
                           "optimizer": kw["optimizer"]},
                "heldout": {"rows": [row], "terms": {"2": {"how": "2 ranks x 1 thread(s) on 2 cores"}},
                            "summary": h.summary([row]),
                            "tolerances": {"step": {"relative": 0.15, "floor_s": 0.0}}}}  # fmt: skip

    monkeypatch.setattr(h, "run_heldout", fake_heldout)
    assert main(["scaleout", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [(k["ranks"], k["steps"], k["optimizer"], k["layers"]) for k in seen] == [
        ([2], 3, "sgd", [784, 2048, 2048, 10])
    ]
    assert out.index("Against perfect scaling") < out.index("held out: P = 2") < out.index("model error: exposed")
    assert "0 of 1 configurations within every tolerance" in out and "1 with model errors" in out
    assert json.loads((tmp_path / "scaleout_heldout.json").read_text())["schema"] == h.SCHEMA
    assert json.loads((tmp_path / "scaleout.json").read_text())["runs"]

    seen.clear()
    assert main(["scaleout", "--no-held-out", "--ranks", "1,2", "--steps", "3", "--out", str(tmp_path / "b")]) == 0
    assert not seen and not (tmp_path / "b" / "scaleout_heldout.json").exists()
    assert main(["scaleout", "--no-held-out", "--trace", str(tmp_path / "t"), "--out", str(tmp_path / "c")]) == 2
    assert main(["scaleout", "--quick", "--out", str(tmp_path / "d")]) == 2
