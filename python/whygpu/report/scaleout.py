"""The scale-out section: data-parallel training on several MPI ranks, measured here, and the cost model that
extrapolates it to many machines over named interconnects."""

from __future__ import annotations

from pathlib import Path

from ._format import Block, Docs, _g, _ms, _pct

TITLE = "More than one machine"


def _unavailable(doc: dict, num: int) -> list[Block]:
    why = doc.get("reason") or "mpi4py or mpiexec is missing"
    hint = doc.get("install") or "pip install 'whygpu[mpi]'"
    return [
        ("h2", f"{num}. {TITLE}"),
        (
            "p",
            f"Not measured on this machine: {why}. Data parallelism -- every rank a copy of the model, each on "
            "its share of the batch, their gradients summed by an allreduce after the backward pass -- is "
            f"measured with MPI. To see it here: {hint} (mpi4py and an MPI library), then run "
            "'whygpu scaleout' or 'whygpu demo' again.",
        ),
    ]


def _half_point(ranks: list[int], eff: list[float]) -> int | None:
    """The largest P whose efficiency is still >= 50% (None when even P = 2 is below)."""
    ok = [p for p, e in zip(ranks, eff) if p > 1 and e >= 0.5]
    return max(ok) if ok else None


def _curve(ex: dict, link: str, model: str, scaling: str) -> dict | None:
    for c in ex["curves"]:
        if c["interconnect"] == link and c["model"] == model and c["scaling"] == scaling:
            return c
    return None


