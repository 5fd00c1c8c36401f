"""ZeRO stages 1 and 2 (Rajbhandari et al., SC 2020): each rank keeps the optimizer state of 1/P
of the parameters, and (stage 2) only 1/P of the summed gradient.

Layout.  Each gradient bucket of ``_buckets.py`` (the same buckets, in the
same backward order) is one flat buffer of n elements padded with zeros to
P * c (c = ceil(n / P)) and cut into P contiguous shards of c elements; rank
r owns shard r of every bucket, as FSDP shards each flat parameter.  The
parameters are laid out the same way, in one flat buffer per bucket::

    pbuf  (P*c,)   [ shard 0 | shard 1 | ... | shard P-1 ]   the parameters (CPU: p.data are views)
    buf   (P*c,)   the gradients (CPU: p.grad are views); stage 1 keeps it,
                   stage 2 allocates it for the backward pass and frees it once reduced
    gshard (c,)    stage 2: this rank's summed gradient shard (stage 1: buf[:c], MPI's in-place result)

A step: the backward pass writes the gradients into ``buf``; as each bucket
is complete its non-blocking ``Ireduce_scatter_block`` starts (the progress
thread moves it along, as the allreduce) and leaves each rank the sum of
its own shard only; the optimizer updates ``pbuf``'s shard r (one flat 1-D
Parameter per bucket, so the existing optimizer math and its state arrays,
of c elements, are reused); an in-place ``Iallgather`` of every ``pbuf``
gives every rank everyone's updated shards before the next forward pass.
The failure count, which an allreduce of the last bucket used to carry,
travels in an allreduce of its own (one element), started with the last
bucket.

A GPU model: the gradients are copied into pinned host buckets as for the
allreduce; the shard parameter and its optimizer state live on the GPU (its
summed gradient is uploaded, c elements), the updated shard comes down into
a pinned ``pbuf``, and after the allgather each parameter is uploaded.
The layers still write full gradients in GPU memory, so there stage 2
frees the host staging only.

The model's ``p.grad`` after a synced backward.  No rank holds a full summed
gradient (stage 1's buffer was reduce-scattered in place, stage 2's freed, a
GPU's still holds this rank's own): until ``zero_grad()``, reading or
assigning it raises a RuntimeError saying which shard holds which elements
(each parameter's hook, see ``Parameter._hook``).  ``opt.optimizer.params[k]``
is bucket k's shard on this rank, its ``.grad`` the summed gradient.

Accumulation (a second backward without ``zero_grad()``, as PyTorch: G1 +
G2).  Before it adds to a bucket whose shards hold the sum G1 (``settle``),
each rank writes its own shard's sum at its place in the bucket and zeros
elsewhere, so that the next reduce-scatter adds G1 once.  ``zero_grad()``
zeroes the shards' gradients too, and ``step()`` uses zeros for the elements
of any parameter zeroed since the synced backward, as an unsharded optimizer.

A GPU model's parameters and its shard parameter are separate copies:
assigning ``p.data`` marks it, and ``step()`` copies the marked ones into the
shard first (``refresh_dirty``), so that loading weights is not undone.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

import numpy as np

from ..nn._module import Parameter
from ..nn._optimizer import Optimizer
from . import _sharded_state
from ._buckets import Bucket, GradBuckets, _clock, _Progress, _union
from ._runtime import MPI

__all__ = ["SHARDS", "ShardedBuckets", "ShardedOptimizer"]

SHARDS = ("none", "optimizer", "gradients")  # ZeRO stage 0, 1, 2

# Buckets with prefetched allgathers in flight: completed at exit, before mpi4py finalizes MPI
# (registered after mpi4py's own exit handler, so run before it).
_PENDING: weakref.WeakSet = weakref.WeakSet()


def _complete_pending() -> None:
    for b in list(_PENDING):
        b.wait_gathered()


atexit.register(_complete_pending)


def _upload(p, view: np.ndarray) -> None:
    """A GPU parameter's values from the gathered host buffer (not through ``.data``, which would mark
    them assigned); in place on the host if the model has since moved there (``model.to``)."""
    if isinstance(p._data, np.ndarray):
        p._data[...] = view
    else:
        p._data.copy_from_host(view)


class ShardedBuckets(GradBuckets):
    """GradBuckets whose gradients are reduce-scattered, with the flat parameter shards the
    optimizer updates (``shard_params``, one per bucket) and the allgather that follows."""

    def __init__(
        self,
        layers: list[list],
        dtype: np.dtype,
        bucket_bytes: float,
        comm,
        backend,
        stage: str,
        first_bucket_bytes: float,
        progress: str | None = None,
        prefetch: bool = False,
        names: dict[int, str] | None = None,
    ):
        if stage not in ("optimizer", "gradients"):
            raise ValueError(f"stage must be 'optimizer' or 'gradients', got {stage!r}")
        self.stage = stage
        self.rank, self.ranks = comm.Get_rank(), comm.Get_size()
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self._summed: set[int] = set()  # ids of the parameters whose summed gradient is in shards (till zero_grad)
        self._dirty: set[int] = set()  # GPU: ids of the parameters whose .data was assigned since the last step
        self._zero1 = np.zeros(1, self.dtype)  # stage 2: what a freed gradient reads as (zeros)
        self.peak_bytes = 0  # stage 2: the most full-gradient bytes held at once in the last backward pass
        super().__init__(layers, dtype, bucket_bytes, comm, backend.device is not None, first_bucket_bytes, progress)
        self.grad_buckets = [b for b in self.buckets if b.kind == "reduce_scatter"]
        self.shard_params = [self._shard_param(k, b) for k, b in enumerate(self.grad_buckets)]
        # prefetch: the allgather is left in flight by step() and waited for layer by layer in the
        # next forward pass (needs the progress thread: nothing else moves it along meanwhile)
        self.prefetch = bool(prefetch) and self.progress == "thread"
        self._gathering: list[Bucket] = []  # prefetched allgathers not yet waited for
        self._gather_spans: list[tuple[float, float]] = []
        self._gather_waited = 0.0
        self.gather_timing: dict[str, float] = {}  # the last prefetched allgather, once complete
        ids = [{id(p) for p in params} for params in layers]
        self._layer_buckets = [[b for b in self.grad_buckets if any(id(p) in mine for p in b.params)] for mine in ids]
        if self.stage == "gradients":
            for b in self.grad_buckets:
                self._release(b)
        # each parameter's place, for the error that says where its summed gradient lives
        self._where: dict[int, tuple[int, int, str]] = {}
        for k, b in enumerate(self.grad_buckets):
            off = 0
            for p in b.params:
                self._where[id(p)] = (k, off, (names or {}).get(id(p)) or p.name or "a parameter")
                off += p.size
                p._hook = self._hook

    # -- layout ---------------------------------------------------------------------
    def _add(self, params: list, lowest: int, dtype: np.dtype, extra: int) -> None:
        n = sum(p.size for p in params)
        c = -(-n // self.ranks)  # this rank's shard length; the last shard is padded with zeros
        buf = self._padded(n, c)
        b = Bucket(params, lowest, buf, kind="reduce_scatter")
        b.chunk = c
        # the parameters, flat and padded like the gradients: shard r is what rank r updates
        pbuf = self._host_empty(c * self.ranks, dtype)
        pbuf[n:] = 0
        off = 0
        pviews = []
        for p in params:
            view = pbuf[off : off + p.size].reshape(p.shape)
            view[...] = p.data  # a download on a GPU
            if not self.device:
                p._data = view  # the layers compute with the flat buffer's views from now on
            pviews.append(view)
            off += p.size
        b.pbuf, b.pviews = pbuf, pviews
        b.pshard = pbuf[self.rank * c : (self.rank + 1) * c]
        # stage 1: MPI's in-place reduce-scatter leaves the summed shard at the front of buf
        b.gshard = self._host_empty(c, dtype) if self.stage == "gradients" else buf[:c]
        self.buckets.append(b)

    def _padded(self, n: int, c: int) -> np.ndarray:
        buf = self._host_empty(c * self.ranks, self.dtype)
        buf[n:] = 0  # the padding: summed and updated as zeros, never read
        return buf

    def _adopt_grads(self) -> None:
        if self.stage == "optimizer":
            super()._adopt_grads()

    def _make_flag(self, dtype: np.dtype) -> np.ndarray:
        # A reduce-scatter would leave the failure count on one rank: it gets an allreduce of its
        # own, started right after the last gradient bucket.
        low = self.buckets[-1].lowest_layer
        flag = Bucket([], low, np.zeros(1, dtype), kind="flag")
        self.buckets.append(flag)
        assert flag.buf is not None
        return flag.buf

    def _shard_param(self, k: int, b: Bucket) -> Parameter:
        """Bucket b's shard r as a 1-D Parameter: the optimizer's view of what this rank updates."""
        c, lo = b.chunk, self.rank * b.chunk
        if not self.device:
            sp = Parameter(b.pshard, name=f"bucket{k}[{lo}:{lo + c}]")
            assert np.shares_memory(sp._data, b.pbuf)  # updated in place
            sp._grad = b.gshard
            sp._backend = self.backend
        else:
            sp = Parameter(np.array(b.pshard), name=f"bucket{k}[{lo}:{lo + c}]")
            sp._place(self.backend, None)  # a DeviceParameter: the update and its state on the GPU
        return sp

    # -- stage 2: gradient buffers that live for one backward pass -------------------------
    def _placeholder(self, p) -> np.ndarray:
        """A freed gradient: p's shape over one element (strides 0), so that p.grad, zero_grad() and
        model.to() still work and read zeros.  Writable, because zero_grad() fills it; the compiled
        back ends refuse to write a gradient into it (not contiguous)."""
        return np.lib.stride_tricks.as_strided(self._zero1, shape=p.shape, strides=(0,) * len(p.shape))

    def _alloc(self, b: Bucket) -> None:
        if b.kind != "reduce_scatter" or b.buf is not None:
            return
        b.attach(self._padded(b.n, b.chunk))
        if not self.device:
            for p, view in zip(b.params, b.views):
                p._grad = view
                p._grad_is_zero = True  # nothing accumulated in it yet: the backward pass overwrites
        held = sum(x.buf.nbytes for x in self.grad_buckets if x.buf is not None)
        self.peak_bytes = max(self.peak_bytes, held)

    def _release(self, b: Bucket) -> None:
        if b.buf is None:
            return
        if not self.device:
            for p in b.params:
                p._grad = self._placeholder(p)
                p._grad_is_zero = True  # read as zeros (after zero_grad; before that the hook refuses)
        b.detach()

    def alloc_all(self) -> None:
        """Every bucket's gradient buffer (no_sync: the local gradient accumulates in full)."""
        if self.stage == "gradients":
            for b in self.grad_buckets:
                self._alloc(b)

    def _after_ready(self) -> None:
        if self.stage != "gradients":
            return
        for b in self.buckets[: self._next]:  # started and reduced: the rest of the buffer goes
            if b.kind == "reduce_scatter" and b.buf is not None and b.done.is_set() and b.error is None:
                self._release(b)
        if self._next < len(self.buckets):  # the next layers' gradients go there
            self._alloc(self.buckets[self._next])

    # -- the model's gradients, and what a step reads ---------------------------------
    def _hook(self, p, event: str) -> None:
        """Each model parameter's hook (Parameter._hook): zero_grad forgets that p's summed gradient
        is in shards; reading or assigning p.grad before that raises; a GPU's .data assigned is noted."""
        if event == "zero":
            self._summed.discard(id(p))
        elif event == "data=":
            if self.device:
                self._dirty.add(id(p))
        elif id(p) in self._summed:
            raise RuntimeError(self._elsewhere(p, "read" if event == "grad" else "assigned"))
        elif event == "grad=" and not self.device and self.grad_buckets[self._where[id(p)][0]].buf is None:
            raise RuntimeError(
                f"{self._where[id(p)][2]}.grad cannot be assigned between steps: DataParallel(shard='gradients') "
                f"frees the full gradient's buffer once it is reduced (ZeRO stage 2); assign the shards' "
                f"gradients (opt.optimizer.params[k].grad), or use shard='optimizer'"
            )

    def _elsewhere(self, p, what: str) -> str:
        """Where p's summed gradient lives: which bucket and elements, which ranks, what this rank holds."""
        k, off, name = self._where[id(p)]
        c, r = self.grad_buckets[k].chunk, self.rank
        first, last = off // c, (off + p.size - 1) // c
        lo, hi = max(off, r * c), min(off + p.size, (r + 1) * c)
        mine = (
            f"this rank ({r}) holds its flat elements [{lo - off}:{hi - off}] as "
            f"opt.optimizer.params[{k}].grad[{lo - r * c}:{hi - r * c}]"
            if lo < hi
            else f"this rank ({r}) holds none of them"
        )
        ranks = f"rank {first}" if first == last else f"ranks {first}-{last}"
        return (
            f"{name}.grad cannot be {what} after a synced backward: DataParallel(shard={self.stage!r}) keeps "
            f"each rank's shard of the summed gradient only (ZeRO), so no rank holds {name}'s full gradient. "
            f"It is elements [{off}:{off + p.size}] of bucket {k} ({self.ranks} shards of {c}), held by {ranks}; "
            f"{mine}. Read the shards there (dp.clip_grad_norm_ clips them), call dp.zero_grad() first (.grad is "
            f"zeros again), or use shard='none' for the full averaged gradient on every rank"
        )

    def settle(self) -> None:
        """Before a backward pass adds to the gradients: each bucket whose shards hold the last synced
        sum (not zeroed since) gets it back, this rank's shard at its place and zeros elsewhere, so the
        next reduce-scatter adds it once (G1 + G2).  A parameter zeroed since starts from zero."""
        for b, sp in zip(self.grad_buckets, self.shard_params):
            if not b.summed:
                continue
            b.summed = False
            keep = [id(p) in self._summed for p in b.params]
            if not any(keep):
                continue
            shard = np.array(sp.grad)  # a copy (stage 1's is buf's front); a download on a GPU
            self._alloc(b)  # stage 2: a buffer for this backward pass
            assert b.buf is not None
            lo = self.rank * b.chunk
            b.buf.fill(0)
            b.buf[lo : lo + b.chunk] = shard
            for p, view, kept in zip(b.params, b.views, keep):
                if not kept:
                    p._grad_is_zero = True  # the backward pass overwrites it
                elif self.device:
                    p._grad_array().copy_from_host(view)  # into the GPU's gradient
                    p._grad_is_zero = False
                else:
                    p._grad_is_zero = False  # the view is the gradient

    def sync_zeroed(self) -> None:
        """Before a step (or a clip): the shards' gradients are zero where the model's were zeroed
        since the synced backward (zero_grad() on the model, or some parameters), as unsharded."""
        for b, sp in zip(self.grad_buckets, self.shard_params):
            live = [id(p) in self._summed for p in b.params]
            if all(live) or sp._grad_is_zero:
                continue
            if not any(live):
                sp.zero_grad()
                continue
            g, c, lo = sp.grad, b.chunk, self.rank * b.chunk  # CPU: the gradient itself; GPU: a copy
            off = 0
            for p, kept in zip(b.params, live):
                a, z = max(off, lo), min(off + p.size, lo + c)
                if not kept and a < z:
                    g[a - lo : z - lo] = 0
                off += p.size
            if self.device:
                sp.grad = g

    def refresh_dirty(self) -> None:
        """GPU: the parameters whose .data was assigned since the last step (weights loaded) into the
        host copy and this rank's shard parameter, which the step updates (else it would undo them)."""
        if not self._dirty:
            return
        for b, sp in zip(self.grad_buckets, self.shard_params):
            hit = False
            for p, view in zip(b.params, b.pviews):
                if id(p) in self._dirty:
                    view[...] = p.data  # a download
                    hit = True
            if hit:
                sp.data = b.pshard
        self._dirty.clear()

    # -- one step ------------------------------------------------------------------
    def begin(self) -> None:
        self.wait_gathered()
        self.peak_bytes = 0
        super().begin()  # settles first
        if self.stage == "gradients":
            self._alloc(self.buckets[0])

    def _start(self, b: Bucket, copy: bool) -> None:
        self._alloc(b)
        super()._start(b, copy)

    def _collective(self, b: Bucket) -> Any:
        if b.kind == "flag":
            return self.comm.Iallreduce(MPI.IN_PLACE, b.buf, op=MPI.SUM)
        if self.stage == "optimizer":  # the sum of shard r lands in buf[:c] on rank r
            return self.comm.Ireduce_scatter_block(MPI.IN_PLACE, b.buf, op=MPI.SUM)
        return self.comm.Ireduce_scatter_block(b.buf, b.gshard, op=MPI.SUM)

    def _deliver(self) -> None:
        for b, sp in zip(self.grad_buckets, self.shard_params):
            if self.device:
                sp.grad = b.gshard  # c elements up to the GPU
            else:
                sp._grad_is_zero = False  # the sum is in place: sp's gradient is gshard
            if self.stage == "gradients":
                self._release(b)
            elif not self.device:
                for p in b.params:
                    p._grad_is_zero = False  # buf: reduce-scattered in place (settle reads the shard)
            self._summed.update(id(p) for p in b.params)  # p.grad refuses until zero_grad
            b.summed = True

    def _zero(self) -> None:
        super()._zero()  # (each parameter's zero_grad: out of _summed)
        for sp in self.shard_params if hasattr(self, "shard_params") else []:
            sp.zero_grad()
        if self.stage == "gradients":
            for b in self.grad_buckets:
                self._release(b)
                for p in b.params:
                    p._grad_is_zero = True

    def attached(self) -> bool:
        """The model's parameters are still the flat buffers' views (CPU), the same DeviceArrays (GPU)."""
        if self.device:
            return True
        return all(p._data is v for b in self.grad_buckets for p, v in zip(b.params, b.pviews))

    def refresh(self) -> None:
        """A GPU model's parameters changed outside a step (broadcast_parameters): the host copy and
        the shard parameter follow.  (On the CPU the parameters are the flat buffers' views.)"""
        if not self.device:
            return
        for b, sp in zip(self.grad_buckets, self.shard_params):
            for p, view in zip(b.params, b.pviews):
                view[...] = p.data
            sp.data = b.pshard
        self._dirty.clear()

    def allgather(self) -> float | None:
        """Every rank's updated shards into every rank's parameters (in place), the first layers'
        buckets first: the forward pass needs them first.  Returns the seconds at least one
        allgather was under way; with prefetch, None: they are left in flight, and the next forward
        pass waits for each layer's bucket before that layer (see wait_layer, gather_timing)."""
        self.wait_gathered()  # a second step without a forward pass between
        if self.device:
            for b, sp in zip(self.grad_buckets, self.shard_params):
                dev: Any = sp._data  # a DeviceArray
                dev.to_host(out=b.pshard)  # the updated shard comes down
        order = self.grad_buckets[::-1]
        for b in order:
            b.error = None
            b.t_start = _clock()
            b.request = self.comm.Iallgather(MPI.IN_PLACE, b.pbuf)
            b.done.clear()
            if self.progress == "thread":
                _Progress.submit(b)
        if self.prefetch:
            self._gathering = list(order)
            self._gather_spans, self._gather_waited = [], 0.0
            for b in order:
                for p in b.params:
                    p._pending = self.wait_gathered  # p.data read or assigned before its layer ran: wait then
            _PENDING.add(self)
            return None
        self._wait_all()
        if self.device:
            for b in self.grad_buckets:
                for p, view in zip(b.params, b.pviews):
                    _upload(p, view)
        return _union([(b.t_start, b.t_done) for b in order])

    def wait_layer(self, layer: int) -> None:
        """Sequential's hook before layer ``layer``'s forward pass: its parameters' allgather done."""
        if self._gathering:
            self._complete([b for b in self._layer_buckets[layer] if b in self._gathering])

    def wait_gathered(self) -> None:
        """Every prefetched allgather done (before a backward pass, a step, a broadcast, at exit)."""
        if self._gathering:
            self._complete(list(self._gathering))

    def _complete(self, todo: list[Bucket]) -> None:
        t0 = _clock()
        error = None
        for b in todo:
            b.done.wait()
            error = error or b.error
            b.error, b.request = None, None
        self._gather_waited += _clock() - t0
        for b in todo:
            self._gathering.remove(b)
            self._gather_spans.append((b.t_start, b.t_done))
            for p, view in zip(b.params, b.pviews):
                p._pending = None
                if self.device:
                    _upload(p, view)
        if not self._gathering:
            _PENDING.discard(self)
            self.gather_timing = {"allgather_s": _union(self._gather_spans), "allgather_wait_s": self._gather_waited}
        if error is not None:
            raise error

    def __len__(self) -> int:
        return len(self.grad_buckets) if hasattr(self, "grad_buckets") else len(self.buckets)


