"""DataParallel.fit's checkpoints: rank 0 writes, every rank reads, every rank agrees.

The file is the one ``Sequential.fit`` writes (``nn/_checkpoint.py``), so either can resume the
other's.  Writing: a sharded optimizer first consolidates its state on rank 0 (a collective), the
loss and accuracy sums of the epoch so far are added over the ranks, and rank 0 saves; a
broadcast then tells every rank whether it worked, so a full disk raises on every rank instead
of leaving the others in the next collective.  Resuming: every rank reads the file and checks it
against its model, optimizer and data; the ranks compare their verdicts (one allgather), and
only when every rank can load it does any rank assign anything.
"""

from __future__ import annotations

from .._serialize import save
from ..nn._checkpoint import Checkpointer, Progress, prepare
from ._agree import fail_together
from ._sharded import ShardedOptimizer

__all__ = ["RankCheckpointer", "restore_on_every_rank"]


class RankCheckpointer(Checkpointer):
    """Checkpointer for DataParallel.fit: every rank calls ``save``; rank 0 writes."""

    def __init__(self, dp, *args):
        super().__init__(*args)
        self.dp = dp

    def save(self, model, optimizer, pr: Progress) -> None:
        dp = self.dp
        if isinstance(optimizer, ShardedOptimizer):
            optimizer.consolidate_state_dict(to=0)
        loss_sum, correct = dp._sum_over_ranks(pr.loss_sum, pr.correct)  # this epoch's so far, every rank's
        error = None
        if dp.rank == 0:
            try:
                whole = Progress(pr.epoch, pr.batch, pr.order, loss_sum, int(correct), pr.history)
                save(self.payload(model, optimizer.state_dict(), whole), self.path)
            except Exception as e:  # every rank learns of it below
                error = e
        failed = dp.comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
        if error is not None:
            raise error
        if failed is not None:
            raise RuntimeError(f"rank 0 could not write the checkpoint {self.path!r}: {failed}")
        self.saved += 1


def restore_on_every_rank(dp, path: str, optimizer, n: int, batch_size: int, shuffle: bool) -> Progress:
    """Resume on every rank: each checks, all agree, then each assigns.  The epoch's loss sums so
    far (the ranks' total in the file) go to rank 0; the others start from zero."""
    model = dp.module
    apply, progress, error = None, None, None
    try:
        apply, progress = prepare(path, model, optimizer, n, batch_size, shuffle)
    except Exception as e:  # told to every rank below, then raised
        error = e
    fail_together(dp.comm, error, "DataParallel.fit", f"cannot resume from {path!r}", "nothing was loaded on any rank")
    assert apply is not None and progress is not None
    apply()
    if dp.rank != 0:
        progress.loss_sum, progress.correct = 0.0, 0
    dp.broadcast_parameters()  # the same bits already; a sharded GPU model's shards follow the new values
    return progress
