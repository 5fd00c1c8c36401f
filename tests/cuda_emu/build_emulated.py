"""Builds tests/cuda_emu/check_kernels against the CUDA sources (csrc/cuda/*.cu)
run on the CPU by emu.h: each `kernel<<<grid, block, smem, stream>>>(args)`
launch is rewritten to `emu::launch_on(stream, grid, block, [=] { kernel(args); })` and
the files are compiled as C++20.

    build_emulated.py OUT_DIR [g++ flags]            the check_kernels program
    build_emulated.py --module OUT_DIR [g++ flags]   whygpu._cuda over the emulation

Every object file and linked program is cached by a hash of what went into it
(its text, the headers it may include, the flags, the compiler's version and,
for the binding, Python's and pybind11's), by default in
~/.cache/whygpu-tests/cuda-emu ($XDG_CACHE_HOME is honoured; WHYGPU_EMU_CACHE
names another folder): a second test run compiles nothing, and one changed
.cu file recompiles that file only.  Each result is written under a temporary
name and renamed into place, so an interrupted build leaves nothing half
written, and two test runs building at once both get a whole one.  Entries
unused for CACHE_DAYS days are removed; deleting the folder is always safe.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CUDA_SRC = ROOT / "csrc" / "cuda"
BINDING_SRC = ROOT / "src" / "cuda"  # the _cuda binding, one file per concern (binding.h)
# WHYGPU_CUDA_EMULATION: for the few sources with code no CPU can stand in for (16_wgmma.cu)
# -fPIC: one object serves both programs below
# -g1: line tables only (a crash's backtrace still names file:line); full -g made a fresh
# build of the module take 68 s instead of 46-51 s on 2 cores
COMMON = ["-std=c++20", "-O1", "-g1", "-pthread", "-fPIC", "-DWHYGPU_CUDA_EMULATION=1"]
CACHE_ENV = "WHYGPU_EMU_CACHE"
CACHE_DAYS = 14  # an entry not used for this long is from an old tree: removed
LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);", re.S)


def split_top(s: str) -> list:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def rewrite(text: str) -> str:
    def sub(m):
        kernel, config, args = m.group(1), split_top(m.group(2)), m.group(3)
        stream = config[3] if len(config) > 3 else "nullptr"
        # [=]: a launch recorded into a CUDA graph runs later, with the arguments it was captured with
        return f"emu::launch_on({stream}, dim3({config[0]}), dim3({config[1]}), [=] {{ {kernel}({args}); }});"

    out, n = LAUNCH.subn(sub, text)
    if "<<<" in out:
        raise SystemExit("a kernel launch was not rewritten")
    return out


def emulated_sources(out: pathlib.Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for cu in sorted(CUDA_SRC.glob("*.cu")):
        dst = out / (cu.stem + ".cpp")
        dst.write_text(f'#line 1 "csrc/cuda/{cu.name}"\n' + rewrite(cu.read_text()))
        sources.append(str(dst))
    return sources


def default_cache() -> pathlib.Path:
    """The cache folder: $WHYGPU_EMU_CACHE, else <$XDG_CACHE_HOME or ~/.cache>/whygpu-tests/cuda-emu
    (outside the source tree: a second checkout or a fresh clone reuses it too)."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "whygpu-tests" / "cuda-emu"


