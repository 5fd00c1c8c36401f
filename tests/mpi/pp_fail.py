"""Worker of tests/test_pipeline.py: a pipeline of 3 stages whose last stage fails in the middle of a step.

argv: ``raise`` (the last rank's layer raises in its third forward, while the others wait for its messages) or
``sigint DIR`` (each rank writes ``DIR/<rank>.pid`` and runs a step in which the last stage never finishes a
forward: the test then sends Ctrl-C to mpiexec).
"""

import os
import sys
import time

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn

mode = sys.argv[1]
dist.init()
rank, size = dist.rank(), dist.size()


class Fails(nn.ReLU):
    """A ReLU that fails (or hangs) on its third forward pass, on the last rank only."""

    calls = 0

    def forward(self, x):
        Fails.calls += 1
        if rank == size - 1 and Fails.calls == 3:
            if mode == "raise":
                print(f"raising at {time.time():.3f}", file=sys.stderr, flush=True)
                raise RuntimeError(f"rank {rank} fails on purpose")
            time.sleep(300)  # the others wait in MPI for its messages
        return super().forward(x)


whygpu.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), Fails())
pp = dist.Pipeline(model, micro_batches=4, schedule="1f1b", balance=[2, 2, 2])
if mode == "sigint":
    tmp = os.path.join(sys.argv[2], f"{rank}.tmp")
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, os.path.join(sys.argv[2], f"{rank}.pid"))
x = np.ones((8, 8), np.float32)
pp.step(x, np.zeros((8, 4), np.float32), nn.MSELoss())
print(f"rank {rank}: the step returned, which it must not", flush=True)