def _lesson(doc: dict) -> str:
    ex = doc["extrapolation"]
    mlp, big, cnn = ex["models"][0], ex["models"][1], ex["models"][-1]
    parts = []
    for link in ex["interconnects"]:
        c = _curve(ex, link["name"], mlp["name"], "strong")
        if c:
            h = _half_point(c["ranks"], c["efficiency"])
            parts.append(f"{link['name']} {'below 50% already at 2' if h is None else f'up to about {h}'}")
    text = (
        "Each step sends the whole gradient (4 bytes per parameter) however many ranks there are, while with a "
        "fixed global batch (strong scaling) each rank's compute shrinks as 1/P: once T_compute/P falls to the "
        "allreduce time, more ranks stop paying. For this MLP, efficiency stays at 50% or more with "
        + ", ".join(parts)
        + " ranks. "
    )
    text += (
        f"In an MLP the gradient and the compute both grow with the square of the width, so the ratio is set by "
        f"the batch: {_g(mlp['flops_per_byte'])} FLOPs per gradient byte at a batch of {ex['batch']} for "
        f"{mlp['name']} and {_g(big['flops_per_byte'])} for {big['name']}. A larger batch, or keeping each "
        "rank's batch as P grows (weak scaling, right panel), keeps that ratio and scales; wider layers make the "
        "fixed costs -- the latency 2(P-1) alpha, the per-step overheads -- small next to the compute, while tiny "
        "layers have microseconds of compute that those fixed costs swamp. A convolutional network reuses "
        f"each weight at every pixel: {cnn['name'].split(' (')[0]} does {_g(cnn['flops_per_byte'])} FLOPs per "
        "gradient byte, which is why such models scale to hundreds of GPUs (Horovod reports ~90% efficiency "
        "on 512 GPUs for ResNet-101)."
    )
    return text


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Measured data-parallel steps, the allreduce fit, the model next to them, and the extrapolation (from
    ``whygpu scaleout``); where MPI was missing, how to get it."""
    if "scaleout" not in docs:
        return []
    doc = docs["scaleout"]
    if not doc.get("available", True) or not doc.get("runs"):
        return _unavailable(doc, num)
    from ..plots_scaleout import plot_scaleout

    p, runs, fit, s = doc["params"], doc["runs"], doc["fit"], doc["summary"]
    dp = [r for r in runs if r["ranks"] > 1]
    one = next((r for r in runs if r["ranks"] == 1 and r["threads"] == 1), None)
    full = next((r for r in runs if r["ranks"] == 1 and r["threads"] == p["cores"]), None)
    blocks: list[Block] = [("h2", f"{num}. {TITLE}")]
    if not dp or one is None or not doc.get("extrapolation"):
        blocks.append(("p", "The scale-out run has no multi-rank measurement to report."))
        return blocks
    figs.append(plot_scaleout(doc, out / "scaleout.png"))
    r = dp[-1]
    cap = (
        f"Measured here: the MLP {p['layers']} (global batch {p['batch']}, {p['backend']} back end) trained "
        f"data-parallel on {r['ranks']} MPI ranks x {r['threads']} thread(s) of this {p['cores']}-core machine "
        f"took {_ms(r['step_s'])} per step (median of {r['timed_steps']}), against {_ms(one['step_s'])} on one "
        f"rank with one thread (x{_g(r['speedup_vs_1x1'])}, {_pct(100 * r['speedup_vs_1x1'] / r['ranks'])} "
        "scaling efficiency)"
    )
    if full is not None and full is not one:
        cap += f" and {_ms(full['step_s'])} on one rank with all {p['cores']} cores"
    ratio = r["allreduce_s"] / r["compute_s"] if r["compute_s"] > 0 else float("nan")
    cap += (
        f". The allreduce of the {r['bytes'] / 1e6:.3g} MB gradient took {_ms(r['allreduce_s'])} a step, "
        f"{_pct(100 * ratio)} of the {_ms(r['compute_s'])} of computation: the ratio of communication to "
        f"computation; {_ms(r['exposed_s'])} of it was exposed (waited for after the backward pass). "
        f"A sweep of bare MPI Allreduce calls (1 KB to {doc['sweep']['bytes'][-1] / 2**20:.3g} MiB) fits this "
        f"machine's latency alpha = {1e6 * fit['alpha_s']:.3g} us and bandwidth B = "
        f"{fit['bandwidth_Bps'] / 1e9:.3g} GB/s; with them the model T(P) = T_compute/P + 2(P-1)/P S/B + "
        f"2(P-1) alpha - overlap predicts {_ms(r['predicted_s'])} for this step "
        f"({100 * r['prediction_error']:+.0f}%); at the gradient's size the fit gives "
        f"{_ms(s['fit_at_gradient_s'])} where the bare Allreduce took {_ms(r['bare_allreduce_s'])} -- in one "
        "machine's shared memory the 'link' is the cache hierarchy, fast while the buffers fit in cache. "
        "Everything else in the figure is the model, not a measurement: the same step on 1 to 1024 ranks, "
        "each computing like one rank here, over this machine's shared memory (the fit) and over 10 GbE, "
        "InfiniBand EDR and NVLink 4 (public figures, not measured here); the black point is measured. "
    )
    cap += _lesson(doc)
    blocks.append(("fig", "scaleout.png", cap))
    rows = []
    for x in runs:
        rows.append(
            (
                f"{x['ranks']} x {x['threads']}",
                f"{_ms(x['step_s'])} ({_ms(x['step_s_min'])} - {_ms(x['step_s_max'])})",
                _ms(x["compute_s"]),
                _ms(x["allreduce_s"]) if x["ranks"] > 1 else "-",
                _ms(x["exposed_s"]) if x["ranks"] > 1 else "-",
                f"x{_g(x['speedup_vs_1x1'])}" if x.get("speedup_vs_1x1") else "n/a",
                f"{_ms(x['predicted_s'])} ({100 * x['prediction_error']:+.0f}%)"
                if x["ranks"] > 1 and x.get("predicted_s")
                else "(model input)",
            )
        )
    head = ("ranks x threads", "step (min - max)", "compute", "allreduce", "exposed", "vs 1 x 1", "model (error)")
    blocks.append(("table", head, rows))
    blocks.append(
        (
            "p",
            f"DataParallel summed the gradient in {r['buckets']} bucket(s) at "
            f"x{_g(s.get('dp_over_bare_bandwidth'))} the bandwidth of a bare Allreduce of the same size in the "
            f"same run ({_ms(r['bare_allreduce_s'])}); every rank ended with the same weights: "
            f"{'yes' if r.get('weights_spread') == 0 else 'no (spread ' + str(r.get('weights_spread')) + ')'}. "
            f"The overlap in the model: {doc['model']['overlap']} (e = {_g(doc['model']['exposed_fraction'])})."
            + (
                " With several buckets the allreduce time runs from each bucket's start to its completion while "
                "the backward pass computes, so the bandwidth it implies is understated next to the bare call."
                if r["buckets"] > 1
                else ""
            ),
        )
    )
    ex = doc["extrapolation"]
    links = [
        (
            x["name"],
            f"{x['bandwidth_Bps'] / 1e9:.3g} GB/s",
            f"{1e6 * x['alpha_s']:.3g} us",
            x["source"],
        )
        for x in ex["interconnects"]
    ]
    blocks.append(("table", ("interconnect", "bandwidth B", "latency alpha", "where the figure comes from"), links))
    la = doc.get("machine", {}).get("load_average")
    if la is not None and la > 0.5 * p["cores"]:
        blocks.append(
            (
                "p",
                f"Note: the load average was {la:.1f} on {p['cores']} cores when this was measured: other "
                "programs shared the cores, so the times are contended and the speed-ups understated or noisy.",
            )
        )
    return blocks
