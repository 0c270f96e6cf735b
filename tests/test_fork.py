"""Child processes: every CPU backend in children started by fork, spawn and forkserver and in a
fork-based Pool, after the parent has run threaded kernels (libgomp's pool, numba's threads
and OpenBLAS's started).  A child must answer within TIMEOUT seconds (a hang fails the test;
the child is killed) with the parent's results.

libgomp cannot restart its pool in a forked child: the cpp backend opens the forking thread's
parallel regions on a helper thread instead (csrc/threads.cpp), so the child keeps the
parent's thread count; docs/threading.md.
"""

from __future__ import annotations

import multiprocessing as mp
import queue

import fork_child
import numpy as np
import pytest
from conftest import BACKENDS, make_problem

import taylorkern as tk

TIMEOUT = 240  # seconds; a spawn child imports numpy, taylorkern (and numba) on a busy machine

# Python >= 3.12 warns when a process with threads forks; the threads here are the point.
pytestmark = pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")

# Large enough that the compiled kernels split the samples over threads (common.hpp).
SIZES, ACT, LOSS, N = [10, 24, 24, 3], "tanh", "mse", 600


@pytest.fixture(scope="module")
def spec():
    p = make_problem(SIZES, ACT, LOSS, N=N, m=2)
    return (SIZES, ACT, LOSS, p.theta, p.X, p.Y, p.V)


@pytest.fixture(params=BACKENDS)
def parent(request, spec):
    """(backend, its problem, the parent's results), computed with threads running before any
    child starts.  The reference starts no threads of its own and forms the Hessian from P
    products: it gets the problem's first samples only."""
    if request.param == "cuda":
        pytest.skip("cuda: a CUDA context does not survive fork (a CPU-backend test)")
    if request.param == "reference":
        sizes, act, loss, theta, X, Y, V = spec
        spec = (sizes, act, loss, theta, X[:50], Y[:50], V)
    return request.param, spec, fork_child.run(request.param, spec)


def in_child(method, fn, *args):
    """fn(*args) in a child started by ``method``; fails (killing it) after TIMEOUT seconds."""
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=fork_child.put, args=(q, fn, *args))
    p.start()
    try:
        out = q.get(timeout=TIMEOUT)
        p.join(60)
        assert not p.is_alive(), f"the {method} child answered but did not exit"
    except queue.Empty:
        pytest.fail(f"the {method} child did not answer within {TIMEOUT} s (hung)")
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    return check_answer(out)


def check_answer(out):
    if isinstance(out, tuple) and out[0] == "error":
        pytest.fail(f"the child raised:\n{out[1]}")
    return out


def same_results(child, parent_results, what):
    for q in fork_child.QUANTITIES:
        np.testing.assert_allclose(child[q], parent_results[q], rtol=1e-12, atol=0,
                                   err_msg=f"{what}: {q} differs from the parent's")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_process_matches_parent(parent, method):
    backend, spec, expected = parent
    out = in_child(method, fork_child.run, backend, spec)
    same_results(out["results"], expected["results"], f"{backend} in a {method} child")
    threads, team, lost = out["threads"]
    assert threads == expected["threads"][0], "the child runs on the parent's thread count"
    if team is not None:
        assert team == threads, f"a region in the {method} child got {team} threads, not {threads}"
        assert lost == (method == "fork")


def test_fork_pool(parent):
    backend, spec, expected = parent
    pool = mp.get_context("fork").Pool(2)
    try:
        jobs = [pool.apply_async(fork_child.run, (backend, spec)) for _ in range(4)]
        for job in jobs:
            try:
                out = job.get(timeout=TIMEOUT)
            except mp.TimeoutError:
                pytest.fail(f"a fork Pool worker did not answer within {TIMEOUT} s (hung)")
            same_results(out["results"], expected["results"], f"{backend} in a fork Pool worker")
    finally:
        pool.terminate()
        pool.join()


def test_forked_child_threads(spec):
    """In a forked child, set_num_threads gives what it asks for (up to the OpenMP limit), and
    kernels called from a thread created in the child, or from a grandchild, work too."""
    if "cpp" not in BACKENDS:
        pytest.skip("the compiled module is not available")
    expected = fork_child.run("cpp", spec)
    n = expected["threads"][0]
    for threads in (1, n):
        out = in_child("fork", fork_child.run, "cpp", spec, threads)
        same_results(out["results"], expected["results"], f"forked child, set_num_threads({threads})")
        assert out["threads"] == (threads, threads, True)
    out = in_child("fork", fork_child.run, "cpp", spec, None, True)
    same_results(out["results"], expected["results"], "a thread of a forked child")
    assert out["threads"] == (n, n, False), "a thread created in the child has a pool of its own"
    out = in_child("fork", fork_child.run_in_grandchild, "cpp", spec, TIMEOUT // 2)
    same_results(out["results"], expected["results"], "a forked child's forked child")
    assert out["threads"] == (n, n, True)


def test_parent_unaffected_by_children(spec):
    """The parent's own pool still works after children were forked from it."""
    if "cpp" not in BACKENDS:
        pytest.skip("the compiled module is not available")
    from taylorkern import _core
    before = fork_child.run("cpp", spec)
    in_child("fork", fork_child.threads_seen)
    after = fork_child.run("cpp", spec)
    same_results(after["results"], before["results"], "the parent after a fork")
    assert not _core.pool_lost_in_fork()
    assert after["threads"][:2] == (tk.get_num_threads(),) * 2