class ShardedOptimizer(Optimizer):
    """What ``dp.optimizer(optim.Adam, lr=...)`` returns under ``shard="optimizer"`` or
    ``"gradients"``: the optimizer class made on this rank's flat shards (``.optimizer``, which
    keeps state for them only), and a ``step()`` that updates the shards and allgathers the
    parameters.  ``zero_grad()`` zeroes the model's gradients and the shards'.  ``lr`` and every
    other hyperparameter (``momentum``, ``betas``, ``eps``, ``weight_decay``, ``nesterov``, ``t``)
    are the inner optimizer's, read and assigned through this one (``opt.lr = ...`` for a schedule)."""

    _OWN = frozenset({"optimizer", "params"})  # this object's own public attributes (the rest: the inner's)

    def __init__(self, dp, inner: Optimizer):
        # Optimizer.__init__ is not run: the parameters it stands for are the model's (fit's checks),
        # the ones it updates are the inner optimizer's shards.
        self._dp = dp
        self.optimizer = inner
        self.params = dp.module.parameters()
        self._placed = [None] * len(self.params)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in self._OWN:
            raise AttributeError(name)
        return getattr(self.optimizer, name)  # lr, momentum, betas, t ...

    def __setattr__(self, name: str, value) -> None:
        # the hyperparameters go to the optimizer that steps (else it would never see them); private
        # names, this object's own and what its class defines (a method replaced on the instance) stay
        if name.startswith("_") or name in self._OWN or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    def step(self) -> None:
        """Update this rank's shards from their summed gradients, then allgather the parameters."""
        self._dp._sharded_step(self)

    def zero_grad(self) -> None:
        self._dp.zero_grad()

    def _states(self) -> list:
        return self.optimizer._states()

    # -- checkpoints: the full per-parameter state, whatever the layout (see _sharded_state.py) --
    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather the full per-parameter optimizer state on rank ``to`` (a collective: every rank
        calls it), as PyTorch's ZeroRedundancyOptimizer; ``state_dict()`` then returns it there."""
        _sharded_state.consolidate(self, to)

    def state_dict(self) -> dict:
        """The consolidated state (after ``consolidate_state_dict`` on this rank), keyed per
        parameter as an unsharded optimizer's: loadable on any number of ranks."""
        return _sharded_state.state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Load a full optimizer state (an unsharded optimizer's, or a consolidated one from any
        number of ranks): each rank keeps its shards' slices of it."""
        _sharded_state.load_state_dict(self, state)

    def _prepare_load(self, state: dict):
        """load_state_dict's checks (fit's resume): a function that assigns (nothing before)."""
        return _sharded_state.prepare_load(self, state)

    def __repr__(self) -> str:
        dp = self._dp
        return f"ShardedOptimizer({self.optimizer!r}, shard={dp.shard!r}, rank {dp.rank} of {dp.size})"
