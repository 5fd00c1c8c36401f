"""The step simulator's inputs: what one rank's layers cost, what the optimizer's update costs, what
each collective costs, and how much compute and a collective slow each other down when they share cores.

Every input is a small frozen dataclass with a ``source``: how the figures were obtained, one of
``"measured apart"`` (by a measurement of its own, not the run predicted), ``"measured here"`` (on this
machine, in the same command, from runs other than the one predicted), ``"public figure"``, ``"assumed"``
(a stated assumption, e.g. no interference on a GPU whose collectives use their own engines), ``"not
measured"`` (a neutral value standing in for a figure nobody measured) or ``"planted"`` (a test's or a
lesson's made-up numbers), optionally followed by ``": how"`` (``"measured apart: 2 ranks, 1 thread
each, 7 sizes, bare"``).
The simulator reads nothing else: a prediction is only as honest as these sources say.

Bad figures (negative or non-finite times, a bandwidth <= 0, an unknown collective, no source) raise a
ValueError when the dataclass is made, naming the field.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = [
    "SOURCES",
    "COLLECTIVES",
    "LayerTimes",
    "ComputeTimes",
    "UpdateCost",
    "CollectiveCurve",
    "CollectiveCosts",
    "Skew",
    "skew_from_fields",
    "Interference",
]

SOURCES = ("measured apart", "measured here", "public figure", "assumed", "not measured", "planted")
COLLECTIVES = ("allreduce", "reduce_scatter", "allgather", "sendrecv")


def _real(value: object) -> bool:
    """A real number (NumPy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _seconds(value: float, what: str) -> float:
    """A duration: a finite number >= 0 (a bool is not a number here)."""
    if not _real(value) or not 0.0 <= value < math.inf:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _set_floats(obj: object, fields: tuple[str, ...], what: str) -> None:
    """Check each field as a duration and store it as a Python float (a frozen dataclass)."""
    for f in fields:
        object.__setattr__(obj, f, _seconds(getattr(obj, f), f"{what}{f}"))


def _source(value: str, what: str) -> str:
    if not isinstance(value, str) or not any(value == s or value.startswith(s + ":") for s in SOURCES):
        raise ValueError(
            f"{what}.source must say how the figures were obtained: one of {', '.join(map(repr, SOURCES))}, "
            f"optionally followed by ': how' (e.g. 'measured apart: 2 ranks, bare'), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class LayerTimes:
    """One layer of one rank, on its share of the batch, at its thread count: the forward pass, the
    backward pass's parameter gradient (dW, with db) and input gradient (dX), and its parameters' bytes
    (0 for a ReLU).  A layer without parameters has only a forward and a dX time."""

    forward_s: float
    backward_dw_s: float = 0.0
    backward_dx_s: float = 0.0
    param_bytes: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        label = f"layer {self.name!r}" if self.name else "a layer"
        _set_floats(self, ("forward_s", "backward_dw_s", "backward_dx_s"), f"{label}'s ")
        b = self.param_bytes
        if not _integer(b) or b < 0:
            raise ValueError(f"{label}'s param_bytes must be an integer >= 0, got {b!r}")
        object.__setattr__(self, "param_bytes", int(b))
        if b == 0 and self.backward_dw_s > 0:
            raise ValueError(f"{label} has no parameters (param_bytes 0) but a backward_dw_s of {self.backward_dw_s}")


@dataclass(frozen=True)
class ComputeTimes:
    """The model's layers in forward order, and ``loss_s``: what runs between the forward and the
    backward pass (the loss and its gradient)."""

    layers: tuple[LayerTimes, ...]
    source: str
    loss_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ValueError("ComputeTimes needs at least one layer: an empty model has no step to simulate")
        for layer in self.layers:
            if not isinstance(layer, LayerTimes):
                raise ValueError(f"ComputeTimes.layers must hold LayerTimes, got {type(layer).__name__}")
        if not any(layer.param_bytes for layer in self.layers):
            raise ValueError("the model has no parameters: there is nothing to train in parallel")
        _set_floats(self, ("loss_s",), "ComputeTimes.")
        _source(self.source, "ComputeTimes")


@dataclass(frozen=True)
class UpdateCost:
    """The optimizer's update: ``per_call_s + per_byte_s * bytes`` for each tensor it updates in one
    call -- unsharded one call per layer with parameters (all its bytes), sharded one per bucket (this
    rank's padded shard of it, a flat parameter)."""

    source: str
    per_byte_s: float = 0.0
    per_call_s: float = 0.0

    def __post_init__(self) -> None:
        _set_floats(self, ("per_byte_s", "per_call_s"), "UpdateCost.")
        _source(self.source, "UpdateCost")

    def seconds(self, nbytes: int) -> float:
        """One update call on ``nbytes`` of parameters."""
        return self.per_call_s + self.per_byte_s * nbytes


@dataclass(frozen=True)
class CollectiveCurve:
    """One collective on ``ranks`` ranks, bare (nothing else running): ``latency_s + nbytes /
    bandwidth_Bps``, with ``nbytes`` the buffer the call is given (an allreduce's whole buffer, a
    reduce-scatter's input, an allgather's output: P shards, padding included).  ``bandwidth_Bps``
    may be ``math.inf`` (a latency-only curve)."""

    kind: str
    ranks: int
    latency_s: float
    bandwidth_Bps: float
    source: str

    def __post_init__(self) -> None:
        if self.kind not in COLLECTIVES:
            raise ValueError(f"CollectiveCurve.kind must be one of {COLLECTIVES}, got {self.kind!r}")
        if not _integer(self.ranks) or self.ranks < 1:
            raise ValueError(f"CollectiveCurve.ranks must be an integer >= 1, got {self.ranks!r}")
        object.__setattr__(self, "ranks", int(self.ranks))
        _set_floats(self, ("latency_s",), f"the {self.kind} curve's ")
        bw = self.bandwidth_Bps
        if not _real(bw) or not bw > 0:
            raise ValueError(f"the {self.kind} curve's bandwidth_Bps must be > 0 (math.inf allowed), got {bw!r}")
        object.__setattr__(self, "bandwidth_Bps", float(bw))
        _source(self.source, f"the {self.kind} curve on {self.ranks} ranks")

    def seconds(self, nbytes: float) -> float:
        """The bare time of one call on ``nbytes``."""
        return self.latency_s + nbytes / self.bandwidth_Bps


@dataclass(frozen=True)
class CollectiveCosts:
    """The curves the strategies use, at most one per (kind, ranks)."""

    curves: tuple[CollectiveCurve, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "curves", tuple(self.curves))
        seen = set()
        for c in self.curves:
            if not isinstance(c, CollectiveCurve):
                raise ValueError(f"CollectiveCosts.curves must hold CollectiveCurve, got {type(c).__name__}")
            if (c.kind, c.ranks) in seen:
                raise ValueError(f"two {c.kind} curves for {c.ranks} ranks: give one")
            seen.add((c.kind, c.ranks))

    def curve(self, kind: str, ranks: int) -> CollectiveCurve:
        for c in self.curves:
            if c.kind == kind and c.ranks == ranks:
                return c
        have = sorted((c.kind, c.ranks) for c in self.curves)
        raise ValueError(f"no {kind} curve for {ranks} ranks among the collective costs (have {have})")

    def seconds(self, kind: str, nbytes: float, ranks: int) -> float:
        """The bare time of one ``kind`` call on ``nbytes`` over ``ranks`` ranks."""
        return self.curve(kind, ranks).seconds(nbytes)


@dataclass(frozen=True)
class Interference:
    """How much compute and a collective slow each other when both run (they share the cores: over
    shared memory the collective's copies and sums are CPU work).  While a collective is in flight a
    compute kernel advances at ``1 / compute_slowdown`` of its bare rate; while compute runs a
    collective advances at ``1 / comm_slowdown`` of its bare rate.  1.0 and 1.0: no interference."""

    source: str
    compute_slowdown: float = 1.0
    comm_slowdown: float = 1.0

    def __post_init__(self) -> None:
        for f in ("compute_slowdown", "comm_slowdown"):
            v = getattr(self, f)
            if not _real(v) or not 1.0 <= v < math.inf:
                raise ValueError(f"Interference.{f} must be a finite factor >= 1 (1: no slowdown), got {v!r}")
            object.__setattr__(self, f, float(v))
        _source(self.source, "Interference")


@dataclass(frozen=True)
class Skew:
    """How far the slowest other rank lags this one: after ``x`` seconds of compute since the ranks last
    met in a collective, the last rank reaches the same point ``lag_fraction * x`` later (measured apart:
    whole passes of every rank side by side, the median of (slowest - this rank) / this rank).  A
    collective cannot start before every rank has posted it, so this rank waits that long for it.
    0: ranks in lockstep."""

    source: str
    lag_fraction: float = 0.0

    def __post_init__(self) -> None:
        v = self.lag_fraction
        if not _real(v) or not 0.0 <= v < math.inf:
            raise ValueError(f"Skew.lag_fraction must be a finite number >= 0 (0: ranks in lockstep), got {v!r}")
        object.__setattr__(self, "lag_fraction", float(v))
        _source(self.source, "Skew")


def skew_from_fields(fields: dict) -> Skew | None:
    """The :class:`Skew` in ``fields`` (``"skew"``), or None where the fields have none (older terms)."""
    s = fields.get("skew")
    return None if s is None else Skew(**s)


def inputs_from_fields(fields: dict) -> tuple[ComputeTimes, UpdateCost, CollectiveCosts, Interference]:
    """The simulator's input objects from plain fields (``whygpu.bench.stepterms.simulator_fields``,
    or a JSON file): bench measures and returns data; the objects, and their checks, live here."""
    c = fields["compute"]
    compute = ComputeTimes(layers=tuple(LayerTimes(**x) for x in c["layers"]), source=c["source"], loss_s=c["loss_s"])
    return (
        compute,
        UpdateCost(**fields["update"]),
        CollectiveCosts(tuple(CollectiveCurve(**x) for x in fields["collectives"])),
        Interference(**fields["interference"]),
    )
