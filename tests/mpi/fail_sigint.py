"""Worker of tests/test_distributed_failure.py: every rank blocks inside a C-level MPI call until Ctrl-C.

argv: the folder to write ``<rank>.pid`` into, and the SIGINT disposition the rank starts with:
``default`` (Python's KeyboardInterrupt handler, as in a terminal) or ``ignore`` (as a shell's
background job inherits it).  whygpu.distributed.init() must make either end the rank on SIGINT.
Rank 0 waits in Barrier, the others in a Recv that no rank sends: none ever returns to Python.
"""

import os
import signal
import sys

import numpy as np

piddir, disposition = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGINT, signal.default_int_handler if disposition == "default" else signal.SIG_IGN)

import whygpu.distributed as dist  # noqa: E402  (after the SIGINT disposition is set, as the test intends)

comm = dist.init()
rank = comm.Get_rank()
tmp = os.path.join(piddir, f"{rank}.tmp")
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, os.path.join(piddir, f"{rank}.pid"))  # whole, or not there
if rank == 0:
    comm.Barrier()
else:
    comm.Recv(np.zeros(1), source=0)
print(f"rank {rank}: returned from MPI, which it must not", flush=True)
