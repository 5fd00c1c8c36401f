"""The pieces :class:`whygpu.distributed.Pipeline` is built from, kept apart from its step: where to cut the model
into stages (by layer counts, or by measured time), the stash that keeps each micro-batch's saved state while
it is in flight, and ``fit``'s loop.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _random
from ..nn._backend import DeviceBackend
from ..nn._sequential import Sequential

__all__ = ["Stash", "SendProgress", "layer_units", "balance_by_time", "stage_bounds", "time_units", "fit_loop"]

# What a layer saves in its forward pass for its backward (Linear and the activations: its input; Sigmoid, Tanh and
# Softmax: their output too; Dropout: its mask).  Everything else a backward reads is a parameter.
_SAVED = ("_x", "_y", "_mask")


class Stash:
    """The state each micro-batch in flight on this stage keeps for its backward pass.

    A layer writes its output into one reusable buffer per name (``Module._buf``) and saves references to its
    input (``_x``) and the like: the next forward pass would overwrite them.  So each micro-batch gets a *slot*,
    a set of buffer dicts (one per layer) that its forward writes into; after its forward the layers' saved
    references are kept with it, and before its backward they are put back.  A slot is reused once its
    micro-batch's backward has run: GPipe needs m slots, 1F1B min(m, p - r) on rank r."""

    def __init__(self, stage: Sequential):
        self.layers = stage.layers
        self.slots: list[list[dict]] = []  # slot -> each layer's buffer dict
        self.free: list[int] = []
        self.held: dict[int, tuple[int, list[tuple], Any]] = {}  # micro -> (slot, saved references, loss grad)
        self.peak = 0  # the most micro-batches held at once in this step
        self.peak_bytes = 0  # the most bytes they held at once (the arrays their backward passes read)

    def reset(self) -> None:
        self.held.clear()
        self.free = list(range(len(self.slots)))[::-1]
        self.peak = self.peak_bytes = 0

    def take(self, micro: int) -> int:
        """A free slot for micro-batch ``micro``'s forward pass: its layers write into that slot's buffers."""
        if micro in self.held:
            raise RuntimeError(f"micro-batch {micro}'s forward ran twice before its backward")
        if not self.free:
            self.slots.append([{} for _ in self.layers])
            self.free.append(len(self.slots) - 1)
        slot = self.free.pop()
        for layer, bufs in zip(self.layers, self.slots[slot]):
            layer._bufs = bufs
        return slot

    def keep(self, micro: int, slot: int, loss_grad: Any) -> None:
        """After micro-batch ``micro``'s forward: keep what its backward will read."""
        saved = [tuple(getattr(layer, a, None) for a in _SAVED) for layer in self.layers]
        self.held[micro] = (slot, saved, loss_grad)
        self.peak = max(self.peak, len(self.held))
        self.peak_bytes = max(self.peak_bytes, self.bytes_held())

    def bytes_held(self) -> int:
        """The bytes of the distinct arrays the held micro-batches' backward passes will read."""
        seen: dict[int, int] = {}
        for _, saved, g in self.held.values():
            for arrays in saved:
                for a in arrays:
                    if a is not None:
                        seen[id(a)] = _nbytes(a)
            if g is not None:
                seen[id(g)] = _nbytes(g)
        return sum(seen.values())

    def loss_grad(self, micro: int) -> Any:
        return self.held[micro][2]

    def restore(self, micro: int) -> None:
        """Before micro-batch ``micro``'s backward: its buffers and saved references back in the layers."""
        if micro not in self.held:
            raise RuntimeError(f"micro-batch {micro}'s backward came before its forward")
        slot, saved, _ = self.held[micro]
        for layer, bufs, values in zip(self.layers, self.slots[slot], saved):
            layer._bufs = bufs
            for name, v in zip(_SAVED, values):
                if v is not None or hasattr(layer, name):
                    setattr(layer, name, v)

    def release(self, micro: int) -> None:
        """After micro-batch ``micro``'s backward: its slot is free for the next forward."""
        self.free.append(self.held.pop(micro)[0])


