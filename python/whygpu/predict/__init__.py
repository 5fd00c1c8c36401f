"""whygpu.predict: what the package *predicts*, kept apart from what it measures (``whygpu.bench``)
and from the figures that draw both (``whygpu.plots``).

A prediction here is a function of inputs that say where they came from (measured apart from the
run predicted, a public figure, or planted by a test), so that checking it against a run is a test
of the model, not a restatement of the run.  It holds:

* the roofline model of every kernel (:mod:`whygpu.predict.roofline`, with the CUDA rungs' traffic in
  :mod:`~whygpu.predict.roofline_gpu` and the model's stated error and impossible points in
  :mod:`~whygpu.predict.roofline_trust`);
* the public figures of the systems data parallelism is extrapolated to and the collectives' costs
  (:mod:`whygpu.predict.scaleout_model`), the extrapolation itself, each point a step simulated on the
  target system's figures (:mod:`whygpu.predict.extrapolate`), and the bytes each rank holds per ZeRO
  stage (:mod:`whygpu.predict.memory_model`);
* the step simulator of data-parallel training (:mod:`whygpu.predict.stepsim`, a discrete-event model
  of ``DataParallel``'s schedule: buckets, their collectives beside the backward pass, ZeRO's update
  and allgather, prefetch) and the Chrome trace writer and checker for its timelines
  (:mod:`whygpu.predict.trace`);
* a pipeline step simulated from its terms (:func:`~whygpu.predict.pipeline.simulate_pipeline`: GPipe's or
  1F1B's actions, each stage's forward and backward, the message between stages) and the layouts of a large
  MLP split over H100 nodes, tensor parallel x pipeline x data parallel, each step simulated
  (:mod:`whygpu.predict.split_layouts`).

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
    Skew,
    UpdateCost,
    inputs_from_fields,
    skew_from_fields,
)
from .extrapolate import CpuFigures, extrapolation, simulate_system, system_curves
from .pipeline import PipelineStep, simulate_pipeline
from .split_layouts import layout_rows, split_layouts
from .stepsim import SHARDS, BucketSpec, CollectiveSpan, StepConfig, StepResult, bucket_layout, simulate
from .trace import TIDS, chrome_trace, validate_chrome_trace, write_chrome_trace

__all__ = [
    "simulate", "StepConfig", "StepResult", "CollectiveSpan", "Event", "bucket_layout", "BucketSpec",
    "LayerTimes", "ComputeTimes", "UpdateCost", "CollectiveCurve", "CollectiveCosts", "Interference",
    "Skew", "inputs_from_fields", "skew_from_fields", "extrapolation", "system_curves", "simulate_system", "CpuFigures",
    "SOURCES", "COLLECTIVES", "SHARDS", "LANES", "TIDS", "chrome_trace", "write_chrome_trace", "validate_chrome_trace",
    "split_layouts", "layout_rows", "simulate_pipeline", "PipelineStep",
]  # fmt: skip
