"""Runs the GPU tests (``-m cuda``) of tests/test_cuda.py and tests/test_nn_cuda.py
on the CPU: builds the real binding (src/cuda/*.cpp) over the emulated
kernels and fake runtime of emu.h as whygpu._cuda, puts it into a temporary
copy of the package, and runs pytest there.  Slow (a minute or two) and not
CUDA -- it checks the binding, the Python layer and the tests themselves,
not the hardware.  tests/test_cuda_emulated.py runs tests/test_nn_cuda.py
this way as part of the suite.

    python tests/cuda_emu/run_gpu_tests.py [pytest arguments]   (default: both files)
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import build_emulated  # noqa: E402

GPU_TESTS = [ROOT / "tests" / "test_cuda.py", ROOT / "tests" / "test_nn_cuda.py"]


def make_site(tmp: pathlib.Path, cache: str = "", package: str = "") -> pathlib.Path:
    """A directory holding a copy of whygpu (the built package at `package`,
    default python/whygpu of this checkout) whose _cuda is the emulated
    build; put it on PYTHONPATH."""
    ext = build_emulated.module(str(tmp / "build"), cache=cache)
    pkg = tmp / "site" / "whygpu"
    source = pathlib.Path(package) if package else ROOT / "python" / "whygpu"
    shutil.copytree(source, pkg, ignore=shutil.ignore_patterns("_cuda.*", "__pycache__"))
    for module in _compiled_modules(source):
        shutil.copy(module, pkg / module.name)
    # A wheel repaired by auditwheel keeps the libraries it vendored (libgomp) next to the
    # package, in whygpu.libs/, found through the modules' RPATH ($ORIGIN/../whygpu.libs).
    vendored = source.parent / (source.name + ".libs")
    if vendored.is_dir():
        shutil.copytree(vendored, pkg.parent / vendored.name)
    if not list(pkg.glob("_core.*")):
        raise SystemExit("build whygpu first (the dev build puts _core into python/whygpu)")
    shutil.copy(ext, pkg / ext.name)
    (tmp / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return tmp / "site"


# Run by every interpreter started with the site on PYTHONPATH.  An editable install (pip install -e .)
# puts a finder on sys.meta_path that imports the source tree's whygpu ahead of PYTHONPATH, and the
# tests would then run the real _cuda instead of the emulated one: such finders are taken out.
_SITECUSTOMIZE = """\
import importlib.machinery, importlib.util, os, sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _imports_another_whygpu(finder) -> bool:
    try:
        spec = finder.find_spec("whygpu", None)
    except Exception:
        return False
    origin = getattr(spec, "origin", None) or ""
    return spec is not None and not os.path.abspath(origin).startswith(_HERE + os.sep)


sys.meta_path[:] = [f for f in sys.meta_path if f is importlib.machinery.PathFinder or not _imports_another_whygpu(f)]

# the sitecustomize this one shadows, if there is one, still runs
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
"""


def _compiled_modules(source: pathlib.Path) -> list:
    """whygpu's compiled modules but _cuda: beside its Python files in `source`, or -- an editable
    install (pip install -e .) keeps them in site-packages, another folder of whygpu's __path__ --
    wherever the whygpu this interpreter imports has them."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    found = sorted(source.glob(f"_*{suffix}"))
    if not found:
        spec = importlib.util.find_spec("whygpu")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            found += sorted(pathlib.Path(folder).glob(f"_*{suffix}"))
    return [m for m in found if not m.name.startswith("_cuda.")]


def pytest_command(args) -> list:
    files = [] if any(a.endswith(".py") or "::" in a for a in args) else [str(f) for f in GPU_TESTS]
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "cuda", *files, *args]


def main(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        site = make_site(pathlib.Path(tmp))
        env = dict(os.environ, PYTHONPATH=str(site))
        return subprocess.run(pytest_command(args), env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
