"""Runs tests/test_cuda.py's GPU tests (``-m cuda``) on the CPU: builds the
real binding (src/cuda_module.cpp) over the emulated kernels and fake runtime
of emu.h as whygpu._cuda, puts it into a temporary copy of the package, and
runs pytest there.  Slow (a minute or two) and not CUDA -- it checks the
binding, the Python layer and the tests themselves, not the hardware.

    python tests/cuda_emu/run_gpu_tests.py [pytest arguments]
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import build_emulated  # noqa: E402


def main(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        ext = build_emulated.module(str(tmp / "build"))
        pkg = tmp / "site" / "whygpu"
        shutil.copytree(ROOT / "python" / "whygpu", pkg, ignore=shutil.ignore_patterns("_cuda.*", "__pycache__"))
        if not list(pkg.glob("_core.*")):
            raise SystemExit("build whygpu first (the dev build puts _core into python/whygpu)")
        shutil.copy(ext, pkg / ext.name)
        env = dict(os.environ, PYTHONPATH=str(tmp / "site"))
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "cuda",
               str(ROOT / "tests" / "test_cuda.py"), *args]
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
