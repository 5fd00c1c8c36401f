"""Builds tests/cuda_emu/check_kernels against the CUDA sources (csrc/cuda/*.cu)
run on the CPU by emu.h: each `kernel<<<grid, block, smem, stream>>>(args)`
launch is rewritten to `emu::launch(grid, block, [&] { kernel(args); })` and
the files are compiled as C++20.

    build_emulated.py OUT_DIR [g++ flags]            the check_kernels program
    build_emulated.py --module OUT_DIR [g++ flags]   whygpu._cuda over the emulation
"""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CUDA_SRC = ROOT / "csrc" / "cuda"
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
        return f"emu::launch(dim3({config[0]}), dim3({config[1]}), [&] {{ {kernel}({args}); }});"
    out, n = LAUNCH.subn(sub, text)
    if "<<<" in out:
        raise SystemExit("a kernel launch was not rewritten")
    return out


def emulated_sources(out: pathlib.Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for cu in sorted(CUDA_SRC.glob("*.cu")):
        dst = out / (cu.stem + ".cpp")
        dst.write_text(f'#line 1 "{cu}"\n' + rewrite(cu.read_text()))
        sources.append(str(dst))
    return sources


def main(out_dir: str, *flags: str) -> pathlib.Path:
    """The check_kernels program."""
    out = pathlib.Path(out_dir)
    sources = emulated_sources(out)
    exe = out / "check_kernels"
    cmd = ["g++", "-std=c++20", "-O1", "-g", "-pthread", f"-I{HERE}", f"-I{CUDA_SRC}", *flags,
           str(HERE / "check_kernels.cpp"), *sources, "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return exe


def module(out_dir: str, *flags: str) -> pathlib.Path:
    """The real binding src/cuda_module.cpp over the emulated kernels, as an
    importable whygpu._cuda extension in OUT_DIR (copy it next to whygpu's
    Python files to run tests/test_cuda.py's GPU tests on the CPU)."""
    import sysconfig

    import pybind11
    out = pathlib.Path(out_dir)
    sources = emulated_sources(out)
    target = out / ("_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["g++", "-std=c++20", "-O1", "-g", "-pthread", "-shared", "-fPIC", "-fvisibility=hidden",
           f"-I{HERE}", f"-I{CUDA_SRC}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
           '-DWHYGPU_CUDA_ARCHITECTURES="80-real,90-real,90-virtual"', '-DWHYGPU_CUDA_COMPILER_VERSION="emulated"',
           *flags, str(ROOT / "src" / "cuda_module.cpp"), *sources, "-o", str(target)]
    subprocess.run(cmd, check=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--module":
        print(module(*sys.argv[2:]))
    else:
        print(main(*sys.argv[1:]))
