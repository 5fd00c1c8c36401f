"""pytest set-up for the whygpu test suite: the hypothesis profile, the
fixtures, and a guard that no test leaks a changed instruction set or
default thread count into the next one.  Helpers live in tests/_support.py."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import whygpu

from ._support import emu_cache, emu_compiler_ok, emu_runner

# The quiet guard (whygpu.bench.trust) records how busy the machine is but does not wait in tests:
# a test is not a benchmark, and a busy CI machine must not make the suite slower.
os.environ.setdefault("WHYGPU_QUIET_WAIT", "0")

# Modest example counts: the whole suite must stay well under 3 minutes on 2 cores.
settings.register_profile(
    "whygpu",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("whygpu-long", parent=settings.get_profile("whygpu"), max_examples=1000)
settings.load_profile(os.environ.get("WHYGPU_HYPOTHESIS_PROFILE", "whygpu"))


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


# ---- Global state guard ------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test leaves the instruction set and default thread count as it found them;
    a test that forgets to restore them fails here instead of skewing later tests."""
    arch, threads = whygpu._core.arch(), whygpu.get_num_threads()  # cpu_info() would read /proc each time
    yield
    leaked = (whygpu._core.arch(), whygpu.get_num_threads())
    whygpu.set_arch(arch)
    whygpu.set_num_threads(threads)
    assert leaked == (arch, threads), f"test changed global state: arch/threads {leaked} != {(arch, threads)}"


@pytest.fixture
def restore_arch():
    """Lets a test call whygpu.set_arch freely; the original is put back after."""
    before = whygpu._core.arch()
    yield before
    whygpu.set_arch(before)


@pytest.fixture
def restore_num_threads():
    before = whygpu.get_num_threads()
    yield before
    whygpu.set_num_threads(before)


# ---- The emulated GPU ------------------------------------------------------------


@pytest.fixture(scope="session")
def emulated_site(tmp_path_factory):
    """A folder to put on PYTHONPATH: a copy of the whygpu under test whose _cuda
    is the real binding built over the CPU emulation of CUDA (tests/cuda_emu).
    The build is cached by content hash outside the tree (emu_cache(): a later run
    compiles nothing unless a source, a flag or the compiler changed), shared with
    tests/test_cuda_emulated.py's check_kernels build."""
    if not (pathlib.Path(__file__).resolve().parent.parent / "csrc" / "cuda").is_dir():
        pytest.skip("no csrc/cuda in this tree")
    if not importlib.util.find_spec("pybind11"):
        pytest.skip("needs pybind11 to build the binding")
    tmp = tmp_path_factory.mktemp("emulated_site")
    if not emu_compiler_ok(tmp):
        pytest.skip("needs g++ with C++20")
    return emu_runner().make_site(tmp, cache=str(emu_cache()), package=str(pathlib.Path(whygpu.__file__).parent))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """One ``whygpu demo --quick`` for the session: the CLI tests and the browser test read its folder."""
    from whygpu.cli import main

    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out
