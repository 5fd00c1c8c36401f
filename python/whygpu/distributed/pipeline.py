"""Pipeline parallelism: the model's layers cut into p contiguous stages, one per rank, and each batch into m
micro-batches that flow through them (GPipe, Huang et al. 2019; 1F1B, Narayanan et al. 2021).

    import whygpu.distributed as dist
    whygpu.manual_seed(0)                                   # the same full model on every rank
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    pp = dist.Pipeline(model, micro_batches=4, schedule="1f1b")   # rank r keeps stage r's layers only
    opt = optim.Adam(pp.parameters(), lr=1e-3)              # this stage's parameters
    pp.zero_grad()
    loss = pp.step(x, y, nn.CrossEntropyLoss())             # every rank: the same full batch x, y
    opt.step()

Rank r runs the actions of :func:`whygpu.distributed.schedules.schedule` (the same list that prints as the
step-by-rank grid and feeds the step simulator): ``F i`` is micro-batch i's forward pass through this stage,
``B i`` its backward.  Activations go forward and their gradients back with non-blocking point-to-point
messages (``Isend``/``Irecv``, every receive posted when the step starts), so a rank computes while its
messages travel and waits only for what its next action needs.  The last stage computes each micro-batch's
loss and its gradient weighted by the micro-batch's share of the batch (rows_i / n), so that the gradients
summed over the m micro-batches are the gradient of the whole batch's mean loss.  Forwards and backwards run in
micro-batch order on every rank, in both schedules, so each parameter's gradient adds the same terms in the same
order as one process accumulating the same m micro-batches: the bits are the same.

What each micro-batch's backward needs (each layer's saved input, a Dropout's mask) is its *stash*: a layer
normally keeps one set of buffers, overwritten by the next forward, so each micro-batch in flight gets its own
set (a *slot*, reused once its backward has run).  GPipe keeps all m; 1F1B at most min(m, p - r).
``pp.last_step`` reports what one step did: each action's time, the waits, the messages and their bytes, the
peak stash in micro-batches and in bytes.

``balance=[n0, n1, ...]`` gives each stage's number of layers; by default the stages are balanced by each
layer's forward + backward time measured on this machine (a Linear and the activations after it stay
together).  ``data_comm``: the communicator of the ranks holding the same stage in other data-parallel
replicas (:func:`whygpu.distributed.grid`); their gradients are summed once the last micro-batch's backward
has run.  ``state_dict()`` gathers the unsplit model's state (its names and shapes) on every rank.
Dropout on a stage draws from that rank's generator: its masks are not the ones one process draws.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..nn import _backend
from ..nn._sequential import Sequential
from ..nn.losses import _Loss
from ..schedules import SCHEDULES, Action, check_schedule, schedule
from . import _runtime
from ._agree import agree
from ._pipeline_parts import SendProgress, Stash, balance_by_time, layer_units, stage_bounds
from ._runtime import MPI
from ._shares import share

__all__ = ["Pipeline"]

_ACT, _GRAD = 0, 1  # message tags: 2 i + kind, so a micro-batch's activation and gradient never match each other


class Pipeline:
    """A :class:`whygpu.nn.Sequential` cut into ``comm.Get_size()`` stages; this rank holds and trains one."""

    comm: Any
    data_comm: Any
    rank: int
    size: int
    micro_batches: int
    schedule: str
    balance: list[tuple[int, int]]
    first_layer: int
    stage: Sequential
    in_features: int
    out_features: int
    _dtype: np.dtype
    _stash: Stash
    _progress: SendProgress
    _sends: dict[tuple[int, int], np.ndarray]
    last_step: dict[str, Any]

    def __init__(
        self,
        model: Sequential,
        micro_batches: int = 4,
        schedule: str = "1f1b",
        *,
        balance: Sequence[int] | None = None,
        comm: Any = None,
        data_comm: Any = None,
        sample_rows: int = 64,
    ):
        if not isinstance(model, Sequential):
            raise TypeError(f"Pipeline splits a whygpu.nn.Sequential, got {type(model).__name__}")
        if isinstance(micro_batches, bool) or not isinstance(micro_batches, numbers.Integral) or micro_batches < 1:
            raise ValueError(f"micro_batches must be a whole number >= 1, got {micro_batches!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown pipeline schedule {schedule!r}: the schedules are {', '.join(SCHEDULES)}")
        world = _runtime.init()  # the failure handling: a rank that fails ends every rank
        self.comm = world if comm is None else comm
        self.data_comm = data_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.micro_batches, self.schedule = int(micro_batches), schedule
        units = layer_units(model)
        if balance is None:
            if len(units) < self.size:
                raise ValueError(f"a pipeline of {self.size} stages needs {self.size} layers with parameters")
            times = self._measured_unit_times(model, units, int(sample_rows))
            balance = balance_by_time(units, times, self.size)
        self.balance = stage_bounds(model, balance, self.size)  # [(lo, hi)] layer indices per stage
        agree(
            self.comm,
            [
                ("the parameters' shapes", [tuple(p.shape) for p in model.parameters()]),
                ("micro_batches", self.micro_batches),
                ("the schedule", schedule),
                ("the stages (first and last layer of each)", self.balance),
                ("the back end", model.backend),
                ("the dtype", str(model.dtype)),
            ],
            "Pipeline",
            "; every rank must build the same model and split it with the same arguments",
        )
        self._broadcast_model(model)
        lo, hi = self.balance[self.rank]
        self.first_layer = lo  # this stage's layers are the full model's lo .. hi - 1
        self.stage = Sequential(*model.layers[lo:hi])
        self.stage.train(model.training)
        self.in_features = _features_before(model, lo)  # the activation this stage receives (its width)
        self.out_features = _features_before(model, hi)  # ... and sends on
        self._dtype = np.dtype(model.dtype)
        self._stash = Stash(self.stage)
        self._progress = SendProgress(MPI.Query_thread() >= MPI.THREAD_MULTIPLE and self.size > 1)
        self._sends: dict[tuple[int, int], np.ndarray] = {}  # (kind, micro) -> host buffer the Isend reads
        self.last_step: dict[str, Any] = {}

    # -- building ------------------------------------------------------------------------------------------
    def _measured_unit_times(self, model: Sequential, units: list[tuple[int, int]], rows: int) -> list[float]:
        """Each unit's forward + backward seconds on a batch of ``rows`` (the median of 3 after a warm-up),
        measured on every rank at once and their medians taken, so that every rank cuts at the same place."""
        from ._pipeline_parts import time_units

        mine = time_units(model, units, rows)
        every = self.comm.allgather(mine)
        return [float(np.median([t[k] for t in every])) for k in range(len(units))]

    def _broadcast_model(self, model: Sequential) -> None:
        """Rank 0's parameters and random state on every rank (each builds the model, but a seed may differ)."""
        if self.size == 1:
            return
        for p in model.parameters():
            host = np.ascontiguousarray(p.data)
            self.comm.Bcast(host, root=0)
            p.data = host
        from .. import _random

        gen = _random.get_rng().bit_generator
        gen.state = self.comm.bcast(gen.state, root=0)

    def __repr__(self) -> str:
        lo, hi = self.balance[self.rank]
        return (
            f"Pipeline(stage {self.rank} of {self.size}: layers {lo}..{hi - 1}, micro_batches={self.micro_batches}, "
            f"schedule={self.schedule!r})"
        )

    # -- what a stage holds ----------------------------------------------------------------------------------
    def parameters(self):
        """This stage's parameters (give them to the optimizer)."""
        return self.stage.parameters()

    def named_parameters(self):
        """This stage's parameters, named as in the unsplit model ("4.weight" for its layer 4)."""
        for i, layer in enumerate(self.stage.layers):
            for name, p in layer.named_parameters():
                yield f"{self.first_layer + i}.{name}", p

    def zero_grad(self) -> None:
        self.stage.zero_grad()

    def train(self, mode: bool = True) -> Pipeline:
        self.stage.train(mode)
        return self

    def eval(self) -> Pipeline:
        return self.train(False)

    def actions(self, m: int | None = None) -> tuple[Action, ...]:
        """This rank's actions for m micro-batches (default: the pipeline's), in the order it runs them: the
        schedule's list, checked (:func:`~whygpu.distributed.schedules.check_schedule`) before it runs."""
        m = self.micro_batches if m is None else m
        sched = self._schedule(m)
        check_schedule(sched.ranks, self.size, m, self.schedule)
        return sched.ranks[self.rank]

    def _schedule(self, m: int):
        """The schedule's per-rank lists (a test overrides it with a broken one)."""
        return schedule(self.schedule, self.size, m)

    # -- one step --------------------------------------------------------------------------------------------
    def step(self, x, y, loss_fn: _Loss, global_batch: int | None = None) -> float:
        """Forward and backward passes of the batch (x, y) through every stage, in m micro-batches, adding
        each parameter's gradient to ``p.grad`` (call ``zero_grad()`` first); returns the batch's mean loss,
        the same on every rank.  Every rank passes the same x and y (the first stage reads x, the last y).
        ``global_batch``: x is one data-parallel replica's share of a batch of that many rows (the gradients
        are then weighted by rows / global_batch and summed over ``data_comm``)."""
        x, y, n, total = self._check_batch(x, y, loss_fn, global_batch)
        r, p = self.rank, self.size
        m = min(self.micro_batches, n)  # a last batch smaller than m: one row per micro-batch
        rows = [share(n, m, i) for i in range(m)]
        acts, grads, recv = self._post_receives(rows)
        st = _Step(x, y, loss_fn, rows, total, acts, grads, recv)
        self._stash.reset()
        self.comm.Barrier()  # every rank starts the clock together: the step's length is comparable across ranks
        st.t0 = _clock()
        self._progress.start()
        try:
            for a in self.actions(m):
                if a.kind == "F":
                    self._forward(st, a.micro)
                else:
                    self._backward(st, a.micro)
                    if self._sync_due(a.micro, m):
                        self._sync_data_parallel()  # (outside the timed action: it is communication)
        finally:
            left = self._progress.finish()  # (a failed step leaves no thread behind)
        w0 = _clock()
        MPI.Request.Waitall(left)
        st.waits += _clock() - w0
        step_s = _clock() - st.t0
        losses, timeline, waits, sent = st.losses, st.timeline, st.waits, st.sent
        loss = sum(losses[i] * (rows[i][1] - rows[i][0]) for i in sorted(losses)) / n if r == p - 1 else 0.0
        loss, correct = self.comm.bcast((loss, st.correct), root=p - 1)
        self.last_step = {
            "rank": r,
            "stages": p,
            "micro_batches": m,
            "schedule": self.schedule,
            "step_s": step_s,
            "busy_s": sum(e - s for _, _, s, e in timeline),
            "wait_s": waits,
            "timeline": timeline,
            "messages": sent,
            "correct": int(correct),
            "stash_peak": self._stash.peak,
            "stash_peak_bytes": self._stash.peak_bytes,
            "param_bytes": int(sum(q.size for q in self.parameters()) * self._dtype.itemsize),
        }
        return float(loss)

    def time_actions(self, x, y, loss_fn: _Loss) -> dict[str, list[float]]:
        """This rank's actions for the batch (x, y) in the schedule's order, with no message at all: random arrays
        stand in for the activations and gradients the neighbours would send, so no rank waits for another.
        Returns each action's seconds, ``{"F": [...], "B": [...]}`` in the order they ran: the compute the step
        simulator is fed, measured apart from the pipeline's communication but with its own stash and buffers
        (a forward into a slot its backward reads later runs slower than one in a warm loop).  Every rank must
        call it (it starts with a barrier, as a step does); the gradients it adds are zeroed again."""
        x, y, n, total = self._check_batch(x, y, loss_fn, None)
        m = min(self.micro_batches, n)
        rows = [share(n, m, i) for i in range(m)]
        rng = np.random.default_rng(0)
        acts = {
            i: rng.standard_normal((s1 - s0, self.in_features)).astype(self._dtype) for i, (s0, s1) in enumerate(rows)
        }
        grads = {
            i: rng.standard_normal((s1 - s0, self.out_features)).astype(self._dtype) for i, (s0, s1) in enumerate(rows)
        }
        st = _Step(x, y, loss_fn, rows, total, acts, grads, {}, alone=True)
        self._stash.reset()
        self.comm.Barrier()
        st.t0 = _clock()
        for a in self.actions(m):
            (self._forward if a.kind == "F" else self._backward)(st, a.micro)
        self.zero_grad()
        return {kind: [e - s for k, _, s, e in st.timeline if k == kind] for kind in ("F", "B")}

    def _forward(self, st: _Step, i: int) -> None:
        """F i: micro-batch i's activation in (rank 0: its rows of x), through this stage, and on to the next
        stage (the last: its loss, and the loss gradient weighted by its rows' share, kept for B i)."""
        r, p, be = self.rank, self.size, self.stage._backend
        s0, s1 = st.rows[i]
        if r == 0:
            inp = st.x[s0:s1]  # (rows_i, in_features): a contiguous slice
        else:
            if not st.alone:
                w0 = _clock()
                st.recv[(_ACT, i)].Wait()
                st.waits += _clock() - w0
            inp = st.acts[i]
        t_start = _clock()
        slot = self._stash.take(i)  # this micro-batch's own buffers
        out = self.stage.forward(be.asarray(inp) if be.device is not None else inp)
        g = None
        if r == p - 1:
            _backend.note_output(out, be)  # the loss then runs on the model's back end, as after model(x)
            st.losses[i] = float(st.loss_fn(out, st.y[s0:s1]))
            if st.loss_fn.classifier:
                host = be.to_host(out) if be.device is not None else out
                st.correct += st.loss_fn._n_correct(host, st.y[s0:s1]) or 0
            g = self._weighted(st.loss_fn.backward(), (s1 - s0) / st.total)  # a new array: the loss reuses its own
        self._stash.keep(i, slot, g)
        if r < p - 1:
            buf = self._send_buffer(_ACT, i, out)
            if not st.alone:
                self._progress.add(self.comm.Isend(buf, dest=r + 1, tag=2 * i + _ACT))
            st.sent["activations"] += 1
            st.sent["activation_bytes"] += buf.nbytes
        st.timeline.append(("F", i, t_start - st.t0, _clock() - st.t0))

    def _backward(self, st: _Step, i: int) -> None:
        """B i: the gradient of micro-batch i's output in (the last stage: its loss gradient), back through this
        stage with its stash, adding to every parameter's gradient, and dX back to the stage before."""
        r, p, be = self.rank, self.size, self.stage._backend
        if r == p - 1:
            g = self._stash.loss_grad(i)
        else:
            if not st.alone:
                w0 = _clock()
                st.recv[(_GRAD, i)].Wait()
                st.waits += _clock() - w0
            g = be.asarray(st.grads[i]) if be.device is not None else st.grads[i]  # (rows_i, out_features)
        t_start = _clock()
        self._stash.restore(i)
        dx = self.stage._backward(g, r > 0)  # (rows_i, in_features); the first stage needs no dL/d(data)
        if r > 0:
            buf = self._send_buffer(_GRAD, i, dx)
            if not st.alone:
                self._progress.add(self.comm.Isend(buf, dest=r - 1, tag=2 * i + _GRAD))
            st.sent["gradients"] += 1
            st.sent["gradient_bytes"] += buf.nbytes
        self._stash.release(i)
        st.timeline.append(("B", i, t_start - st.t0, _clock() - st.t0))

    def _check_batch(self, x, y, loss_fn, global_batch):
        if not isinstance(loss_fn, _Loss):
            raise TypeError(f"loss_fn must be a whygpu loss (nn.CrossEntropyLoss(), nn.MSELoss()), got {loss_fn!r}")
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x must be a (batch, features) array, got shape {x.shape}")
        n = int(x.shape[0])
        if n < 1:
            raise ValueError("the batch is empty")
        if len(y) != n:
            raise ValueError(f"x has {n} rows but y has {len(y)}")
        total = n if global_batch is None else int(global_batch)
        if total < n:
            raise ValueError(f"global_batch ({total}) is smaller than this replica's {n} rows")
        if self.rank == 0:
            x = self.stage._check_input(x)  # dtype, contiguity, features: micro-batches are contiguous row slices
        return x, y, n, total

    def _post_receives(self, rows: list[tuple[int, int]]):
        """Every receive this step will need, posted now (so no message waits for its receive to be posted)."""
        r, p = self.rank, self.size
        acts: dict[int, np.ndarray] = {}
        grads: dict[int, np.ndarray] = {}
        req: dict[tuple[int, int], Any] = {}
        for i, (s0, s1) in enumerate(rows):
            if r > 0:  # micro-batch i's activation from the stage before: (rows_i, in_features)
                acts[i] = np.empty((s1 - s0, self.in_features), self._dtype)
                req[(_ACT, i)] = self.comm.Irecv(acts[i], source=r - 1, tag=2 * i + _ACT)
            if r < p - 1:  # the gradient of what this stage sent on: (rows_i, out_features)
                grads[i] = np.empty((s1 - s0, self.out_features), self._dtype)
                req[(_GRAD, i)] = self.comm.Irecv(grads[i], source=r + 1, tag=2 * i + _GRAD)
        return acts, grads, req

    def _send_buffer(self, kind: int, i: int, a) -> np.ndarray:
        """A host copy of ``a`` for an Isend: the layer's own buffer is overwritten before the message may
        have left (the next micro-batch in this slot), and a GPU array must come to the host anyway."""
        be = self.stage._backend
        shape = tuple(a.shape)
        buf = self._sends.get((kind, i))
        if buf is None or buf.shape != shape:
            buf = self._sends[(kind, i)] = np.empty(shape, self._dtype)
        if be.device is None:
            np.copyto(buf, a)
        else:
            be.to_host(a, out=buf)
        return buf

    def _weighted(self, g, w: float):
        """The loss gradient times this micro-batch's share of the batch (a new array)."""
        be = self.stage._backend
        if be.device is None:
            return np.multiply(g, w, dtype=self._dtype)
        return be.asarray(np.multiply(be.to_host(g), w, dtype=self._dtype))

    def _sync_due(self, micro: int, m: int) -> bool:
        """Whether the data-parallel sum starts after micro-batch ``micro``'s backward: after the last one's
        only (micro-batches run their backward in order 0..m-1), when every term of the gradient is in."""
        return micro == m - 1

    def _sync_data_parallel(self) -> None:
        """Sum this stage's gradients over the data-parallel replicas, once every micro-batch's backward has run."""
        dc = self.data_comm
        if dc is None or dc.Get_size() == 1:
            return
        be = self.stage._backend
        for q in self.parameters():
            if be.device is None:
                dc.Allreduce(MPI.IN_PLACE, q._grad_array(), op=MPI.SUM)
            else:
                host = np.ascontiguousarray(q.grad)
                dc.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
                q.grad = host

    # -- the unsplit model's state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The unsplit model's state dict ("0.weight", ...: its names and shapes), on every rank (a collective)."""
        mine = {k: np.array(q.data, copy=True) for k, q in self.named_parameters()}
        out: dict[str, np.ndarray] = {}
        for part in self.comm.allgather(mine):
            out.update(part)
        return dict(sorted(out.items(), key=lambda kv: (int(kv[0].split(".")[0]), kv[0])))

    def full_grads(self) -> dict[str, np.ndarray]:
        """Every parameter's gradient, named as in :meth:`state_dict`, on every rank (a collective)."""
        mine = {k: np.array(q.grad, copy=True) for k, q in self.named_parameters()}
        out: dict[str, np.ndarray] = {}
        for part in self.comm.allgather(mine):
            out.update(part)
        return dict(sorted(out.items(), key=lambda kv: (int(kv[0].split(".")[0]), kv[0])))

    def load_state_dict(self, state) -> None:
        """Load the unsplit model's state (:meth:`state_dict`'s names): this stage keeps its layers' entries."""
        local = {}
        for i, layer in enumerate(self.stage.layers):
            for name, _ in layer.named_parameters():
                key = f"{self.first_layer + i}.{name}"
                if key not in state:
                    raise KeyError(f"the state has no {key!r} (this stage's layer {self.first_layer + i})")
                local[f"{i}.{name}"] = state[key]
        self.stage.load_state_dict(local)

    def fit(
        self,
        X,
        y,
        epochs: int = 1,
        batch_size: int = 32,
        optimizer=None,
        loss=None,
        validation_data=None,
        shuffle: bool = True,
        verbose="auto",
    ) -> dict[str, list]:
        """Sequential.fit's loop over the pipeline: every rank holds X and y and runs every batch, rank 0's
        shuffled order sent to all (a stage's Dropout draws from its own generator, which would let the
        ranks' orders drift apart).  ``optimizer`` is made on ``pp.parameters()``.  Returns the history
        (loss, accuracy for a classifier, val_loss and val_accuracy with ``validation_data``), the same on
        every rank; only rank 0 shows progress.  One process runs exactly this loop with the same seed."""
        from ._pipeline_parts import fit_loop

        return fit_loop(self, X, y, epochs, batch_size, optimizer, loss, shuffle, validation_data, verbose)

    def evaluate(self, X, y, loss=None, batch_size: int = 256) -> dict[str, float]:
        """Mean loss (and accuracy, for a classifier) on (X, y) in eval mode, on every rank (a collective)."""
        from ._pipeline_parts import evaluate

        return evaluate(self, X, y, loss, batch_size)

    def predict(self, X, batch_size: int = 256) -> np.ndarray:
        """The model's outputs for X in eval mode, on every rank (a collective: every rank passes X)."""
        from ._pipeline_parts import forward_only

        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        return forward_only(self, X, int(batch_size))


