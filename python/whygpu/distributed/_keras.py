"""DataParallel's Keras-style methods: ``fit``, ``evaluate`` and ``predict`` over the ranks.

Each rank takes its contiguous share of every batch (:func:`whygpu.distributed.share`), and the
sums that make a loss or an accuracy are added over the ranks, so every rank prints and returns the
same figures one process would.  A mixin of :class:`whygpu.distributed.DataParallel`, kept apart
from the explicit step (``data_parallel.py``) so that each file holds one concern.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .. import _random
from ..nn import _backend, _checkpoint
from ..nn._sequential import _positive_int, _progress
from ..nn.losses import CrossEntropyLoss, MSELoss, _Loss
from ._agree import agree_fit, fail_together
from ._ckpt import RankCheckpointer, restore_on_every_rank
from ._sharded import ShardedOptimizer
from ._shares import _batch_rows, _dropouts, share

__all__ = ["KerasMethods", "GRAPH_NOTE", "end_epoch"]

# Why fit on a GPU runs ordinary steps here, where Sequential.fit replays CUDA graphs.
GRAPH_NOTE = (
    "DataParallel.fit on a GPU runs ordinary steps, not CUDA graphs: the gradients' allreduce "
    "(MPI, on the host) has to run between the backward pass and the update"
)


def end_epoch(history, loss, total, correct, n, epoch, label, bar, show, validate=None) -> None:
    """An epoch's end in a fit over ranks (DataParallel's, Pipeline's): the loss and accuracy over its ``n``
    samples into ``history``, the validation figures (``validate()``, where given), the progress bar's summary
    or, with verbose 2, a line; a loss that is not finite raises FloatingPointError."""
    if not np.isfinite(total):
        if bar is not None:
            bar.close()
        raise FloatingPointError(
            f"the loss became {total / n} in epoch {epoch + 1}: training diverged -- try a smaller learning rate"
        )
    history["loss"].append(total / n)
    if loss.classifier:
        history["accuracy"].append(correct / n)
    if validate is not None:
        res = validate()
        history["val_loss"].append(res["loss"])
        if loss.classifier:
            history["val_accuracy"].append(res["accuracy"])
    summary = "  ".join(f"{k} {v[-1]:.4f}" for k, v in history.items())
    if bar is not None:
        bar.set_postfix_str(summary, refresh=True)
        bar.close()
    elif show == 2:
        print(f"{label}  {summary}", file=sys.stdout)


class KerasMethods:
    """fit / evaluate / predict for DataParallel (which provides module, comm, rank, size, the step)."""

    module: Any
    comm: Any
    rank: int
    size: int
    shard: str

    # provided by DataParallel: the step's pieces these methods drive
    def _reduce(self, grad, weight) -> None:
        raise NotImplementedError

    def broadcast_random_state(self, root: int = 0) -> None:
        raise NotImplementedError

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
        checkpoint=None,
        checkpoint_every: int | None = None,
        resume=None,
    ) -> dict[str, list]:
        """Sequential.fit over all ranks.  ``batch_size`` is the global batch: each rank
        holds all of X and y, draws the same order, and trains on its contiguous share
        of each batch (shares differ by at most one sample; each is weighted by its
        size, and Dropout takes its rows of the whole batch's mask, drawn from rank 0's
        random state: P ranks compute what one process computes on the same batches).
        The history (the same on every rank) holds the losses and accuracies over all
        ranks' samples; only rank 0 shows progress.  A diverging loss is reported at
        the end of its epoch.

        ``checkpoint``, ``checkpoint_every`` and ``resume`` as in Sequential.fit: rank 0
        writes the file (a sharded optimizer's state consolidated there, per parameter),
        every rank reads it; the file is the one Sequential.fit writes, and it resumes on
        any number of ranks, sharded or not (see docs/distributed.md)."""
        model = self.module
        error = None
        try:  # a rank whose own checks fail must not leave the others waiting in a collective
            path, every, resume = _checkpoint.checked_args(checkpoint, checkpoint_every, resume)
            model._note_cast(X, verbose if self.rank == 0 else 0)  # once, from rank 0
            X, y, val, epochs, batch_size, history = model._fit_setup(
                X, y, epochs, batch_size, optimizer, loss, validation_data, verbose
            )
        except Exception as e:
            error = e
        fail_together(self.comm, error, "DataParallel.fit")
        if self.shard != "none" and not (isinstance(optimizer, ShardedOptimizer) and optimizer._dp is self):
            raise ValueError(
                f"DataParallel(shard={self.shard!r}) updates each rank's shard of the parameters: make the "
                f"optimizer with dp.optimizer(optim.{type(optimizer).__name__}, lr=...), not on "
                f"model.parameters() (that one would keep state for every parameter, and read gradients "
                f"that were never summed)"
            )
        agree_fit(self, X, y, val, epochs, batch_size, shuffle)  # else a hang in the first collective
        self._optimizer = optimizer
        pr = _checkpoint.Progress(history=history)
        if resume is not None:
            pr = restore_on_every_rank(self, resume, optimizer, X.shape[0], batch_size, shuffle)
            history.update(pr.history)
            pr.history = history
        ck = RankCheckpointer(self, path, every, X.shape[0], batch_size, shuffle, epochs) if path else None
        self.broadcast_random_state()  # every rank shuffles and drops out as rank 0 (as one process) would
        show = verbose if self.rank == 0 else 0
        if model._backend.device is not None and show != 0:
            print(f"note: {GRAPH_NOTE}", file=sys.stderr)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(pr.epoch, epochs):
                label = f"Epoch {epoch + 1}/{epochs}"
                first = pr.batch if pr.epoch == epoch else 0
                bar = _progress(-(-X.shape[0] // batch_size), label, show, initial=first)
                total, correct = self._epoch(X, y, batch_size, optimizer, loss, shuffle, bar, epoch, pr, ck)
                validate = None if val is None else lambda: self._evaluate(val[0], val[1], loss, max(batch_size, 256))
                end_epoch(history, loss, total, correct, X.shape[0], epoch, label, bar, show, validate)
                if ck is not None:
                    ck.save(model, optimizer, _checkpoint.Progress(epoch + 1, 0, None, 0.0, 0, history))
        return history

    def _epoch(self, X, y, batch_size, optimizer, loss, shuffle, bar, epoch, pr, ck) -> tuple[float, int]:
        """One epoch of fit; returns (the loss summed over all samples, samples right), over all ranks.
        A resumed fit enters its first epoch at the checkpoint's batch, with its order and sums."""
        model, be = self.module, self.module._backend
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        dropout = bool(_dropouts(model))
        if pr.epoch == epoch and pr.batch > 0:
            order, first, total, correct = pr.order, pr.batch, pr.loss_sum, pr.correct
        else:
            # Drawn as Sequential.fit draws it, from the generator fit gave every rank (rank 0's state):
            # one rank gives exactly Sequential.fit's result, and every rank cuts the same batches.
            order = _random.get_rng().permutation(n) if shuffle else None
            first, total, correct = 0, 0.0, 0
        seen = 0
        for b in range(first, n_batches):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            s0, s1 = share(hi - lo, self.size, self.rank)
            sl = slice(lo + s0, lo + s1)
            idx = order[sl] if order is not None else sl
            model.zero_grad()
            if s1 > s0:
                xb, yb = X[idx], y[idx]
                with _batch_rows(model, s0, hi - lo):  # Dropout: these rows of the whole batch's mask
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
                if dropout:  # an empty forward pass draws the batch's masks: the generator stays in step
                    with _batch_rows(model, s0, hi - lo):
                        model.forward(be.asarray(X[:0]))
                self._reduce(None, 0.0)
            optimizer.step()
            if bar is not None:
                bar.update(1)
                if b % 10 == 0 or b == n_batches - 1:
                    bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", refresh=False)  # rank 0's samples
            if ck is not None and ck.due(b + 1, n_batches):
                ck.save(model, optimizer, _checkpoint.Progress(epoch, b + 1, order, total, correct, pr.history))
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
