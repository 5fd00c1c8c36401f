"""Builds tests/cuda_emu/check_kernels against the CUDA sources (csrc/cuda/*.cu)
run on the CPU by emu.h: each `kernel<<<grid, block, smem, stream>>>(args)`
launch is rewritten to `emu::launch_on(stream, grid, block, [=] { kernel(args); })` and
the files are compiled as C++20.

    build_emulated.py OUT_DIR [g++ flags]            the check_kernels program
    build_emulated.py --module OUT_DIR [g++ flags]   whygpu._cuda over the emulation
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CUDA_SRC = ROOT / "csrc" / "cuda"
BINDING_SRC = ROOT / "src" / "cuda"  # the _cuda binding, one file per concern (binding.h)
# WHYGPU_CUDA_EMULATION: for the few sources with code no CPU can stand in for (16_wgmma.cu)
# -fPIC: one object serves both programs below
COMMON = ["-std=c++20", "-O1", "-g", "-pthread", "-fPIC", "-DWHYGPU_CUDA_EMULATION=1"]
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


def _compile(src: pathlib.Path, flags: list, cache: pathlib.Path) -> pathlib.Path:
    """src compiled to an object in `cache`, named by a hash of its text, the
    headers it may include and the flags: an unchanged file is compiled once."""
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
    h.update(" ".join(flags).encode())
    obj = cache / f"{src.stem}-{h.hexdigest()[:16]}.o"
    if not obj.exists():
        tmp = obj.with_suffix(".tmp.o")
        subprocess.run(
            ["g++", *COMMON, "-c", f"-I{HERE}", f"-I{CUDA_SRC}", *flags, str(src), "-o", str(tmp)], check=True
        )
        tmp.replace(obj)
    return obj


def _compile_all(jobs: list, cache: pathlib.Path) -> list:
    """_compile for each (source, flags), a few at a time; the objects in the order of `jobs`."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda job: _compile(job[0], job[1], cache), jobs))


def main(out_dir: str, *flags: str, cache: str = "") -> pathlib.Path:
    """The check_kernels program (objects cached in `cache`, default OUT_DIR/obj)."""
    out = pathlib.Path(out_dir)
    sources = emulated_sources(out)
    cache_dir = pathlib.Path(cache) if cache else out / "obj"
    cache_dir.mkdir(parents=True, exist_ok=True)
    objects = _compile_all(
        [(pathlib.Path(src), list(flags)) for src in [str(HERE / "check_kernels.cpp"), *sources]], cache_dir
    )
    exe = out / "check_kernels"
    subprocess.run(["g++", *COMMON, *flags, *map(str, objects), "-o", str(exe)], check=True)
    return exe


def module(out_dir: str, *flags: str, cache: str = "") -> pathlib.Path:
    """The real binding src/cuda/*.cpp over the emulated kernels, as an
    importable whygpu._cuda extension in OUT_DIR (copy it next to whygpu's
    Python files to run the GPU tests on the CPU: run_gpu_tests.py).  Objects
    are cached in `cache` (default OUT_DIR/obj), shared with main()'s."""
    import sysconfig

    import pybind11

    out = pathlib.Path(out_dir)
    sources = emulated_sources(out)
    cache_dir = pathlib.Path(cache) if cache else out / "obj"
    cache_dir.mkdir(parents=True, exist_ok=True)
    binding = [
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
        "-fvisibility=hidden",
        '-DWHYGPU_CUDA_ARCHITECTURES="80-real,90-real,90-virtual"',
        '-DWHYGPU_CUDA_COMPILER_VERSION="emulated"',
    ]
    jobs = [(src, [*binding, *flags]) for src in sorted(BINDING_SRC.glob("*.cpp"))]
    jobs += [(pathlib.Path(src), list(flags)) for src in sources]
    objects = _compile_all(jobs, cache_dir)
    target = out / ("_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["g++", *COMMON, "-shared", *flags, *map(str, objects), "-o", str(target)], check=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--module":
        print(module(*sys.argv[2:]))
    else:
        print(main(*sys.argv[1:]))
