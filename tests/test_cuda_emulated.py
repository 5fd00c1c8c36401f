"""The CUDA kernels' index arithmetic, edge guards, transposes and barriers,
checked without a GPU: tests/cuda_emu/ compiles csrc/cuda/*.cu as C++ over a
CPU emulation of CUDA threads, blocks, shared memory and __syncthreads, and
compares every rung and the nn element-wise ops with a double-precision
reference over awkward shapes (see tests/cuda_emu/check_kernels.cpp).

The same emulation also runs the GPU halves of tests/test_cuda.py (device
arrays, probes, pinned and staged transfers) and tests/test_nn_cuda.py (GPU-
resident training on the ``cuda`` back end): the real binding
(src/cuda/*.cpp) is built over the emulated kernels as whygpu._cuda and
put into a copy of the package (tests/cuda_emu/run_gpu_tests.py).  Copies
with pinned memory run there as late as CUDA may, so a staging pipeline that
reuses a buffer too early gets wrong data (checked by a mutation, as the
kernels' guards are).

This says nothing about speed, and the emulation is not CUDA (no coalescing,
no real warps), but a wrong index, a missing guard at an edge tile, a write
outside C or a read of C when beta == 0 fails here on any machine.  For the
race check (a missing __syncthreads) set WHYGPU_EMU_SANITIZE=thread (slow);
WHYGPU_EMU_SANITIZE=address adds AddressSanitizer.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from ._support import emu_cache, emu_compiler_ok, emu_runner

HERE = pathlib.Path(__file__).resolve().parent
EMU = HERE / "cuda_emu"
SOURCES = HERE.parent / "csrc" / "cuda"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if not SOURCES.is_dir():
        pytest.skip("no csrc/cuda in this tree")
    tmp = tmp_path_factory.mktemp("cuda_emu")
    if not emu_compiler_ok(tmp):
        pytest.skip("needs g++ with C++20")
    flags = []
    sanitize = os.environ.get("WHYGPU_EMU_SANITIZE", "")
    if sanitize:
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    # Built in the cache tests/test_cli_gpu_emulated.py uses too: each file is compiled once, not once per run.
    cache = emu_cache()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import build_emulated; "
        "build_emulated.main(sys.argv[2], *sys.argv[4:], cache=sys.argv[3])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(EMU), str(tmp), str(cache), *flags], capture_output=True, text=True
    )
    assert r.returncode == 0, f"building the emulated kernels failed:\n{r.stdout}\n{r.stderr}"
    return tmp / "check_kernels"


def _build(tree_emu: pathlib.Path, out: pathlib.Path, cache: pathlib.Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import build_emulated; "
        "build_emulated.main(sys.argv[2], cache=sys.argv[3])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(tree_emu), str(out), str(cache)], capture_output=True, text=True
    )


def test_every_cuda_rung_and_nn_op_matches_the_reference_under_emulation(emulated):
    r = subprocess.run([str(emulated), "quick"], capture_output=True, text=True, timeout=900)
    report = r.stdout + r.stderr
    assert r.returncode == 0, report[-4000:]
    assert "all passed" in r.stdout
    for name in (
        "cuda_naive",
        "cuda_coalesced",
        "cuda_smem",
        "cuda_1d_tiling",
        "cuda_2d_tiling",
        "cuda_vectorized",
        "cuda_warptile",
        "cuda_mma",
        "nn ops",
        "probes",
    ):
        assert f"{name} done" in r.stdout
    # rung 16 (wgmma, TMA) has no CPU stand-in: it must say so rather than run
    assert "cuda_wgmma unavailable here: the CUDA emulation cannot run wgmma" in r.stdout


def test_the_emulation_catches_a_wrong_kernel(tmp_path, emulated):
    """The check is honest: a kernel with one guard removed must fail it.
    (Objects of the unchanged files come from the `emulated` build's cache.)"""
    tree = tmp_path / "tree"
    shutil.copytree(SOURCES, tree / "csrc" / "cuda")
    shutil.copytree(EMU, tree / "tests" / "cuda_emu")
    kernel = tree / "csrc" / "cuda" / "12_2d_tiling.cu"
    text = kernel.read_text()
    good = "if (i < g.m && j < g.n) detail::c_store"
    assert good in text
    kernel.write_text(text.replace(good, "if (i < g.m && j <= g.n) detail::c_store"))  # one column too far
    out = tmp_path / "out"
    r = _build(tree / "tests" / "cuda_emu", out, emu_cache())
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(out / "check_kernels"), "quick", "12"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0


@pytest.mark.parametrize(
    "good,bad,what",
    [
        (
            "ptx::cp_async_wait<kStages - 2>();",
            "ptx::cp_async_wait<kStages - 1>();",
            "reads a stage before its cp.async copies have landed",
        ),
        (
            "const int a_row = (lane % 8) + 8 * ((lane / 8) % 2), a_chunk = lane / 16;",
            "const int a_row = (lane % 8) + 8 * (lane / 16), a_chunk = (lane / 8) % 2;",
            "hands ldmatrix the rows of A in B's order: the wrong fragment",
        ),
        (
            "if (P == kTF32) {  // round",
            "if (false) {  // round",
            "lets the tensor core truncate float32 to TF32 instead of rounding (twice the error)",
        ),
    ],
)
def test_the_emulation_catches_a_wrong_tensor_core_kernel(tmp_path, emulated, good, bad, what):
    """Rung 15's check is honest: a kernel with one such mistake (`what`) must fail
    it -- the emulated cp.async lands only at its wait, ldmatrix and mma.sync follow
    the PTX fragment layouts, and the check compares with the exactly rounded operands."""
    tree = tmp_path / "tree"
    shutil.copytree(SOURCES, tree / "csrc" / "cuda")
    shutil.copytree(EMU, tree / "tests" / "cuda_emu")
    kernel = tree / "csrc" / "cuda" / "15_mma.cu"
    text = kernel.read_text()
    assert text.count(good) == 1
    kernel.write_text(text.replace(good, bad))
    out = tmp_path / "out"
    r = _build(tree / "tests" / "cuda_emu", out, emu_cache())
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(out / "check_kernels"), "quick", "15"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "FAIL cuda_mma" in r.stdout, what


def test_gpu_tests_run_on_the_emulated_gpu(emulated_site):
    """tests/test_nn_cuda.py's and tests/test_cuda.py's GPU tests (``-m cuda``) against the whygpu under
    test, with its _cuda replaced by the binding built over the emulation."""
    runner = emu_runner()
    env = dict(os.environ, PYTHONPATH=str(emulated_site))
    cmd = runner.pytest_command(
        [
            str(HERE / "test_nn_cuda.py"),
            str(HERE / "test_cuda.py"),
            str(HERE / "test_cuda_tensor_cores.py"),
            str(HERE / "test_checkpoint_cuda.py"),
            "-q",
            "-rs",
        ]
    )
    r = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=900)
    report = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, report
    passed = re.search(r"(\d+) passed", r.stdout)
    # every GPU test ran -- the kernels, device arrays, probes, pinned transfers, nn ops, training --
    # none skipped for want of a GPU; the only skips allowed are the tests that need real GPU memory
    # shared with another library (they say "emulated GPU") and those of cuda_wgmma, whose wgmma and
    # TMA have no CPU stand-in (test_an_unusable_tensor_core_rung_says_why checks that it says so)
    assert passed and int(passed.group(1)) >= 16 + 320 + 40, report
    skips = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("emulated GPU" in line or "emulation cannot run wgmma" in line for line in skips), report


