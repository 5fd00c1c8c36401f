"""Rung 16 (cuda_wgmma) without a GPU: the bit-level encodings it hands to the
Hopper hardware (csrc/cuda/wgmma_host.h: wgmma shared-memory descriptors, TMA
tensor-map parameters and their validity rules) checked by a small C++
program against values worked out from the PTX ISA, and the file's fallback
path (no sm_90a code: the CUDA emulation, an old nvcc) checked to compile as
plain C++ the way tests/cuda_emu/build_emulated.py compiles it.

Nothing here runs a kernel: whether the descriptors, TMA boxes and mbarrier
pipeline multiply the right numbers is for tests/test_cuda.py on a Hopper GPU.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA_SRC = ROOT / "csrc" / "cuda"
EMU = ROOT / "tests" / "cuda_emu"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the host-side checks")


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def test_descriptor_and_tensor_map_encodings(tmp_path):
    exe = tmp_path / "check_wgmma_host"
    r = _run(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{CUDA_SRC}",
            str(EMU / "check_wgmma_host.cpp"),
            "-o",
            str(exe),
        ]
    )
    assert r.returncode == 0, f"compiling check_wgmma_host.cpp failed:\n{r.stdout}\n{r.stderr}"
    r = _run([str(exe)])
    assert r.returncode == 0, f"check_wgmma_host failed:\n{r.stdout}\n{r.stderr}"
    assert "all checks passed" in r.stdout


@pytest.mark.parametrize("emulation", [True, False], ids=["emulation", "no-sm90a"])
def test_fallback_compiles_without_cuda(emulation):
    # -x c++ before the file: g++ would otherwise take a .cu file for a linker input.
    flags = ["-DWHYGPU_CUDA_EMULATION=1"] if emulation else []
    r = _run(
        [
            "g++",
            "-std=c++20",
            "-fsyntax-only",
            *flags,
            f"-I{EMU}",
            f"-I{CUDA_SRC}",
            "-x",
            "c++",
            str(CUDA_SRC / "16_wgmma.cu"),
        ]
    )
    assert r.returncode == 0, f"16_wgmma.cu does not compile as plain C++:\n{r.stdout}\n{r.stderr}"
