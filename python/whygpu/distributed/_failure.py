"""No hangs: an uncaught exception, a dead thread or Ctrl-C on one rank ends every rank of the MPI job.

Without this, one rank that fails leaves the others waiting forever in their
next collective (Allreduce, Barrier): MPI has no idea that the Python on the
failed rank has given up (the failed rank itself then waits in MPI_Finalize).
``install(comm)``, called once by ``whygpu.distributed.init()``, does three
things when the job has more than one rank (with one rank, plain
``python train.py``, Python's normal behaviour is kept, untouched):

* ``sys.excepthook``: an uncaught exception prints its traceback to stderr,
  every line prefixed with ``[rank r]``, flushes stdout and stderr, waits
  0.2 s (the launcher forwards the ranks' output through pipes, and kills
  every process as soon as one aborts: without the pause MPICH's mpiexec lost
  the traceback in about 1 run in 12) and calls ``comm.Abort(1)`` (130 for
  KeyboardInterrupt); the launcher then kills every other rank.  This works
  however the script was started, with or without ``python -m mpi4py``.
* ``threading.excepthook``: the same for an uncaught exception in a thread
  (a dead helper thread would otherwise leave its rank, and through it the
  others, waiting); SystemExit in a thread stays as quiet as in plain Python.
* SIGINT (Ctrl-C): its action is set back to the operating system's default,
  which ends the process at once.  MPICH's mpiexec forwards a first Ctrl-C to
  every rank as SIGINT ("Press Ctrl-C again to force abort"), but a rank
  blocked inside a C-level MPI call (Wait, Allreduce, Barrier) never returns
  to the interpreter, so a Python-level handler (KeyboardInterrupt, or one
  that calls Abort) never runs there: measured with MPICH 5, such a job still
  hung 8 s after the Ctrl-C (until a second one), where with the default
  action every rank was gone within 0.03 s.  (Open MPI's mpirun kills the
  ranks itself on Ctrl-C, in about 0.3 s.)  An inherited "ignore" (a shell
  starts background jobs with SIGINT ignored) is replaced too, as it would
  leave the rank deaf to mpiexec's forwarding; a handler the program
  installed itself, before init(), is left alone.  The price: ``finally``
  blocks and atexit handlers do not run on Ctrl-C.

Not covered: ``sys.exit()`` on one rank while the others go on.  SystemExit
is a deliberate exit, not an error, so no hook sees it, and MPICH's
MPI_Finalize on that rank then waits for the others: call
``comm.Abort(status)`` to stop a job from one rank.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import Any, Callable

__all__ = ["install"]

_installed = False

# What the job exits with when a rank aborts: 1 for an exception, 130 (128 + SIGINT) for KeyboardInterrupt.
_EXIT_ERROR = 1
_EXIT_INTERRUPT = 130
# How long an aborting rank waits, after flushing, for the launcher to forward what it printed: MPI_Abort makes
# mpiexec kill every process at once, and MPICH's hydra lost the traceback in ~1 run in 12 without this pause.
_DRAIN_S = 0.2


def install(comm: Any) -> None:
    """Make a failure on any rank of ``comm`` (MPI.COMM_WORLD) end the whole job; idempotent.

    With a single rank (plain ``python train.py``) nothing is changed.
    """
    global _installed
    if _installed:
        return
    _installed = True
    if comm.Get_size() <= 1:
        return
    rank = comm.Get_rank()
    previous = sys.excepthook
    sys.excepthook = _make_excepthook(comm, rank, previous)
    threading.excepthook = _make_thread_excepthook(comm, rank)
    _default_sigint()


def _make_excepthook(
    comm: Any, rank: int, previous: Callable[[type[BaseException], BaseException, TracebackType | None], Any]
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    """The sys.excepthook of a rank: report the exception, then abort every rank."""

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        try:
            if previous is sys.__excepthook__ or previous is None:
                _report(rank, "", exc_type, exc, tb)
            else:  # the program's own hook (IPython's, a logger's) prints it its way
                _write(f"[rank {rank}] uncaught {exc_type.__name__}: aborting every rank\n")
                previous(exc_type, exc, tb)
        finally:
            _abort(comm, _EXIT_INTERRUPT if issubclass(exc_type, KeyboardInterrupt) else _EXIT_ERROR)

    return hook


def _make_thread_excepthook(comm: Any, rank: int) -> Callable[[threading.ExceptHookArgs], None]:
    """The threading.excepthook of a rank: an uncaught exception in any thread aborts every rank."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:  # plain Python ends such a thread silently, and so do we
            return
        name = args.thread.name if args.thread is not None else "?"
        try:
            exc = args.exc_value if args.exc_value is not None else args.exc_type()
            _report(rank, f" in thread {name!r}", args.exc_type, exc, args.exc_traceback)
        finally:
            _abort(comm, _EXIT_ERROR)

    return hook


def _report(rank: int, where: str, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Write the traceback to stderr in one piece, each line tagged with the rank (ranks' output interleaves)."""
    prefix = f"[rank {rank}] "
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    lines = [f"{prefix}uncaught exception{where}: aborting every rank\n"]
    lines += [prefix + line + "\n" for line in text.splitlines()]
    _write("".join(lines))


def _write(text: str) -> None:
    """Write to stderr and flush, whatever state stderr is in (closed, None under pythonw)."""
    for stream in (sys.stderr, sys.__stderr__):
        if stream is None:
            continue
        try:
            stream.write(text)
            stream.flush()
            return
        except (OSError, ValueError):  # closed or broken: try the original stderr
            continue


def _abort(comm: Any, code: int) -> None:
    """Flush what this rank printed, then end every rank of the job with exit status `code`."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    time.sleep(_DRAIN_S)
    try:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            comm.Abort(code)  # does not return: the launcher kills every rank
    finally:
        os._exit(code)  # MPI already finalized (an exception at exit) or Abort failed: at least end this rank


def _default_sigint() -> None:
    """Give SIGINT its default action (end the process at once) unless the program installed its own handler."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works in the main thread only; init() is normally called there
    current = signal.getsignal(signal.SIGINT)
    if current in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
