"""How long OpenMP's idle threads spin before they sleep (standard library only, so that the
benchmarks can use it before anything numeric loads).

A whole kernel call is one parallel region with one barrier (csrc/common.hpp: over_samples),
so its waits last microseconds.  libgomp's default then spins each idle thread for
milliseconds after every region, which starves whatever else runs on a busy machine, while
fully passive waits pay a futex wake-up per region and barrier.  A spin count of 1,000 keeps
the kernels fast in both cases (bench/RESULTS.md, "Threads and fork", has the measurements).

libgomp reads GOMP_SPINCOUNT once, when it loads.  So taylorkern sets it in the environment
only while its compiled module loads libgomp, and restores the environment at once
(:func:`while_loading`): other programs and subprocesses never see it.  It is not set when
the user chose (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set, or
``TAYLORKERN_SPINCOUNT=default`` for libgomp's own default; ``TAYLORKERN_SPINCOUNT=<count>``
for another count), nor when libgomp was already loaded (by another library imported
first), where it could have no effect.  Every user of that libgomp in the process (numba's
OpenMP layer, PyTorch built against the same library) then shares the setting.
"""

import contextlib
import os
import warnings

SPIN_COUNT = "1000"
OPT_OUT = "TAYLORKERN_SPINCOUNT"

# What happened at import, for `taylorkern info` (set by while_loading).
status = "not applied: taylorkern's compiled module was not loaded"


def chosen(environ):
    """The GOMP_SPINCOUNT taylorkern would use with ``environ``, or None where the user chose:
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set, or ``TAYLORKERN_SPINCOUNT=default``."""
    own = environ.get(OPT_OUT, "").strip()
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ or own.lower() == "default":
        return None
    if own and not own.isdigit():
        warnings.warn(f"{OPT_OUT}={own!r}: expected 'default' or a count; using {SPIN_COUNT}",
                      RuntimeWarning, stacklevel=2)
        own = ""
    return own or SPIN_COUNT


def apply_defaults(environ):
    """Set GOMP_SPINCOUNT in ``environ`` (a mapping for a process about to start, as the
    benchmarks' pinned environments) where :func:`chosen` gives a count."""
    value = chosen(environ)
    if value is not None:
        environ["GOMP_SPINCOUNT"] = value


def libgomp_loaded():
    """Whether a libgomp is mapped into this process (False where that cannot be read)."""
    try:
        with open("/proc/self/maps") as f:
            return any(os.path.basename(line.rstrip()).startswith("libgomp") for line in f)
    except OSError:
        return False


@contextlib.contextmanager
def while_loading(environ=os.environ):
    """GOMP_SPINCOUNT set in ``environ`` for the duration of the block (in which the compiled
    module loads libgomp) where :func:`chosen` gives a count and no libgomp is loaded yet;
    ``environ`` as it was afterwards.  Records what happened in ``status``."""
    global status
    value = chosen(environ)
    if value is None:
        user = [f"{k}={environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in environ]
        status = f"left to the user ({', '.join(user) or OPT_OUT + '=default'})"
        yield
        return
    if libgomp_loaded():
        status = ("not applied: libgomp was loaded before taylorkern (import taylorkern first, "
                  "or set GOMP_SPINCOUNT)")
        yield
        return
    environ["GOMP_SPINCOUNT"] = value
    try:
        yield
    finally:
        environ.pop("GOMP_SPINCOUNT", None)
    if libgomp_loaded():
        source = f"from {OPT_OUT}" if OPT_OUT in environ else "taylorkern's default"
        status = (f"GOMP_SPINCOUNT={value} while libgomp loaded ({source}; "
                  f"{OPT_OUT}=default keeps libgomp's)")
