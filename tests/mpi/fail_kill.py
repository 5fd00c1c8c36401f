"""Worker of tests/test_distributed_failure.py: the last rank is killed (SIGKILL) while the others wait in Allreduce."""

import os
import signal
import sys
import time

import numpy as np

import whygpu.distributed as dist

comm = dist.init()
rank, size = comm.Get_rank(), comm.Get_size()
if rank == size - 1:
    time.sleep(0.3)  # the others are in Allreduce by now
    print(f"killed at {time.time():.3f}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
total = np.zeros(1)
comm.Allreduce(np.ones(1), total)  # never completes: the last rank is dead
print(f"rank {rank}: Allreduce returned, which it must not", flush=True)
