"""Which build of the compiled kernels this process loads, and how they were built.

The C++ kernels are installed as ``taylorkern/_core*.so``, compiled for the compiler's default
target (any CPU of the architecture), and on x86-64 Linux also as
``taylorkern/_isa/<level>/_core*.so``, the same sources compiled for newer levels
(``x86-64-v3``: AVX2 and FMA; ``x86-64-v4``: AVX-512), whose wider vectors speed up the
kernels' vector loops.  :func:`install_core`, called by the dispatch before any backend is
loaded, registers the best build this CPU runs as ``taylorkern._core``, so every
``from taylorkern import _core`` gets it.  ``TAYLORKERN_ISA=baseline|x86-64-v3|x86-64-v4``
picks one by name (one the CPU lacks is refused with a warning, never run).

``BUILD`` says how the installed modules were built (written by CMakeLists.txt into
``taylorkern/_build_info.py``; empty in a source tree that was never built).
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import os
import sys
import warnings

try:
    from ._build_info import BUILD
except ImportError:  # a source checkout, or a build older than the build info
    BUILD = {}

# Best first: level -> the /proc/cpuinfo flags it needs (the kernel lists AVX/AVX-512 only when
# the OS saves their registers).
LEVELS = {
    "x86-64-v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma",
                  "bmi1", "bmi2", "f16c", "movbe"),
    "x86-64-v3": ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "avx"),
}
BASELINE = "baseline"

loaded = None  # the level of the taylorkern._core in use (BASELINE, a key of LEVELS), or None
skipped = {}  # level -> why a build for it was not loaded


def cpu_flags():
    """The CPU's feature flags as Linux reports them; empty elsewhere (only the baseline runs)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _variant_path(pkg_dir, level):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found = glob.glob(os.path.join(pkg_dir, "_isa", level, "_core" + suffix))
        if found:
            return found[0]
    return None


def _load_from(path):
    spec = importlib.util.spec_from_file_location("taylorkern._core", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def install_core():
    """Register the best ``taylorkern._core`` build for this CPU in ``sys.modules`` (once).

    Does nothing when ``taylorkern._core`` is already imported or blocked, or cannot be found:
    the plain import then gives the baseline build, or the error the dispatch reports."""
    global loaded
    if "taylorkern._core" in sys.modules or loaded is not None:
        return
    try:
        spec = importlib.util.find_spec("taylorkern._core")
    except ImportError:
        return
    if spec is None or not spec.origin:
        return
    loaded = BASELINE
    pkg_dir = os.path.dirname(spec.origin)
    forced = os.environ.get("TAYLORKERN_ISA", "").strip()
    if forced and forced != BASELINE and forced not in LEVELS:
        raise ValueError(f"TAYLORKERN_ISA: unknown {forced!r}; expected one of "
                         f"{[BASELINE, *LEVELS]}")
    flags = cpu_flags()
    for level, needs in LEVELS.items():
        if forced and forced != level:
            skipped[level] = f"TAYLORKERN_ISA={forced}"
            continue
        path = _variant_path(pkg_dir, level)
        missing = [f for f in needs if f not in flags]
        if path is None or missing:
            skipped[level] = "not built" if path is None else "the CPU lacks " + " ".join(missing)
            if forced:
                warnings.warn(f"taylorkern: TAYLORKERN_ISA={forced} is not used ({skipped[level]}); "
                              "using the baseline build", RuntimeWarning, stacklevel=2)
            continue
        try:
            mod = _load_from(path)
        except Exception as exc:  # fall back to an older level, saying why
            skipped[level] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"taylorkern: the {level} build of the compiled kernels did not load "
                          f"({skipped[level]}); using an older one", RuntimeWarning, stacklevel=2)
            continue
        sys.modules["taylorkern._core"] = mod
        sys.modules["taylorkern"]._core = mod
        loaded = level
        return


def why_core_missing(error):
    """One sentence on why ``taylorkern._core`` did not import and how to get it."""
    if BUILD and not BUILD.get("core_built"):
        return (f"the compiled kernels were not built when taylorkern was installed: "
                f"{BUILD.get('core')}; to get them, install a C++ compiler (g++ or clang++) and "
                "reinstall taylorkern")
    if isinstance(error, ModuleNotFoundError) and error.name == "taylorkern._core":
        return ("the compiled kernels are not installed (taylorkern._core not found); "
                "reinstall taylorkern with a C++ compiler present")
    return (f"the compiled kernels failed to load ({type(error).__name__}: {error}); "
            "reinstall taylorkern on this machine")


def describe():
    """Lines for ``taylorkern info``: how the compiled modules were built and which is loaded."""
    if not BUILD:
        return ["build info:         none (not an installed build)"]
    lines = [f"C++ compiler:       {BUILD.get('cxx_compiler') or 'none'}"]
    if BUILD.get("core_built"):
        variants = ", ".join(BUILD.get("isa_variants") or ()) or "none"
        lines.append(f"compiled kernels:   {BUILD.get('isa')}; x86-64 level builds: {variants}")
        level = loaded or "not loaded"
        notes = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        lines.append(f"  loaded build:     {level}" + (f"  (skipped {notes})" if notes else ""))
        threads = "OpenMP" if BUILD.get("openmp") else "one thread, no OpenMP"
        lines.append(f"  threads:          {threads}: {BUILD.get('openmp_why')}")
    else:
        lines.append(f"compiled kernels:   not built: {BUILD.get('core')}")
    cuda = "built" if BUILD.get("cuda_built") else "not built"
    lines.append(f"CUDA module:        {cuda}: {BUILD.get('cuda')}")
    return lines
