"""Backend choice: what is available, switching for a block or the process, the errors for
unknown names, and the import-time choice (TAYLORKERN_BACKEND, fallback warning), the latter
in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_problem

import taylorkern as tk
from taylorkern.backends import reference as ref

# The directory holding the package this process imported, so that subprocesses import the
# same one (a source checkout or an installed copy alike).
PACKAGE_ROOT = str(Path(tk.__file__).resolve().parent.parent)


def run_python(code, env_backend=None, warnings_as_errors=False):
    env = {k: v for k, v in os.environ.items() if k != "TAYLORKERN_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    if env_backend is not None:
        env["TAYLORKERN_BACKEND"] = env_backend
    args = [sys.executable] + (["-W", "error"] if warnings_as_errors else []) + ["-c", code]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=PACKAGE_ROOT)


@pytest.fixture
def restore_backend():
    name = tk.backend()
    yield name
    tk.set_backend(name)


def test_available_backends_lists_reference_last():
    names = tk.available_backends()
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    assert len(set(names)) == len(names)
    assert names[-1] == "reference"  # the slow oracle: always there, never preferred
    assert tk.backend() in names


def test_use_backend_switches_for_the_block_and_restores():
    before = tk.backend()
    for name in tk.available_backends():
        with tk.use_backend(name) as mod:
            assert tk.backend() == name and mod.name == name
            with tk.use_backend("reference"):
                assert tk.backend() == "reference"
            assert tk.backend() == name
        assert tk.backend() == before


def test_use_backend_restores_after_an_exception():
    before = tk.backend()
    with pytest.raises(KeyError):
        with tk.use_backend("reference"):
            raise KeyError("boom")
    assert tk.backend() == before


@pytest.mark.parametrize("bad", ["bogus", "Reference", "", None, 3])
def test_unknown_backend_names_are_refused_listing_the_available(bad, restore_backend):
    for switch in (tk.set_backend, lambda n: tk.use_backend(n).__enter__()):
        with pytest.raises(ValueError) as info:
            switch(bad)
        message = str(info.value)
        assert repr(bad) in message or str(bad) in message
        for name in tk.available_backends():
            assert name in message
        assert tk.backend() == restore_backend


def test_set_backend_applies_to_existing_networks(restore_backend):
    """The backend is looked up per call: a network built before the switch uses the new one."""
    p = make_problem([3, 4, 2], "tanh", "ce", N=5)
    tk.set_backend("reference")
    assert tk.backend() == "reference"
    got = p.net.hessian(p.theta, p.X, p.Y)
    assert np.array_equal(got, ref.hessian(p.net, p.theta, p.X, p.Y, "mean"))
    for name in tk.available_backends():
        tk.set_backend(name)
        assert tk.backend() == name


# ----------------------------------------------------------------------------- import time
PRINT_CHOICE = "import taylorkern as tk; print(tk.backend()); print(','.join(tk.available_backends()))"


@pytest.mark.parametrize("name", tk.available_backends())
def test_env_var_forces_the_backend_without_warning(name):
    r = run_python(PRINT_CHOICE, env_backend=name, warnings_as_errors=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == name


def test_env_var_with_unknown_name_fails_the_import():
    r = run_python(PRINT_CHOICE, env_backend="no-such-backend")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "no-such-backend" in r.stderr
    assert "reference" in r.stderr  # the message lists what is available
    assert r.stdout == ""


def test_default_choice_is_the_fastest_available():
    """... without a warning: a machine without a GPU (no "cuda") is the usual case."""
    r = run_python(PRINT_CHOICE, warnings_as_errors=True)
    assert r.returncode == 0, r.stderr
    chosen, available = r.stdout.split()
    assert available.split(",") == tk.available_backends()
    assert chosen == available.split(",")[0]


# Simulates a machine without a GPU backend (where one is present it would be chosen first).
WITHOUT_GPU = "import sys; sys.modules['taylorkern._cuda'] = None; "
# ... and where the compiled modules did not build or do not load.
WITHOUT_CPP = WITHOUT_GPU + ("import sys; sys.modules['taylorkern._core'] = None; "
                             "sys.modules['taylorkern.backends.cpp'] = None; ")
# ... and where numba is not installed either.
WITHOUT_NUMBA = "import sys; sys.modules['numba'] = None; "

# A meta-path hook that makes ``import taylorkern._core`` fail the way a broken build does
# (the extension is found but cannot be loaded), before anything of taylorkern is imported.
BROKEN_CORE = """
import sys
class _BrokenCore:
    def find_spec(self, name, path=None, target=None):
        if name == "taylorkern._core":
            raise ImportError("libgomp.so.1: cannot open shared object file (simulated)")
        return None