class SendProgress:
    """A helper thread that moves this rank's sends along while the rank computes.

    MPI moves a large message (beyond its eager size: a "rendezvous") only while the sending process is inside
    an MPI call; a rank that posts ``Isend`` and starts its next forward pass would hold the next stage idle
    until its next ``Wait``.  Measured here (768-1024-1024-1024-512, m = 8, 2 ranks): rank 1 started F0 1.8-2.4
    ms after rank 0 finished it, for a 256 KiB activation that a blocking send moves in about 0.1 ms.  While a
    send is pending the thread ``Test``s it every 0.1 ms (sleeping between, so it takes little of the core;
    DataParallel's progress thread does the same for its allreduces); with none pending it sleeps until one is
    posted -- a thread that woke every 0.1 ms all step long slowed this machine's forward and backward passes
    by a fifth (2 ranks on 2 cores).  Only the thread touches the sends until :meth:`finish`.  Without
    MPI_THREAD_MULTIPLE there is no thread: the sends move at the rank's next Wait."""

    poll_s = 1e-4

    def __init__(self, threaded: bool):
        self.threaded = threaded
        self.pending: list[Any] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.pending = []
        if self.threaded:
            self.stopping = False
            self.thread = threading.Thread(target=self._run, name="whygpu-pipeline-sends", daemon=True)
            self.thread.start()

    def add(self, request: Any) -> None:
        with self.cond:
            self.pending.append(request)
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.stopping:
                    self.cond.wait()  # nothing in flight: sleep until a send is posted (or the step ends)
                if self.stopping:
                    return
                reqs = list(self.pending)
            done = [r for r in reqs if r.Test()]
            if done:
                with self.cond:
                    self.pending = [r for r in self.pending if all(r is not d for d in done)]
            time.sleep(self.poll_s)

    def finish(self) -> list[Any]:
        """Stop the thread; the sends it has not seen complete (the caller waits for them)."""
        if self.thread is not None:
            with self.cond:
                self.stopping = True
                self.cond.notify()
            self.thread.join()
            self.thread = None
        with self.cond:
            left, self.pending = self.pending, []
        return left


def _nbytes(a: Any) -> int:
    return int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize


# ---- Where to cut ---------------------------------------------------------------------------------------------


def layer_units(model: Sequential) -> list[tuple[int, int]]:
    """The model's layers as units that a cut may not split, [lo, hi): a layer with parameters and the layers
    without any after it (a Linear and its activation, Dropout); layers before the first Linear join it."""
    starts = [i for i, layer in enumerate(model.layers) if layer.parameters()]
    if not starts:
        return [(0, len(model.layers))]
    starts[0] = 0
    return [(lo, hi) for lo, hi in zip(starts, starts[1:] + [len(model.layers)])]


