"""DataParallel: one model trained by many processes, each on its share of every batch.

    import whygpu.distributed as dist
    dist.init()                                   # before model.to("cuda"): picks this rank's GPU
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).to("openmp")
    dp = dist.DataParallel(model)                 # every rank now holds rank 0's weights
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = dp(x_share)                             # this rank's share of the global batch
    loss = loss_fn(out, y_share)
    dp.zero_grad()
    dp.backward(loss_fn.backward())               # every p.grad: the mean over all ranks
    opt.step()                                    # the same update on every rank

Run it with ``mpiexec -n 4 python train.py``.  Each rank keeps a full copy of
the model and its own optimizer; only the gradients travel, summed by an
allreduce that overlaps the backward pass (see ``_buckets.py``).  Since every
rank then applies the same update to the same weights, the copies stay
bitwise identical without ever sending the weights again.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .. import _random
from ..nn import _backend
from ..nn._sequential import Sequential, _positive_int, _progress
from ..nn.losses import CrossEntropyLoss, MSELoss, _Loss
from . import _runtime
from ._buckets import GradBuckets

__all__ = ["DataParallel", "share"]

_clock = time.perf_counter

# Why fit on a GPU runs ordinary steps here, where Sequential.fit replays CUDA graphs.
GRAPH_NOTE = (
    "DataParallel.fit on a GPU runs ordinary steps, not CUDA graphs: the gradients' allreduce "
    "(MPI, on the host) has to run between the backward pass and the update"
)


def share(n: int, ranks: int, rank: int) -> tuple[int, int]:
    """This rank's contiguous part [start, stop) of n samples, as np.array_split cuts them:
    the first n % ranks ranks get one more (and a rank gets none when n < ranks)."""
    q, r = divmod(n, ranks)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


class DataParallel:
    """Wraps a :class:`whygpu.nn.Sequential` (on any back end) for data-parallel training.

    ``bucket_mb``: the gradients travel in buckets of about this many MiB
    (PyTorch DDP's default, 25); smaller buckets start communicating earlier
    in the backward pass, larger ones pay the per-message latency less often.
    On wrapping, rank 0's parameters are copied to every rank.
    """

    def __init__(self, model: Sequential, *, bucket_mb: float = 25.0):
        if not isinstance(model, Sequential):
            raise TypeError(f"DataParallel wraps a whygpu.nn.Sequential, got {type(model).__name__}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not bucket_mb >= 0:
            raise ValueError(f"bucket_mb must be a number >= 0, got {bucket_mb!r}")
        self.module = model
        self.bucket_mb = float(bucket_mb)
        self.comm = _runtime.init()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._buckets: GradBuckets | None = None
        self._placed: tuple = ()  # what the buckets were made for: (back end's device, dtype, parameter arrays)
        self.last_step: dict = {}
        self.broadcast_parameters()

    def __repr__(self) -> str:
        return f"DataParallel({self.module.backend!r}, ranks={self.size}, bucket_mb={self.bucket_mb:g})"

    # -- the explicit step -------------------------------------------------------------
    def __call__(self, x):
        """The forward pass on this rank's samples (the wrapped model's ``model(x)``)."""
        return self.module(x)

    def parameters(self):
        return self.module.parameters()

    def zero_grad(self) -> None:
        self.module.zero_grad()

    def train(self, mode: bool = True) -> DataParallel:
        self.module.train(mode)
        return self

    def eval(self) -> DataParallel:
        return self.train(False)

    def broadcast_parameters(self, root: int = 0) -> None:
        """Copy rank ``root``'s parameters to every rank (a GPU model's through host memory)."""
        if self.size == 1:
            return
        for p in self.module.parameters():
            if self.module._backend.device is None:
                self.comm.Bcast(p._data, root=root)  # in place: the arrays the model computes with
            else:
                host = np.ascontiguousarray(p.data)  # a copy from the GPU
                self.comm.Bcast(host, root=root)
                p.data = host

    def backward(self, grad, weight: float | None = None) -> None:
        """The model's backward pass, then every gradient summed over the ranks.

        Each rank's gradient is multiplied by ``weight``, its share of the
        global batch (n_rank / N; None means 1/size(), equal shares), so that
        every ``p.grad`` ends up the gradient of the mean loss over the whole
        global batch, the same on every rank.  The gradient of each group of
        layers starts travelling as soon as the backward pass has produced it.
        Call it once per step, after ``zero_grad()`` (what it sums is the
        gradient accumulated since then).  A rank without samples in this
        batch calls ``dp.backward(None)``: it adds zeros, but every rank must
        take part in every allreduce."""
        if grad is None:
            self._reduce(None, 0.0)
            return
        grad = self.module._check_grad(grad)
        self._reduce(grad, 1.0 / self.size if weight is None else float(weight))

    def _reduce(self, grad, weight: float) -> None:
        """backward with the allreduces; ``grad`` None: this rank had no samples (it adds zeros)."""
        buckets = self._ensure_buckets()
        model = self.module
        if grad is not None and not buckets.device and weight != 1.0:
            # The backward pass is linear in the loss gradient: scaling this (batch, out) array scales
            # every parameter's gradient, without a pass over the parameters.
            grad = np.multiply(grad, weight, dtype=grad.dtype)
            weight = 1.0
        buckets.begin(weight)
        t0 = _clock()
        if grad is not None:
            model._grads_ready = buckets.ready  # Sequential calls it after each layer's backward pass
            try:
                model._backward(grad, False)
            finally:
                model._grads_ready = None
        t1 = _clock()
        exposed = buckets.finish()
        self.last_step = {
            "backward_s": t1 - t0,  # the backward pass, with the copies into the buckets and the Tests
            "allreduce_s": buckets.allreduce_seconds(),  # start to completion, summed over buckets
            "exposed_s": exposed,  # waiting for the allreduces after the backward pass
            "bytes": buckets.nbytes,
            "buckets": len(buckets),
        }

    def _ensure_buckets(self) -> GradBuckets:
        """The buckets, made anew when the model moved or changed dtype (model.to)."""
        model = self.module
        params = model.parameters()
        placed = (model._backend.device, model._dtype, tuple(id(p._data) for p in params))
        if self._buckets is None or placed != self._placed or not self._buckets.attached():
            layers = [layer.parameters() for layer in model.layers]
            cap = self.bucket_mb * 2**20
            self._buckets = GradBuckets(layers, model._dtype, cap, self.comm, model._backend.device is not None)
            self._placed = placed
        return self._buckets

    # -- Keras-style -------------------------------------------------------------------
    def fit(
        self,
        X,
        y,
        epochs: int = 1,
        batch_size: int = 32,
        optimizer=None,
        loss=None,
        shuffle: bool = True,
        verbose="auto",
        validation_data=None,
    ) -> dict[str, list]:
        """Sequential.fit over all ranks.  ``batch_size`` is the global batch: each rank
        holds all of X and y, draws the same order, and trains on its contiguous share
        of each batch (shares differ by at most one sample; each is weighted by its
        size, so P ranks compute what one process computes on the same batches).
        The history (the same on every rank) holds the losses and accuracies over all
        ranks' samples; only rank 0 shows progress.  A diverging loss is reported at
        the end of its epoch."""
        model = self.module
        X, y, val, epochs, batch_size, history = model._fit_setup(
            X, y, epochs, batch_size, optimizer, loss, validation_data, verbose
        )
        show = verbose if self.rank == 0 else 0
        if model._backend.device is not None and show != 0:
            print(f"note: {GRAPH_NOTE}", file=sys.stderr)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(epochs):
                label = f"Epoch {epoch + 1}/{epochs}"
                bar = _progress(-(-X.shape[0] // batch_size), label, show)
                total, correct = self._epoch(X, y, batch_size, optimizer, loss, shuffle, bar)
                n = X.shape[0]
                if not np.isfinite(total):
                    if bar is not None:
                        bar.close()
                    raise FloatingPointError(
                        f"the loss became {total / n} in epoch {epoch + 1}: training diverged -- "
                        f"try a smaller learning rate"
                    )
                history["loss"].append(total / n)
                if loss.classifier:
                    history["accuracy"].append(correct / n)
                if val is not None:
                    res = self._evaluate(val[0], val[1], loss, max(batch_size, 256))
                    history["val_loss"].append(res["loss"])
                    if loss.classifier:
                        history["val_accuracy"].append(res["accuracy"])
                summary = "  ".join(f"{k} {v[-1]:.4f}" for k, v in history.items())
                if bar is not None:
                    bar.set_postfix_str(summary, refresh=True)
                    bar.close()
                elif show == 2:
                    print(f"{label}  {summary}", file=sys.stdout)
        return history

    def _epoch(self, X, y, batch_size, optimizer, loss, shuffle, bar) -> tuple[float, int]:
        """One epoch of fit; returns (the loss summed over all samples, samples right), over all ranks."""
        model, be = self.module, self.module._backend
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        # Drawn as Sequential.fit draws it (so one rank gives exactly its result), then rank 0's
        # order for all: ranks seeded differently must still cut the same batches.
        order = _random.get_rng().permutation(n) if shuffle else None
        if order is not None and self.size > 1:
            self.comm.Bcast(order, root=0)
        total, correct, seen = 0.0, 0, 0
        for b in range(n_batches):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            s0, s1 = share(hi - lo, self.size, self.rank)
            sl = slice(lo + s0, lo + s1)
            idx = order[sl] if order is not None else sl
            model.zero_grad()
            if s1 > s0:
                xb, yb = X[idx], y[idx]
                out = model.forward(be.asarray(xb))
                _backend.note_output(out, be)
                batch_loss = float(loss(out, yb))
                if loss.classifier:
                    correct += loss._n_correct(be.to_host(out), yb)
                total += batch_loss * (s1 - s0)
                seen += s1 - s0
                # this rank's mean loss times its share of the batch: the ranks' sum is the batch's mean
                self._reduce(loss.backward(), (s1 - s0) / (hi - lo))
            else:  # no samples for this rank in a small last batch: it adds zeros, but must take part
                self._reduce(None, 0.0)
            optimizer.step()
            if bar is not None:
                bar.update(1)
                if b % 10 == 0 or b == n_batches - 1:
                    bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", refresh=False)  # rank 0's samples
        sums = self._sum_over_ranks(total, correct)
        return sums[0], int(sums[1])

    def _sum_over_ranks(self, *values: float) -> list[float]:
        """Each value summed over the ranks, in rank order on every rank (so all get the same bits)."""
        if self.size == 1:
            return [float(v) for v in values]
        every = self.comm.allgather(tuple(float(v) for v in values))
        out = [0.0] * len(values)
        for vals in every:
            out = [a + v for a, v in zip(out, vals)]
        return out

    def evaluate(self, X, y, loss=None, batch_size: int = 256) -> dict[str, float]:
        """Sequential.evaluate with the samples split over the ranks; every rank gets the result."""
        model = self.module
        if loss is None:
            loss = model._fit_loss
        if loss is None:
            loss = CrossEntropyLoss() if np.asarray(y).dtype.kind in "iu" else MSELoss()
        if not isinstance(loss, _Loss):
            raise TypeError(f"loss must be a whygpu.nn loss, got {type(loss).__name__}")
        X, y = model._check_dataset(X, y, loss, "X", "y")
        return self._evaluate(X, y, loss, _positive_int(batch_size, "batch_size"))

    def _evaluate(self, X, y, loss, batch_size) -> dict[str, float]:
        model, be = self.module, self.module._backend
        s0, s1 = share(X.shape[0], self.size, self.rank)
        total, correct = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            for s in range(s0, s1, batch_size):
                xb, yb = X[s : min(s + batch_size, s1)], y[s : min(s + batch_size, s1)]
                out = model.forward(be.asarray(xb))
                _backend.note_output(out, be)
                total += loss.forward(out, yb) * xb.shape[0]
                c = loss._n_correct(be.to_host(out), yb)
                correct += c if c is not None else 0
        finally:
            model.train(was_training)
        sums = self._sum_over_ranks(total, correct)
        result = {"loss": sums[0] / X.shape[0]}
        if loss.classifier:
            result["accuracy"] = sums[1] / X.shape[0]
        return result

    def predict(self, X, batch_size: int = 256) -> np.ndarray:
        """Sequential.predict with the samples split over the ranks; every rank gets all outputs."""
        model = self.module
        X = model._check_input(X)
        n_out = model.output_features(X.shape[1])
        s0, s1 = share(X.shape[0], self.size, self.rank)
        mine = model.predict(X[s0:s1], batch_size) if s1 > s0 else np.empty((0, n_out), model._dtype)
        if self.size == 1:
            return mine
        out = np.empty((X.shape[0], n_out), dtype=model._dtype)
        counts = [(b - a) * n_out for a, b in (share(X.shape[0], self.size, r) for r in range(self.size))]
        self.comm.Allgatherv(np.ascontiguousarray(mine), [out, counts])  # rank r's rows land at its share
        return out
