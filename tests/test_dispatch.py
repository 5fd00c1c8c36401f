"""The run-time dispatcher: which micro-kernel the packed and openmp kernels
use (cpu_info, set_arch, WHYGPU_ARCH, WHYGPU_BLOCKING), that every
supported instruction set gives the same results as the portable one, and
that kernels the build or machine lacks report themselves unavailable
(KernelUnavailableError) instead of failing some other way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import whygpu
from whygpu import _registry

from ._support import DTYPES, block_edge_shapes, blocking_of, check_gemm, make_matrix, replace_kernel

ALL_ARCHS = ["portable", "avx2", "avx512"]
INFO = whygpu.cpu_info()
SUPPORTED = INFO["supported_archs"]
PACKED = [k for k in ("packed", "openmp") if k in whygpu.available_kernels()]
# threads=2 and 3 for both kernels: packed ignores them, and a small machine has fewer cores (whygpu warns).
pytestmark = pytest.mark.filterwarnings("ignore::whygpu.ThreadsWarning")


# ---- cpu_info ---------------------------------------------------------------------


def test_cpu_info_is_consistent():
    info = whygpu.cpu_info()
    assert info["supported_archs"][0] == "portable"  # always there
    assert info["supported_archs"] == [a for a in ALL_ARCHS if a in info["supported_archs"]]  # in order
    assert info["best_arch"] == info["supported_archs"][-1]
    assert info["arch"] in info["supported_archs"]
    assert isinstance(info["openmp"], bool)
    assert info["openmp"] == ("openmp" in whygpu.available_kernels())
    assert info["cores"] >= 1
    for dtype in ("float32", "float64"):
        bk = info["blocking"][dtype]
        assert set(bk) == {"micro_kernel", "mr", "nr", "kc", "mc", "nc", "source", "elem_bytes"}
        assert bk["micro_kernel"].startswith("sgemm_" if dtype == "float32" else "dgemm_")
        assert info["arch"] in bk["micro_kernel"]
        assert 1 <= bk["mr"] <= 16 and 1 <= bk["nr"] <= 32 and bk["kc"] >= 1 and bk["nc"] >= 1
        assert bk["mc"] >= bk["mr"] and bk["source"] in ("model", "WHYGPU_BLOCKING")


def test_cpu_info_is_fresh_each_call(restore_arch):
    whygpu.set_arch("portable")
    assert whygpu.cpu_info()["arch"] == "portable"
    assert "portable" in whygpu.cpu_info()["blocking"]["float32"]["micro_kernel"]


# ---- set_arch ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", SUPPORTED)
def test_set_arch_switches_and_returns_the_previous(restore_arch, arch):
    before = whygpu.cpu_info()["arch"]
    assert whygpu.set_arch(arch) == before
    assert whygpu.cpu_info()["arch"] == arch
    assert whygpu.set_arch("auto") == arch
    assert whygpu.cpu_info()["arch"] == INFO["best_arch"]


@pytest.mark.parametrize("name", ["nonsense", "AVX2", "", "sse2"])
def test_set_arch_rejects_unknown_names(restore_arch, name):
    before = whygpu.cpu_info()["arch"]
    with pytest.raises(
        ValueError,
        match=rf"instruction set {name!r} is not usable here; this CPU and build support: "
        rf"{', '.join(SUPPORTED)}",
    ):
        whygpu.set_arch(name)
    assert whygpu.cpu_info()["arch"] == before


@pytest.mark.parametrize("name", [None, 2, b"portable"], ids=repr)
def test_set_arch_rejects_non_strings(name):
    with pytest.raises(TypeError, match="name must be a string"):
        whygpu.set_arch(name)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_set_arch_accepts_exactly_the_supported(restore_arch, arch):
    if arch in SUPPORTED:
        whygpu.set_arch(arch)
        whygpu._core.set_arch(arch)
        assert whygpu.cpu_info()["arch"] == arch
    else:
        with pytest.raises(ValueError, match="is not usable here"):
            whygpu.set_arch(arch)
        with pytest.raises(ValueError, match="not supported by this CPU or build"):
            whygpu._core.set_arch(arch)  # the C++ check, not only the Python one


# ---- Every instruction set computes the same thing ------------------------------------------


def _arch_shapes(dtype, arch):
    return [(5, 7, 3), (33, 65, 129)] + block_edge_shapes(blocking_of(dtype, arch))


@pytest.mark.parametrize("kernel", PACKED)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("arch", SUPPORTED)
def test_each_arch_matches_portable_and_the_reference(restore_arch, rng, arch, dtype, kernel):
    problems = []
    for m, n, k in _arch_shapes(dtype, arch):
        a = make_matrix(rng, (m, k), dtype, order="F" if m % 2 else "C")
        b = make_matrix(rng, (k, n), dtype, flip=(False, bool(n % 2)))
        c0 = make_matrix(rng, (m, n), dtype)
        problems.append((a, b, c0))

    def run_all():
        outs = []
        for a, b, c0 in problems:
            c = c0.copy()
            whygpu.gemm(a, b, c, alpha=1.5, beta=-0.5, kernel=kernel, threads=2)
            outs.append(c)
        return outs

    whygpu.set_arch("portable")
    portable = run_all()
    whygpu.set_arch(arch)
    assert whygpu.cpu_info()["arch"] == arch
    simd = run_all()
    for (a, b, c0), p, s in zip(problems, portable, simd):
        check_gemm(s, a, b, alpha=1.5, beta=-0.5, c0=c0)
        check_gemm(p, a, b, alpha=1.5, beta=-0.5, c0=c0)
        # and close to each other: within the same k-scaled bound as each is to the reference
        k = a.shape[1]
        scale = 1.5 * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))) + 0.5 * np.abs(c0)
        assert (np.abs(s.astype(np.float64) - p) <= 2 * np.finfo(dtype).eps * (k + 4) * scale).all()


@pytest.mark.parametrize("arch", SUPPORTED)
def test_blocking_per_arch(arch):
    for dtype, prefix in (("float32", "sgemm_"), ("float64", "dgemm_")):
        bk = whygpu._core.blocking(dtype, arch)
        assert bk["micro_kernel"].startswith(f"{prefix}{arch}_{bk['mr']}x{bk['nr']}")


# ---- WHYGPU_ARCH and friends, read once at start-up -------------------------------------------

_PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import whygpu
import numpy as np
rng = np.random.default_rng(0)
ok = True
# (37 x 53: threads split C's rows; 5 x 300: one row strip, so they split its columns)
for dtype in (np.float32, np.float64):
  for m, n in ((37, 53), (5, 300)):
    a = rng.uniform(-1, 1, (m, 801)).astype(dtype)
    b = rng.uniform(-1, 1, (801, n)).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    tol = np.finfo(dtype).eps * (801 + 4) * (np.abs(a64) @ np.abs(b64))
    for kernel in [k for k in ("packed", "openmp") if k in whygpu.available_kernels()]:
        got = whygpu.matmul(a, b, kernel=kernel, threads=3)
        ok = ok and bool((np.abs(got - a64 @ b64) <= tol).all())
print(json.dumps({"info": whygpu.cpu_info(), "ok": ok,
                  "warnings": [[w.category.__name__, str(w.message)] for w in caught
                               if w.category.__name__ != "ThreadsWarning"]}))  # threads=3: see test_threads.py
"""


