"""DataParallel: one model trained by many processes, each on its share of every batch.

    import whygpu.distributed as dist
    dist.init()                                   # before model.to("cuda"): picks this rank's GPU
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).to("openmp")
    dp = dist.DataParallel(model)                 # every rank now holds rank 0's weights
    opt = optim.SGD(model.parameters(), lr=0.1)
    s0, s1 = dist.share(len(xb), dist.size(), dist.rank())   # this rank's rows of the global batch xb
    out = dp(xb[s0:s1], global_batch=len(xb))     # the forward pass on them
    loss = loss_fn(out, yb[s0:s1])
    dp.zero_grad()
    dp.backward(loss_fn.backward())               # every p.grad: the global batch's mean-loss gradient
    opt.step()                                    # the same update on every rank

Run it with ``mpiexec -n 4 python train.py``.  Each rank keeps a full copy of
the model and its own optimizer; only the gradients travel, summed by an
allreduce that overlaps the backward pass (see ``_buckets.py``).  Since every
rank then applies the same update to the same weights, the copies stay
bitwise identical without ever sending the weights again.

Sharding (ZeRO stages 1 and 2, Rajbhandari et al. 2020; the API of PyTorch's
``ZeroRedundancyOptimizer`` and FSDP's ``SHARD_GRAD_OP``)::

    dp = dist.DataParallel(model, shard="optimizer")   # or "gradients"; "none" (the default) as above
    opt = dp.optimizer(optim.Adam, lr=1e-3)             # like ZeroRedundancyOptimizer(params, optim.Adam, lr=...)
    ... dp(x, global_batch=N); dp.zero_grad(); dp.backward(g); opt.step()   # or dp.fit(..., optimizer=opt)

Each gradient bucket is a flat buffer padded to P equal contiguous shards;
rank r owns shard r of every bucket.  The buckets are reduce-scattered
(non-blocking, during the backward pass, as the allreduce was) so that each
rank receives the summed gradient of its shard only; ``opt`` is the optimizer
class made on this rank's flat shards (its state -- momentum, Adam's m and v
-- covers 1/P of the parameters), and ``opt.step()`` updates them and
allgathers the parameters, so every rank again holds the same bits.  With
``"gradients"`` the full gradient buffer lives only during the backward pass:
each bucket's is freed once reduced.  ``dp.memory()`` measures the bytes this
rank holds (see there).  So after a synced backward no rank holds a model
parameter's full summed gradient: until ``zero_grad()``, reading (or
assigning) ``p.grad`` raises a RuntimeError that says which bucket, which
ranks and which elements of ``opt.optimizer.params[k].grad`` (this rank's
shard of bucket k) hold it; after ``zero_grad()`` it reads zeros, and under
``no_sync()`` the local gradient.  Accumulating without ``zero_grad()``
works as unsharded (see below); ``zero_grad()`` (dp's or opt's) zeroes the
shards' gradients too, and a step after it with no backward does what the
unsharded optimizer would.  Hyperparameters assigned on ``opt``
(``opt.lr``, ``opt.momentum``, ``opt.betas`` ...) reach the optimizer that
steps.  Rules: make the optimizer with ``dp.optimizer`` (``fit`` refuses one
made on ``model.parameters()``: it would keep state for every parameter and
read gradients that were never summed); move the model (``model.to``)
before wrapping it.  On a GPU, the shard's update and state are on the GPU;
the gradients travel through pinned host buckets as for the allreduce, and
stage 2 frees that host staging (the layers still write full gradients in
GPU memory).  The shard is a GPU copy of the parameters: weights assigned
after wrapping (``p.data = ...``, ``model.load_state_dict``) are copied into
it at the next step, so that the step starts from them.
``dp.optimizer(cls, **kw)`` with ``shard="none"`` is ``cls(model.parameters(), **kw)``.

``prefetch=True`` (sharded only; FSDP's ``forward_prefetch``): ``opt.step()``
starts the allgathers and returns; the next forward pass waits for each
layer's bucket just before that layer, so the later buckets travel while the
first layers compute.  Reading or assigning a parameter's ``.data`` (so
``state_dict``) or moving or converting it (``model.to``) before then waits
for its bucket, and a backward pass, a step or ``broadcast_parameters``
waits for all, so nothing reads a half-gathered value.  It needs the
progress thread (MPI_THREAD_MULTIPLE); without it DataParallel warns once
(UserWarning), runs with ``prefetch=False`` (``dp.prefetch`` and the repr
say so) and waits for the allgather in ``step()``.  Off by default, as in
PyTorch: on 2 cores the copies still take CPU from the forward pass
(``tests/mpi/zero_speed.py`` measures what it gains).

``dp(x, global_batch=N, offset=None)``: x is rows [offset, offset + len(x))
of a global batch of N rows (offset defaults to this rank's ``share``, and x
must then hold exactly that share).  It does two things: Dropout layers take
x's rows of the mask one process would draw for the whole batch (every rank
draws the whole mask from the same generator -- DataParallel gives every rank
rank 0's random state when wrapping and when ``fit`` starts -- and keeps its
rows), so P ranks compute exactly what one process computes; and the next
``dp.backward(grad)`` weights this rank's gradient by len(x) / N.  A rank
with no rows in a small batch calls ``dp(x[0:0], global_batch=N)`` too when
the model has Dropout (so that its generator stays in step), then
``dp.backward(None)``.  Plain ``dp(x)`` still works: Dropout then draws a
mask for x alone, the same on every rank seeded alike (correlated masks, not
what one process draws), and backward weights by 1/size() unless told.
``fit`` does all of this itself.

Gradients accumulate as in PyTorch's DDP: synced backward passes without
``zero_grad()`` between them leave every rank with G1 + G2 + ..., each Gi
the global batch's mean-loss gradient of backward i (the sum already in the
buffers is counted once: before the next backward adds to it, rank 0 keeps
it and the others start from zero -- sharded, each rank its own shard's;
see ``_buckets.py``).  ``with dp.no_sync():`` ``dp.backward`` only
accumulates this rank's gradient, without any communication; the next
synced ``dp.backward`` adds everything accumulated since, summed over the
ranks, to what the gradients held.  Gradient accumulation over k
micro-batches costs one allreduce.  (Inside ``no_sync()`` after a synced
backward, unsharded, ``p.grad`` reads rank 0's sum plus its own
accumulation on rank 0 and the rank's own accumulation elsewhere.)

``dp.clip_grad_norm_(max_norm, norm_type=2.0)`` after the synced backward
(before ``opt.step()``) is ``torch.nn.utils.clip_grad_norm_`` over the
global summed gradient, sharded or not: it returns the total norm and
scales by max_norm / (total + 1e-6) where that is below 1.

An exception during ``dp.backward`` (a bad gradient, an error in a layer):
that rank still starts and completes every allreduce of the step, so all
ranks issue the same collectives and the next step starts clean; every
rank's gradients are then zero (as after ``zero_grad()``: what was
accumulated since is lost) and every rank raises -- the failed one its own
exception, the others a RuntimeError naming how many ranks failed -- so no
rank takes an optimizer step on half a gradient.  Under ``no_sync()`` there
are no collectives: only the failed rank's gradient is left partial.

``dp.last_step`` describes the last synchronised backward pass (seconds are
wall-clock, ``time.perf_counter``):

* ``backward_s``: the backward pass, with the copies into the buckets and the
  starts of their allreduces;
* ``allreduce_s``: the time at least one allreduce was in flight (the union of
  the buckets' start-to-completion intervals);
* ``exposed_s``: waiting for the allreduces after the backward pass ended;
* ``bytes``, ``buckets``: the gradients' size and how many buckets carried them;
* ``allreduce_sum_s``: the buckets' intervals summed (>= allreduce_s);
* ``first_start_s``, ``last_done_s``: the first allreduce's start and the last
  one's completion, from the backward pass's start;
* ``progress``: "thread" (a helper thread waits inside MPI) or "test";
* sharded only: ``reduce_scatter_s`` (the same as ``allreduce_s``, which then
  means the reduce-scatters), and, once ``opt.step()`` has run (NaN before),
  ``update_s``, the optimizer's update of this rank's shards, and
  ``allgather_s``, the time the parameters' allgathers were in flight
  (prefetch: NaN, as they are still in flight when ``step()`` returns;
  instead the next backward pass's record has ``allgather_wait_s``, what its
  forward pass waited for the previous step's allgather, and
  ``prefetched_allgather_s``, the time that allgather was in flight).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import _random
from ..nn._module import _check_number
from ..nn._sequential import Sequential, _positive_int
from . import _runtime
from ._agree import check_same_model
from ._buckets import GradBuckets
from ._keras import KerasMethods
from ._memory import memory_report, state_count
from ._sharded import SHARDS, ShardedBuckets, ShardedOptimizer
from ._shares import _batch_rows, _dropouts, share

__all__ = ["DataParallel", "share"]

_clock = time.perf_counter


class DataParallel(KerasMethods):
    """Wraps a :class:`whygpu.nn.Sequential` (on any back end) for data-parallel training.

    ``bucket_mb``: the gradients travel in buckets of about this many MiB
    (PyTorch DDP's default, 25); smaller buckets start communicating earlier
    in the backward pass, larger ones pay the per-message latency less often.
    ``first_bucket_mb`` (DDP's 1 MiB): the first bucket, the last layers'
    gradients, closes early so that communication starts at once.
    On wrapping, every rank must hold the same model and wrap it alike (the
    parameters' shapes and dtypes, ``shard``, the bucket sizes, ``prefetch``
    and the back end and dtype are compared, in one small allgather: a
    difference raises the same ValueError on every rank), and rank 0's
    parameters and random state are copied to every rank.

    ``comm``: the ranks that hold the replicas (an MPI communicator; default
    None, every rank: ``dist.comm()``).  Everything -- the checks, the
    broadcasts, the gradients' sums, the shares of each batch, ``fit`` -- runs
    over it alone, and ``dp.rank``/``dp.size`` are this rank's place in it.
    Give it a sub-communicator to run several data-parallel groups side by
    side, e.g. ``g = dist.grid(2)``; ``DataParallel(dist.tensor_parallel(model,
    comm=g.split), comm=g.data)``: the ranks holding the same tensor slice of
    different replicas sum their gradients, each replica's ranks split the
    model.  Each group gets its own rank 0's parameters and random state
    (replica 0's ranks: they agree on the random state, as tensor_parallel
    makes them, so every rank of the grid ends with the same).
    """

    def __init__(
        self,
        model: Sequential,
        *,
        shard: str = "none",
        bucket_mb: float = 25.0,
        first_bucket_mb: float = 1.0,
        prefetch: bool = False,
        comm=None,
    ):
        if not isinstance(model, Sequential):
            raise TypeError(f"DataParallel wraps a whygpu.nn.Sequential, got {type(model).__name__}")
        if not isinstance(shard, str) or shard not in SHARDS:
            raise ValueError(
                f"shard must be 'none', 'optimizer' (ZeRO stage 1) or 'gradients' (ZeRO stage 2), got {shard!r}"
            )
        if not isinstance(prefetch, bool):
            raise TypeError(f"prefetch must be True or False, got {prefetch!r}")
        if prefetch and shard == "none":
            raise ValueError(
                "prefetch=True overlaps the sharded optimizer's allgather with the next forward pass; "
                "with shard='none' there is no allgather (use shard='optimizer' or 'gradients')"
            )
        for name, v in (("bucket_mb", bucket_mb), ("first_bucket_mb", first_bucket_mb)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.module = model
        self.shard = shard
        self.bucket_mb = float(bucket_mb)
        self.first_bucket_mb = float(first_bucket_mb)
        self.prefetch = prefetch
        world = _runtime.init()  # always: it installs the failure handling
        self.comm = world if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._buckets: GradBuckets | None = None
        self._optimizer: Any = None  # the last made by dp.optimizer() or given to fit: what memory() counts
        self._placed: tuple = ()  # what the buckets were made for: (back end's device, dtype, parameter arrays)
        self._sync = True  # False inside no_sync()
        self._weight: float | None = None  # len(x) / global_batch from the last dp(x, global_batch=...)
        self._warned_dropout = False
        self.last_step: dict = {}
        check_same_model(self)  # the same ValueError on every rank, else a hang in the broadcast
        self.broadcast_parameters()
        self.broadcast_random_state()
        if shard != "none":  # the flat layout and the shards exist before the optimizer is made
            buckets = self._ensure_buckets()
            if prefetch and not getattr(buckets, "prefetch", False):
                self.prefetch = False
                warnings.warn(
                    f"DataParallel(prefetch=True) needs MPI_THREAD_MULTIPLE (a progress thread moves the "
                    f"allgather along while the forward pass computes); this MPI gives progress mode "
                    f"{buckets.progress!r}: running with prefetch=False (step() waits for the allgather)",
                    UserWarning,
                    stacklevel=2,
                )

    def __repr__(self) -> str:
        return (
            f"DataParallel({self.module.backend!r}, ranks={self.size}, shard={self.shard!r}, "
            f"bucket_mb={self.bucket_mb:g}, "
            f"first_bucket_mb={self.first_bucket_mb:g}" + (", prefetch=True)" if self.prefetch else ")")
        )

    # -- the explicit step -------------------------------------------------------------
    def __call__(self, x, global_batch: int | None = None, offset: int | None = None):
        """The forward pass on this rank's samples (the wrapped model's ``model(x)``).

        ``global_batch``: x is rows [offset, offset + len(x)) of a global batch of this many
        rows (``offset`` defaults to this rank's :func:`share` of it, and x must hold exactly
        that share).  Dropout then takes those rows of the whole batch's mask, and the next
        ``backward`` weights this rank's gradient by len(x) / global_batch (see the module
        docstring)."""
        model = self.module
        if global_batch is None:
            if offset is not None:
                raise ValueError("offset needs global_batch (the rows of which batch?)")
            self._weight = None
            if self.size > 1 and model.training and not self._warned_dropout and _dropouts(model):
                self._warned_dropout = True
                warnings.warn(
                    "dp(x) without global_batch: Dropout draws its mask for this rank's rows alone, the "
                    "same on every rank seeded alike; pass dp(x, global_batch=N) to draw one process's masks",
                    stacklevel=2,
                )
            return model(x)
        x = model._check_input(x)
        n = _positive_int(global_batch, "global_batch")
        if offset is None:
            s0, s1 = share(n, self.size, self.rank)
            if x.shape[0] != s1 - s0:
                raise ValueError(
                    f"rank {self.rank}'s share of a global batch of {n} is rows {s0}..{s1} ({s1 - s0} rows), "
                    f"but x has {x.shape[0]}: pass x[s0:s1] with (s0, s1) = share({n}, size, rank), or offset="
                )
        else:
            if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
                raise TypeError(f"offset must be an integer, got {offset!r}")
            s0 = int(offset)
            if not 0 <= s0 <= s0 + x.shape[0] <= n:
                raise ValueError(f"rows {s0}..{s0 + x.shape[0]} of x do not lie in a global batch of {n}")
        self._weight = x.shape[0] / n
        with _batch_rows(model, s0, n):
            return model(x)

    def parameters(self):
        return self.module.parameters()

    def zero_grad(self) -> None:
        """Zero every parameter's gradient, and (sharded) the shards' summed gradients."""
        self.module.zero_grad()
        if isinstance(self._buckets, ShardedBuckets):
            for sp in self._buckets.shard_params:
                sp.zero_grad()

    def train(self, mode: bool = True) -> DataParallel:
        self.module.train(mode)
        return self

    def eval(self) -> DataParallel:
        return self.train(False)

    def broadcast_parameters(self, root: int = 0) -> None:
        """Copy rank ``root``'s parameters to every rank (a GPU model's through host memory)."""
        if self.size == 1:
            return
        if isinstance(self._buckets, ShardedBuckets):
            self._buckets.wait_gathered()  # nothing may still be arriving in the arrays broadcast
        for p in self.module.parameters():
            if self.module._backend.device is None:
                self.comm.Bcast(p._data, root=root)  # in place: the arrays the model computes with
            else:
                host = np.ascontiguousarray(p.data)  # a copy from the GPU
                self.comm.Bcast(host, root=root)
                p.data = host
        if isinstance(self._buckets, ShardedBuckets):
            self._buckets.refresh()

    def broadcast_random_state(self, root: int = 0) -> None:
        """Give every rank rank ``root``'s state of whygpu's random generator (shuffling, Dropout),
        so that the ranks draw the same numbers from here on."""
        if self.size == 1:
            return
        gen = _random.get_rng().bit_generator
        gen.state = self.comm.bcast(gen.state, root=root)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside the block ``backward`` accumulates this rank's gradient locally, without any
        allreduce (PyTorch DDP's ``no_sync``); the next ``backward`` outside it sums, over the ranks,
        everything accumulated since ``zero_grad()``.  Every rank must use the same steps inside."""
        old = self._sync
        self._sync = False
        try:
            yield
        finally:
            self._sync = old

    def backward(self, grad, weight: float | None = None) -> None:
        """The model's backward pass, then every gradient summed over the ranks.

        This call's gradient is multiplied by ``weight``, this rank's share of
        the global batch (n_rank / N; None means len(x) / global_batch when the
        forward pass was ``dp(x, global_batch=...)``, else 1/size(), equal
        shares), so that every ``p.grad`` ends up the gradient of the mean loss
        over the whole global batch, the same on every rank.  Only this call's
        gradient is scaled (the loss gradient is, before the backward pass):
        what was accumulated before (``no_sync``) keeps its own weights.  The
        gradient of each group of layers starts travelling as soon as the
        backward pass has produced it.  What is summed is the gradient
        accumulated since ``zero_grad()``.  A rank without samples in this
        batch calls ``dp.backward(None)``: it adds zeros, but every rank must
        take part in every allreduce.  If the backward pass raises on some
        rank, every rank raises and every gradient is zero (module docstring)."""
        w = self._weight if weight is None else weight
        self._weight = None
        if w is None:
            w = 1.0 / self.size
        self._reduce(grad, w)

    def _reduce(self, grad, weight) -> None:
        """backward with the allreduces; ``grad`` None: this rank had no samples (it adds zeros)."""
        model = self.module
        if not self._sync:  # no_sync(): the backward pass alone, nothing leaves this rank
            if grad is not None:
                if isinstance(self._buckets, ShardedBuckets):
                    self._buckets.wait_gathered()
                    self._buckets.alloc_all()  # stage 2: the full gradient accumulates until the synced backward
                if self._buckets is not None:
                    self._buckets.settle()  # a synced sum in the buckets counts once at the next sum
                model._backward(self._scaled(grad, weight), False)
            return
        buckets = self._ensure_buckets()
        buckets.begin()
        t0 = _clock()
        try:
            if grad is not None:
                grad = self._scaled(grad, weight)
                model._grads_ready = buckets.ready  # Sequential calls it as each layer's gradients are final
                try:
                    model._backward(grad, False)
                finally:
                    model._grads_ready = None
        except BaseException:
            # Start and complete the rest of this step's allreduces (every rank issues the same
            # collectives, and the others learn of the failure), then re-raise.
            buckets.abandon()
            raise
        t1 = _clock()
        exposed, failed = buckets.finish()
        self.last_step = {
            "backward_s": t1 - t0,
            **buckets.timing(),
            "exposed_s": exposed,
            "bytes": buckets.nbytes,
            "buckets": len(buckets),
            "progress": buckets.progress,
        }
        if self.shard != "none":  # allreduce_s is then the reduce-scatters' time; the step fills in the rest
            self.last_step.update(
                reduce_scatter_s=self.last_step["allreduce_s"], update_s=math.nan, allgather_s=math.nan
            )
            if self.prefetch and isinstance(buckets, ShardedBuckets) and buckets.gather_timing:
                # the previous step's allgather, completed during this step's forward pass
                g = buckets.gather_timing
                self.last_step.update(allgather_wait_s=g["allgather_wait_s"], prefetched_allgather_s=g["allgather_s"])
                buckets.gather_timing = {}
        if failed:
            raise RuntimeError(
                f"dp.backward failed on {failed} other rank(s) in this step: the gradients were not summed "
                f"and are zero on every rank (as after zero_grad()); repeat the step"
            )

    def _scaled(self, grad, weight):
        """The checked loss gradient times ``weight``: the backward pass is linear in it, so this scales
        this call's parameter gradients alone (a (batch, out) array, not a pass over the parameters)."""
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating, np.integer)):
            raise TypeError(f"weight must be a number, got {weight!r}")
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight!r}")
        model = self.module
        grad = model._check_grad(grad)
        if weight == 1.0:
            return grad
        be = model._backend
        if be.device is None:
            return np.multiply(grad, weight, dtype=grad.dtype)
        return be.asarray(np.multiply(be.to_host(grad), weight, dtype=model._dtype))  # a small array

    def _ensure_buckets(self) -> GradBuckets:
        """The buckets, made anew when the model moved or changed dtype (model.to)."""
        model = self.module
        params = model.parameters()
        placed = (model._backend.device, model._dtype, tuple(id(p._data) for p in params))
        if self._buckets is None or placed != self._placed or not self._buckets.attached():
            if self._buckets is not None and self.shard != "none":
                raise RuntimeError(
                    f"the model was moved or converted (model.to) after DataParallel(shard={self.shard!r}) laid "
                    f"its parameters out in shards: call model.to(...) first, then wrap it and make the optimizer"
                )
            layers = [layer.parameters() for layer in model.layers]
            names = {id(p): name for name, p in model.named_parameters()}
            cap, first = self.bucket_mb * 2**20, self.first_bucket_mb * 2**20
            if self.shard == "none":
                self._buckets = GradBuckets(
                    layers, model._dtype, cap, self.comm, model._backend.device is not None, first_bucket_bytes=first
                )
            else:
                self._buckets = ShardedBuckets(
                    layers,
                    model._dtype,
                    cap,
                    self.comm,
                    model._backend,
                    self.shard,
                    first_bucket_bytes=first,
                    prefetch=self.prefetch,
                    names=names,
                )
                if self._buckets.prefetch:  # Sequential waits for each layer's parameters before it
                    model._params_needed = self._buckets.wait_layer
            self._placed = (model._backend.device, model._dtype, tuple(id(p._data) for p in params))
        return self._buckets

    # -- ZeRO: the optimizer on this rank's shards -------------------------------------------
    def optimizer(self, optimizer_class, **kwargs):
        """The optimizer for this model, made here as PyTorch's ``ZeroRedundancyOptimizer(params,
        optimizer_class=..., **kwargs)`` makes it: ``opt = dp.optimizer(optim.Adam, lr=1e-3)``.

        With ``shard="none"`` this is ``optimizer_class(model.parameters(), **kwargs)``.  Sharded, it
        is a :class:`ShardedOptimizer`: ``optimizer_class`` made on this rank's flat shard of every
        bucket (so its state -- momentum, Adam's m and v -- covers 1/P of the parameters), whose
        ``step()`` updates that shard and allgathers the parameters."""
        from ..nn._optimizer import Optimizer

        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            made = isinstance(optimizer_class, Optimizer)
            raise TypeError(
                "dp.optimizer takes an optimizer class and its arguments, e.g. dp.optimizer(optim.Adam, lr=1e-3)"
                + (
                    f"; got an optimizer already made ({type(optimizer_class).__name__}): it would keep state "
                    f"for every parameter"
                    if made
                    else f"; got {optimizer_class!r}"
                )
            )
        if self.shard == "none":
            opt = optimizer_class(self.module.parameters(), **kwargs)
        else:
            buckets = self._ensure_buckets()
            assert isinstance(buckets, ShardedBuckets)
            opt = ShardedOptimizer(self, optimizer_class(buckets.shard_params, **kwargs))
        inner = opt.optimizer if isinstance(opt, ShardedOptimizer) else opt
        if state_count(inner):  # the state made now (zeros, as the first step would): memory() sees it at once
            for store in inner._states():
                for i, p in enumerate(inner.params):
                    inner._state(store, i, p)
        self._optimizer = opt
        return opt

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> float:
        """``torch.nn.utils.clip_grad_norm_`` over the whole model's summed gradient: returns its total
        ``norm_type``-norm (before clipping) and, when ``max_norm / (total + 1e-6)`` is below 1,
        scales every gradient by it.  Call it after the synced backward, before ``opt.step()``.
        The norm is global: unsharded, each rank computes it from the full (averaged) gradient it
        holds, the same on every rank; sharded, from the shards' summed gradients (padding is
        zeros), each rank's part added in rank order after one small allgather, and each rank
        scales its own shards."""
        max_norm = _check_number(max_norm, "max_norm", 0.0)
        if isinstance(norm_type, str) and norm_type.strip().lower() == "inf":
            norm_type = math.inf
        p = _check_number(norm_type, "norm_type", 0.0, False)
        sharded = self.shard != "none"
        if sharded:
            buckets = self._ensure_buckets()
            assert isinstance(buckets, ShardedBuckets)
            buckets.sync_zeroed()  # what the step would read
            params = buckets.shard_params
        else:
            params = self.module.parameters()
        grads = [q.grad for q in params]  # CPU: the gradients themselves; GPU: copies

        def part(g) -> float:  # sum |g|^p, or max |g| for the infinity norm
            a = np.abs(g, dtype=np.float64)
            return float(a.max(initial=0.0)) if p == math.inf else float(np.sum(a**p))

        parts = [part(g) for g in grads]
        if sharded and self.size > 1:  # rank order on every rank: the same bits everywhere
            parts = [x for rank_parts in self.comm.allgather(parts) for x in rank_parts]
        total = max(parts, default=0.0) if p == math.inf else math.fsum(parts) ** (1.0 / p)
        coef = max_norm / (total + 1e-6)
        if not coef >= 1.0:  # (NaN too, as PyTorch: the gradients become NaN)
            device = self.module._backend.device is not None
            for q, g in zip(params, grads):
                g *= g.dtype.type(coef)
                if device:
                    q.grad = g  # an upload
        return total

    def _sharded_step(self, opt: ShardedOptimizer) -> None:
        """The sharded optimizer's step: this rank's shards updated, then every parameter allgathered."""
        buckets = self._ensure_buckets()
        assert isinstance(buckets, ShardedBuckets)
        buckets.wait_gathered()  # a second step without a forward pass: the last allgather reads the shards
        buckets.refresh_dirty()  # GPU: weights assigned since (p.data = ...) into the shard copy
        buckets.sync_zeroed()  # zeros where the model's gradients were zeroed since the synced backward
        t0 = _clock()
        opt.optimizer.step()
        t1 = _clock()
        gathered = buckets.allgather()  # None: prefetched, still in flight
        self.last_step["update_s"] = t1 - t0
        self.last_step["allgather_s"] = math.nan if gathered is None else gathered

    def memory(self, optimizer=None) -> dict:
        """This rank's bytes of parameters, gradients and optimizer state, measured: the nbytes of
        the arrays the package holds now (each allocation once, however many views of it there are;
        padding included; on a GPU, GPU memory, with the pinned host staging apart), beside the
        formula's figures.  ``optimizer``: whose state to count (default: the last one made by
        ``dp.optimizer`` or given to ``fit``).  ``dp.optimizer`` makes the state at once (an
        optimizer made otherwise makes it at its first step).

        Keys: ``params_bytes``, ``grads_bytes``, ``optimizer_bytes``, ``total_bytes``, ``shard``,
        ``ranks``, ``n_params``, ``optimizer`` (its class name or None), ``formula_bytes`` (the three
        byte keys from the formula: fp32 Adam 4 + 4 + 8 bytes per parameter unsharded, 4 + 4 + 8/P
        with shard="optimizer", 4 + 4/P + 8/P with "gradients"), ``host_staging_bytes`` (a GPU model's
        pinned buffers) and ``grads_peak_bytes`` ("gradients": the most full-gradient bytes held at
        once during the last backward pass; else None)."""
        return memory_report(self, optimizer)
