"""No surprises for the process that hosts taylorkern (docs/threading.md): other threads' BLAS
keeps its thread count while kernels run, ``import taylorkern`` leaves os.environ alone,
threadpoolctl's limits bound the kernels, and tk.set_num_threads touches nothing but them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
import threadpoolctl
from conftest import compare, make_problem, reference

import taylorkern as tk

try:
    from taylorkern import _core
except ImportError:  # pragma: no cover - the compiled module not built
    _core = None

needs_core = pytest.mark.skipif(_core is None, reason="the compiled module is not available")


def blas_threads():
    """{library file: thread count} of every BLAS in the process."""
    return {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}


def openmp_threads():
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"]


def run_host_thread(kernels, seconds_of_kernels=3):
    """A host thread doing numpy matmuls (and reading every BLAS's thread count) while the
    calling thread runs ``kernels()`` repeatedly.  Returns (the counts it saw, the number of
    wrong products, the matmuls done)."""
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((300, 200)), rng.standard_normal((200, 250))
    expected = A @ B
    seen, wrong, done, stop = [], [0], [0], threading.Event()

    def host():
        while not stop.is_set():
            C = A @ B
            wrong[0] += not np.allclose(C, expected, rtol=1e-12, atol=1e-12)
            seen.append(blas_threads())
            done[0] += 1

    t = threading.Thread(target=host)
    t.start()
    try:
        for _ in range(seconds_of_kernels):
            kernels()
    finally:
        stop.set()
        t.join()
    return seen, wrong[0], done[0]


def kernel_calls(p):
    """Calls of every kernel family on problem p, each checked against the reference."""
    expected = {q: reference(p, q) for q in ("hessian", "ggn_diag", "hvp_multi", "loss_and_grad")}

    def run():
        with tk.use_backend("cpp"):
            got = {"hessian": p.net.hessian(p.theta, p.X, p.Y),
                   "ggn_diag": p.net.ggn_diag(p.theta, p.X, p.Y),
                   "hvp_multi": p.net.hvp(p.theta, p.X, p.Y, p.V),
                   "loss_and_grad": p.net.loss_and_grad(p.theta, p.X, p.Y)}
        for q, value in got.items():
            compare(value, expected[q], what=q)
    return run


@needs_core
def test_host_thread_keeps_its_blas_threads():
    """numpy's matmul in another thread keeps every BLAS's thread count and its results while
    the kernels run.  Where the kernels call the BLAS themselves (CPUs without AVX-512) they
    hold scipy's OpenBLAS to one thread meanwhile: then only numpy's own OpenBLAS is checked."""
    before = blas_threads()
    assert before, "threadpoolctl finds no BLAS"
    p = make_problem([10, 32, 24, 2], "tanh", "mse", N=600)
    seen, wrong, done = run_host_thread(kernel_calls(p))
    assert done > 0 and wrong == 0
    held = _core.kernels_call_blas()
    for counts in seen:
        for lib, n in counts.items():
            if held and "scipy.libs" in lib:
                continue
            assert n == before[lib], f"{lib}: {n} threads while the kernels ran, {before[lib]} before"
    assert blas_threads() == before


@needs_core
def test_blas_path_holds_and_restores():
    """With the kernels' products sent to the BLAS (as on a CPU without AVX-512): results match
    the reference while a host thread uses numpy, numpy's OpenBLAS is never touched, and
    scipy's gets its count back after the calls."""
    before = blas_threads()
    numpy_libs = [lib for lib in before if "scipy.libs" not in lib]
    p = make_problem([10, 32, 24, 2], "tanh", "mse", N=600)
    previous = _core._set_gemm_avx512(False)
    try:
        assert _core.kernels_call_blas()
        seen, wrong, done = run_host_thread(kernel_calls(p), 2)
    finally:
        _core._set_gemm_avx512(previous)
    assert done > 0 and wrong == 0
    for counts in seen:
        for lib in numpy_libs:
            assert counts[lib] == before[lib]
    assert blas_threads() == before


@needs_core
def test_threadpool_limits_bound_the_kernels(restore_threads):
    n = tk.get_num_threads()
    p = make_problem([10, 24, 24, 3], "tanh", "mse", N=600)
    with tk.use_backend("cpp"):
        full = p.net.hessian(p.theta, p.X, p.Y)
        with threadpoolctl.threadpool_limits(1):
            assert tk.get_num_threads() == 1 and _core._team_size() == 1
            compare(p.net.hessian(p.theta, p.X, p.Y), full, what="hessian under threadpool_limits(1)")
    assert tk.get_num_threads() == n and _core._team_size() == n
    tk.set_num_threads(1)
    seen = []
    t = threading.Thread(target=lambda: seen.append((tk.get_num_threads(), _core._team_size())))
    t.start()
    t.join()
    assert seen == [(1, 1)], "set_num_threads holds for every thread of the process"


@needs_core
def test_set_num_threads_touches_only_the_kernels(restore_threads):
    blas, omp = blas_threads(), openmp_threads()
    tk.set_num_threads(1)
    assert tk.get_num_threads() == 1
    assert blas_threads() == blas and openmp_threads() == omp


def python(code, **env):
    """Run ``code`` in a fresh interpreter (from a neutral directory, so the installed package is
    imported) with ``env`` added to the environment; its stdout parsed as JSON."""
    full = {**os.environ, **env}
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT"):
        if name not in env:
            full.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300,
                         cwd=tempfile.gettempdir(), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


ENVIRON_CHECK = """
import json, os
before = dict(os.environ)
import taylorkern, taylorkern._omp as omp
print(json.dumps({"same": dict(os.environ) == before, "status": omp.status}))
"""


@pytest.mark.parametrize("setting", [None, "default", "500"])
def test_import_leaves_environ_alone(setting):
    env = {} if setting is None else {"TAYLORKERN_SPINCOUNT": setting}
    out = python(ENVIRON_CHECK, **env)
    assert out["same"], "import taylorkern changed os.environ"
    if _core is not None:
        expected = {None: "GOMP_SPINCOUNT=1000", "default": "left to the user", "500": "GOMP_SPINCOUNT=500"}
        assert out["status"].startswith(expected[setting]), out["status"]


# Process CPU time over many short kernel calls separated by sleeps: libgomp's idle threads
# spin after each region for as long as the spin count says, and that spinning is CPU time.
SPIN_CHECK = """
import json, resource, time
import numpy as np, taylorkern as tk
from taylorkern import _core
net = tk.MLP([20, 64, 64, 1], activation="tanh", loss="mse")
rng = np.random.default_rng(0)
th, X, Y = net.init(seed=0), rng.standard_normal((400, 20)), rng.standard_normal((400, 1))
net.loss(th, X, Y)
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
c0 = cpu()
for _ in range(60):
    net.loss(th, X, Y)
    time.sleep(0.005)
print(json.dumps({"cpu": cpu() - c0, "threads": _core._team_size()}))
"""


@needs_core
def test_spin_count_takes_effect():
    """The spin count reaches libgomp although os.environ is restored right after the load."""
    ours = python(SPIN_CHECK)
    if ours["threads"] < 2:
        pytest.skip("one kernel thread here: no idle threads to spin")
    default = python(SPIN_CHECK, TAYLORKERN_SPINCOUNT="default")
    assert ours["cpu"] * 3 < default["cpu"], (ours, default)


@needs_core
def test_info_reports_the_spin_count(capsys):
    from taylorkern.__main__ import main
    main(["info"])
    assert "OpenMP spin count:" in capsys.readouterr().out


# The advice of docs/threading.md and `taylorkern info`: after a threaded product numpy's OpenBLAS
# workers spin (CPU time while the process sleeps) unless OPENBLAS_THREAD_TIMEOUT, read when the
# library loads, shortens their wait.  Kernel calls that follow such a product share the cores
# with that spinning (bench/blas_spin.py).
BLAS_IDLE_CHECK = """
import json, resource, time
import numpy as np
from threadpoolctl import threadpool_info
threads = max([p["num_threads"] for p in threadpool_info() if "numpy" in p["filepath"]] or [1])
A = np.random.default_rng(0).standard_normal((400, 400))
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
spent = 0.0
for _ in range(10):
    A @ A
    c0 = cpu()
    time.sleep(0.03)
    spent += cpu() - c0
print(json.dumps({"cpu": spent, "threads": threads}))
"""


def test_openblas_thread_timeout_stops_the_spinning():
    default = python(BLAS_IDLE_CHECK)
    if default["threads"] < 2:
        pytest.skip("numpy's BLAS runs one thread here: no idle workers to spin")
    if default["cpu"] < 0.05:
        pytest.skip(f"numpy's BLAS workers do not spin after a call here ({default['cpu']:.3f} s CPU while asleep)")
    short = python(BLAS_IDLE_CHECK, OPENBLAS_THREAD_TIMEOUT="20")
    assert short["cpu"] * 3 < default["cpu"], (default, short)


def test_info_reports_openblas_idle_wait(monkeypatch):
    from taylorkern.__main__ import _openblas_timeout
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.delenv("GOTO_THREAD_TIMEOUT", raising=False)
    assert "unset" in _openblas_timeout() and "OPENBLAS_THREAD_TIMEOUT=20" in _openblas_timeout()
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "18")
    assert _openblas_timeout().startswith("OPENBLAS_THREAD_TIMEOUT=18")
