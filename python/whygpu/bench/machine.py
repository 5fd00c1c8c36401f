"""What machine the measurements were taken on: CPU, caches, instruction
set, OpenMP, BLAS, CUDA and software versions.  Every JSON document the
command line writes embeds this, so a saved result says where it came from.
Nothing here is measured; it is all asked of the OS and the libraries."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import sys

import numpy as np

from .. import _idle_threads
from .._cpu import cpu_info
from .._threads import get_num_threads
from .._version import __version__
from .trust import sample_load

__all__ = [
    "machine_info",
    "cuda_status",
    "now_iso",
    "blas_facts",
    "blas_summary",
    "numpy_blas",
    "KERNEL_ISA",
    "isa_name",
]


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def cuda_status() -> dict:
    """{'available': bool, 'reason' or 'device', 'kernels'} from the optional
    ``whygpu.cuda`` module (missing in CPU-only builds)."""
    try:
        cuda = importlib.import_module("whygpu.cuda")  # optional back end
    except ModuleNotFoundError as exc:
        if exc.name != "whygpu.cuda":
            return {"available": False, "reason": f"whygpu.cuda failed to import: {exc}"}
        return {"available": False, "reason": "this build has no CUDA back end (whygpu.cuda is missing)"}
    except ImportError as exc:
        return {"available": False, "reason": f"whygpu.cuda failed to import: {exc}"}
    try:
        if not cuda.is_available():
            return {"available": False, "reason": str(cuda.unavailable_reason())}
        out = {"available": True, "kernels": list(cuda.kernels())}
        info = cuda.device_info() if callable(getattr(cuda, "device_info", None)) else None
        if isinstance(info, dict):
            out["device"] = str(info.get("name", "GPU"))
            out["device_info"] = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}
        return out
    except Exception as exc:  # a broken driver must not break `whygpu info`
        return {"available": False, "reason": f"whygpu.cuda failed: {exc}"}


def _blas() -> list:
    try:
        from threadpoolctl import threadpool_info

        return [
            {
                k: d.get(k)
                for k in ("internal_api", "version", "num_threads", "architecture", "threading_layer", "filepath")
            }
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ]
    except Exception:  # pragma: no cover - threadpoolctl is a dependency
        return []


# The instruction set each BLAS kernel runs, by the name threadpoolctl reports as its
# ``architecture`` (OpenBLAS's core name, BLIS's configuration), lower-cased.  A name not
# here is unknown (None): nothing is guessed from it.
KERNEL_ISA = {
    # OpenBLAS, x86-64 (its DYNAMIC_ARCH core names)
    "sapphirerapids": "avx512",
    "cooperlake": "avx512",
    "skylakex": "avx512",
    "haswell": "avx2",
    "zen": "avx2",
    "sandybridge": "avx",
    "bulldozer": "avx",
    "piledriver": "avx",
    "steamroller": "avx",
    "nehalem": "sse",
    "dunnington": "sse",
    "penryn": "sse",
    "core2": "sse",
    "atom": "sse",
    "barcelona": "sse",
    "opteron_sse3": "sse",
    "opteron": "sse",
    "prescott": "sse",
    # BLIS configurations
    "skx": "avx512",
    "knl": "avx512",
    "zen4": "avx512",
    "zen5": "avx512",
    "zen2": "avx2",
    "zen3": "avx2",
    # Arm (OpenBLAS)
    "armv8": "neon",
    "cortexa53": "neon",
    "cortexa57": "neon",
    "cortexa72": "neon",
    "neoversen1": "neon",
    "vortex": "neon",
    "neoversev1": "sve",
    "neoversen2": "sve",
    "a64fx": "sve",
}

# x86 instruction sets in order of width; whygpu's own names for the CPU's best are avx2 and avx512.
_ISA_RANK = {"sse": 0, "avx": 1, "avx2": 2, "avx512": 3}
_ISA_NAMES = {
    "portable": "baseline SIMD",
    "avx512": "AVX-512",
    "avx2": "AVX2",
    "avx": "AVX",
    "sse": "SSE",
    "neon": "NEON",
    "sve": "SVE",
}

# MKL_ENABLE_INSTRUCTIONS caps the instruction set MKL may use; its values, by prefix (longest first).
_MKL_CAP = (("AVX512", "avx512"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4_2", "sse"))

_LIBRARIES = ("openblas", "mkl", "blis", "accelerate")


def isa_name(isa: str | None) -> str:
    """'AVX-512', 'AVX2', ...: an instruction set as a reader writes it ('unknown' for None)."""
    return "unknown" if isa is None else _ISA_NAMES.get(isa, isa)


def _numpy_blas_name() -> str | None:
    """The BLAS NumPy was built against, from its build configuration (when threadpoolctl sees none:
    Accelerate, say)."""
    try:
        name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # an older NumPy without mode="dicts"
        return None
    return str(name) if name else None


def _library(name: str | None) -> str:
    low = (name or "").lower()
    return next((lib for lib in _LIBRARIES if lib in low), "unknown")


def numpy_blas(libs: list) -> dict | None:
    """NumPy's own BLAS among threadpoolctl's entries when several are loaded (SciPy's, PyTorch's MKL):
    the one in numpy's folder, else the first."""
    return next((b for b in libs if "numpy" in str(b.get("filepath") or "").lower()), libs[0] if libs else None)


