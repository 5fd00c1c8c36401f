"""A discrete-event simulator of one training step of whygpu's ``DataParallel`` (one rank of P; the
ranks are alike, so every rank's timeline is the same): pure Python, no MPI, no NumPy.

It follows the schedule of ``whygpu.distributed`` (``data_parallel.py``, ``_buckets.py``,
``_sharded.py``):

* The gradients travel in buckets (:func:`bucket_layout`): last layer first, a layer's parameters
  together, the first bucket small (``first_bucket_mb``), the others about ``bucket_mb``.
* Forward pass: each layer in order (sharded with ``prefetch=True``: each layer first waits for the
  allgather of its bucket, started by the previous step's optimizer step), then ``loss_s``.
* Backward pass, last layer first: a layer's dW (its gradients are then final), then every bucket
  whose lowest layer that is is *posted* to the communication lane, then its dX (the first layer
  computes none unless ``input_grad``).  A bucket's collective is an allreduce (``shard="none"``; the
  last bucket carries one more element, the failure count) or a reduce-scatter (``"optimizer"`` and
  ``"gradients"``, ZeRO stages 1 and 2, which have the same schedule: stage 2 frees memory, not
  time; the buffer is padded to P equal shards; the failure count travels in an allreduce of its own,
  posted with the last bucket).
* After the backward pass the rank waits for every collective: the *exposed* communication.
* The optimizer's update: unsharded, of every layer's parameters; sharded, of this rank's shard of
  each bucket.  Sharded without prefetch: then one allgather per bucket, first layers first, waited
  for.  With prefetch those allgathers are left in flight: the simulated step *starts* by posting the
  previous step's (the steady state), and the forward pass waits for them layer by layer.
* The communication lane takes the collectives one at a time in the order posted; compute and the
  collective in flight slow each other by the :class:`Interference` factors (see ``_engine.py``).

Inputs: :class:`ComputeTimes`, :class:`UpdateCost`, :class:`CollectiveCosts`, :class:`Interference`
(``_inputs.py``: each with its source) and :class:`StepConfig` (the strategy).  :func:`simulate` takes
nothing else -- no measured run -- so what it predicts cannot lean on the run it predicts.

Ranks that do not keep pace (:class:`Skew`): a collective starts only once the slowest rank has posted
it, ``lag_fraction`` x the compute since the ranks last met after this rank did.

Not modelled yet: MPICH's ``"test"`` progress mode (collectives move only inside MPI calls), the
progress thread's polling delay (0.1 ms), copies to and from a GPU's pinned buckets, more ranks than
cores (measure the compute with the other ranks' compute beside it instead), ranks that differ in
their work.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._engine import Collective, Compute, Event, Mark, Op, Post, Wait, run_program
from ._inputs import CollectiveCosts, ComputeTimes, Interference, Skew, UpdateCost

__all__ = ["SHARDS", "MiB", "StepConfig", "BucketSpec", "bucket_layout", "CollectiveSpan", "StepResult", "simulate"]

SHARDS = ("none", "optimizer", "gradients")  # ZeRO stage 0, 1, 2: DataParallel(shard=...)
MiB = 2**20


@dataclass(frozen=True)
class StepConfig:
    """The strategy, as ``DataParallel(model, shard=..., bucket_mb=..., first_bucket_mb=...,
    prefetch=...)`` on ``ranks`` ranks; ``itemsize``: the gradients' bytes per element (float32: 4);
    ``input_grad``: whether the first layer computes its dX (whygpu's DataParallel: no)."""

    ranks: int
    shard: str = "none"
    prefetch: bool = False
    bucket_mb: float = 25.0
    first_bucket_mb: float = 1.0
    itemsize: int = 4
    input_grad: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, int) or self.ranks < 1:
            raise ValueError(f"StepConfig.ranks must be an integer >= 1, got {self.ranks!r}")
        if not isinstance(self.shard, str) or self.shard not in SHARDS:
            raise ValueError(
                f"shard must be 'none', 'optimizer' (ZeRO stage 1) or 'gradients' (ZeRO stage 2), got {self.shard!r}"
            )
        if not isinstance(self.prefetch, bool) or not isinstance(self.input_grad, bool):
            raise ValueError("StepConfig.prefetch and input_grad must be True or False")
        if self.prefetch and self.shard == "none":
            raise ValueError("prefetch=True overlaps the sharded optimizer's allgather: it needs shard != 'none'")
        for name in ("bucket_mb", "first_bucket_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"StepConfig.{name} must be a number >= 0 (math.inf: one bucket), got {v!r}")
        if isinstance(self.itemsize, bool) or not isinstance(self.itemsize, int) or self.itemsize < 1:
            raise ValueError(f"StepConfig.itemsize must be an integer >= 1, got {self.itemsize!r}")

    @property
    def label(self) -> str:
        """``P=2 shard=optimizer prefetch, a bucket per layer`` (or ``one bucket``, or ``buckets of
        25 MiB, the first 1 MiB``)."""
        first = min(self.first_bucket_mb, self.bucket_mb)
        if self.bucket_mb == 0:
            buckets = "a bucket per layer"
        elif math.isinf(first):
            buckets = "one bucket"
        elif math.isinf(self.bucket_mb):
            buckets = f"a first bucket of {first:g} MiB, then one"
        else:
            buckets = f"buckets of {self.bucket_mb:g} MiB, the first {first:g} MiB"
        return f"P={self.ranks} shard={self.shard}{' prefetch' if self.prefetch else ''}, {buckets}"


class BucketSpec(NamedTuple):
    """One gradient bucket: its layers (in the order they fill it: last layer first), its gradients'
    bytes, and its lowest layer (the one whose gradients complete it)."""

    layers: tuple[int, ...]
    nbytes: int
    lowest_layer: int


def bucket_layout(
    param_bytes_per_layer: Sequence[int], bucket_bytes: float, first_bucket_bytes: float
) -> list[BucketSpec]:
    """The buckets whygpu's ``GradBuckets`` forms for layers with these parameter bytes (forward
    order): from the last layer to the first, a bucket closes after a whole layer once it holds at
    least its size (the first bucket ``min(first_bucket_bytes, bucket_bytes)``, the others
    ``bucket_bytes``); what is left at the end is the last bucket.  Layers without parameters are in
    no bucket.  ``bucket_bytes = 0``: one bucket per layer with parameters; ``math.inf``: one bucket."""
    sizes = list(param_bytes_per_layer)
    for i, b in enumerate(sizes):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
            raise ValueError(f"layer {i}'s parameter bytes must be an integer >= 0, got {b!r}")
    sizes = [int(b) for b in sizes]
    for name, v in (("bucket_bytes", bucket_bytes), ("first_bucket_bytes", first_bucket_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    out: list[BucketSpec] = []
    group: list[int] = []
    lowest, nbytes = 0, 0
    cap = min(first_bucket_bytes, bucket_bytes)
    for i in range(len(sizes) - 1, -1, -1):
        if sizes[i]:
            group.append(i)
            lowest, nbytes = i, nbytes + sizes[i]
        if group and nbytes >= cap:
            out.append(BucketSpec(tuple(group), nbytes, lowest))
            group, nbytes, cap = [], 0, bucket_bytes
    if group:
        out.append(BucketSpec(tuple(group), nbytes, lowest))
    if not out:
        raise ValueError("the model has no parameters: there is nothing to train in parallel")
    return out


@dataclass(frozen=True)
class CollectiveSpan:
    """One simulated collective: ``posted_s`` (its non-blocking call), ``start_s`` (the communication
    lane takes it up), ``end_s`` (complete), ``bare_s`` (its curve's time alone), ``phase``
    ("backward" or "gather") and ``bucket`` (-1: the failure count's allreduce)."""

    name: str
    kind: str
    phase: str
    bucket: int
    nbytes: int
    posted_s: float
    start_s: float
    end_s: float
    bare_s: float


def _union(spans: Sequence[tuple[float, float]]) -> float:
    union, end = 0.0, -math.inf
    for s, e in sorted(spans):
        if e > end:
            union += e - max(s, end)
            end = e
    return union


@dataclass(frozen=True)
class StepResult:
    """One simulated step of one rank (every rank's is the same).

    ``step_s`` = ``compute_s`` + ``update_s`` + ``exposed_s`` + ``allgather_wait_s``: the compute lane
    is always computing or waiting.  ``compute_s``: forward, loss and backward kernels as simulated
    (stretched where a collective ran beside them); ``compute_bare_s``: the same kernels' bare times;
    ``update_s``: the optimizer's update; ``exposed_s``: the wait for the gradients' collectives after
    the backward pass (DataParallel's ``exposed_s``); ``allgather_wait_s``: sharded, the wait for the
    allgathers (without prefetch after the update, with prefetch in the forward pass);
    ``in_flight_s``: the time at least one collective was in flight (posted, not complete), and
    ``backward_comm_s`` / ``allgather_s`` the same for each phase (DataParallel's ``allreduce_s``,
    which is its ``reduce_scatter_s`` when sharded, and ``allgather_s``)."""

    config: StepConfig
    step_s: float
    compute_s: float
    compute_bare_s: float
    update_s: float
    exposed_s: float
    allgather_wait_s: float
    in_flight_s: float
    backward_comm_s: float
    allgather_s: float
    backward_start_s: float
    backward_end_s: float
    buckets: tuple[BucketSpec, ...]
    collectives: tuple[CollectiveSpan, ...]
    timeline: tuple[Event, ...]

    def in_flight(self, *kinds: str) -> float:
        """The union of the collectives' posted-to-complete intervals, of these kinds (all if none)."""
        return _union([(c.posted_s, c.end_s) for c in self.collectives if not kinds or c.kind in kinds])

    def rank_timelines(self) -> dict[int, list[Event]]:
        """Each rank's timeline: the simulated rank's events, on every rank of ``config.ranks``."""
        return {
            r: [Event(e.name, e.lane, e.start, e.end, e.kind, r, dict(e.args)) for e in self.timeline]
            for r in range(self.config.ranks)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON report: the figures, the buckets, the collectives and the timeline."""
        cfg = self.config
        return {
            "config": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
            **{
                k: getattr(self, k)
                for k in (
                    "step_s",
                    "compute_s",
                    "compute_bare_s",
                    "update_s",
                    "exposed_s",
                    "allgather_wait_s",
                    "in_flight_s",
                    "backward_comm_s",
                    "allgather_s",
                    "backward_start_s",
                    "backward_end_s",
                )
            },
            "buckets": [b._asdict() for b in self.buckets],
            "collectives": [dict(c.__dict__) for c in self.collectives],
            "timeline": [
                {"name": e.name, "lane": e.lane, "start": e.start, "end": e.end, "kind": e.kind, "args": e.args}
                for e in self.timeline
            ],
        }


def _padded(nbytes: int, ranks: int, itemsize: int, what: str) -> tuple[int, int]:
    """A sharded bucket's buffer: n elements padded to P shards of c = ceil(n / P).  Returns
    (the padded buffer's bytes, one shard's bytes)."""
    if nbytes % itemsize:
        raise ValueError(f"{what}: {nbytes} bytes is not a whole number of {itemsize}-byte elements")
    c = -(-(nbytes // itemsize) // ranks)
    return c * ranks * itemsize, c * itemsize


def _program(
    compute: ComputeTimes, update: UpdateCost, collectives: CollectiveCosts, config: StepConfig
) -> tuple[list[Op], list[BucketSpec], list[Collective]]:
    """whygpu's schedule of one step as a program for the compute lane (see the module docstring)."""
    layers = compute.layers
    P, item = config.ranks, config.itemsize
    sizes = [layer.param_bytes for layer in layers]
    buckets = bucket_layout(sizes, config.bucket_mb * MiB, config.first_bucket_mb * MiB)
    sharded = config.shard != "none"
    names = [layer.name or f"layer {i}" for i, layer in enumerate(layers)]

    grads: list[Collective] = []
    gathers: dict[int, Collective] = {}  # bucket -> its allgather
    shard_bytes: list[int] = []
    for k, b in enumerate(buckets):
        if sharded:
            buf, shard = _padded(b.nbytes, P, item, f"bucket {k}")
            shard_bytes.append(shard)
            rs = collectives.seconds("reduce_scatter", buf, P)
            grads.append(Collective(f"reduce_scatter b{k}", "reduce_scatter", buf, rs, "backward", k))
            ag = collectives.seconds("allgather", buf, P)
            gathers[k] = Collective(f"allgather b{k}", "allgather", buf, ag, "gather", k)
        else:
            buf = b.nbytes + (item if k == len(buckets) - 1 else 0)  # the failure count rides the last one
            ar = collectives.seconds("allreduce", buf, P)
            grads.append(Collective(f"allreduce b{k}", "allreduce", buf, ar, "backward", k))
    flag: list[Collective] = []
    if sharded:  # the failure count: an allreduce of one element, started with the last bucket
        flag = [
            Collective(
                "allreduce failure count", "allreduce", item, collectives.seconds("allreduce", item, P), "backward"
            )
        ]
    bucket_of = {i: k for k, b in enumerate(buckets) for i in b.layers}
    gather_order = [gathers[k] for k in sorted(gathers, reverse=True)]  # the first layers' bucket first

    prog: list[Op] = []
    if sharded and config.prefetch:  # the previous step's optimizer step left these in flight
        prog.append(Post(list(gather_order)))
    for i, layer in enumerate(layers):
        if sharded and config.prefetch and i in bucket_of:
            k = bucket_of[i]
            prog.append(Wait([gathers[k]], f"wait allgather b{k} before {names[i]}", "prefetch_wait"))
        prog.append(Compute(f"forward {names[i]}", "forward", layer.forward_s, {"layer": i}))
    prog.append(Compute("loss", "loss", compute.loss_s))
    if sharded and config.prefetch:  # the backward pass waits for every prefetched allgather first
        prog.append(Wait(list(gather_order), "wait allgathers before backward", "prefetch_wait"))
    prog.append(Mark("backward start"))
    nxt = 0
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        prog.append(Compute(f"dW {names[i]}", "backward_dw", layer.backward_dw_s, {"layer": i}))
        post = []
        while nxt < len(buckets) and buckets[nxt].lowest_layer >= i:
            post.append(grads[nxt])
            nxt += 1
            if nxt == len(buckets):
                post.extend(flag)
        if post:
            prog.append(Post(post))
        if i > 0 or config.input_grad:
            prog.append(Compute(f"dX {names[i]}", "backward_dx", layer.backward_dx_s, {"layer": i}))
    prog.append(Mark("backward end"))
    prog.append(Wait(grads + flag, "exposed: wait for the gradients' collectives", "exposed"))
    if sharded:
        for k, nbytes in enumerate(shard_bytes):
            prog.append(Compute(f"update shard b{k}", "update", update.seconds(nbytes), {"bucket": k, "bytes": nbytes}))
        if not config.prefetch:
            prog.append(Post(list(gather_order)))
            prog.append(Wait(list(gather_order), "wait for the allgathers", "allgather_wait"))
    else:
        for i, layer in enumerate(layers):
            if layer.param_bytes:
                cost = update.seconds(layer.param_bytes)
                prog.append(Compute(f"update {names[i]}", "update", cost, {"layer": i, "bytes": layer.param_bytes}))
    return prog, buckets, grads + flag + gather_order


def simulate(
    compute: ComputeTimes,
    update: UpdateCost,
    collectives: CollectiveCosts,
    interference: Interference,
    config: StepConfig,
    skew: Skew | None = None,
) -> StepResult:
    """One training step of ``DataParallel`` as ``config`` sets it up, from these inputs alone;
    ``skew``: how far the other ranks lag (None: in lockstep).

    Raises ValueError for inputs that cannot describe a step (see the dataclasses) and when a
    collective the strategy uses has no curve for ``config.ranks``."""
    for value, cls in (
        (compute, ComputeTimes),
        (update, UpdateCost),
        (collectives, CollectiveCosts),
        (interference, Interference),
        (config, StepConfig),
    ):
        if not isinstance(value, cls):
            raise ValueError(f"simulate() needs a {cls.__name__}, got {type(value).__name__}")
    if skew is not None and not isinstance(skew, Skew):
        raise ValueError(f"simulate()'s skew must be a Skew or None, got {type(skew).__name__}")
    prog, buckets, colls = _program(compute, update, collectives, config)
    marks = {op.name: op for op in prog if isinstance(op, Mark)}
    bare = math.fsum(op.work_s for op in prog if isinstance(op, Compute) and op.kind != "update")
    lag = 0.0 if skew is None or config.ranks == 1 else skew.lag_fraction
    events, step = run_program(prog, interference.compute_slowdown, interference.comm_slowdown, lag_fraction=lag)
    events.sort(key=lambda e: (e.start, e.lane != "compute", e.end))

    def total(*kinds: str) -> float:
        return math.fsum(e.duration for e in events if e.kind in kinds)

    spans = tuple(
        CollectiveSpan(c.name, c.kind, c.phase, c.bucket, c.nbytes, c.posted, c.start, c.end, c.work_s) for c in colls
    )
    return StepResult(
        config=config,
        step_s=step,
        compute_s=total("forward", "loss", "backward_dw", "backward_dx"),
        compute_bare_s=bare,
        update_s=total("update"),
        exposed_s=total("exposed"),
        allgather_wait_s=total("prefetch_wait", "allgather_wait"),
        in_flight_s=_union([(c.posted_s, c.end_s) for c in spans]),
        backward_comm_s=_union([(c.posted_s, c.end_s) for c in spans if c.phase == "backward"]),
        allgather_s=_union([(c.posted_s, c.end_s) for c in spans if c.phase == "gather"]),
        backward_start_s=marks["backward start"].at,
        backward_end_s=marks["backward end"].at,
        buckets=tuple(buckets),
        collectives=spans,
        timeline=tuple(events),
    )
