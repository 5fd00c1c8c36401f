"""fit's checkpoints: everything a killed run needs to go on as if it had never stopped.

A checkpoint (``fit(..., checkpoint="run.npz")``) is one ``whygpu.save`` file holding

* ``model``: ``model.state_dict()``;
* ``optimizer``: ``optimizer.state_dict()`` (a sharded optimizer's consolidated on rank 0: the
  same per-parameter dict, so it loads on any number of ranks);
* ``rng``: whygpu's random generator (Dropout masks, the next epochs' shuffling);
* ``progress``: the epoch and the batches of it done, this epoch's sample order, the loss and
  accuracy sums so far, the history, and what ``fit`` was given (samples, batch size, shuffle).

``fit(..., resume="run.npz")`` checks all of it against the model, the optimizer and the data
before anything is assigned, then continues from the next batch, drawing the random numbers the
uninterrupted run would have drawn: the final weights are the same bits.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field

import numpy as np

from .. import _random
from .._serialize import CheckpointError, load, save
from ._state import check_module_state

__all__ = ["Progress", "Checkpointer", "checked_args"]

FORMAT = "whygpu.checkpoint"


@dataclass
class Progress:
    """Where a fit is: ``epoch`` (0-based) with ``batch`` of its batches done, in ``order``."""

    epoch: int = 0
    batch: int = 0
    order: np.ndarray | None = None
    loss_sum: float = 0.0
    correct: int = 0
    history: dict = field(default_factory=dict)


def checked_args(checkpoint, checkpoint_every, resume):
    """fit's checkpoint arguments, checked: (path or None, every N batches or None, resume path or None)."""
    for name, v in (("checkpoint", checkpoint), ("resume", resume)):
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"{name} must be a file path, got {v!r}")
    every = None
    if checkpoint_every is not None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, numbers.Integral):
            raise TypeError(f"checkpoint_every must be a positive integer (batches), got {checkpoint_every!r}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint= (the file to write)")
        every = int(checkpoint_every)
    if checkpoint is not None:  # found out now, not after the first epoch's training
        folder = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint={os.fspath(checkpoint)!r}: there is no folder {folder!r}")
        if os.path.isdir(os.fspath(checkpoint)):
            raise IsADirectoryError(f"checkpoint={os.fspath(checkpoint)!r} is a folder; give a file name (run.npz)")
    return (
        os.fspath(checkpoint) if checkpoint is not None else None,
        every,
        os.fspath(resume) if resume is not None else None,
    )


class Checkpointer:
    """Writes fit's checkpoints: every ``every`` batches (when given) and at the end of each epoch.

    ``write`` (rank 0 of a DataParallel run; always in one process) says whether this process
    writes the file; ``optimizer_state`` makes the optimizer's state dict (a sharded one
    consolidates first, a collective every rank takes part in)."""

    def __init__(self, path: str, every: int | None, n: int, batch_size: int, shuffle: bool, epochs: int):
        self.path, self.every = path, every
        self.fit_args = {"n": int(n), "batch_size": int(batch_size), "shuffle": bool(shuffle)}
        self.epochs = int(epochs)
        self.saved = 0  # checkpoints written by this fit

    def due(self, batches_done: int, n_batches: int) -> bool:
        """After this many batches of an epoch: a mid-epoch checkpoint now?  (The epoch's end has its own.)"""
        return self.every is not None and batches_done % self.every == 0 and batches_done < n_batches

    def payload(self, model, optimizer_state: dict, pr: Progress) -> dict:
        progress = {
            **self.fit_args,
            "epochs": self.epochs,
            "epoch": pr.epoch,
            "batch": pr.batch,
            "order": pr.order,
            "loss_sum": float(pr.loss_sum),
            "correct": int(pr.correct),
            "history": {k: [float(v) for v in vals] for k, vals in pr.history.items()},
        }
        return {
            "format": FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer_state,
            "rng": _random.get_rng_state(),
            "progress": progress,
        }

    def save(self, model, optimizer, pr: Progress) -> None:
        save(self.payload(model, optimizer.state_dict(), pr), self.path)
        self.saved += 1


def read(path: str) -> dict:
    """The checkpoint file, with its format checked (CheckpointError, FileNotFoundError)."""
    ck = load(path)
    if ck.get("format") != FORMAT or not all(k in ck for k in ("model", "optimizer", "rng", "progress")):
        raise CheckpointError(
            f"{path!r} is a whygpu file but not a fit checkpoint (a state dict? load it with "
            f"model.load_state_dict(whygpu.load(path)))"
        )
    return ck


def restore(path: str, model, optimizer, n: int, batch_size: int, shuffle: bool) -> Progress:
    """Resume: check the checkpoint against this fit's data and arguments, the model and the
    optimizer (nothing assigned until all of it fits), then load the model, the optimizer and the
    random state.  Returns where to go on from."""
    apply, progress = prepare(path, model, optimizer, n, batch_size, shuffle)
    apply()
    return progress


def prepare(path: str, model, optimizer, n: int, batch_size: int, shuffle: bool):
    """restore's checks, nothing assigned: (a function that assigns it all, the Progress).  A
    DataParallel fit checks on every rank, agrees, and only then assigns."""
    ck = read(path)
    pg = ck["progress"]
    for key, mine in (("n", n), ("batch_size", batch_size), ("shuffle", bool(shuffle))):
        if pg.get(key) != mine:
            what = {"n": "samples in X", "batch_size": "batch_size", "shuffle": "shuffle"}[key]
            raise CheckpointError(
                f"{path!r} was written by a fit with {what} = {pg.get(key)!r}; this fit has {mine!r}: "
                f"resume with the same data and arguments"
            )
    pairs = check_module_state(model, ck["model"])
    rng = ck["rng"]
    try:  # checked on a generator of its own: the live one is set only once everything fits
        probe = np.random.Generator(getattr(np.random, str(rng["bit_generator"]))())
        probe.bit_generator.state = rng
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path!r}: the random state is not valid ({e})") from None
    order = pg.get("order")
    n_batches = -(-n // batch_size)
    if (
        not 0 <= int(pg["batch"]) < max(n_batches, 1)
        or (order is not None and (np.shape(order) != (n,) or np.asarray(order).dtype.kind not in "iu"))
        or (shuffle and int(pg["batch"]) > 0 and order is None)
    ):
        raise CheckpointError(f"{path!r}: its progress (batch {pg['batch']}, order) does not fit {n} samples")
    load_optimizer = optimizer._prepare_load(ck["optimizer"])  # checked; assigned by load_optimizer()

    def apply() -> None:
        load_optimizer()
        for p, v in pairs:
            p.data = v
        _random.set_rng_state(rng)

    return apply, Progress(
        epoch=int(pg["epoch"]),
        batch=int(pg["batch"]),
        order=np.asarray(order) if order is not None else None,
        loss_sum=float(pg["loss_sum"]),
        correct=int(pg["correct"]),
        history={k: list(v) for k, v in pg["history"].items()},
    )