def blas_facts(libs: list | None = None, *, env=None, cpu_best: str | None = None) -> dict:
    """What is known of the BLAS NumPy calls, detected (nothing measured): ``library`` (openblas, mkl,
    blis, accelerate or unknown), ``version``, ``threads``, ``kernel`` (threadpoolctl's architecture),
    ``kernel_isa`` (the instruction set that kernel runs: :data:`KERNEL_ISA`; for MKL, the cap
    MKL_ENABLE_INSTRUCTIONS sets; None when unknown), ``cpu_isa`` (this CPU's best, as whygpu's
    dispatch finds it: avx2 or avx512, None otherwise), ``env`` (the variables set that force a kernel),
    ``below`` (the kernel's ISA is narrower than the CPU's best: True/False, None when unknown) and
    ``cause`` (why it is below, or None).

    ``libs`` (threadpoolctl's BLAS entries), ``env`` (os.environ) and ``cpu_best`` (whygpu's
    best_arch) default to this process's."""
    libs = _blas() if libs is None else libs
    env = os.environ if env is None else env
    if cpu_best is None:
        cpu_best = cpu_info().get("best_arch")
    lib = numpy_blas(libs)
    facts: dict = {
        "library": _library(lib.get("internal_api")) if lib else _library(_numpy_blas_name()),
        "version": lib.get("version") if lib else None,
        "threads": lib.get("num_threads") if lib else None,
        "threading_layer": lib.get("threading_layer") if lib else None,
        "kernel": (lib.get("architecture") or None) if lib else None,
        "kernel_isa": None,
        "cpu_isa": cpu_best if cpu_best in ("avx2", "avx512") else None,
        "env": {},
        "below": None,
        "cause": None,
    }
    if facts["kernel"]:
        facts["kernel_isa"] = KERNEL_ISA.get(str(facts["kernel"]).lower())
    names = {
        "openblas": ("OPENBLAS_CORETYPE",),
        "mkl": ("MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE"),
    }.get(facts["library"], ())
    facts["env"] = {v: env[v] for v in names if env.get(v)}
    cap = str(facts["env"].get("MKL_ENABLE_INSTRUCTIONS", "")).upper()
    if facts["library"] == "mkl" and cap:
        isa = next((i for prefix, i in _MKL_CAP if cap.startswith(prefix)), None)
        cpu = facts["cpu_isa"]
        # A cap above the CPU's best leaves MKL at the CPU's best.
        if isa and cpu and _ISA_RANK[isa] > _ISA_RANK[cpu]:
            isa = cpu
        facts["kernel_isa"] = isa
    kisa, cpu = facts["kernel_isa"], facts["cpu_isa"]
    if kisa in _ISA_RANK and cpu in _ISA_RANK:
        facts["below"] = _ISA_RANK[kisa] < _ISA_RANK[cpu]
    if facts["below"]:
        facts["cause"] = _below_cause(facts)
    return facts