def balance_by_time(units: Sequence[tuple[int, int]], times: Sequence[float], p: int) -> list[int]:
    """Layers per stage: the units cut into p contiguous groups whose largest total time is the smallest
    possible (the slowest stage sets the pipeline's pace), by dynamic programming over the cuts."""
    u = len(units)
    if u < p:
        raise ValueError(f"{u} units of layers cannot fill {p} stages (one unit at least each)")
    prefix = np.concatenate([[0.0], np.cumsum(times)])
    inf = float("inf")
    # best[k][j]: the smallest largest-stage time of the first j units cut into k stages; cut[k][j] its last cut
    best = [[inf] * (u + 1) for _ in range(p + 1)]
    cut = [[0] * (u + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for k in range(1, p + 1):
        for j in range(k, u - (p - k) + 1):
            for c in range(k - 1, j):
                v = max(best[k - 1][c], float(prefix[j] - prefix[c]))
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, c
    bounds, j = [], u
    for k in range(p, 0, -1):
        c = cut[k][j]
        bounds.append((c, j))
        j = c
    bounds.reverse()
    return [units[b - 1][1] - units[a][0] for a, b in bounds]


def stage_bounds(model: Sequential, balance: Sequence[int], p: int) -> list[tuple[int, int]]:
    """Each stage's layers [lo, hi) from ``balance`` (layers per stage), checked."""
    try:
        counts = [int(b) for b in balance]
    except (TypeError, ValueError):
        raise ValueError(f"balance must be a list of layer counts, one per stage, got {balance!r}") from None
    if len(counts) != p:
        raise ValueError(f"balance gives {len(counts)} stages for {p} ranks")
    if any(c < 1 for c in counts):
        raise ValueError(f"every stage needs at least one layer, got balance={counts}")
    if sum(counts) != len(model.layers):
        raise ValueError(f"balance={counts} covers {sum(counts)} layers; the model has {len(model.layers)}")
    bounds, lo = [], 0
    for c in counts:
        bounds.append((lo, lo + c))
        lo += c
    for r, (lo, hi) in enumerate(bounds):
        if not any(layer.parameters() for layer in model.layers[lo:hi]):
            raise ValueError(f"stage {r} (layers {lo}..{hi - 1}) has no parameters: give it a Linear layer")
    return bounds


def time_units(model: Sequential, units: Sequence[tuple[int, int]], rows: int) -> list[float]:
    """Each unit's forward + backward seconds on ``rows`` random rows (the median of 3 after one warm-up).  The
    gradients and the random generator are left as they were."""
    if rows < 1:
        raise ValueError(f"sample_rows must be at least 1, got {rows}")
    gen = _random.get_rng().bit_generator
    state = gen.state
    be = model._backend
    x = np.random.default_rng(0).standard_normal((rows, model.input_features() or 1)).astype(model.dtype)
    out = []
    grads = [(p, np.array(p.grad, copy=True)) for p in model.parameters()]
    try:
        for lo, hi in units:
            layers = model.layers[lo:hi]
            inp = be.asarray(x) if be.device is not None else x
            runs = []
            for _ in range(4):
                t0 = time.perf_counter()
                y = inp
                for layer in layers:
                    y = layer.forward(y)
                g = y
                for layer in reversed(layers):
                    g = layer._backward(g, True)
                if isinstance(be, DeviceBackend):
                    be.synchronize()  # a GPU's kernels are asynchronous: time them to the end
                runs.append(time.perf_counter() - t0)
            out.append(float(np.median(runs[1:])))
            x = _host(y, be)  # the next unit's input: this one's output
    finally:
        gen.state = state
        for p, g in grads:
            p.grad = g
    return out


def _host(a: Any, be: Any) -> np.ndarray:
    return np.array(a, copy=True) if be.device is None else be.to_host(a)


# ---- fit, evaluate, predict ----------------------------------------------------------------------------------


def forward_only(pp: Any, X, batch_size: int) -> np.ndarray:
    """The model's outputs for X in eval mode, on every rank: each chunk of ``batch_size`` rows through the
    stages in turn (blocking messages: no backward pass to overlap with), gathered from the last stage."""
    comm, r, p = pp.comm, pp.rank, pp.size
    be = pp.stage._backend
    X = np.ascontiguousarray(X, dtype=pp._dtype) if r == 0 else np.asarray(X)
    n = X.shape[0]
    out = np.empty((n, pp.out_features), pp._dtype) if r == p - 1 else None
    was = pp.stage.training
    pp.stage.eval()
    try:
        for b0 in range(0, n, batch_size):
            rows = min(batch_size, n - b0)
            if r == 0:
                inp: Any = X[b0 : b0 + rows]  # (rows, in_features)
            else:
                inp = np.empty((rows, pp.in_features), pp._dtype)
                comm.Recv(inp, source=r - 1, tag=0)
            y = pp.stage.forward(be.asarray(inp) if be.device is not None else inp)
            host = np.ascontiguousarray(_host(y, be))
            if r < p - 1:
                comm.Send(host, dest=r + 1, tag=0)
            else:
                assert out is not None
                out[b0 : b0 + rows] = host
    finally:
        pp.stage.train(was)
    return comm.bcast(out, root=p - 1)


def evaluate(pp: Any, X, y, loss, batch_size: int) -> dict[str, float]:
    """Sequential.evaluate over the pipeline: the mean loss and, for a classifier, the accuracy, on every rank."""
    from ..nn.losses import CrossEntropyLoss, MSELoss

    y = np.asarray(y)
    if loss is None:
        loss = CrossEntropyLoss() if np.issubdtype(y.dtype, np.integer) else MSELoss()
    out = forward_only(pp, X, batch_size)
    res = {"loss": float(loss(out, y))}
    if loss.classifier:
        res["accuracy"] = loss._n_correct(out, y) / len(y)
    return res


def fit_loop(pp: Any, X, y, epochs, batch_size, optimizer, loss, shuffle, validation_data, verbose) -> dict[str, list]:
    """Sequential.fit's loop: each epoch rank 0's shuffled order (bcast), each batch ``zero_grad``, the pipeline's
    step, ``optimizer.step()``; the history holds each epoch's mean loss (and accuracy, for a classifier) over
    its samples, and the validation figures, the same on every rank; only rank 0 shows progress."""
    from ..nn._fit import _progress
    from ..nn.losses import CrossEntropyLoss, MSELoss
    from ._keras import end_epoch

    if optimizer is None:
        raise ValueError("Pipeline.fit needs an optimizer made on pp.parameters() (this stage's parameters)")
    X, y = np.ascontiguousarray(X), np.asarray(y)
    n = X.shape[0]
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)}")
    if loss is None:
        loss = CrossEntropyLoss() if np.issubdtype(y.dtype, np.integer) else MSELoss()
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    history: dict[str, list] = {"loss": []}
    if loss.classifier:
        history["accuracy"] = []
    if validation_data is not None:
        history["val_loss"] = []
        if loss.classifier:
            history["val_accuracy"] = []
    show = verbose if pp.rank == 0 else 0
    validate = None
    if validation_data is not None:
        vx, vy = validation_data
        validate = functools.partial(evaluate, pp, vx, vy, loss, max(int(batch_size), 256))
    for epoch in range(int(epochs)):
        order = _random.get_rng().permutation(n) if (shuffle and pp.rank == 0) else None
        order = pp.comm.bcast(order, root=0) if shuffle else np.arange(n)
        bar = _progress(-(-n // batch_size), f"Epoch {epoch + 1}/{epochs}", show)
        total, correct = 0.0, 0
        for b0 in range(0, n, int(batch_size)):
            idx = order[b0 : b0 + batch_size]
            xb, yb = np.ascontiguousarray(X[idx]), y[idx]
            pp.zero_grad()
            total += pp.step(xb, yb, loss) * len(xb)
            correct += pp.last_step["correct"]
            optimizer.step()
            if bar is not None:
                bar.update(1)
        end_epoch(history, loss, total, correct, n, epoch, f"Epoch {epoch + 1}/{epochs}", bar, show, validate)
    return history
