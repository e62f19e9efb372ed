#!/usr/bin/env python3
"""Compile kernels/moe.cu with NVRTC on a machine without a GPU or CUDA
toolkit, as `replay` compiles it at run time (sm_90 here), and report what
a kernel edit broke before any device time is spent.

NVRTC comes from NVIDIA's `nvidia-cuda-nvrtc-cu12` wheel on PyPI (about 90
MB), fetched once into a cache folder; nothing is installed system-wide.
The library only compiles: no driver and no GPU are needed.

Usage: scripts/nvrtc_check.py [--arch sm_90] [--cache DIR] [--ptx OUT.ptx]
                              [--kernel NAME ...] [kernels/moe.cu]

Prints the compiler's log and, per kernel named with --kernel (default:
every kernel), whether its PTX spills to local memory and how many
vectorised (16-byte) loads and stores it has. Exit status: 0 when it
compiles, 1 when it does not, 2 when NVRTC could not be fetched.
"""
import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import zipfile

WHEEL = "nvidia-cuda-nvrtc-cu12"


def nvrtc_lib(cache):
    """The path of libnvrtc.so from the cached wheel, fetching it if needed."""
    found = glob.glob(os.path.join(cache, "nvidia/cuda_nvrtc/lib/libnvrtc.so*"))
    if found:
        return sorted(found)[0]
    os.makedirs(cache, exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", cache],
        capture_output=True,
        text=True,
    )
    wheels = glob.glob(os.path.join(cache, "nvidia_cuda_nvrtc*.whl"))
    if r.returncode != 0 or not wheels:
        sys.exit(f"nvrtc_check: could not fetch {WHEEL} from PyPI: {r.stderr.strip()[-400:]}")
    with zipfile.ZipFile(sorted(wheels)[-1]) as z:
        z.extractall(cache)
    found = glob.glob(os.path.join(cache, "nvidia/cuda_nvrtc/lib/libnvrtc.so*"))
    if not found:
        sys.exit(f"nvrtc_check: {WHEEL} holds no libnvrtc.so")
    return sorted(found)[0]


def compile_ptx(lib_path, src_path, arch):
    lib = ctypes.CDLL(lib_path)
    # as src/gpu/runtime.rs and src/gpu/fused.rs embed them: the shared
    # conversions and activation first
    prelude = os.path.join(os.path.dirname(os.path.abspath(src_path)), "bf16_act.cuh")
    src = open(prelude, "rb").read() if os.path.exists(prelude) else b""
    src += open(src_path, "rb").read()
    prog = ctypes.c_void_p()
    name = os.path.basename(src_path).encode()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src, name, 0, None, None) != 0:
        sys.exit("nvrtc_check: nvrtcCreateProgram failed")
    # as src/gpu/runtime.rs compiles them: the card's sm_XX, no fast math
    opts = [f"--gpu-architecture={arch}".encode()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    return rc, log.value.decode(), ptx


def kernels_of(ptx):
    """{kernel name: its PTX body}."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\(", ptx):
        start = m.start()
        end = ptx.find("\n}\n", start)
        out[m.group(1)] = ptx[start : end if end > 0 else len(ptx)]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", nargs="?", default="kernels/moe.cu")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/llep-trace/nvrtc"))
    ap.add_argument("--ptx", help="write the PTX here")
    ap.add_argument("--kernel", action="append", default=[], help="report only these kernels")
    a = ap.parse_args()
    try:
        lib = nvrtc_lib(a.cache)
    except SystemExit as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    rc, log, ptx = compile_ptx(lib, a.source, a.arch)
    if log.strip():
        print(log.strip())
    if rc != 0:
        print(f"{a.source}: does not compile for {a.arch} (NVRTC status {rc})")
        sys.exit(1)
    if a.ptx:
        tmp = a.ptx + ".tmp"
        with open(tmp, "w") as f:
            f.write(ptx)
        os.replace(tmp, a.ptx)
    ks = kernels_of(ptx)
    print(f"{a.source}: compiles for {a.arch}, {len(ks)} kernels")
    for name, body in sorted(ks.items()):
        if a.kernel and name not in a.kernel:
            continue
        local = len(re.findall(r"\.local|ld\.local|st\.local", body))
        v4 = len(re.findall(r"\b(ld|st)(\.global)?\.v4\.", body))
        print(f"  {name:24s} local-memory refs {local:3d}   16-byte loads/stores {v4:3d}")


if __name__ == "__main__":
    main()