def _below_cause(f: dict) -> str:
    """Why the kernel's instruction set is narrower than the CPU's best, from the variables set."""
    if f["library"] == "openblas":
        forced = f["env"].get("OPENBLAS_CORETYPE")
        if forced and str(forced).lower() == str(f["kernel"]).lower():
            return f"OPENBLAS_CORETYPE={forced} is set"
        if forced:
            return f"OPENBLAS_CORETYPE={forced} is set and this OpenBLAS runs {f['kernel']}"
        return "this OpenBLAS does not know this CPU"
    if f["library"] == "mkl" and f["env"].get("MKL_ENABLE_INSTRUCTIONS"):
        return f"MKL_ENABLE_INSTRUCTIONS={f['env']['MKL_ENABLE_INSTRUCTIONS']} is set"
    return f"{f['library']} does not say why"


def blas_summary(facts: dict) -> str:
    """The kernel, its instruction set against the CPU's best, and why when it is below, in a few words:
    'Haswell kernel, AVX2, below this CPU's AVX-512: OPENBLAS_CORETYPE=Haswell is set'."""
    kernel = f"{facts['kernel']} kernel" if facts.get("kernel") else "kernel not reported"
    isa = facts.get("kernel_isa")
    if facts.get("library") == "mkl" and isa:
        text = f"at most {isa_name(isa)} (MKL_ENABLE_INSTRUCTIONS={facts['env']['MKL_ENABLE_INSTRUCTIONS']})"
    elif isa:
        text = f"{kernel}, {isa_name(isa)}"
    elif facts.get("kernel"):
        text = f"{kernel}, instruction set unknown to whygpu"
    else:
        text = kernel
    if facts.get("below"):
        cause = facts["cause"] if facts.get("library") != "mkl" else "that caps it"
        text += f", below this CPU's {isa_name(facts['cpu_isa'])}: {cause}"
    elif facts.get("below") is False:
        text += ", this CPU's best" if isa == facts.get("cpu_isa") else ""
    elif facts.get("library") == "mkl" and not isa:
        text = "instruction set not reported (no MKL_ENABLE_INSTRUCTIONS set)"
    return text


def _compiler() -> str:
    try:
        import whygpu._probe as _probe

        return str(_probe.compiler)
    except ImportError:  # pragma: no cover - broken build
        return "unknown"


def _load():
    """The 1-minute load average when the run started (None where the OS has
    none): a busy machine spoils multi-thread figures, and the report says so."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def _cpu_load() -> dict:
    """Other programs' share and the steal share of our cores over 0.1 s, when the run starts
    (None each where there is no /proc/stat): whygpu.bench.trust.sample_load."""
    load = sample_load(0.1)
    return {
        "cpu_busy_before": None if load is None else load["others"],
        "steal_before": None if load is None else load["steal"],
    }


def machine_info() -> dict:
    """A JSON-ready description of this machine and software."""
    cpu = cpu_info()
    blas = _blas()
    try:
        import matplotlib

        mpl = matplotlib.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        mpl = None
    return {
        "cpu": cpu,
        "threads_default": get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "compiler": _compiler(),
        "versions": {"whygpu": __version__, "numpy": np.__version__, "matplotlib": mpl},
        "blas": blas,
        "blas_facts": blas_facts(blas, cpu_best=cpu.get("best_arch")),
        # how long OpenMP's and OpenBLAS's idle threads held a core after each call in this run
        "idle_threads": {k: dict(v) for k, v in _idle_threads.STATE.items()},
        "cuda": cuda_status(),
        "load_average": _load(),
        **_cpu_load(),
        "time": now_iso(),
    }
