"""Gradient buckets: the gradients in a few flat buffers, each summed over the ranks
(non-blocking) as soon as the backward pass has produced it.

Why buckets (PyTorch DDP, Horovod's "tensor fusion"): one allreduce per
parameter would pay the network's latency once per tensor; one allreduce of
everything would wait until the whole backward pass is done.  A bucket of
~25 MB is big enough to run at the link's bandwidth and small enough that
the first ones travel while the backward pass is still computing the
gradients of the earlier layers.

The buckets hold the gradients in the order the backward pass produces them:
last layer first, and within a layer in its parameters' order (a Linear's
weight, then its bias).  A bucket closes once it holds at least its size in
bytes, after a whole layer (a layer's parameters stay together; one bigger
than the bucket size gets a bucket of its own).  As in DDP the *first*
bucket is small (1 MiB): the last layer's gradients start travelling at once
instead of waiting for the big layers below them.  A bucket starts when the
lowest layer in it has its parameters' gradients (a Linear's before its input
gradient is computed, so the bucket travels during that matmul too).

On the CPU the buckets *are* the gradients (DDP's ``gradient_as_bucket_view``):
each parameter's gradient array is a view into its bucket, so the backward
pass writes straight into the buffer MPI sends, and the sum lands where the
optimizer reads it -- no copy in, no copy out.  A GPU model's gradients live
in GPU memory: they are copied into pinned host buckets and back.

Progress.  MPICH moves a non-blocking collective along only inside MPI
calls.  With ``MPI_THREAD_MULTIPLE`` (mpi4py asks for it; MPICH provides it)
a helper thread calls ``Test()`` on the allreduces in flight every 0.1 ms,
sleeping in between, so the sum moves while the backward pass computes (its
kernels release the GIL), however seldom the backward pass returns to
Python.  Without that thread level, ``Test()`` after each layer is the
fallback.

Accumulation.  After a synchronised backward every rank holds the sum G1
in its buckets.  A second backward without ``zero_grad()`` must end with G1 +
G2 (PyTorch DDP's contract), not P * G1 + G2, which summing every rank's
buffer again would give.  So before the next backward adds to a bucket that
holds a sum (``settle``), rank 0 keeps it and every other rank starts from
zero (lazily, as ``zero_grad()`` does): the next allreduce adds the sum once.
Exact, with no copy and no extra memory, on the CPU and the GPU alike; inside
``no_sync()`` after a synced backward, rank 0's gradient then reads as the
sum plus its own accumulation and the others' as their own accumulation.

Failure.  The last bucket carries one more element, a failure count: a rank
whose backward pass raised still starts every remaining allreduce (with
whatever its buffers hold, and a 1 there), waits for them and re-raises, so
every rank issues the same collectives; the others see the count and raise
too.  Nothing is ever left in flight across steps.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from ._runtime import MPI

__all__ = ["Bucket", "GradBuckets", "FIRST_BUCKET_BYTES", "progress_mode"]

_clock = time.perf_counter

_NONE = np.empty(0)  # an unsharded bucket's sharded fields
FIRST_BUCKET_BYTES = 2**20  # PyTorch DDP's first bucket: the last layer's gradients leave at once


def progress_mode() -> str:
    """'thread' where MPI allows calls from a second thread (MPI_THREAD_MULTIPLE), else 'test'."""
    return "thread" if MPI.Query_thread() >= MPI.THREAD_MULTIPLE else "test"


class Bucket:
    """One flat buffer and the parameters whose gradients it carries."""

    def __init__(self, params: list, lowest_layer: int, buf: np.ndarray, kind: str = "allreduce"):
        self.params = params  # in the order they sit in buf
        self.lowest_layer = lowest_layer  # ready once this layer's parameters have their gradients
        self.kind = kind  # the collective: "allreduce", "reduce_scatter" (sharded) or "flag" (the failure count)
        self.n = sum(p.size for p in params)  # gradient elements (without padding or a failure count)
        self.nbytes = self.n * buf.itemsize  # the gradients' bytes
        self.buf: np.ndarray | None = None
        self.views: list[np.ndarray] = []  # buf's slices, each shaped like its parameter
        self.attach(buf)
        self.request: Any = None  # the MPI request of its allreduce while in flight
        self.done = threading.Event()  # set once the allreduce has completed (or never started)
        self.done.set()
        self.error: BaseException | None = None  # what the progress thread's Wait raised
        self.t_start = self.t_done = 0.0
        self.summed = False  # it holds the ranks' sum from the last synced backward (see settle)
        # sharded (_sharded.py): shard length c, flat parameters pbuf (P*c,) and their per-parameter
        # views, this rank's slice of pbuf (c,), and where this rank's summed gradient shard lands (c,)
        self.chunk = 0
        self.pbuf: np.ndarray = _NONE
        self.pviews: list[np.ndarray] = []
        self.pshard: np.ndarray = _NONE
        self.gshard: np.ndarray = _NONE

    def attach(self, buf: np.ndarray) -> None:
        """Make ``buf`` (the params' sizes, + a failure count or padding) this bucket's buffer."""
        self.buf = buf
        self.views = []
        off = 0
        for p in self.params:
            self.views.append(buf[off : off + p.size].reshape(p.shape))
            off += p.size

    def detach(self) -> None:
        """Drop the buffer (sharded stage 2: the memory goes back once nothing else holds it)."""
        self.buf = None
        self.views = []


class _Progress:
    """The one helper thread that waits on started allreduces, in order (MPI progresses all of them
    while it waits on any)."""

    _queue: queue.SimpleQueue | None = None
    _lock = threading.Lock()

    @classmethod
    def submit(cls, b: Bucket) -> None:
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.SimpleQueue()
                threading.Thread(target=cls._run, args=(cls._queue,), name="whygpu-allreduce", daemon=True).start()
        cls._queue.put(b)

    # Test, then sleep this long (the GIL and the core released), until the allreduce completes.
    # Measured (784-2048-2048-10, 2 ranks x 1 thread on 2 cores): a thread blocked in Wait, which
    # busy-polls inside MPI, kept the buckets in flight about x1.5 longer -- it takes half the core
    # from the backward pass even while the other rank is not ready; a thread that sleeps between
    # Tests is woken with the scheduler's favour and does the copies in short bursts.
    poll_s = 1e-4

    @classmethod
    def _run(cls, q: queue.SimpleQueue) -> None:
        while True:
            b = q.get()
            try:
                while not b.request.Test():
                    time.sleep(cls.poll_s)
            except BaseException as e:  # handed to the main thread, which re-raises it in finish()
                b.error = e
            b.t_done = _clock()
            b.done.set()


class GradBuckets:
    """The buckets of one model's parameters, and their allreduces for one step.

    ``layers``: a list, in forward order, of each layer's parameters (empty
    for a ReLU).  Per step: ``begin()``, then ``ready(i)`` once layer i's
    parameters have their gradients (Sequential calls it), then ``finish()``;
    or ``abandon()`` instead of finish when the backward pass raised.
    """

    def __init__(
        self,
        layers: list[list],
        dtype: np.dtype,
        bucket_bytes: float,
        comm,
        device: bool,
        first_bucket_bytes: float = FIRST_BUCKET_BYTES,
        progress: str | None = None,
    ):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.device = device  # gradients in GPU memory: copied to (pinned) host buffers and back
        self.progress = progress_mode() if progress is None else progress
        if self.progress not in ("thread", "test"):
            raise ValueError(f"progress must be 'thread' or 'test', got {self.progress!r}")
        self.buckets: list[Bucket] = []
        groups: list[tuple[list, int]] = []
        group: list = []
        lowest, nbytes = 0, 0
        cap = min(first_bucket_bytes, bucket_bytes)
        for i in range(len(layers) - 1, -1, -1):  # last layer first, each layer's in its order
            for p in layers[i]:
                group.append(p)
                lowest, nbytes = i, nbytes + p.size * dtype.itemsize
            if group and nbytes >= cap:  # full: close it (a layer's parameters stay together)
                groups.append((group, lowest))
                group, nbytes, cap = [], 0, bucket_bytes
        if group:
            groups.append((group, lowest))
        if not groups:
            raise ValueError("the model has no parameters: there is nothing to train in parallel")
        for params, _ in groups:
            for p in params:
                p._hook = None  # a layout made for this model before (a sharded DataParallel's) lets go
        for k, (params, low) in enumerate(groups):
            self._add(params, low, dtype, extra=int(k == len(groups) - 1))
        if not device:  # the gradients move into the buckets: from now on the backward pass writes there
            self._adopt_grads()
        self.nbytes = sum(b.nbytes for b in self.buckets)
        self._flag = self._make_flag(dtype)
        self._next = len(self.buckets)  # the first bucket not yet started (none: no step under way)
        self.t_begin = 0.0

    def _add(self, params: list, lowest: int, dtype: np.dtype, extra: int) -> None:
        n = sum(p.size for p in params) + extra
        self.buckets.append(Bucket(params, lowest, self._host_empty(n, dtype)))

    def _host_empty(self, n: int, dtype: np.dtype) -> np.ndarray:
        if self.device:  # the copy engine moves pinned memory straight to and from the GPU
            from .. import cuda

            return cuda.pinned_empty((n,), dtype)
        return np.empty(n, dtype)

    def _adopt_grads(self) -> None:
        for b in self.buckets:
            for p, view in zip(b.params, b.views):
                view[...] = p._grad
                p._grad = view

    def _make_flag(self, dtype: np.dtype) -> np.ndarray:
        last = self.buckets[-1].buf
        assert last is not None
        return last[-1:]  # the failure count travels with the last bucket

    # -- one step ------------------------------------------------------------------
    def settle(self) -> None:
        """Before a backward pass adds to the gradients (synced or under no_sync): each bucket that
        still holds the ranks' sum from the last synced backward keeps it on rank 0 only, the other
        ranks' gradients are zeroed (lazily), so that the next sum counts it once (module docstring)."""
        for b in self.buckets:
            if b.summed:
                b.summed = False
                if self.rank != 0:
                    for p in b.params:
                        p.zero_grad()

    def begin(self) -> None:
        """Before the backward pass.  Never starts on a buffer in flight: anything still travelling
        (only possible after an interrupted finish) is waited for first."""
        self._wait_all()
        self.settle()
        self._next = 0
        self._flag[0] = 0
        self.t_begin = _clock()

    def ready(self, layer: int) -> None:
        """Layer ``layer``'s gradients are final: start the allreduce of every bucket that is
        now complete (with Tests as the progress mechanism, also move the ones in flight along)."""
        while self._next < len(self.buckets) and self.buckets[self._next].lowest_layer >= layer:
            self._start(self.buckets[self._next], copy=True)
            self._next += 1
        if self.progress == "test":
            # MPICH moves a non-blocking collective along only inside MPI calls: without these
            # Tests the allreduces would sit still until finish() waits for them.
            for b in self.buckets[: self._next]:
                if b.request is not None and b.request.Test():
                    b.request, b.t_done = None, _clock()
                    b.done.set()
        self._after_ready()

    def _after_ready(self) -> None:
        """What a subclass does once the complete buckets are started (sharded stage 2: free, allocate)."""

    def _start(self, b: Bucket, copy: bool) -> None:
        if copy:
            for p, view in zip(b.params, b.views):
                if p._grad_is_zero:  # no backward pass wrote it this step (a rank without samples)
                    view.fill(0)
                    p._grad_is_zero = self.device  # on the CPU, view is the gradient itself: now zeros
                elif self.device:
                    p._grad.to_host(out=view)  # waits for the GPU to finish this gradient
        b.error = None
        b.t_start = _clock()
        b.request = self._collective(b)
        b.done.clear()  # only once started: a failed start leaves nothing to wait for
        if self.progress == "thread":
            _Progress.submit(b)

    def _collective(self, b: Bucket) -> Any:
        return self.comm.Iallreduce(MPI.IN_PLACE, b.buf, op=MPI.SUM)  # buf += every other rank's buf

    def _wait_all(self) -> None:
        error = None
        for b in self.buckets:
            if self.progress == "thread":
                b.done.wait()
                error = error or b.error
                b.error = None
            elif b.request is not None:
                b.request.Wait()
                b.t_done = _clock()
                b.done.set()
            b.request = None
        if error is not None:
            raise error

    def finish(self) -> tuple[float, int]:
        """Start what is left, wait for every allreduce, and write the sums back into the
        gradients.  Returns the seconds spent waiting (the communication not hidden) and how
        many ranks' backward passes failed (then every gradient is zeroed: see abandon)."""
        self.ready(-1)
        t0 = _clock()
        self._wait_all()
        exposed = _clock() - t0
        failed = int(self._flag[0])
        if failed:
            self._zero()
        else:
            self._deliver()
        return exposed, failed

    def _deliver(self) -> None:
        """The sums where the optimizer reads them."""
        if self.device:
            for b in self.buckets:
                for p, view in zip(b.params, b.views):
                    p.grad = view  # an upload into the GPU's gradient
                b.summed = True
        else:
            for b in self.buckets:
                for p in b.params:
                    p._grad_is_zero = False  # the sum is already in place: the gradient is a view of buf
                b.summed = True

    def abandon(self) -> None:
        """The backward pass raised: start every allreduce not yet started, as they are (no copies:
        the sums will not be used) with this rank counted as failed, wait for all, and zero the
        gradients.  Every rank has then issued the same collectives, and sees the failure."""
        if self._next >= len(self.buckets):  # every bucket already started: nothing can carry the count
            self._wait_all()
            self._zero()
            return
        self._flag[0] = 1
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next], copy=False)
            self._next += 1
        self._wait_all()
        self._zero()

    def _zero(self) -> None:
        for b in self.buckets:
            b.summed = False
            for p in b.params:
                p.zero_grad()

    def attached(self) -> bool:
        """On the CPU: every gradient is still its bucket's view (model.to() makes new arrays)."""
        return self.device or all(p._grad is v for b in self.buckets for p, v in zip(b.params, b.views))

    def timing(self) -> dict[str, float]:
        """The last step's allreduces on the wall clock: ``allreduce_s``, the time with at least one
        in flight (the union of the buckets' start-to-completion intervals); ``allreduce_sum_s``,
        those intervals summed (more than allreduce_s when buckets overlap); ``first_start_s`` and
        ``last_done_s``, the first start and the last completion, from the backward pass's start."""
        spans = sorted((b.t_start, b.t_done) for b in self.buckets)
        return {
            "allreduce_s": _union(spans),
            "allreduce_sum_s": sum(e - s for s, e in spans),
            "first_start_s": spans[0][0] - self.t_begin,
            "last_done_s": max(e for _, e in spans) - self.t_begin,
        }

    def __len__(self) -> int:
        return len(self.buckets)


def _union(spans: list[tuple[float, float]]) -> float:
    """The length of the union of the (start, end) intervals: the time at least one was under way."""
    union, end = 0.0, -np.inf
    for s, e in sorted(spans):
        if e > end:
            union += e - max(s, end)
            end = e
    return union
