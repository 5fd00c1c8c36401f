"""Worker of tests/test_zero.py: with shard=ARGV[1], the last rank raises inside its optimizer
step (its shard's update) in the second step of fit, while the others wait in the allgather of
the parameters.  The job must end, with that rank's traceback."""

import sys
import time

import numpy as np

import whygpu
import whygpu.distributed as dist
from whygpu import nn, optim

comm = dist.init()
rank, size = comm.Get_rank(), comm.Get_size()
whygpu.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).to("numpy")
dp = dist.DataParallel(model, shard=sys.argv[1] if len(sys.argv) > 1 else "optimizer")
opt = dp.optimizer(optim.Adam, lr=1e-3)
steps = 0
update = opt.optimizer.step


def failing_update():
    global steps
    steps += 1
    if rank == size - 1 and steps == 2:
        time.sleep(0.3)  # the others are in the allgather by now
        print(f"raising at {time.time():.3f}", file=sys.stderr, flush=True)
        raise RuntimeError(f"rank {rank} fails on purpose in its shard's update")
    update()


opt.optimizer.step = failing_update
X = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
y = np.arange(64) % 3
dp.fit(X, y, epochs=1, batch_size=16, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0)
print(f"rank {rank}: fit returned, which it must not", flush=True)
