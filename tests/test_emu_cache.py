"""The CUDA emulation's build cache (tests/cuda_emu/build_emulated.py): every object
and linked program is named by a hash of what went into it, so a second test run
compiles nothing and any change -- the text, a flag, the compiler, Python --
compiles again; each is written under a temporary name and renamed into place, so
a failed or interrupted build, or two test runs building at once, never leave a
broken entry behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from ._support import emu_cache, emu_runner

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture
def bm():
    return emu_runner().build_emulated


@pytest.fixture
def gxx(monkeypatch, bm):
    """The compiler and linker commands build_emulated runs from now on (g++ --version is not one)."""
    calls: list[list[str]] = []
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if "-o" in cmd:
            calls.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(bm.subprocess, "run", run)
    return calls


@pytest.fixture
def cache(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    return folder


def leftovers(cache) -> list[str]:
    return sorted(p.name for p in cache.rglob(".tmp-*"))


def test_an_unchanged_source_is_compiled_once_and_any_change_compiles_again(bm, gxx, cache, tmp_path, monkeypatch):
    src = tmp_path / "k.cpp"
    src.write_text("int k() { return 1; }\n")
    first = bm._compile(src, [], cache)
    assert first.exists() and bm._compile(src, [], cache) == first
    assert len(gxx) == 1  # the second call found it
    others = {
        bm._compile(src, ["-DWHY=1"], cache),  # a flag
        bm._compile(src, [], cache, salt="Python 3.99"),  # what the binding's objects depend on
    }
    toolchain = bm._toolchain
    monkeypatch.setattr(bm, "_toolchain", lambda: "g++ (a newer one) 99.1")
    others.add(bm._compile(src, [], cache))
    monkeypatch.setattr(bm, "_toolchain", toolchain)
    src.write_text("int k() { return 2; }\n")
    others.add(bm._compile(src, [], cache, salt=""))
    assert len(others) == 4 and first not in others
    assert len(gxx) == 5 and leftovers(cache) == []


def test_a_failed_compile_leaves_nothing_in_the_cache(bm, cache, tmp_path):
    src = tmp_path / "bad.cpp"
    src.write_text("int k() { return }\n")
    with pytest.raises(subprocess.CalledProcessError):
        bm._compile(src, [], cache)
    assert list(cache.iterdir()) == []


def test_an_interrupted_compile_is_compiled_again_next_time(bm, cache, tmp_path, monkeypatch):
    """Ctrl-C after g++ wrote its output but before it was renamed: no object, so the next build compiles."""
    src = tmp_path / "k.cpp"
    src.write_text("int k() { return 1; }\n")
    real = subprocess.run

    def interrupted(cmd, *args, **kwargs):
        real(cmd, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bm.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bm._compile(src, [], cache)
    monkeypatch.undo()
    assert list(cache.iterdir()) == []
    assert bm._compile(src, [], cache).exists()


def test_two_runs_linking_at_once_both_get_the_whole_program(bm, gxx, cache, tmp_path, monkeypatch):
    """Both link into folders of their own, then both rename into place: one rename wins,
    the other finds the winner's program and uses it."""
    src = tmp_path / "main.cpp"
    src.write_text("int main() { return 7; }\n")
    obj = bm._compile(src, [], cache)
    both_linked = threading.Barrier(2, timeout=60)
    real = bm.subprocess.run

    def link_then_wait(cmd, *args, **kwargs):
        result = real(cmd, *args, **kwargs)
        both_linked.wait()  # neither renames before both have linked
        return result

    monkeypatch.setattr(bm.subprocess, "run", link_then_wait)
    results: dict[int, object] = {}

    def build(i):
        try:
            results[i] = bm._link([obj], [], "prog", cache, tmp_path / f"out{i}")
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()  # the programs below run without the barrier
    for i in range(2):
        assert results[i] == tmp_path / f"out{i}" / "prog", results[i]
        assert subprocess.run([str(results[i])]).returncode == 7
    assert len(list((cache / "linked").iterdir())) == 1 and leftovers(cache) == []


def test_a_linked_program_is_reused(bm, gxx, cache, tmp_path):
    src = tmp_path / "main.cpp"
    src.write_text("int main() { return 7; }\n")
    obj = bm._compile(src, [], cache)
    bm._link([obj], [], "prog", cache, tmp_path / "a")
    bm._link([obj], [], "prog", cache, tmp_path / "b")
    assert len(gxx) == 2  # one compile, one link
    assert subprocess.run([str(tmp_path / "b" / "prog")]).returncode == 7


def test_old_entries_are_pruned_and_used_ones_kept(bm, cache):
    (cache / "linked" / "old").mkdir(parents=True)
    (cache / "linked" / "old" / "prog").write_text("x")
    (cache / "linked" / "new").mkdir()
    for name in ("old-0.o", "used-0.o", "new-0.o", ".tmp-left.o", ".tmp-now.o"):
        (cache / name).write_text("x")
    long_ago = time.time() - (bm.CACHE_DAYS + 1) * 86400
    for name in ("old-0.o", "used-0.o", "linked/old"):
        os.utime(cache / name, (long_ago, long_ago))
    os.utime(cache / ".tmp-left.o", (time.time() - 2 * 86400,) * 2)
    assert bm._fresh(cache / "used-0.o")  # a build relies on it: marked used now
    bm._prune(cache)
    assert sorted(p.name for p in cache.iterdir()) == [".tmp-now.o", "linked", "new-0.o", "used-0.o"]
    assert [p.name for p in (cache / "linked").iterdir()] == ["new"]


def test_the_cache_folder_is_outside_the_tree_and_can_be_moved(bm, monkeypatch, tmp_path):
    monkeypatch.delenv(bm.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bm.default_cache() == tmp_path / "xdg" / "whygpu-tests" / "cuda-emu"
    monkeypatch.setenv(bm.CACHE_ENV, str(tmp_path / "mine"))
    assert bm.default_cache() == tmp_path / "mine" and emu_cache() == tmp_path / "mine"


@pytest.mark.slow
def test_a_second_build_of_the_emulation_compiles_nothing(bm, gxx, emulated_site, tmp_path):
    """What every test run after the first does: the binding over the emulation, from the cache."""
    target = bm.module(str(tmp_path / "build"), cache=str(emu_cache()))
    assert target.exists() and gxx == []