@dataclass
class _Step:
    """One step's inputs, posted receives and what it records (shared by its forward and backward actions)."""

    x: Any
    y: Any
    loss_fn: _Loss
    rows: list[tuple[int, int]]  # micro-batch i is rows [s0, s1) of the batch
    total: int  # the rows the gradient is the mean over (the global batch with data parallelism)
    acts: dict[int, np.ndarray]  # micro-batch i's activation, received from the stage before
    grads: dict[int, np.ndarray]  # the gradient of what this stage sent on, received from the stage after
    recv: dict[tuple[int, int], Any]  # (kind, i) -> its receive's request
    alone: bool = False  # time_actions: no messages, stand-ins for what the neighbours send
    t0: float = 0.0
    waits: float = 0.0
    correct: int = 0  # samples the last stage classified right
    losses: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[str, int, float, float]] = field(default_factory=list)
    sent: dict[str, int] = field(
        default_factory=lambda: {"activations": 0, "gradients": 0, "activation_bytes": 0, "gradient_bytes": 0}
    )


def _features_before(model: Sequential, i: int) -> int:
    """The width of the activation entering layer i (i = len(layers): the model's output)."""
    n = model.input_features()
    if n is None:
        raise ValueError("the model has no Linear layer: its input width is unknown")
    for layer in model.layers[:i]:
        n = layer.output_features(n)
    return int(n)


_clock = time.perf_counter
