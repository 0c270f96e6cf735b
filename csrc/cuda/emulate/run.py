#!/usr/bin/env python3
"""Build taylorkern._cuda for HOST EMULATION and run tests/test_cuda.py against it.

No GPU needed: the .cu files are compiled by g++ as C++ against include/cuda_runtime.h (a
host stand-in for the runtime calls csrc/cuda makes), each kernel launch `k<<<g, b, s, st>>>(a)`
rewritten to TK_EMU_LAUNCH(g, b, st, k(a)) (up to 2 blocks per grid dimension, one after
another, each of real threads with barriers for __syncthreads), and cuBLAS replaced by
fake_cublas.cpp (column-major reference GEMM with
cuBLAS's argument checks), loaded through the real dlopen path via TAYLORKERN_CUBLAS.
It checks the device code's logic (indices, layouts, operand mapping, the algorithms) against
the reference; not its speed, races between blocks, or anything about real hardware.

    python3 csrc/cuda/emulate/run.py [extra pytest args]      # from the repository root

With TK_EMU_SANITIZE=1 the kernels and the fake cuBLAS are built with AddressSanitizer and
UBSan (libasan preloaded into the test run): a kernel reading or writing past a buffer the
emulated cudaMalloc gave stops the run with a report naming the kernel's line.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent
ROOT = SRC.parent.parent
OUT = Path(os.environ.get("TK_EMU_OUT", "/tmp/taylorkern-cuda-emulation"))
MODE = os.environ.get("TK_EMU_SANITIZE", "")
SANITIZE = {"": [],
            "1": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
            "thread": ["-fsanitize=thread", "-fno-omit-frame-pointer"]}.get(MODE)
if SANITIZE is None:
    sys.exit(f"TK_EMU_SANITIZE: expected 1 (AddressSanitizer and UBSan) or thread, got {MODE!r}")

LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<")
SHARED = re.compile(r"__shared__\s+([^;]+?)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;")


def rewrite_shared(text):
    """`__shared__ T a[n];` -> one static copy per block slot, `a` naming this block's.  The
    runtime header leaves __shared__ undefined, so a declaration this misses fails to build."""
    return SHARED.sub(r"static \1 \2_tk_emu[tk_emu::kMaxBlocks]\3; auto& \2 = \2_tk_emu[tk_emu::tl_slot];", text)


def rewrite_launches(text):
    out, pos = [], 0
    while True:
        m = LAUNCH.search(text, pos)
        if not m:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:m.start()])
        cfg_end = text.index(">>>", m.end())
        cfg = [c.strip() for c in split_top(text[m.end():cfg_end])]
        assert text[cfg_end + 3] == "(", text[m.start():cfg_end + 10]
        depth, i = 0, cfg_end + 3
        while True:
            ch = text[i]
            depth += ch == "("
            depth -= ch == ")"
            i += 1
            if depth == 0:
                break
        args = text[cfg_end + 4:i - 1]
        stream = cfg[3] if len(cfg) > 3 else "0"
        out.append(f"TK_EMU_LAUNCH({cfg[0]}, {cfg[1]}, {stream}, {m.group(1)}({args}))")
        pos = i


def split_top(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def run(cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main():
    gen = OUT / "src"
    shutil.rmtree(OUT, ignore_errors=True)
    gen.mkdir(parents=True)
    for f in SRC.iterdir():
        if f.suffix == ".hpp":
            shutil.copy(f, gen / f.name)
        elif f.suffix == ".cuh":
            (gen / f.name).write_text(rewrite_shared(f.read_text()))
        elif f.suffix == ".cu":
            (gen / (f.stem + "_cu.cpp")).write_text(rewrite_shared(rewrite_launches(f.read_text())))
    for f in SRC.parent.glob("*.hpp"):  # the headers shared with the CPU kernels ("../x.hpp")
        shutil.copy(f, OUT / f.name)
    pyinc = subprocess.run([sys.executable, "-m", "pybind11", "--includes"], capture_output=True, text=True,
                           check=True).stdout.split()
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    pkg = OUT / "pkg"
    shutil.copytree(ROOT / "taylorkern", pkg / "taylorkern",
                    ignore=shutil.ignore_patterns("__pycache__", "_cuda*.so"))
    if not list((pkg / "taylorkern").glob("_core*.so")):
        sys.exit("build taylorkern._core first (the emulated tests compare with the installed package's backends)")
    sources = sorted(gen.glob("*_cu.cpp")) + [SRC / "blas.cpp", SRC / "bindings.cpp", SRC / "transfer.cpp"]
    objs = []
    procs = []
    for s in sources:  # two at a time
        o = OUT / (s.stem + ".o")
        objs.append(o)
        procs.append(subprocess.Popen(["g++", "-std=c++17", "-O1", "-g", "-fPIC", "-Wall", "-Wextra",
                                       "-Wno-unused-parameter", "-Wno-unknown-pragmas",  # #pragma unroll
                                       *SANITIZE, "-I", str(HERE / "include"), "-I", str(gen), *pyinc, "-c",
                                       str(s), "-o", str(o)]))
        if len(procs) == 2:
            [p.wait() for p in procs]
            if any(p.returncode for p in procs):
                sys.exit("emulated build failed")
            procs = []
    [p.wait() for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("emulated build failed")
    run(["g++", "-shared", *SANITIZE, "-o", str(pkg / "taylorkern" / ("_cuda" + ext)), *map(str, objs),
         "-lpthread", "-ldl"])
    fake = OUT / "libfakecublas.so.13"
    run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", *SANITIZE, str(HERE / "fake_cublas.cpp"), "-o", str(fake)])
    env = dict(os.environ, TAYLORKERN_CUBLAS=str(fake), PYTHONDONTWRITEBYTECODE="1")
    env.pop("TAYLORKERN_BACKEND", None)
    if SANITIZE:
        # python is not instrumented: the runtime comes first, with libstdc++ beside it (or ASan
        # cannot intercept the first C++ throw); pytest captures only sys.stdout/stderr, since
        # a dying process's report on file descriptor 2 would vanish with pytest's capture of
        # it; a refused allocation returns null, as cudaMalloc does (tests of oversized requests)
        # (a race report stops the run: halt_on_error)
        runtime = "libtsan.so" if MODE == "thread" else "libasan.so"
        lib = [subprocess.run(["g++", f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
               for n in (runtime, "libstdc++.so.6")]
        env.update(LD_PRELOAD=":".join(lib), ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1",
                   UBSAN_OPTIONS="print_stacktrace=1",
                   TSAN_OPTIONS="halt_on_error=1:exitcode=66:allocator_may_return_null=1:report_signal_unsafe=0")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-c",
           str(ROOT / "pyproject.toml"), str(ROOT / "tests" / "test_cuda.py"), "-q", "-rs",
           *(["--capture=sys"] if SANITIZE else []), *sys.argv[1:]]
    print("+", " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=pkg, env=env).returncode)


if __name__ == "__main__":
    main()
