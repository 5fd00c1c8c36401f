"""whygpu.predict: what the package *predicts*, kept apart from what it measures (``whygpu.bench``)
and from the figures that draw both (``whygpu.plots``).

A prediction here is a function of inputs that say where they came from (measured apart from the
run predicted, a public figure, or planted by a test), so that checking it against a run is a test
of the model, not a restatement of the run.  It holds:

* the roofline model of every kernel (:mod:`whygpu.predict.roofline`, with the CUDA rungs' traffic in
  :mod:`~whygpu.predict.roofline_gpu` and the model's stated error and impossible points in
  :mod:`~whygpu.predict.roofline_trust`);
* the data-parallel cost model and the public figures it is extrapolated to
  (:mod:`whygpu.predict.scaleout_model`), and the bytes each rank holds per ZeRO stage
  (:mod:`whygpu.predict.memory_model`);
* the step simulator of data-parallel training (:mod:`whygpu.predict.stepsim`, a discrete-event model
  of ``DataParallel``'s schedule: buckets, their collectives beside the backward pass, ZeRO's update
  and allgather, prefetch) and the Chrome trace writer and checker for its timelines
  (:mod:`whygpu.predict.trace`).  Tensor and pipeline parallelism plug into the simulator as
  schedules of their own.

It sits above ``whygpu.bench`` (the roofline places measured kernels on measured roofs, and measures
again what is impossible); ``whygpu.bench`` never imports it.  That is why Amdahl's law and its fit
stay in :mod:`whygpu.bench.scaling_results`: the scaling measurement fits it while it measures, to
decide which thread counts to measure again.

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
    inputs_from_fields,
)
from .stepsim import SHARDS, BucketSpec, CollectiveSpan, StepConfig, StepResult, bucket_layout, simulate
from .trace import TIDS, chrome_trace, validate_chrome_trace, write_chrome_trace

__all__ = [
    "simulate", "StepConfig", "StepResult", "CollectiveSpan", "Event", "bucket_layout", "BucketSpec",
    "LayerTimes", "ComputeTimes", "UpdateCost", "CollectiveCurve", "CollectiveCosts", "Interference",
    "inputs_from_fields",
    "SOURCES", "COLLECTIVES", "SHARDS", "LANES", "TIDS", "chrome_trace", "write_chrome_trace", "validate_chrome_trace",
]  # fmt: skip
