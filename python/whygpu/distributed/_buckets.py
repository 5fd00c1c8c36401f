"""Gradient buckets: the gradients in a few flat buffers, each summed over the ranks
(non-blocking) as soon as the backward pass has produced it.

Why buckets (PyTorch DDP, Horovod's "tensor fusion"): one allreduce per
parameter would pay the network's latency once per tensor; one allreduce of
everything would wait until the whole backward pass is done.  A bucket of
~25 MB is big enough to run at the link's bandwidth and small enough that
the first ones travel while the backward pass is still computing the
gradients of the earlier layers.

The backward pass produces gradients last layer first, so the buckets are
filled in *reverse* layer order: bucket 0 holds the last layers' gradients
and is ready first.  A parameter is never split between two buckets (one
bigger than the bucket size gets a bucket of its own).

On the CPU the buckets *are* the gradients (DDP's ``gradient_as_bucket_view``):
each parameter's gradient array is a view into its bucket, so the backward
pass writes straight into the buffer MPI sends, and the sum lands where the
optimizer reads it -- no copy in, no copy out.  A GPU model's gradients live
in GPU memory: they are copied into pinned host buckets and back.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._runtime import MPI

__all__ = ["Bucket", "GradBuckets"]

_clock = time.perf_counter


class Bucket:
    """One flat buffer and the parameters whose gradients it carries."""

    def __init__(self, params: list, lowest_layer: int, buf: np.ndarray):
        self.params = params  # in the order they sit in buf
        self.lowest_layer = lowest_layer  # ready once this layer's backward pass is done
        self.buf = buf  # (sum of the params' sizes,) in the model's dtype; pinned host memory for a GPU model
        self.views: list[np.ndarray] = []  # buf's slices, each shaped like its parameter
        off = 0
        for p in params:
            self.views.append(buf[off : off + p.size].reshape(p.shape))
            off += p.size
        self.request: Any = None  # the MPI request of its allreduce while in flight
        self.t_start = self.t_done = 0.0


class GradBuckets:
    """The buckets of one model's parameters, and their allreduces for one step.

    ``layers``: a list, in forward order, of each layer's parameters (empty
    for a ReLU).  Per step: ``begin(weight)``, then ``ready(i)`` after layer
    i's backward pass (Sequential calls it), then ``finish()``.
    """

    def __init__(self, layers: list[list], dtype: np.dtype, bucket_bytes: float, comm, device: bool):
        self.comm = comm
        self.device = device  # gradients in GPU memory: copied to (pinned) host buffers and back
        self.buckets: list[Bucket] = []
        group: list = []
        lowest, nbytes = 0, 0
        for i in range(len(layers) - 1, -1, -1):  # last layer first: the order the gradients appear in
            for p in reversed(layers[i]):
                group.append(p)
                lowest, nbytes = i, nbytes + p.size * dtype.itemsize
            if group and nbytes >= bucket_bytes:  # full: close it (a layer's parameters stay together)
                self._add(group, lowest, dtype)
                group, nbytes = [], 0
        if group:
            self._add(group, lowest, dtype)
        if not device:  # the gradients move into the buckets: from now on the backward pass writes there
            for b in self.buckets:
                for p, view in zip(b.params, b.views):
                    view[...] = p._grad
                    p._grad = view
        self.nbytes = sum(b.buf.nbytes for b in self.buckets)
        self.weight = 1.0
        self._next = 0  # the first bucket not yet started

    def _add(self, params: list, lowest: int, dtype: np.dtype) -> None:
        n = sum(p.size for p in params)
        if self.device:  # the copy engine moves pinned memory straight to and from the GPU
            from .. import cuda

            buf = cuda.pinned_empty((n,), dtype)
        else:
            buf = np.empty(n, dtype)
        self.buckets.append(Bucket(params, lowest, buf))

    # -- one step ------------------------------------------------------------------
    def begin(self, weight: float) -> None:
        """Before the backward pass: each gradient will be scaled by ``weight`` (this rank's share;
        on the CPU DataParallel scales the loss gradient instead, and passes 1)."""
        self.weight = float(weight)
        self._next = 0

    def ready(self, layer: int) -> None:
        """Layer ``layer``'s gradients are final: start the allreduce of every bucket that is
        now complete, then give MPI a chance to move the ones in flight along."""
        while self._next < len(self.buckets) and self.buckets[self._next].lowest_layer >= layer:
            self._start(self.buckets[self._next])
            self._next += 1
        # MPICH moves a non-blocking collective along only inside MPI calls: without these
        # Tests the allreduces would sit still until finish() waits for them.
        for b in self.buckets[: self._next]:
            if b.request is not None and b.request.Test():
                b.request, b.t_done = None, _clock()

    def _start(self, b: Bucket) -> None:
        w = self.weight
        for p, view in zip(b.params, b.views):
            if p._grad_is_zero:  # no backward pass wrote it this step (a rank without samples)
                view.fill(0)
                p._grad_is_zero = self.device  # on the CPU, view is the gradient itself: now zeros
            elif self.device:
                p._grad.to_host(out=view)  # waits for the GPU to finish this gradient
                if w != 1.0:
                    view *= w
            elif w != 1.0:
                view *= w  # view is the gradient itself
        b.t_start = _clock()
        b.request = self.comm.Iallreduce(MPI.IN_PLACE, b.buf, op=MPI.SUM)  # buf += every other rank's buf

    def finish(self) -> float:
        """Start what is left, wait for every allreduce, and write the sums back into the
        gradients.  Returns the seconds spent waiting (the communication not hidden)."""
        self.ready(-1)
        t0 = _clock()
        for b in self.buckets:
            if b.request is not None:
                b.request.Wait()
                b.request, b.t_done = None, _clock()
        exposed = _clock() - t0
        if self.device:
            for b in self.buckets:
                for p, view in zip(b.params, b.views):
                    p.grad = view  # an upload into the GPU's gradient
        else:
            for b in self.buckets:
                for p in b.params:
                    p._grad_is_zero = False  # the sum is already in place: the gradient is a view of buf
        return exposed

    def attached(self) -> bool:
        """On the CPU: every gradient is still its bucket's view (model.to() makes new arrays)."""
        return self.device or all(p._grad is v for b in self.buckets for p, v in zip(b.params, b.views))

    def allreduce_seconds(self) -> float:
        """Sum over buckets of start-to-completion as observed (a completion is seen at the next Test)."""
        return sum(b.t_done - b.t_start for b in self.buckets)

    def __len__(self) -> int:
        return len(self.buckets)