def test_the_emulation_catches_a_staging_pipeline_that_does_not_wait(tmp_path, emulated_site):
    """The staging check is honest: emu.h runs a copy from pinned memory as late as
    CUDA may, so refilling a staging buffer before its previous copy is known to be
    done (the wait removed from copy_h2d) must give wrong data."""
    root = HERE.parent
    tree = tmp_path / "tree"
    shutil.copytree(SOURCES, tree / "csrc" / "cuda")
    shutil.copytree(EMU, tree / "tests" / "cuda_emu")
    shutil.copytree(root / "src" / "cuda", tree / "src" / "cuda")
    transfer = tree / "src" / "cuda" / "transfer.cpp"  # the staging pipeline of the binding
    binding = transfer.read_text()
    wait = "        WHYGPU_TRY(cudaEventSynchronize(s.done[i]));  // the copy engine is done reading buf[i]\n"
    assert wait in binding
    transfer.write_text(binding.replace(wait, ""))
    # In a fresh interpreter: this one has imported build_emulated from the real tree.
    code = (
        "import pathlib, sys; sys.path.insert(0, sys.argv[1]); import run_gpu_tests; "
        "run_gpu_tests.make_site(pathlib.Path(sys.argv[2]), cache=sys.argv[3], package=sys.argv[4])"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tree / "tests" / "cuda_emu"),
            str(tmp_path),
            str(emu_cache()),
            str(emulated_site / "whygpu"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site"
    script = (
        "import numpy as np, whygpu.cuda as wc\n"
        "n = 3 * wc._module().staging_chunk_bytes() + 7\n"
        "x = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)\n"
        "assert np.array_equal(wc.to_device(x).to_host(), x), 'wrong data'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and "wrong data" in r.stderr, r.stdout + r.stderr


_NO_PINNED_SCRIPT = """
import numpy as np
import whygpu.cuda as wc
ch = wc._module().staging_chunk_bytes()
rng = np.random.default_rng(0)
for nbytes in (0, 1, ch - 1, ch, ch + 1, 3 * ch + 7):
    x = rng.integers(0, 256, nbytes, dtype=np.uint8)
    d = wc.to_device(x)
    assert np.array_equal(d.to_host(), x)
    out = np.empty_like(x)
    d.copy_from_host(x[::-1].copy())
    d.to_host(out=out)
    assert np.array_equal(out, x[::-1])
for memory in ("pageable", "staged"):
    assert len(wc._module().probe.host_copy_seconds(1000, "h2d", memory, 1)) == 1
try:
    wc.pinned_empty(3)
except MemoryError as e:
    print("refused:", e)
else:
    raise SystemExit("pinned_empty did not raise")
print("fallback ok")
"""


def test_transfers_fall_back_to_plain_copies_without_pinned_memory(emulated_site):
    """When cudaMallocHost fails (the emulation refuses it under WHYGPU_EMU_NO_PINNED),
    DeviceArray transfers still work, through plain cudaMemcpy; pinned_empty raises MemoryError."""
    env = dict(os.environ, PYTHONPATH=str(emulated_site), WHYGPU_EMU_NO_PINNED="1")
    r = subprocess.run([sys.executable, "-c", _NO_PINNED_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refused: could not allocate" in r.stdout and "fallback ok" in r.stdout


_OOM_WHILE_CAPTURING_SCRIPT = """
import os, threading
import numpy as np
import whygpu.cuda as wc
mod = wc._module()
x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
dx, out = wc.to_device(x), wc.zeros((3, 4))
began, allocated, result = threading.Event(), threading.Event(), {}

def capture():  # records a launch in a graph while the main thread runs out of pool memory
    try:
        mod.capture_begin()
        try:
            began.set()
            allocated.wait(120)
            wc.nn_ops.tanh_fwd(dx, out)
        finally:
            result["graph"] = mod.capture_end()  # raises if the capture was invalidated
    except BaseException as e:
        result["error"] = e
    finally:
        began.set()

t = threading.Thread(target=capture)
t.start()
assert began.wait(120)
os.environ["WHYGPU_EMU_POOL_FULL"] = "1"  # the pool refuses, until trimmed: the allocator's retry
try:
    y = wc.to_device(np.arange(5, dtype=np.float32))
finally:
    del os.environ["WHYGPU_EMU_POOL_FULL"]
    allocated.set()
t.join(120)
assert "error" not in result, f"the capture failed: {result.get('error')!r}"
np.testing.assert_array_equal(y.to_host(), np.arange(5, dtype=np.float32))
np.testing.assert_array_equal(out.to_host(), 0)  # captured, not run
result["graph"].replay()
np.testing.assert_allclose(out.to_host(), np.tanh(x), rtol=1e-6)
print("capture ok")
"""


def test_running_out_of_memory_does_not_break_another_threads_capture(emulated_site):
    """The allocator's out-of-memory retry (give the pool's cached blocks back,
    allocate again) must not wait for the whole device while another thread
    captures a graph: cudaDeviceSynchronize would wait for the capturing stream
    too, which invalidates the capture (emu.h does that, as CUDA does).  The
    pool is made to refuse with WHYGPU_EMU_POOL_FULL."""
    env = dict(os.environ, PYTHONPATH=str(emulated_site))
    r = subprocess.run(
        [sys.executable, "-c", _OOM_WHILE_CAPTURING_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the pool is full" in r.stderr and "capture ok" in r.stdout, r.stdout + r.stderr


def test_the_gpu_notebook_runs_on_the_emulated_gpu(emulated_site, tmp_path):
    """notebooks/06_the_gpu.ipynb's GPU branch (the notebooks' CI run has no GPU, so it takes the
    other one): every CUDA rung with its precision and error, and rung 16 listed with its reason."""
    import json

    nb = HERE.parent / "notebooks" / "06_the_gpu.ipynb"
    if not nb.exists():
        pytest.skip(f"no {nb.name} in {nb.parent}")
    cells = json.loads(nb.read_text())["cells"]
    script = tmp_path / "nb06.py"
    script.write_text("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    env = dict(os.environ, PYTHONPATH=str(emulated_site))
    r = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "GPU usable: True" in r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("cuda_")}
    assert "float32" in rows["cuda_warptile"] and "tf32" in rows["cuda_mma"] and "bf16" in rows["cuda_mma_bf16"]
    errors = {k: float(rows[k].rsplit(" ", 1)[1]) for k in ("cuda_warptile", "cuda_mma", "cuda_mma_bf16")}
    assert errors["cuda_warptile"] < 1e-5 < errors["cuda_mma"] < errors["cuda_mma_bf16"] < 1e-2
    assert "unavailable: the CUDA emulation cannot run wgmma" in rows["cuda_wgmma"]