@functools.cache
def _toolchain() -> str:
    """What identifies the compiler: a new g++ must not reuse the old one's objects."""
    cxx = shutil.which("g++") or "g++"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    return f"{os.path.realpath(cxx)}\n{version}"


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _fresh(path: pathlib.Path) -> bool:
    """Whether a cached `path` exists; marks it used now (so _prune keeps it) before it is relied on."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _prune(cache: pathlib.Path) -> None:
    """Remove entries not used for CACHE_DAYS days, and temporaries an interrupted build left a day ago."""
    now = time.time()
    for entry in [*cache.glob("*.o"), *cache.glob("linked/*"), *cache.glob(".tmp-*")]:
        limit = 86400 if entry.name.startswith(".tmp-") else CACHE_DAYS * 86400
        try:
            if now - entry.stat().st_mtime <= limit:
                continue
            if entry.is_dir():  # moved aside first: a folder is never seen half removed
                gone = cache / f".tmp-gone-{os.getpid()}-{entry.name}"
                os.rename(entry, gone)
                shutil.rmtree(gone)
            else:
                entry.unlink()
        except OSError:
            pass  # another test run removed or replaced it first


def _compile(src: pathlib.Path, flags: list, cache: pathlib.Path, salt: str = "") -> pathlib.Path:
    """src compiled to an object in `cache`, named by a hash of its text, the headers
    it may include, the flags, the compiler and `salt` (what else its output depends
    on): an unchanged file is compiled once."""
    h = hashlib.sha1(src.read_bytes())
    headers = [
        *HERE.glob("*.h"),
        *HERE.glob("*.cuh"),
        *CUDA_SRC.glob("*.h"),
        *CUDA_SRC.glob("*.cuh"),
        *BINDING_SRC.glob("*.h"),
    ]
    for header in sorted(headers):
        h.update(header.read_bytes())
    h.update("\0".join([*COMMON, *flags, _toolchain(), salt]).encode())
    obj = cache / f"{src.stem}-{h.hexdigest()[:16]}.o"
    if not _fresh(obj):
        # a name of its own, renamed into place when whole: a build running next to this one
        # compiling the same file, or one interrupted half-way, never leaves a broken object
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".o", dir=cache)
        os.close(fd)
        try:
            subprocess.run(
                ["g++", *COMMON, "-c", f"-I{HERE}", f"-I{CUDA_SRC}", *flags, str(src), "-o", tmp], check=True
            )
            os.replace(tmp, obj)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return obj


def _compile_all(jobs: list, cache: pathlib.Path) -> list:
    """_compile for each (source, flags[, salt]), a few at a time; the objects in the order of `jobs`."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda job: _compile(*job[:2], cache, *job[2:]), jobs))


def _link(objects: list, args: list, name: str, cache: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """g++ `args` over `objects` into `name`, cached in cache/linked/<hash of the objects and
    args>/ (built in a temporary folder renamed into place), then copied to out/name."""
    final = cache / "linked" / _key(*map(str, objects), *COMMON, *args, _toolchain())
    if not _fresh(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
        try:
            subprocess.run(["g++", *COMMON, *args, *map(str, objects), "-o", str(tmp / name)], check=True)
            try:
                os.rename(tmp, final)  # atomic; fails if another test run got there first
            except OSError:
                if not (final / name).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(final / name, out / name)
    return out / name


def _cache_dir(cache: str) -> pathlib.Path:
    cache_dir = pathlib.Path(cache) if cache else default_cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    _prune(cache_dir)
    return cache_dir


def main(out_dir: str, *flags: str, cache: str = "") -> pathlib.Path:
    """OUT_DIR/check_kernels (built in `cache`, default default_cache())."""
    out = pathlib.Path(out_dir)
    sources = emulated_sources(out)
    cache_dir = _cache_dir(cache)
    objects = _compile_all(
        [(pathlib.Path(src), list(flags)) for src in [str(HERE / "check_kernels.cpp"), *sources]], cache_dir
    )
    return _link(objects, list(flags), "check_kernels", cache_dir, out)


def module(out_dir: str, *flags: str, cache: str = "") -> pathlib.Path:
    """The real binding src/cuda/*.cpp over the emulated kernels, as an
    importable whygpu._cuda extension in OUT_DIR (copy it next to whygpu's
    Python files to run the GPU tests on the CPU: run_gpu_tests.py).  Objects
    is built in `cache` (default default_cache()), shared with main()'s."""
    import sysconfig

    import pybind11

    out = pathlib.Path(out_dir)
    sources = emulated_sources(out)
    cache_dir = _cache_dir(cache)
    # the binding's objects depend on the Python and pybind11 whose headers they include
    python = f"{sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} pybind11 {pybind11.__version__}"
    binding = [
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
        "-fvisibility=hidden",
        '-DWHYGPU_CUDA_ARCHITECTURES="80-real,90-real,90-virtual"',
        '-DWHYGPU_CUDA_COMPILER_VERSION="emulated"',
    ]
    jobs = [(src, [*binding, *flags], python) for src in sorted(BINDING_SRC.glob("*.cpp"))]
    jobs += [(pathlib.Path(src), list(flags)) for src in sources]
    objects = _compile_all(jobs, cache_dir)
    return _link(objects, ["-shared", *flags], "_cuda" + sysconfig.get_config_var("EXT_SUFFIX"), cache_dir, out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--module":
        print(module(*sys.argv[2:]))
    else:
        print(main(*sys.argv[1:]))
