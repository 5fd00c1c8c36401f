"""The scale-out section: data-parallel training on several MPI ranks, measured here, and the cost model that
extrapolates it to many machines over named interconnects."""

from __future__ import annotations

from pathlib import Path

from ..bench.trust import DISTURBED
from ..predict.memory_model import ZERO_STAGE
from ..scaleout import _dp_runs, is_sharded, quiet_reading, where_lost
from ._format import Block, Docs, _g, _ms
from .scaleout_predicted import KIND as HELDOUT
from .scaleout_predicted import heldout_blocks, sources_blocks

TITLE = "More than one machine"


def _unavailable(doc: dict, num: int) -> list[Block]:
    why = doc.get("reason") or "mpi4py or mpiexec is missing"
    hint = doc.get("install") or "pip install mpi4py mpich"
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


GLOSSARY: tuple[tuple[str, str], ...] = (
    ("rank", "one of the P processes of an MPI job; in data parallelism each holds a full copy of the model."),
    ("allreduce", "every rank contributes its gradient and every rank receives the sum."),
    ("ring", "an allreduce in which each rank passes pieces to its neighbour, 2(P-1) times round the circle."),
    ("bucket", "a group of layers' gradients sent in one allreduce, started as soon as the group is ready."),
    ("exposed", "the part of the allreduce still being waited for after the backward pass has ended."),
    ("alpha (latency)", "the fixed cost of one message, whatever its size."),
    ("bandwidth", "the bytes per second a link carries once a message is under way."),
    ("shard", "one rank's 1/P slice of a buffer that is split over the ranks instead of copied to each."),
    (
        "ZeRO",
        "data parallelism that shards the optimizer state (stage 1), also the gradients (stage 2), also the "
        "parameters (stage 3), so each rank holds 1/P of them.",
    ),
    ("reduce-scatter", "the ranks sum their gradients and each receives the sum of its own shard only."),
    ("allgather", "each rank contributes its shard and every rank receives all of them."),
)


def _half_point(ranks: list[int], eff: list[float]) -> int | None:
    """The largest P whose efficiency is still >= 50% (None when even P = 2 is below)."""
    ok = [p for p, e in zip(ranks, eff) if p > 1 and e >= 0.5]
    return max(ok) if ok else None


def _curve(ex: dict, system: str, model: str, scaling: str) -> dict | None:
    for c in ex["curves"]:
        if c["system"] == system and c["model"] == model and c["scaling"] == scaling:
            return c
    return None


def _lesson(doc: dict) -> str:
    """What the model's curves say (a model, not a measurement: the words say so)."""
    ex = doc["extrapolation"]
    mlp, big, cnn = ex["models"][0], ex["models"][1], ex["models"][-1]
    parts = []
    for s in ex["systems"]:
        c = _curve(ex, s["name"], mlp["name"], "strong")
        if c and len(c["ranks"]) > 2:
            h = _half_point(c["ranks"], c["efficiency"])
            parts.append(f"{s['name']} {'below 50% already at 2' if h is None else f'up to about {h}'}")
    text = (
        "Each step sends the whole gradient (4 bytes per parameter) however many ranks there are, while with a "
        "fixed global batch (strong scaling) each rank's compute shrinks -- less than 1/P, as the per-step costs "
        "stay whole. By the model, this MLP keeps 50% efficiency or more with " + ", ".join(parts) + " ranks. "
    )
    text += (
        f"The ratio of compute to gradient is set by the batch: {_g(mlp['flops_per_byte'])} FLOPs per gradient "
        f"byte at a batch of {ex['batch']} for {mlp['name']}, {_g(big['flops_per_byte'])} for {big['name']} and "
        f"{_g(cnn['flops_per_byte'])} for {cnn['name'].split(' (')[0]}, which reuses each weight at every pixel. "
        "The faster the device, the smaller its compute next to the same allreduce: by its public figures an "
        f"H100 computes this MLP's step in {_ms(mlp.get('gpu_step_s'))} against {_ms(mlp.get('cpu_step_s'))} "
        "for a rank here, so in the model its ranks stop paying sooner than CPU nodes on a slower network. "
        "Keeping each rank's batch as P grows (weak scaling, right panel) keeps the ratio and "
        "scales much further."
    )
    pub = ex.get("public_points") or []
    for pt in pub:
        text += (
            f" A published figure for comparison, on the {pt['scaling']}-scaling panel: {pt['label']} "
            f"({100 * pt['efficiency']:.0f}%; {pt['source']})."
        )
    return text


