"""What tests/test_fork.py runs in child processes.  A module of its own, importing only numpy
and taylorkern, so that spawn and forkserver children load little to unpickle it."""

from __future__ import annotations

import threading
import traceback

import numpy as np

import taylorkern as tk

QUANTITIES = ("loss_and_grad", "hessian", "ggn_diag", "hvp")


def compute(backend, spec):
    """Each of QUANTITIES for spec = (sizes, activation, loss, theta, X, Y, V) on ``backend``."""
    sizes, act, loss, theta, X, Y, V = spec
    net = tk.MLP(sizes, activation=act, loss=loss)
    with tk.use_backend(backend):
        return {"loss_and_grad": np.append(*net.loss_and_grad(theta, X, Y)),
                "hessian": net.hessian(theta, X, Y),
                "ggn_diag": net.ggn_diag(theta, X, Y),
                "hvp": net.hvp(theta, X, Y, V)}


def threads_seen():
    """(threads a kernel called here would use, the team a kernel region opened here gets,
    whether this thread forked this process); the last two None without the compiled module."""
    try:
        from taylorkern import _core
    except ImportError:
        return tk.get_num_threads(), None, None
    return tk.get_num_threads(), _core._team_size(), _core.pool_lost_in_fork()


def run(backend, spec, threads=None, from_thread=False):
    """compute() (in a new thread of this process when from_thread) after set_num_threads(threads),
    with what threads_seen() says in the thread that computes."""
    if threads is not None:
        tk.set_num_threads(threads)
    if not from_thread:
        return {"results": compute(backend, spec), "threads": threads_seen()}
    out = {}
    t = threading.Thread(target=lambda: out.update(run(backend, spec)))
    t.start()
    t.join()
    return out


def put(queue, fn, *args):
    """queue.put(fn(*args)), or ("error", the traceback) if it raised."""
    try:
        queue.put(fn(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        queue.put(("error", traceback.format_exc()))


def run_in_grandchild(backend, spec, timeout):
    """run() in a child forked from this (already forked) process."""
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=put, args=(q, run, backend, spec))
    p.start()
    try:
        return q.get(timeout=timeout)
    except queue_module.Empty:
        return ("error", f"the grandchild did not answer within {timeout} s")
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
