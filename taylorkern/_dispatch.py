"""The one place a backend is chosen.

At import every candidate is probed in order of speed (fastest first); the first
that loads becomes the active backend, and the reason for each one passed over is
recorded.  ``TAYLORKERN_BACKEND`` (read at import) and :func:`set_backend` override
the choice; :func:`use_backend` overrides it for a ``with`` block.

Order: ``cuda`` where a GPU is present (taylorkern.backends.cuda; chosen by itself it routes
each call: to the GPU when the problem is large enough to win there, see ``cuda.worth_it``, else
to the CPU backend below; forced, every call runs on the GPU), then ``cpp`` (compiled C++/OpenMP
kernels, BLAS for the large products), then ``numba`` (the same algorithms compiled by numba on
first use and cached on disk; BLAS for the large products), then ``reference`` (plain numpy, the
oracle; slow, always present).

numba sits between them: its kernels are the same algorithms on the same BLAS and run about as
fast on large problems, but it compiles every kernel on its first use on a machine, pays for
importing numba and loading its cached code in each new process, and has a larger fixed cost
per call (bench/RESULTS.md has the measurements).  Where the compiled kernels are missing or do
not load, the warning says why and how to get them (taylorkern._native reads how they were built).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings

from . import _native

CPU_ORDER = ("cpp", "numba", "reference")
# "cuda" (taylorkern.backends.cuda) loads only where its module was built and a GPU and
# cuBLAS are found; most machines have none, so its absence is never warned about.
ORDER = ("cuda",) + CPU_ORDER

_modules = {}  # name -> loaded backend module
_why_not = {}  # name -> reason it could not be loaded
_active = None
_reason = ""


def _load(name):
    if name in _modules:
        return _modules[name]
    try:
        mod = importlib.import_module(f"taylorkern.backends.{name}")
    except Exception as exc:  # an extension that fails to load for any reason
        if name == "cpp":
            _why_not[name] = _native.why_core_missing(exc)
        elif name == "cuda" and _native.BUILD and not _native.BUILD.get("cuda_built"):
            _why_not[name] = f"taylorkern._cuda was not built: {_native.BUILD.get('cuda')}"
        else:
            _why_not[name] = f"{type(exc).__name__}: {exc}"
        return None
    _modules[name] = mod
    _why_not.pop(name, None)
    return mod


def available_backends():
    """Names of the backends that load here, fastest first."""
    return [n for n in ORDER if _load(n) is not None]


def backend():
    """Name of the active backend."""
    return _active.name


def why():
    """Why the active backend was chosen, and why faster ones were not."""
    return _reason


def current():
    return _active


def optional(function):
    """The active backend's optional ``function`` (one outside the Backend protocol, such as
    kfac_factors), else that of the CPU backend the cuda router falls back to, else the
    reference backend's (plain numpy, always present)."""
    for b in (_active, getattr(_active, "fallback", None)):
        fn = getattr(b, function, None)
        if fn is not None:
            return fn
    return getattr(_resolve("reference"), function)


def _resolve(name):
    if not isinstance(name, str) or name not in ORDER:
        raise ValueError(f"backend: unknown {name!r}; known backends are {list(ORDER)}, "
                         f"available here: {available_backends()}")
    mod = _load(name)
    if mod is None:
        raise ValueError(f"backend: {name!r} is not available ({_why_not[name]}); "
                         f"available here: {available_backends()}")
    return mod


def set_backend(name):
    """Make ``name`` the active backend for the whole process."""
    global _active, _reason
    _active = _resolve(name)
    _reason = f"{name}: set by set_backend()"


@contextlib.contextmanager
def use_backend(name):
    """Run a block with ``name`` as the active backend."""
    global _active, _reason
    saved = _active, _reason
    _active, _reason = _resolve(name), f"{name}: set by use_backend()"
    try:
        yield _active
    finally:
        _active, _reason = saved


def _source_tree_hint():
    """A hint when the package was imported from a source checkout in the working directory
    (``python -m ...`` or ``python -c`` there put it first on sys.path) that has no compiled
    module, while the compiled one was most likely installed elsewhere."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.dirname(here) != os.path.abspath(os.getcwd()):
        return ""
    if any(f.startswith("_core") for f in os.listdir(here)):
        return ""
    return (f" -- Python imported the uncompiled source tree {here}: run from another directory, "
            "or with `python -P` (Python >= 3.11) to use the installed package")


def _choose():
    global _active, _reason
    _native.install_core()  # the best build of the compiled kernels for this CPU
    forced = os.environ.get("TAYLORKERN_BACKEND", "").strip()
    if forced:
        _active = _resolve(forced)  # an unknown or missing name is an error, never a silent fallback
        _reason = f"{forced}: forced by TAYLORKERN_BACKEND"
        return
    cpu = next((n for n in CPU_ORDER if _load(n) is not None), None)
    if cpu is None:  # pragma: no cover - the reference is plain numpy
        raise ImportError("taylorkern: no backend could be loaded")
    skipped = [f"{n} unavailable ({_why_not[n]})" for n in CPU_ORDER[:CPU_ORDER.index(cpu)]]
    _active = _modules[cpu]
    _reason = f"{cpu}: fastest available" + ("; " + "; ".join(skipped) if skipped else "")
    if skipped:
        warnings.warn(f"taylorkern: using the {cpu!r} backend because " + "; ".join(skipped)
                      + _source_tree_hint(), RuntimeWarning, stacklevel=3)
    if _load("cuda") is not None:
        _active = _modules["cuda"].auto(_active)
        _reason = (f"cuda: a GPU is present; each call runs there when cuda.worth_it() estimates it "
                   f"faster, else on {cpu} ({_reason})")


_choose()