def section(docs: Docs, out: Path, figs: list[str], num: int) -> list[Block]:
    """Measured data-parallel steps, the model's terms next to them, where the lost efficiency went, the
    trust flags, the held-out validation of the step simulator (``whygpu scaleout --held-out``: the table and
    one run's two timelines, or how to produce it) and the model's extrapolation with its inputs' sources
    (from ``whygpu scaleout``); where MPI was missing, how to get it."""
    if "scaleout" not in docs and HELDOUT not in docs:
        return []
    if "scaleout" not in docs:  # only the held-out validation was run
        only = "Only the held-out validation was run here ('whygpu scaleout' measures the steps and extrapolates)."
        return [("h2", f"{num}. {TITLE}"), ("p", only)] + heldout_blocks(docs, out, figs)
    doc = docs["scaleout"]
    if not doc.get("available", True) or not doc.get("runs"):
        return _unavailable(doc, num) + (heldout_blocks(docs, out, figs) if HELDOUT in docs else [])
    from ..plots.scaleout import plot_scaleout

    p, runs, fit, s = doc["params"], doc["runs"], doc["fit"], doc["summary"]
    dp = _dp_runs(runs)  # the unsharded run last at the widest P: the allreduce's reference
    one = next((r for r in runs if r["ranks"] == 1 and r["threads"] == 1 and not r.get("share_of")), None)
    blocks: list[Block] = [("h2", f"{num}. {TITLE}")]
    if not dp or one is None or not doc.get("extrapolation") or not dp[-1].get("breakdown"):
        blocks.append(("p", "The scale-out run has no multi-rank measurement to report."))
        return blocks + heldout_blocks(docs, out, figs)
    r = dp[-1]
    sharded = is_sharded(r)  # only sharded runs were measured (whygpu scaleout --shard optimizer, say)
    blocks.append(
        (
            "p",
            "Data parallelism: each of P processes trains a full copy of the model on 1/P of every batch, and "
            "after the backward pass they add up their gradients so that every copy takes the same step. "
            "The words this section uses: " + " ".join(f"{w[0].upper() + w[1:]}: {d}" for w, d in GLOSSARY),
        )
    )
    figs.append(plot_scaleout(doc, out / "scaleout.png"))
    cap = (
        f"Left, measured here: {r['ranks']} ranks x {r['threads']} thread(s) train the MLP {p['layers']} (global "
        f"batch {p['batch']}) in {_ms(r['step_s'])} a step; the model, from terms measured apart, says "
        f"{_ms(r['predicted_s'])} ({100 * r['prediction_error']:+.0f}%). Middle and right: the model alone, "
        "for this machine and for other systems on public figures; black points are measured here, the star "
        "a published figure."
    )
    blocks.append(("fig", "scaleout.png", cap))
    blocks += sources_blocks(doc["extrapolation"])  # the simulated curves' inputs, each with its source
    m, x = r["breakdown"]["model"], r["breakdown"]["measured"]
    blocks.append(
        (
            "p",
            f"How the model is built, term by term. Compute: the {r['ranks']} ranks on their shares of the batch "
            f"({-(-p['batch'] // r['ranks'])} samples) side by side without communicating, each step as long as "
            f"its slowest rank ({_ms(r['model']['compute_s'])}), not one rank's whole step / P. "
            + _comm_sentence(r)
            + f" Together: {_ms(m['step_s'])} against {_ms(x['step_s'])} measured "
            f"({100 * r['prediction_error']:+.0f}%; a run beyond {100 * doc['model']['tolerance']:.0f}% is measured "
            "again and then flagged, not explained). " + (where_lost(doc, r) or r.get("lost") or {}).get("text", ""),
        )
    )
    rows = []
    for y in runs:
        rows.append(
            (
                f"{y['ranks']} x {y['threads']}"
                + (
                    ", side by side"
                    if y.get("side_by_side")
                    else f", {y['batch']} samples"
                    if y.get("share_of")
                    else ""
                )
                + (f", {y['shard']} (ZeRO-{ZERO_STAGE[y['shard']]})" if is_sharded(y) else "")
                + (", prefetch" if is_sharded(y) and y.get("prefetch") else ""),
                f"{_ms(y['step_s'])} ({_ms(y['step_s_min'])} - {_ms(y['step_s_max'])})",
                _ms(y["compute_s"]),
                # (side by side the ranks do not communicate: nothing to show)
                _ms(y["allreduce_s"]) if y.get("data_parallel") else "-",
                _ms(y["exposed_s"]) if y.get("data_parallel") else "-",
                f"x{_g(y['speedup_vs_1x1'])}" if y.get("speedup_vs_1x1") else "-",
                f"{_ms(y['predicted_s'])} ({100 * y['prediction_error']:+.0f}%)"
                + (" disturbed" if y.get("disturbed") else "")
                if y.get("predicted_s")
                else ("share run (model input)" if y.get("share_of") else "baseline"),
            )
        )
    head = ("ranks x threads", "step (min - max)", "compute", "allreduce", "exposed", "vs 1 x 1", "model (error)")
    blocks.append(("table", head, rows))
    if sharded:  # no unsharded run to report the allreduce by: the sharded run's own terms
        brows = [
            ("compute (a rank, its share)", _ms(x["compute_s"]), _ms(m["compute_s"])),
            ("reduce-scatter", _ms(x["reduce_scatter_s"]), _ms(m["reduce_scatter_s"])),
            ("exposed reduce-scatter", _ms(x["exposed_s"]), _ms(m["exposed_s"])),
            ("update (its 1/P shard)", _ms(x["update_s"]), _ms(m["update_s"])),
            ("allgather", _ms(x["allgather_s"]), _ms(m["allgather_s"])),
            (
                "allgather waited for",
                _ms(x.get("exposed_allgather_s", x["allgather_s"])),
                _ms(m.get("exposed_allgather_s", m["allgather_s"])),
            ),
            ("step", _ms(x["step_s"]), _ms(m["step_s"])),
        ]
    else:
        brows = [
            ("compute (a rank, its share)", _ms(x["compute_s"]), _ms(m["compute_s"])),
            ("allreduce", _ms(x["allreduce_s"]), _ms(m["comm_s"])),
            ("exposed allreduce", _ms(x["exposed_s"]), _ms(m["exposed_s"])),
            ("step", _ms(x["step_s"]), _ms(m["step_s"])),
        ]
    blocks.append(("table", (f"{r['ranks']} ranks, ms per step", "measured here", "model"), brows))
    ratio = r.get("bandwidth_ratio")
    coll = (
        f"its reduce-scatter in flight {_ms(r['reduce_scatter_s'])}, at "
        f"{'n/a' if ratio is None else 'x' + _g(ratio)} the bandwidth of the bare Reduce_scatter"
        if sharded
        else f"its allreduce in flight {_ms(r['allreduce_s'])}, at x{_g(s.get('dp_over_bare_bandwidth'))} the "
        "bandwidth of the bare Allreduce"
    )
    trust = (
        f"DataParallel summed the gradient in {r['buckets']} bucket(s), {coll} in the same run; every rank "
        "ended with the same weights (a SHA-256 of every parameter's bytes, compared over the ranks): "
        f"{_same_weights(r.get('weights_identical'))}. "
        f"A sweep of bare Allreduce calls (1 KB to {doc['sweep']['bytes'][-1] / 2**20:.3g} MiB) fits this "
        f"machine's alpha = {1e6 * fit['alpha_s']:.3g} us and bandwidth B = {fit['bandwidth_Bps'] / 1e9:.3g} GB/s "
        f"(rms error {100 * fit['rms_rel_error']:.0f}%), used only for the curves; at the gradient's size the "
        f"fit gives {_ms(s.get('fit_at_gradient_s'))} where the bare call took {_ms(r['bare_allreduce_s'])} "
        "-- in one machine's shared memory the 'link' is the cache hierarchy, fast while the buffers fit in it."
    )
    if r.get("remeasured"):
        trust += (
            f" This run was measured twice: the first try ({'; '.join(r['remeasured']['reasons'])}) took "
            f"{_ms(r['remeasured']['step_s'])} a step."
        )
    if r.get("disturbed"):
        trust += f" Flagged: {'; '.join(r['disturbed'])} on the second try too -- {DISTURBED}."
    blocks.append(("p", trust))
    blocks += heldout_blocks(docs, out, figs)
    blocks.append(
        ("p", "Where the model's curves come from. " + doc["extrapolation"]["compute_note"] + ". " + _lesson(doc))
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
    links.append((f"{ex['gpu']['name']} compute", f"{ex['gpu']['gflops'] / 1e3:g} TFLOP/s", "-", ex["gpu"]["source"]))
    blocks.append(("table", ("figure", "bandwidth B / rate", "latency alpha", "where the figure comes from"), links))
    blocks += _sharded_blocks(doc)
    blocks += _memory_blocks(doc, out, figs)
    q = quiet_reading(doc)
    blocks.append(("p", q[0].upper() + q[1:] + "."))
    return blocks


def _comm_sentence(r: dict) -> str:
    """How the model's communication terms of run r come about: simulated from the bare collectives measured
    on the same ranks and the schedule, nothing taken from the run itself."""
    m, P, mb = r["breakdown"]["model"], r["ranks"], f"{r['bytes'] / 1e6:.3g} MB"
    if not is_sharded(r):
        return (
            f"The allreduce: simulated from a bare MPI Allreduce of the {mb} gradient on the same {P} ranks, its "
            f"buckets posted as the backward pass finishes each layer ({_ms(m['comm_s'])} in flight). Exposed: the "
            f"simulator predicts {_ms(m['exposed_s'])} of it still waited for after the backward pass; nothing of "
            "this run's own timing enters the prediction."
        )
    waited = (
        "the next forward pass's waits for it simulated layer by layer (prefetch)"
        if r.get("prefetch")
        else "all of it waited for (the allgather ends the step)"
    )
    return (
        f"Sharded ({r['shard']}): simulated from a bare MPI Reduce_scatter of the {mb} gradient on the same {P} "
        f"ranks ({_ms(m['reduce_scatter_s'])} in flight, {_ms(m['exposed_s'])} of it predicted exposed after the "
        f"backward pass); the update of 1/{P} of the parameters ({_ms(m['update_s'])}); and a bare Allgather "
        f"({_ms(m['allgather_s'])}), {waited}."
    )


def _mb(b) -> str:
    return "n/a" if b is None else f"{b / 1e6:.3g} MB"


def _sharded_blocks(doc: dict) -> list[Block]:
    """The sharded steps' terms, measured next to the model (whygpu.scaleout.predict_sharded_step)."""
    sh = [r for r in doc["runs"] if is_sharded(r) and r.get("breakdown")]
    if not sh:
        return []
    rows = []
    for r in sh:
        x, m = r["breakdown"]["measured"], r["breakdown"]["model"]
        rows.append(
            (
                f"{r['ranks']} x {r['threads']}, {r['shard']} (ZeRO-{ZERO_STAGE[r['shard']]})"
                + (", prefetch" if r.get("prefetch") else ""),
                *(
                    # the allgather the step waited for: all of it, or with prefetch what the next forward
                    # pass still waited for (older documents have no exposed_allgather_s: all of it)
                    f"{_ms(x.get(k, x['allgather_s']))} / {_ms(m.get(k, m['allgather_s']))}"
                    if k == "exposed_allgather_s"
                    else f"{_ms(x[k])} / {_ms(m[k])}"
                    for k in ("compute_s", "exposed_s", "update_s", "exposed_allgather_s", "step_s")
                ),
                f"{100 * r['prediction_error']:+.0f}%" + (" disturbed" if r.get("disturbed") else ""),
            )
        )
    text = (
        "Sharded, the allreduce splits in two: after the backward pass a reduce-scatter gives each rank the "
        "summed gradient of its shard, each rank updates only that shard (1/P of the optimizer's work), and an "
        "allgather brings every rank the updated parameters: (P-1)/P S/B each on the wire, together the "
        f"allreduce's 2(P-1)/P S/B. The model: {doc['model']['formula_sharded']}; {doc['model']['terms_sharded']}."
    )
    if any(r.get("prefetch") for r in sh):
        text += (
            " With prefetch, a step's allgather stays in flight and the next forward pass waits for each layer's "
            "parameters just before that layer: only the part not yet arrived (g of it) is waited for."
        )
    head = ("ranks x threads, shard", "compute", "exposed reduce-scatter", "update", "allgather waited for", "step",
            "model")  # fmt: skip
    return [
        ("p", text),
        ("table", tuple(h if i in (0, 6) else f"{h}: measured / model" for i, h in enumerate(head)), rows),
    ]


def _same_weights(identical) -> str:
    """The report's answer to "did every rank end with the same weights?" (the worker's hash comparison)."""
    if identical is None:
        return "not checked"
    return "yes, bit for bit" if identical else "NO: the ranks' weights differ"


def _memory_blocks(doc: dict, out: Path, figs: list[str]) -> list[Block]:
    """Per-rank memory measured next to the formula, its figure against P, and the devices public models need."""
    mem = doc.get("memory")
    if not mem or not mem.get("rows"):
        return []
    from ..plots.scaleout import plot_memory
    from ..predict.memory_model import memory_rows

    rows = [tuple(r) for r in memory_rows(mem, unit=" MB")]
    bpp = mem["extrapolation"]["bytes_per_param"]["fp32"] if mem["optimizer"] == "adam" else None
    per = (
        f"{bpp['params']:g} + {bpp['grads']:g} + {bpp['optimizer']:g} bytes per parameter unsharded"
        if bpp
        else "the bytes per parameter of its optimizer"
    )
    blocks: list[Block] = [
        (
            "p",
            f"Memory. Every rank of plain data parallelism holds all the training state: for {mem['optimizer']} in "
            f"{mem['precision']}, {per}. Sharding (ZeRO) divides the optimizer state by P (stage 1), then the "
            "gradients (stage 2), then the parameters (stage 3, described here on paper only). "
            f"Measured here from the buffers the package allocated, the largest rank, next to the formula: "
            f"{mem['note'].split('; formula: ')[-1]}. The gradients are what a rank holds between steps; "
            "with stage 2 the backward pass holds more, each bucket's full gradient until it is reduced "
            "(the peak, after it).",
        ),
        (
            "table",
            (
                "ranks x threads",
                "shard (ZeRO stage)",
                "params: measured / formula",
                "gradients between steps (peak in the backward pass)",
                "optimizer state",
                "total",
                "optimizer state vs unsharded",
            ),
            rows,
        ),  # fmt: skip
    ]
    figs.append(plot_memory(doc, out / "scaleout_memory.png"))
    P = max(r["ranks"] for r in mem["rows"])
    cap = (
        f"Each rank's bytes of parameters, gradients and optimizer state for the {mem['n_params']:,}-parameter "
        f"MLP with {mem['optimizer']}, one panel per shard setting: lines are the formula (model), points were "
        f"measured here at P = {P} and below. Each stage divides the part it shards by P; what is not "
        "sharded stays whole however many ranks there are, the parameters until stage 3."
    )
    blocks.append(("fig", "scaleout_memory.png", cap))
    ex = mem["extrapolation"]
    drows = []
    for row in ex["rows"]:
        drows.append(
            (
                row["model"],
                row["precision"],
                row["device"],
                _mb(row["unsharded_bytes"]).replace(" MB", "e6 bytes")
                if row["unsharded_bytes"] < 1e9
                else f"{row['unsharded_bytes'] / 1e9:.4g} GB",
                *("-" if row[st]["devices"] is None else str(row[st]["devices"]) for st in ex["stages"]),
            )
        )
    blocks.append(
        (
            "p",
            "By the same formula, the devices a public-size model needs just to hold its training state with "
            f"Adam (a model, not measured here; not counted: {ex['not_counted']}, so these are lower bounds; "
            "'-': never, the part that is not sharded alone exceeds one device). Mixed precision keeps 2-byte "
            "parameters and gradients and 12 bytes of fp32 optimizer state, as the ZeRO paper counts "
            f"({ex['source'].split(': ', 1)[-1]}): the same 16 bytes per parameter, split differently.",
        )
    )
    head = ("model", "precision", "device", "state, unsharded")
    blocks.append(("table", head + tuple(f"{st} (ZeRO-{ex['zero_stage'][st]})" for st in ex["stages"]), drows))
    why = _devices_why(ex)
    if why:
        blocks.append(("p", why))
    return blocks


# A count is surprising where what a stage leaves whole takes more than this share of the device: the sharded rest
# gets only a sliver of each device, so a stage that looks like it should help needs hundreds of them.
_CRAMPED = 0.75


def _devices_why(ex: dict) -> str | None:
    """One line of reason for each device count that looks impossible (980 devices with ZeRO-2 where ZeRO-3 needs
    8), worked from the same formula as the table."""
    from ..predict.memory_model import devices_reason, kept_bytes

    lines = []
    stages = ex["stages"]
    for row in ex["rows"]:
        for i, st in enumerate(stages):
            n = row[st]["devices"]
            kept = kept_bytes(row["params"], st, row["precision"], ex["optimizer"])
            if n is None or n <= 1 or kept <= _CRAMPED * row["device_bytes"]:
                continue
            reason = devices_reason(row["params"], row["device_bytes"], st, row["precision"], ex["optimizer"])
            line = f"the {row['model']} in {row['precision']} with ZeRO-{ex['zero_stage'][st]} on {row['device']}: "
            line += reason
            nxt = stages[i + 1] if i + 1 < len(stages) else None
            if nxt and row[nxt]["devices"] is not None and row[nxt]["devices"] < n:
                line += f" (ZeRO-{ex['zero_stage'][nxt]}, which shards more of it, needs {row[nxt]['devices']})"
            lines.append(line)
    return "Why some counts are so large: " + "; ".join(lines) + "." if lines else None
