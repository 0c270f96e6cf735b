"""What an installation reports about itself and how it copes with a missing or broken compiled
module: the build info (`taylorkern info`), the choice among the x86-64 level builds of the
kernels (taylorkern._native), and the fallback warning when the kernels were not built.  Each
import runs in a fresh interpreter.  (Installing without a compiler is checked by .ci/run.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import taylorkern as tk
from taylorkern import _native

PACKAGE_ROOT = str(Path(tk.__file__).resolve().parent.parent)
INSTALLED = bool(_native.BUILD)
needs_install = pytest.mark.skipif(not INSTALLED, reason="taylorkern is imported from a source tree "
                                   "that was never built: no build info")


def run_python(code, root=PACKAGE_ROOT, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TAYLORKERN_BACKEND", "TAYLORKERN_ISA")}
    env["PYTHONPATH"] = root
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=root)


# Makes the next `import taylorkern` see a build whose compiled kernels were not built (as
# `pip install .` without a compiler leaves it), before anything of taylorkern is imported.
NOT_BUILT = """
import sys, types
sys.modules['taylorkern._cuda'] = None
sys.modules['taylorkern._core'] = None
sys.modules['taylorkern._build_info'] = types.SimpleNamespace(BUILD=dict(
    cxx_compiler='', core_built=False, core='no working C++ compiler was found', openmp=False,
    openmp_why='', isa='', isa_variants=[], cuda_built=False, cuda='not built because _core is not'))
"""


@pytest.mark.skipif("numba" not in tk.available_backends(), reason="numba is not installed")
def test_no_compiled_kernels_chooses_numba_with_one_warning_saying_why_and_how():
    code = NOT_BUILT + """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import taylorkern as tk
print(tk.backend())
print(len(caught))
print(caught[0].message)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    backend, count, message = r.stdout.splitlines()
    assert backend == "numba" and count == "1"
    assert "not built when taylorkern was installed" in message
    assert "no working C++ compiler" in message and "install a C++ compiler" in message


def test_info_says_why_the_kernels_are_missing():
    r = run_python(NOT_BUILT + "import warnings; warnings.simplefilter('ignore')\n"
                   "from taylorkern.__main__ import main; main(['info'])")
    assert r.returncode == 0, r.stderr
    assert "compiled kernels:   not built: no working C++ compiler was found" in r.stdout
    assert "CUDA module:        not built" in r.stdout


@needs_install
def test_info_reports_how_the_kernels_were_built():
    r = run_python("from taylorkern.__main__ import main; main(['info'])")
    assert r.returncode == 0, r.stderr
    build = _native.BUILD
    assert f"C++ compiler:       {build['cxx_compiler'] or 'none'}" in r.stdout
    if build["core_built"]:
        assert f"compiled kernels:   {build['isa']}" in r.stdout
        assert f"  loaded build:     {_native.loaded}" in r.stdout
        assert ("OpenMP:" if build["openmp"] else "one thread, no OpenMP") in r.stdout
        assert build["openmp_why"] in r.stdout


def _runnable_levels():
    """The x86-64 level builds installed here that this CPU runs, best first."""
    if not INSTALLED:
        return []
    flags = _native.cpu_flags()
    return [level for level in _native.LEVELS if level in _native.BUILD.get("isa_variants", ())
            and all(f in flags for f in _native.LEVELS[level])]


@needs_install
def test_the_best_build_the_cpu_runs_is_loaded():
    if not _native.BUILD["core_built"]:
        pytest.skip("the compiled kernels were not built in this installation")
    expected = (_runnable_levels() or [_native.BASELINE])[0]
    assert _native.loaded == expected
    assert tk.backend() in ("cpp", "cuda")


PROBE_HESSIAN = """
import numpy as np, taylorkern as tk
from taylorkern import _native, _core
net = tk.MLP([5, 12, 7, 3], activation="tanh", loss="ce")
rng = np.random.default_rng(1)
theta = net.init(seed=2); X = rng.standard_normal((64, 5)); y = rng.integers(0, 3, 64)
with tk.use_backend("cpp"):
    H = net.hessian(theta, X, y); L = net.loss_and_grad(theta, X, y)[1]
np.save(OUT, np.concatenate([H.ravel(), L]))
print(_native.loaded, _core.__file__)
"""


@needs_install
@pytest.mark.parametrize("level", [_native.BASELINE, *_native.LEVELS])
def test_each_level_build_matches_the_reference(level, tmp_path):
    """TAYLORKERN_ISA picks a build by name; each one the CPU runs computes the same Hessian
    and gradient as the reference (float64, 1e-10)."""
    if not _native.BUILD["core_built"]:
        pytest.skip("the compiled kernels were not built in this installation")
    if level != _native.BASELINE and level not in _runnable_levels():
        pytest.skip(f"the {level} build is not installed here or this CPU lacks its instructions")
    out = tmp_path / "r.npy"
    r = run_python(f"OUT = {str(out)!r}\n" + PROBE_HESSIAN, TAYLORKERN_ISA=level)
    assert r.returncode == 0, r.stderr
    loaded, path = r.stdout.split()
    assert loaded == level
    assert (f"_isa{os.sep}{level}{os.sep}" in path) == (level != _native.BASELINE)
    net = tk.MLP([5, 12, 7, 3], activation="tanh", loss="ce")
    rng = np.random.default_rng(1)
    theta = net.init(seed=2)
    X, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64)
    with tk.use_backend("reference"):
        expected = np.concatenate([net.hessian(theta, X, y).ravel(), net.loss_and_grad(theta, X, y)[1]])
    got = np.load(out)
    assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max()


@needs_install
def test_unknown_isa_name_is_an_error():
    r = run_python("import taylorkern", TAYLORKERN_ISA="pentium")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "TAYLORKERN_ISA" in r.stderr and "x86-64-v3" in r.stderr


@needs_install
def test_a_level_build_that_fails_to_load_falls_back_with_a_warning(tmp_path):
    """A broken x86-64 level build (here: a file that is not a shared library) costs a warning
    naming the error and the next older build, never the import."""
    levels = _runnable_levels()
    if not levels:
        pytest.skip("no x86-64 level build that this CPU runs is installed")
    copy = tmp_path / "taylorkern"
    shutil.copytree(Path(tk.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    broken = next((copy / "_isa" / levels[0]).glob("_core*"))
    broken.write_bytes(b"not a shared library")
    code = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import taylorkern as tk
from taylorkern import _native
print(tk.backend(), _native.loaded)
print([str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])
"""
    r = run_python(code, root=str(tmp_path))
    assert r.returncode == 0, r.stderr
    first, messages = r.stdout.splitlines()
    expected = (levels[1:] or [_native.BASELINE])[0]
    assert first.split() == [tk.backend(), expected]
    assert f"the {levels[0]} build of the compiled kernels did not load" in messages
    assert "ImportError" in messages
