"""Worker of tests/test_distributed_failure.py: the last rank raises while the others wait in a collective.

argv[1] says where the last rank raises: ``main`` (the default: its main thread) or ``thread`` (a helper
thread, while its main thread waits in a Recv that no rank sends).  Run alone (no mpiexec) with ``main``
it is rank 0 of 1 and raises at once: plain Python's traceback and exit status 1.
"""

import sys
import threading
import time

import numpy as np

import whygpu.distributed as dist

comm = dist.init()
rank, size = comm.Get_rank(), comm.Get_size()
where = sys.argv[1] if len(sys.argv) > 1 else "main"


def fail():
    time.sleep(0.3)  # the others are in Allreduce by now
    print(f"raising at {time.time():.3f}", file=sys.stderr, flush=True)
    raise RuntimeError(f"rank {rank} fails on purpose")


if rank == size - 1:
    if where == "thread":
        threading.Thread(target=fail, name="helper", daemon=True).start()
        comm.Recv(np.zeros(1), source=0)  # never completes: nothing is sent
    else:
        fail()
total = np.zeros(1)
comm.Allreduce(np.ones(1), total)  # never completes: the last rank is not coming
print(f"rank {rank}: Allreduce returned, which it must not", flush=True)
