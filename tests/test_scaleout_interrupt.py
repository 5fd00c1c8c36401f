"""Ctrl-C during an MPI job ends mpiexec and every rank within 2 s.

MPICH's hydra puts its proxy and every rank in a session of its own, so
killing mpiexec's process group (what the launcher did on a timeout) leaves
the ranks running as orphans.  Each case runs a child Python that installs
the default SIGINT handler itself (a shell's background job starts with
SIGINT ignored), starts a job whose processes all carry a tag in their
environment, sends itself SIGINT once they are up, and reports when the
KeyboardInterrupt came out; the test then looks through /proc for any
process still carrying the tag 2 s after the signal.  One case uses a fake
mpiexec (a shell script that starts children in their own sessions, as
hydra does): no MPI needed.  The other uses the real mpiexec with 16 ranks.
Also here: the progress callback of a running job, and notebook 07 without
mpi4py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import whygpu
from whygpu.bench import scaleout as bso

PACKAGE_ROOT = str(Path(whygpu.__file__).resolve().parent.parent)
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MPI = bso.mpi_status()
has_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")

CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from whygpu.bench import scaleout as bso
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tag, want, cmd = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])

    def tagged():
        n = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                try:
                    if tag.encode() in open(f"/proc/{pid}/environ", "rb").read():
                        n += 1
                except OSError:
                    pass
        return n

    sent = []

    def fire():
        t0 = time.monotonic()
        while tagged() < want and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        time.sleep(1.0)  # the ranks running, not just started
        sent.append(time.time())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()
    out = {"seen": 0}
    try:
        bso.run_job(cmd, dict(os.environ), timeout=300)
        out["finished"] = True
    except KeyboardInterrupt:
        out["returned_s"] = time.time() - sent[0]
    out["sent"] = sent[0] if sent else None
    print(json.dumps(out))
""")


def _tagged_alive(tag: str) -> list[str]:
    """Processes (not zombies) whose environment carries the tag."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if tag.encode() not in Path(f"/proc/{pid}/environ").read_bytes():
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            out.append(f"{pid} {cmd}")
    return out


def _interrupt(cmd: list[str], want: int, timeout: float) -> tuple[dict, list[str]]:
    tag = f"WHYGPU_TEST_TAG={uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["WHYGPU_TEST_TAG"] = tag.split("=", 1)[1]
    r = subprocess.run(
        [sys.executable, "-c", CHILD, tag, str(want), json.dumps(cmd)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert "finished" not in res and res["sent"], res
    time.sleep(max(0.0, res["sent"] + 2.0 - time.time()))  # look 2 s after the signal
    return res, _tagged_alive(tag)


@has_proc
def test_ctrl_c_ends_a_job_whose_children_left_the_process_group(tmp_path):
    """A fake mpiexec whose 4 children sit in sessions of their own (as hydra's ranks do) and
    ignore SIGINT: the launcher must find and end them all the same."""
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\nfor i in 1 2 3 4; do setsid sh -c 'trap \"\" INT; sleep 60' & done\nwait\n")
    fake.chmod(0o755)
    res, left = _interrupt([str(fake)], want=9, timeout=60)  # 1 fake + 4 setsid sh + 4 sleep
    assert res["returned_s"] < 2.0, res
    assert left == [], left


@has_proc
@pytest.mark.skipif(not MPI["available"], reason=f"no MPI here: {MPI.get('reason')}")
def test_ctrl_c_with_16_ranks_leaves_no_process_after_2_s():
    cmd = [MPI["mpiexec"], "-n", "16", sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"]
    res, left = _interrupt(cmd, want=18, timeout=240)  # mpiexec, its proxy, 16 ranks
    assert res["returned_s"] < 2.0, res
    assert left == [], left


def test_a_running_job_reports_progress_and_a_timeout_ends_it():
    ticks: list[float] = []
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        bso.run_job([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ), 1.6, ticks.append)
    assert time.monotonic() - t0 < 5  # ended, not waited for
    assert ticks and ticks[0] < 1.0 and len(ticks) >= 2  # a tick about every 0.5 s, the first within 1 s


def test_notebook_07_runs_without_mpi4py(tmp_path):
    """'Without them the first part says so and the model part still runs': every code cell, in a
    Python where mpi4py cannot be imported (nor by the scripts the notebook starts)."""
    nb = NOTEBOOKS / "07_more_than_one_machine.ipynb"  # beside tests/, wherever whygpu is installed from
    if not nb.exists():
        pytest.skip(f"no {nb.name} in {NOTEBOOKS}")
    site = tmp_path / "site"
    site.mkdir()
    # None in sys.modules: `import mpi4py` raises ImportError and find_spec says it is not there
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['mpi4py'] = None\n")
    cells = json.loads(nb.read_text())["cells"]
    script = tmp_path / "nb07.py"
    script.write_text("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "MPI here: mpi4py is not installed" in r.stdout
    assert "1 rank : final loss" in r.stdout and "2 ranks: not measurable here" in r.stdout
    assert "on InfiniBand EDR at P = 8 (the package's model)" in r.stdout  # the model part still runs
    assert "digits model on InfiniBand EDR: the efficiency is" in r.stdout  # and its conclusion, from the table
