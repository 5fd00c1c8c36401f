"""The training loops of ``Sequential.fit``: one for the CPU back ends, one for a GPU.

Both walk the same batches: each epoch draws its order from whygpu's generator
(when shuffling), cuts it into batches of ``batch_size`` (the last may be
smaller), and runs the explicit step on each.  With a checkpointer (see
``_checkpoint.py``) they save every N batches and at each epoch's end, and a
resumed fit enters the loop at the saved epoch and batch, with the saved order.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import _random
from . import _backend
from ._backend import DeviceBackend
from ._checkpoint import Checkpointer, Progress
from ._graph import GraphStep

__all__ = ["host_loop", "device_loop", "_progress"]


def _epoch_start(pr: Progress, epoch: int, n: int, shuffle: bool):
    """(order, first batch, loss sum, samples right) for this epoch: the checkpoint's when it
    stopped inside this epoch, else a new order drawn and zero sums."""
    if pr.epoch == epoch and pr.batch > 0:
        return pr.order, pr.batch, pr.loss_sum, pr.correct
    return (_random.get_rng().permutation(n) if shuffle else None), 0, 0.0, 0


def _diverged(bar, value, epoch: int, where: str = ""):
    if bar is not None:
        bar.close()
    return FloatingPointError(
        f"the loss became {value} in epoch {epoch + 1}{where}: training diverged -- try a smaller learning rate"
    )


def host_loop(model, X, y, epochs, batch_size, optimizer, loss, val, shuffle, verbose, history, classifier,
              pr: Progress, ck: Checkpointer | None) -> None:  # fmt: skip
    """fit on a CPU back end (and a GPU model without graphs' bookkeeping: see device_loop)."""
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    be = model._backend  # on a GPU back end each batch is uploaded and the logits come back for accuracy
    for epoch in range(pr.epoch, epochs):
        order, first, total_loss, correct = _epoch_start(pr, epoch, n, shuffle)
        bar = _progress(n_batches, f"Epoch {epoch + 1}/{epochs}", verbose, initial=first)
        for b in range(first, n_batches):
            sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
            idx = order[sl] if order is not None else sl
            xb, yb = X[idx], y[idx]
            out = model.forward(be.asarray(xb))
            _backend.note_output(out, be)
            batch_loss = loss(out, yb)
            if classifier:
                correct += loss._n_correct(be.to_host(out), yb)
            model.zero_grad()
            model.backward(loss.backward())
            optimizer.step()
            if not np.isfinite(batch_loss):
                raise _diverged(bar, batch_loss, epoch, f", batch {b + 1}")
            total_loss += batch_loss * xb.shape[0]
            if bar is not None:
                bar.update(1)
                if b % 10 == 0 or b == n_batches - 1:
                    bar.set_postfix(loss=f"{total_loss / (sl.stop):.4f}", refresh=False)
            if ck is not None and ck.due(b + 1, n_batches):
                ck.save(model, optimizer, Progress(epoch, b + 1, order, total_loss, correct, history))
        model._end_epoch(
            history, total_loss / n, correct / n if classifier else None, val, loss, batch_size, bar, verbose,
            f"Epoch {epoch + 1}/{epochs}",
        )  # fmt: skip
        if ck is not None:
            ck.save(model, optimizer, Progress(epoch + 1, 0, None, 0.0, 0, history))


def device_loop(model, X, y, epochs, batch_size, optimizer, loss, val, shuffle, verbose, history, classifier,
                cuda_graph: bool, pr: Progress, ck: Checkpointer | None) -> None:  # fmt: skip
    """fit on a GPU back end: no copy back and no wait for the GPU inside an epoch (but to save
    a checkpoint, which reads the sums and copies the state down)."""
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    be = model._backend
    assert isinstance(be, DeviceBackend)  # fit calls this for a back end whose device is not None
    acc_up = be._mod.Uploader(be.array_type((3,), np.float64))  # [summed loss, bad labels, right], on the GPU
    step = GraphStep(model, loss, optimizer, graph=cuda_graph, _acc=acc_up.target)
    model._last_step = step  # for tests and the benchmarks: how the steps ran
    for epoch in range(pr.epoch, epochs):
        order, first, loss_sum, correct = _epoch_start(pr, epoch, n, shuffle)
        bar = _progress(n_batches, f"Epoch {epoch + 1}/{epochs}", verbose, initial=first)
        acc_up.load(np.array([loss_sum, 0.0, correct], dtype=np.float64))
        for b in range(first, n_batches):
            sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
            idx = order[sl] if order is not None else sl
            step._step(X[idx], y[idx])  # the loss is summed on the GPU: no copy of it per step
            if bar is not None:
                bar.update(1)
                if b % 10 == 0 or b == n_batches - 1:  # reading the sums waits for the GPU
                    sums = be.to_host(acc_up.target)
                    bar.set_postfix(loss=f"{sums[0] / sl.stop:.4f}", refresh=False)
            if ck is not None and ck.due(b + 1, n_batches):
                sums = be.to_host(acc_up.target)
                ck.save(model, optimizer, Progress(epoch, b + 1, order, float(sums[0]), int(sums[2]), history))
        sums = be.to_host(acc_up.target)
        if not np.isfinite(sums[0]):
            raise _diverged(bar, sums[0], epoch)
        model._end_epoch(
            history, float(sums[0]) / n, float(sums[2]) / n if classifier else None, val, loss, batch_size, bar,
            verbose, f"Epoch {epoch + 1}/{epochs}",
        )  # fmt: skip
        if ck is not None:
            ck.save(model, optimizer, Progress(epoch + 1, 0, None, 0.0, 0, history))


def _progress(total: int, desc: str, verbose, initial: int = 0):
    if verbose in (0, 2):
        return None
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal ("auto"); verbose=1 forces it.
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="batch",
        leave=True,
        disable=None if verbose == "auto" else False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
