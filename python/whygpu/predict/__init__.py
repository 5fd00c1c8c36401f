"""whygpu.predict: what the package *predicts*, kept apart from what it measures (``whygpu.bench``)
and from the figures that draw both.

A prediction here is a function of inputs that say where they came from (measured apart from the
run predicted, a public figure, or planted by a test), so that checking it against a run is a test
of the model, not a restatement of the run.  Today it holds the step simulator of data-parallel
training (:mod:`whygpu.predict.stepsim`, a discrete-event model of ``DataParallel``'s schedule:
buckets, their collectives beside the backward pass, ZeRO's update and allgather, prefetch) and the
Chrome trace writer and checker for its timelines (:mod:`whygpu.predict.trace`).  The roofline,
Amdahl's and the memory models are to move here; tensor and pipeline parallelism plug into the
simulator as schedules of their own.

Nothing here needs MPI or a GPU.
"""

from __future__ import annotations

from ._engine import LANES, Event
from ._inputs import (
    COLLECTIVES,
    SOURCES,
    CollectiveCosts,
    CollectiveCurve,
    ComputeTimes,
    Interference,
    LayerTimes,
    UpdateCost,
)
from .stepsim import SHARDS, BucketSpec, CollectiveSpan, StepConfig, StepResult, bucket_layout, simulate
from .trace import TIDS, chrome_trace, validate_chrome_trace, write_chrome_trace

__all__ = [
    "simulate", "StepConfig", "StepResult", "CollectiveSpan", "Event", "bucket_layout", "BucketSpec",
    "LayerTimes", "ComputeTimes", "UpdateCost", "CollectiveCurve", "CollectiveCosts", "Interference",
    "SOURCES", "COLLECTIVES", "SHARDS", "LANES", "TIDS", "chrome_trace", "write_chrome_trace", "validate_chrome_trace",
]  # fmt: skip
