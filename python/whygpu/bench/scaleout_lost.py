"""Where a P-rank data-parallel step lost time against perfect scaling (one rank's step / P), in measured
parts that add up to the loss, and the sentence that says it (whygpu.scaleout's runs and the report)."""

from __future__ import annotations

from typing import Any


def is_sharded(run: dict) -> bool:
    """A DataParallel run with its gradient and optimizer state sharded (ZeRO stage 1 or 2)."""
    return (run.get("shard") or "none") != "none" and bool(run.get("data_parallel"))


def _lost(base: dict, share: dict, side: dict | None, run: dict) -> dict[str, Any]:
    """Where the P-rank step lost against perfect scaling (one rank's step / P), in measured parts that add
    up to the loss: the smaller batch per rank, running beside the other ranks, DataParallel's own work, (sharded)
    the update of its shard, waiting for the collectives -- the exposed time the run's table shows, the same
    number -- and what the medians do not split (each figure is a median over the steps, and the median step is
    not the sum of its parts' medians)."""
    P = run["ranks"]
    ideal = base["step_s"] / P
    beside_to = side["step_s"] if side else run["compute_s"]
    sharded = is_sharded(run)
    parts = {
        "ideal_s": ideal,
        "lost_s": run["step_s"] - ideal,
        "batch_s": share["step_s"] - ideal,  # one rank alone on B/P samples, against B's time / P
        "beside_s": beside_to - share["step_s"],  # the P shares computed at once, each step the slowest rank's
        "bookkeeping_s": run["compute_s"] - beside_to,  # DataParallel's copies, tests, weighting
        "exposed_s": run["exposed_s"],  # waiting for the allreduce after the backward pass (the table's exposed)
    }
    outside = run["step_s"] - run["compute_s"]  # the step beyond its compute, by the medians
    if sharded:
        # the run's compute_s leaves out its update (1/P of it) and the allgather: the update is its own part,
        # against the full update each rank side by side made (negative: time the shard's update saved)
        full_update = ((side or share).get("update_s") or 0.0) if side else (share.get("update_s") or 0.0)
        parts["bookkeeping_s"] = run["compute_s"] - (beside_to - full_update)
        parts["update_s"] = run.get("update_s", 0.0) - full_update
        outside -= run.get("update_s", 0.0)
        # the reduce-scatter's exposed part and the allgather waited for, as the sharded table shows them
        parts["exposed_s"] = run["exposed_s"] + run.get("exposed_allgather_s", run.get("allgather_s", 0.0))
    parts["medians_s"] = outside - parts["exposed_s"]
    parts["text"] = _lost_text(parts, base, share, run)
    return parts


def _lost_text(parts: dict, base: dict, share: dict, run: dict) -> str:
    """The loss in words: each part that lost time as a share of all the time lost (so no share is negative), and
    each part that won time back said as such, with what it means."""
    P, lost, ideal = run["ranks"], parts["lost_s"], parts["ideal_s"]
    ms = lambda x: f"{1e3 * x:.3g} ms"  # noqa: E731
    if lost <= 0:
        return (
            f"The {P}-rank step ({ms(run['step_s'])}) was at least as fast as one rank's step / {P} "
            f"({ms(ideal)}): no efficiency was lost."
        )
    over = ", taking turns on the cores" if P * run["threads"] > base.get("cores", 10**9) else ""
    sharded = is_sharded(run)
    waited = "the reduce-scatter and the allgather" if sharded else "the allreduce"
    # (key, what it lost time to, what it means when it won time back instead)
    words: list[tuple[str, str, str]] = [
        (
            "batch_s",
            f"the smaller batch per rank (one rank alone on {share['batch']} samples took {ms(share['step_s'])}, "
            f"not {ms(ideal)})",
            f"the smaller batch per rank: one rank alone on {share['batch']} samples took {ms(share['step_s'])}, "
            f"less than {ms(ideal)}",
        ),
        (
            "beside_s",
            "running beside the other ranks (shared cores, caches and memory, and each step waiting for the "
            f"slowest rank{over})",
            "the ranks side by side ran faster than one rank alone on its share: noise larger than this term",
        ),
        (
            "bookkeeping_s",
            "DataParallel's own work",
            "DataParallel's ranks computed faster than the same ranks side by side without it: noise larger "
            "than this term",
        ),
    ]
    if sharded:
        words.append(
            (
                "update_s",
                f"the optimizer update of its 1/{P} shard (more than the whole update each rank made side by side)",
                f"the optimizer update of its 1/{P} shard took less than the whole update each rank made side by "
                "side: the work sharding saves",
            )
        )
    words += [
        ("exposed_s", f"waiting for {waited} (the exposed time of the table)", f"waiting for {waited}"),
        (
            "medians_s",
            "what the medians do not split (each figure is the median over the steps, and the median step is "
            "longer than its parts' medians added up)",
            "what the medians do not split (the median step is shorter than its parts' medians added up)",
        ),
    ]
    lose = [(parts[k], w) for k, w, _ in words if parts[k] > 0 and not (k == "medians_s" and parts[k] < 0.005 * lost)]
    won = [(-parts[k], w) for k, _, w in words if parts[k] < 0 and not (k == "medians_s" and -parts[k] < 0.005 * lost)]
    gross = sum(x for x, _ in lose)  # the time lost in all: each share is of this, so none is negative
    pc = lambda x: f"{100 * x / gross:.0f}%"  # noqa: E731
    text = (
        f"Against perfect scaling ({ms(base['step_s'])} / {P} = {ms(ideal)}) the {P}-rank step "
        f"({ms(run['step_s'])}) lost {ms(lost)}"
    )
    listed = "; ".join(f"{ms(x)} ({pc(x)}) to {w}" for x, w in lose)
    if not won:
        return text + f": {listed}."
    return (
        text
        + f" net: {ms(gross)} lost in all, {listed}; less {ms(sum(x for x, _ in won))} won back, "
        + "; ".join(f"{ms(x)} by {w}" for x, w in won)
        + "."
    )