def _probe(**env_vars):
    pkg_parent = os.path.dirname(os.path.dirname(whygpu.__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHYGPU_")}
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(env_vars)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"]  # the packed and openmp kernels are right whatever was asked for
    return result


def test_whygpu_arch_portable():
    r = _probe(WHYGPU_ARCH="portable")
    assert r["info"]["arch"] == "portable"
    assert "portable" in r["info"]["blocking"]["float32"]["micro_kernel"]
    assert r["warnings"] == []
    assert r["info"]["best_arch"] == INFO["best_arch"]  # the override does not change what the CPU can do


@pytest.mark.parametrize("value", ["", "auto"])
def test_whygpu_arch_auto(value):
    r = _probe(WHYGPU_ARCH=value)
    assert r["info"]["arch"] == INFO["best_arch"]
    assert r["warnings"] == []


def test_whygpu_arch_bogus_warns_and_falls_back():
    r = _probe(WHYGPU_ARCH="bogus")
    assert r["info"]["arch"] == INFO["best_arch"]
    assert r["warnings"] == [
        ["RuntimeWarning", f"WHYGPU_ARCH=bogus is not one of auto, portable, avx2, avx512; using {INFO['best_arch']}"]
    ]


@pytest.mark.parametrize("arch", ALL_ARCHS[1:])
def test_whygpu_arch_named_isa(arch):
    r = _probe(WHYGPU_ARCH=arch)
    if arch in SUPPORTED:
        assert r["info"]["arch"] == arch
        assert r["warnings"] == []
    else:  # asking for more than the CPU has falls back instead of dying of SIGILL
        assert r["info"]["arch"] == INFO["best_arch"]
        assert r["warnings"] == [
            ["RuntimeWarning", f"WHYGPU_ARCH={arch} is not supported by this CPU or build; using {INFO['best_arch']}"]
        ]


@pytest.mark.parametrize("spec", ["7,5,13", "1,1,1", "16,6,16"])
def test_small_block_sizes_from_the_environment(spec):
    """WHYGPU_BLOCKING=kc,mc,nc (the lesson "what blocking buys") shrinks the blocks:
    the same product then crosses dozens of kc, mc and nc boundaries, and must still
    be right (the probe checks packed and openmp against NumPy)."""
    kc, mc, nc = (int(x) for x in spec.split(","))
    r = _probe(WHYGPU_BLOCKING=spec)
    assert r["warnings"] == []
    for dtype in ("float32", "float64"):
        bk = r["info"]["blocking"][dtype]
        assert (bk["kc"], bk["mc"], bk["nc"], bk["source"]) == (kc, mc, nc, "WHYGPU_BLOCKING")


def test_an_empty_field_keeps_the_model():
    """'256,,' sets kc only; mc is derived again from that kc (the A block still fills
    about half of L2), nc too."""
    model = _probe()["info"]["blocking"]["float32"]
    bk = _probe(WHYGPU_BLOCKING="256,,")["info"]["blocking"]["float32"]
    assert bk["kc"] == 256 and bk["source"] == "WHYGPU_BLOCKING"
    l2 = whygpu._core.cache_model()["L2"]["bytes"]
    assert bk["mc"] == max(bk["mr"], l2 // 2 // (256 * 4) // bk["mr"] * bk["mr"])
    if model["kc"] == 256:
        assert bk["mc"] == model["mc"]


@pytest.mark.parametrize("spec", ["0,0,0", "-3,,", "abc", "99999999,,", "1,2", "1,2,3,4"])
def test_bad_block_sizes_in_the_environment_are_reported(spec):
    """An unusable WHYGPU_BLOCKING is said once, not silently ignored; the model's
    sizes are used."""
    r = _probe(WHYGPU_BLOCKING=spec)
    assert r["info"]["blocking"] == _probe()["info"]["blocking"]
    assert len(r["warnings"]) == 1
    category, message = r["warnings"][0]
    assert category == "RuntimeWarning" and message.startswith(f"WHYGPU_BLOCKING={spec} is not kc,mc,nc")


def test_block_sizes_follow_the_cache_model():
    """kc: an A and a B micro-panel fill L1 but one way; mc: the A block about half
    of L2; nc: two B panels half of L3 (capped) -- from the caches the OS reports."""
    cm = whygpu._core.cache_model()
    assert cm["source"] in ("sysfs", "assumed")
    l1, l2, l3 = cm["L1d"], cm["L2"], cm["L3"]
    for dtype, s in (("float32", 4), ("float64", 8)):
        bk = INFO["blocking"][dtype]
        if bk["source"] != "model":
            continue
        usable = (l1["ways"] - 1) * l1["sets"] * l1["line"]
        assert bk["kc"] == max(8, usable // ((bk["mr"] + bk["nr"]) * s) // 8 * 8)
        assert (bk["mr"] + bk["nr"]) * bk["kc"] * s <= usable
        assert bk["mc"] % bk["mr"] == 0 and bk["mc"] * bk["kc"] * s <= l2["bytes"] // 2
        assert bk["nc"] % bk["nr"] == 0 and bk["nc"] <= 8192
        assert 2 * bk["kc"] * bk["nc"] * s <= max(l3["bytes"] // 2, 2 * bk["kc"] * bk["nr"] * s)


# ---- Kernels that cannot run here ----------------------------------------------------------


def test_openmp_unavailable_raises_kernel_unavailable(monkeypatch):
    """Pretend the build has no OpenMP (the real check in _registry is used)."""
    monkeypatch.setattr(_registry._core, "openmp_available", lambda: False)
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 2), np.float32)
    assert "openmp" not in whygpu.available_kernels()
    assert "openmp" in whygpu.all_kernels()
    assert "[unavailable: whygpu was built without OpenMP" in whygpu.kernel_info("openmp")
    assert whygpu.cpu_info()["openmp"] is False
    with pytest.raises(whygpu.KernelUnavailableError, match="kernel 'openmp' is unavailable: .*without OpenMP"):
        whygpu.matmul(a, b, kernel="openmp")
    with pytest.raises(whygpu.KernelUnavailableError, match="kernel 'openmp' is unavailable"):
        whygpu.gemm(a, b, kernel="openmp")
    # (The default kernel is fixed when whygpu is imported: in a real build without OpenMP it is
    # packed -- .ci/check_no_openmp.py checks that on such a build.)
    np.testing.assert_array_equal(whygpu.matmul(a, b, kernel="packed"), np.full((3, 2), 4.0, np.float32))


def test_no_compiled_modules_leaves_only_python(monkeypatch):
    """A broken install (no _core, no _cython_matmul): only the pure-Python rung runs."""
    monkeypatch.setattr(_registry, "_core", None)
    monkeypatch.setattr(_registry, "_core_error", "simulated import failure")
    monkeypatch.setattr(_registry, "_cython_matmul", None)
    monkeypatch.setattr(_registry, "_cython_error", "simulated import failure")
    assert whygpu.available_kernels(device="cpu") == ["python"]
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    for name in ("cython", "naive", "packed", "openmp"):
        with pytest.raises(whygpu.KernelUnavailableError, match=f"kernel '{name}' is unavailable: .*simulated"):
            whygpu.matmul(a, a.T, kernel=name)
    np.testing.assert_array_equal(whygpu.matmul(a, a.T, kernel="python"), a @ a.T)


def test_any_kernel_can_be_marked_unavailable(monkeypatch):
    replace_kernel(monkeypatch, "packed", unavailable=lambda: "no reason")
    with pytest.raises(whygpu.KernelUnavailableError, match="'packed' is unavailable: no reason"):
        whygpu.matmul(np.ones((2, 2)), np.ones((2, 2)), kernel="packed")
    assert "packed" not in whygpu.available_kernels()
    assert whygpu.kernel_info("packed").endswith("[unavailable: no reason]")


@pytest.mark.parametrize("arch", SUPPORTED)
def test_the_printed_derivation_is_the_kernels_own(arch):
    """whygpu info and explain show the model's arithmetic (whygpu._blocking); it must
    give the sizes the C++ kernels really use, for every instruction set and type."""
    from whygpu._blocking import blocking_lines, model_blocks

    cm = whygpu._core.cache_model()
    for dtype in ("float32", "float64"):
        bk = dict(whygpu._core.blocking(dtype, arch))
        if bk["source"] != "model":
            continue
        m = model_blocks(bk["mr"], bk["nr"], bk["elem_bytes"], cm)
        assert (m["kc"], m["mc"], m["nc"]) == (bk["kc"], bk["mc"], bk["nc"])
        info = {"blocking": {dtype: bk}, "cache_model": cm}
        text = "\n".join(blocking_lines(dtype, info))
        for name in ("kc", "mc", "nc"):
            assert f"{name} = {bk[name]}:" in text
