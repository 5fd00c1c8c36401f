"""pytest set-up for the whygpu test suite: the hypothesis profile, the
fixtures, and a guard that no test leaks a changed instruction set or
default thread count into the next one.  Helpers live in tests/_support.py."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import whygpu

# Modest example counts: the whole suite must stay well under 3 minutes on 2 cores.
settings.register_profile(
    "whygpu", max_examples=200, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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
