"""The worker tests/test_checkpoint_mpi.py launches under ``mpiexec -n P``: DataParallel.fit's
checkpoints (rank 0 writes, every rank reads) and a sharded optimizer's state resharded.

    ckpt_cases.py fit DIR BACKEND SHARD EPOCHS TAG [KILL_AT]
        DataParallel(shard=SHARD).fit for EPOCHS epochs with checkpoint=DIR/TAG.npz (every 2
        batches); rank 1 (rank 0 on one rank) SIGKILLs itself before batch KILL_AT + 1.
        The final weights, and (sharded) the consolidated optimizer state, into DIR/TAG.final.npz.
    ckpt_cases.py resume DIR BACKEND SHARD EPOCHS TAG FROM [BUCKET_MB]
        the same fit resumed from DIR/FROM.npz on this many ranks, this shard and bucket size;
        its final weights into DIR/TAG.final.npz.
Rank 0 prints ``RESULT {json}`` with what every rank checked.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim


def make(backend: str, seed: int = 0):
    whygpu.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Dropout(0.3), nn.Linear(24, 4)).to(backend)


def data(n=103):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 10)).astype(np.float32), rng.integers(0, 4, n)


def main(argv: list[str]) -> None:
    mode, folder, backend, shard, epochs, tag = argv[:6]
    rank, size = dist.rank(), dist.size()
    bucket_mb = float(argv[7]) if mode == "resume" and len(argv) > 7 else 0.0005  # 2 buckets: 100 + 340 elements
    model = make(backend, seed=0 if mode == "fit" else 5)  # resumed: other weights, the file's replace them
    dp = dist.DataParallel(model, shard=shard, bucket_mb=bucket_mb, first_bucket_mb=0.0)
    opt = dp.optimizer(optim.Adam, lr=1e-2)
    out: dict = {"buckets": len(dp._ensure_buckets())}
    if mode == "fit" and len(argv) > 6:
        kill_at, reduce, count = int(argv[6]), dp._reduce, [0]

        def counted(grad, weight):
            if count[0] == kill_at and rank == min(1, size - 1):
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
            reduce(grad, weight)

        dp._reduce = counted  # type: ignore[method-assign]
    path = os.path.join(folder, f"{tag}.npz")
    kw = {"resume": os.path.join(folder, f"{argv[6]}.npz")} if mode == "resume" else {"checkpoint_every": 2}
    X, y = data()
    history = dp.fit(X, y, epochs=int(epochs), batch_size=16, optimizer=opt, loss=nn.CrossEntropyLoss(),
                     verbose=0, checkpoint=path, **kw)  # fmt: skip
    final = {"model": model.state_dict(), "loss": history["loss"]}
    if shard != "none":
        try:
            opt.state_dict()
            out["unconsolidated"] = "no error"
        except RuntimeError as e:
            out["unconsolidated"] = str(e)
        opt.consolidate_state_dict(to=size - 1)  # on the last rank, this time
        if rank == size - 1:
            final["optimizer"] = opt.state_dict()
        else:
            try:
                opt.state_dict()
                out["elsewhere"] = "no error"
            except RuntimeError as e:
                out["elsewhere"] = str(e)
    if rank == size - 1:
        whygpu.save(final, os.path.join(folder, f"{tag}.final.npz"))
    if shard != "none":
        opt.step()  # every rank: the state consolidated above is now out of date
        try:
            opt.state_dict()
            out["stale"] = "no error"
        except RuntimeError as e:
            out["stale"] = str(e)
        try:
            opt.consolidate_state_dict(to=size)
            out["bad_rank"] = "no error"
        except ValueError as e:
            out["bad_rank"] = str(e)
    every = dist.comm().gather(out, root=0)
    dist.barrier()
    if rank == 0:
        print("RESULT " + json.dumps({"size": size, "ranks": every}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