sys.meta_path.insert(0, _BrokenCore())
"""


def test_fallback_to_reference_warns_naming_the_missing_backends():
    r = run_python(WITHOUT_CPP + WITHOUT_NUMBA + PRINT_CHOICE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["reference", "reference"]
    assert "RuntimeWarning" in r.stderr and "cpp" in r.stderr and "numba" in r.stderr


@pytest.mark.skipif("numba" not in tk.available_backends(), reason="numba is not installed")
def test_missing_core_falls_back_to_numba_with_one_warning_naming_the_error():
    code = WITHOUT_GPU + BROKEN_CORE + """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import taylorkern as tk
    import taylorkern  # a second import warns no more
from taylorkern import _dispatch
print(tk.backend(), ",".join(tk.available_backends()))
print(len(caught), caught[0].category.__name__, str(caught[0].message))
print(_dispatch.why())
import numpy as np
net = tk.MLP([2, 3, 1]); theta = net.init(seed=0)
print(net.predict(theta, np.ones((4, 2))).shape)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["numba", "numba,reference"]
    count, category, message = lines[1].split(" ", 2)
    assert count == "1" and category == "RuntimeWarning"
    assert "'numba'" in message and "cpp" in message and "libgomp.so.1" in message
    assert lines[2].startswith("numba: fastest available") and "libgomp.so.1" in lines[2]
    assert lines[3] == "(4, 1)"  # and the numba backend computes


def test_import_compiles_nothing_and_loads_numba_only_when_chosen():
    """numba is imported at ``import taylorkern`` only when it is the backend chosen (then
    without any kernel module: those are imported, and compiled, on the first call)."""
    probe = ("import sys, taylorkern as tk; "
             "print(tk.backend(), 'numba' in sys.modules, "
             "any(m.startswith('taylorkern.backends._numba') for m in sys.modules))")
    r = run_python(probe)
    assert r.returncode == 0, r.stderr
    chosen, numba_loaded, kernels_loaded = r.stdout.split()
    assert kernels_loaded == "False"
    assert numba_loaded == str(chosen == "numba")
    if "numba" in tk.available_backends():
        r = run_python(WITHOUT_GPU + BROKEN_CORE + probe)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["numba", "True", "False"]


def test_forcing_a_backend_that_does_not_load_is_an_error_not_a_fallback():
    r = run_python(WITHOUT_CPP + PRINT_CHOICE, env_backend="cpp")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "cpp" in r.stderr and "reference" in r.stderr


def test_compiled_backend_is_present():
    """The package builds its C++ kernels on install; a missing _core means the install or
    the import path is broken (e.g. tests importing an unbuilt source tree), and the rest of
    the suite would silently exercise only the reference.  Set TAYLORKERN_ALLOW_NO_CPP=1 to
    run deliberately without it."""
    if os.environ.get("TAYLORKERN_ALLOW_NO_CPP") == "1":
        pytest.skip("TAYLORKERN_ALLOW_NO_CPP=1: running without the compiled module by request")
    from taylorkern import _dispatch
    assert "cpp" in tk.available_backends(), _dispatch._why_not.get("cpp")


def test_console_command_runs_the_imported_package():
    """The README's main job is ``taylorkern demo``: the console command must run this same
    (installed) package from any directory, a source checkout's root included, where
    ``python -m taylorkern`` would import the uncompiled sources first."""
    exe = os.path.join(os.path.dirname(sys.executable), "taylorkern")
    if not os.path.exists(exe):
        assert "site-packages" not in tk.__file__, f"taylorkern is installed but {exe} is missing"
        pytest.skip("taylorkern is imported from a development tree, not installed: no console script")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([exe, "info"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"active backend:     {tk.backend()}" in r.stdout, r.stdout + r.stderr
    assert "RuntimeWarning" not in r.stderr, r.stderr
