"""No hangs: a rank that raises, is killed or gets Ctrl-C ends the whole MPI job within seconds (issue 18).

Each case starts a worker of tests/mpi/ under ``mpiexec -n 2`` (in its own
session, so a signal reaches mpiexec alone, and under a timeout, so a hang
fails the test instead of stalling the suite) and checks how fast the job
ends, that it ends with a non-zero status and that no rank is left running.
The bounds are generous (measured with MPICH 5: 0.01-0.02 s from the failure
to the end of the job): what they catch is the hang, which lasts forever.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKERS = pathlib.Path(__file__).resolve().parent / "mpi"
END_BOUND_S = 5.0  # from the failure to the end of the job
HANG_S = 20  # a job still running after this is hung: the test fails (and kills it)


def _mpiexec():
    """The mpiexec next to this Python (a venv's, matching its mpi4py), else the first on PATH."""
    here = pathlib.Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = _mpiexec()
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (pip install '.[mpi]' from the source folder)")
needs_mpiexec = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC), reason="needs mpi4py and an mpiexec (pip install '.[mpi]' from the source folder)"
)


def _env():
    """The children's environment: whygpu importable from the source tree or wherever it is installed."""
    import whygpu

    env = dict(os.environ)
    package_parent = str(pathlib.Path(whygpu.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # Open MPI's mpirun refuses root and more ranks than cores without these; MPICH ignores them.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return env


def _start(script, *args, ranks=2):
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, str(WORKERS / script), *map(str, args)]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(proc, timeout=HANG_S):
    """Wait for the job: (exit status, stdout + stderr, the time it ended); a job that hangs is killed and fails."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the MPI job hung (> {timeout} s):\n{out}\n{err}")
    return proc.returncode, out + err, time.time()


def _stamp(output, word):
    """The time a worker printed as '<word> at <seconds since the epoch>'."""
    found = re.search(rf"{word} at (\d+\.\d+)", output)
    assert found, f"the worker did not say when it was {word}:\n{output}"
    return float(found.group(1))


def _alive(pid):
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@needs_mpiexec
@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_rank_that_raises_ends_the_job(where):
    """Rank 1 raises (in its main thread, or in a helper thread) while rank 0 waits in Allreduce:
    the job ends within 5 s, non-zero, with rank 1's traceback."""
    status, output, ended = _finish(_start("fail_raise.py", where))
    assert status != 0, output
    assert ended - _stamp(output, "raising") < END_BOUND_S, output
    headline = "[rank 1] uncaught exception" + (" in thread 'helper'" if where == "thread" else "")
    assert headline + ": aborting every rank" in output, output
    assert "[rank 1] Traceback (most recent call last):" in output, output
    assert "[rank 1] RuntimeError: rank 1 fails on purpose" in output, output
    assert "Allreduce returned" not in output, output


@needs_mpiexec
def test_a_rank_that_is_killed_ends_the_job():
    """Rank 1 dies of SIGKILL while rank 0 waits in Allreduce: the launcher ends the job within 5 s."""
    status, output, ended = _finish(_start("fail_kill.py"))
    assert status != 0, output
    assert ended - _stamp(output, "killed") < END_BOUND_S, output
    assert "Allreduce returned" not in output, output


@needs_mpiexec
@pytest.mark.parametrize("disposition", ["default", "ignore"])
def test_ctrl_c_stops_every_rank(tmp_path, disposition):
    """SIGINT to mpiexec while every rank is blocked inside MPI (Barrier, Recv): all ranks are gone within 5 s.

    "ignore" starts the ranks with SIGINT ignored, as a shell's background job does: init() must undo it.
    """
    proc = _start("fail_sigint.py", tmp_path, disposition)
    pids = []
    try:
        deadline = time.time() + 30
        while len(pids) < 2:
            files = [tmp_path / f"{r}.pid" for r in range(2)]
            if all(f.exists() for f in files):
                pids = [int(f.read_text()) for f in files]
            elif proc.poll() is not None or time.time() > deadline:
                out, err = proc.communicate()
                pytest.fail(f"the ranks did not start (status {proc.returncode}):\n{out}\n{err}")
            else:
                time.sleep(0.05)
        time.sleep(0.3)  # into Barrier / Recv
        sent = time.time()
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does to mpiexec
        status, output, ended = _finish(proc, timeout=15)
        assert status != 0, output
        assert ended - sent < END_BOUND_S, output
        assert "returned from MPI" not in output, output
        give_up = time.time() + END_BOUND_S
        while any(_alive(p) for p in pids) and time.time() < give_up:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], f"ranks left running after Ctrl-C:\n{output}"
    finally:
        for p in pids:  # never leave a stray rank behind, whatever failed above
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@needs_mpi4py
def test_without_mpiexec_an_exception_is_plain_python():
    """The raising worker run alone (one rank): Python's own traceback and exit status 1, no MPI abort."""
    run = subprocess.run(
        [sys.executable, str(WORKERS / "fail_raise.py")], cwd=ROOT, env=_env(), capture_output=True, text=True,
        timeout=HANG_S,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.splitlines()[-1] == "RuntimeError: rank 0 fails on purpose", run.stderr
    assert "Traceback (most recent call last):" in run.stderr
    assert "[rank" not in run.stderr and "Abort" not in run.stderr, run.stderr


def test_without_mpi4py_the_import_error_names_the_extra():
    """No mpi4py: `import whygpu.distributed` raises ImportError, one line that says `pip install mpi4py mpich`."""
    code = (
        "import json, sys\n"
        "sys.modules['mpi4py'] = None  # as if mpi4py were not installed\n"
        "try:\n"
        "    import whygpu.distributed\n"
        "except ImportError as e:\n"
        "    print(json.dumps(str(e)))\n"
        "else:\n"
        "    print(json.dumps(None))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=HANG_S)
    assert run.returncode == 0, run.stderr
    message = json.loads(run.stdout)
    assert message is not None, "whygpu.distributed imported without mpi4py"
    assert "\n" not in message.strip() and "pip install mpi4py mpich" in message, message
