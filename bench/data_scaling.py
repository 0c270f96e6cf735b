"""Data objects against the in-memory path: streaming (tk.Batches) and a 2-worker Dask
LocalCluster (taylorkern.distributed.ShardedData).  A script, not a pytest suite: each part
prints its numbers; bench/DATA_NOTES.md records one run.

    python bench/data_scaling.py memmap      # 10^7-row memmap streamed: peak RSS (a subprocess)
    python bench/data_scaling.py stream      # Batches chunk sizes against in-memory, N = 10^6
                                             # (the GGN at N = 10^5)
    python bench/data_scaling.py cluster     # rows/s and per-call / per-LM-iteration overhead,
                                             # N = 10^4 .. --rows ([10,32,32,1]; the GGN up to
                                             # --ggn-rows, 10^5 by default)

Timings are the best of ``--repeat`` calls (default 3); the per-call and per-LM-iteration
overheads are given as the median and range of ``--repeat`` runs (the LM one per iteration, without the
run's start-up: lm_marginal_overhead).  The in-memory path runs in this
process on 2 threads; the cluster has 2 worker processes of 1 thread each, on the same cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def spread(times):
    """'median (min-max)' of times in seconds, as ms."""
    t = np.asarray(times) * 1e3
    return f"{np.median(t):.1f} ms ({t.min():.1f}-{t.max():.1f})"


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def problem(N, sizes=(10, 32, 32, 1), seed=0):
    import taylorkern as tk
    net = tk.MLP(list(sizes), activation="tanh", loss="mse")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, sizes[0]))
    Y = np.tanh(X[:, :1] - X[:, 1:2])
    return net, net.init(seed=1), X, Y


# ------------------------------------------------------------------ memmap peak RSS
def _memmap_child(path, n, chunk, kind):
    import taylorkern as tk
    d0 = 10
    X = np.memmap(os.path.join(path, "X.f64"), dtype=np.float64, mode="r", shape=(n, d0))
    Y = np.memmap(os.path.join(path, "Y.f64"), dtype=np.float64, mode="r", shape=(n, 1))
    net = tk.MLP([d0, 8, 1], activation="tanh", loss="mse")
    theta = net.init(seed=1)
    data = tk.Batches(X, Y, chunk_size=chunk)
    anon0, peak = _status("RssAnon"), [0]
    done = threading.Event()

    def sample():  # the anonymous (not file-backed) resident memory, every 5 ms
        while not done.wait(0.005):
            peak[0] = max(peak[0], _status("RssAnon"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    t = time.perf_counter()
    out = getattr(net, kind)(theta, data)
    dt = time.perf_counter() - t
    done.set()
    sampler.join()
    size = sum(np.asarray(o).nbytes for o in (out if isinstance(out, tuple) else [out]))
    print(f"{kind:14s} P={net.num_params} N={n:.0e} chunk={chunk}: {dt:6.2f} s, {n / dt:.3g} rows/s; "
          f"peak anonymous RSS {peak[0] / 1024:.0f} MiB (before the call {anon0 / 1024:.0f} MiB), "
          f"peak RSS with the memmap's pages {_status('VmHWM') / 1024:.0f} MiB; one chunk "
          f"{chunk * (d0 + 1) * 8 / 2**20:.1f} MiB, the data {n * (d0 + 1) * 8 / 2**20:.0f} MiB, "
          f"the result {size / 2**10:.1f} KiB", flush=True)


def _status(field):
    """A field of /proc/self/status in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memmap(args):
    n, d0 = args.rows, 10
    with tempfile.TemporaryDirectory(dir=args.tmp) as path:
        X = np.memmap(os.path.join(path, "X.f64"), dtype=np.float64, mode="w+", shape=(n, d0))
        Y = np.memmap(os.path.join(path, "Y.f64"), dtype=np.float64, mode="w+", shape=(n, 1))
        rng = np.random.default_rng(0)
        for a in range(0, n, 1 << 20):
            b = min(n, a + (1 << 20))
            X[a:b] = rng.standard_normal((b - a, d0))
            Y[a:b, 0] = np.tanh(X[a:b, 0] - X[a:b, 1])
        X.flush()
        Y.flush()
        del X, Y
        for kind in ("loss_and_grad", "ggn"):
            # a fresh process per call, so that its peak RSS is that call's
            subprocess.run([sys.executable, __file__, "_memmap_child", path, str(n), str(args.chunk), kind],
                           check=True)


# ------------------------------------------------------------------ streaming
def stream(args):
    import taylorkern as tk
    tk.set_num_threads(2)
    N = args.rows
    net, theta, X, Y = problem(N, sizes=(10, 32, 32, 1))
    for kind in ("loss_and_grad", "ggn"):
        repeat = args.repeat if kind == "loss_and_grad" else 1
        n = N if kind == "loss_and_grad" else N // 10  # the GGN costs ~P^2 per row
        x, y = X[:n], Y[:n]
        t_mem = best(lambda: getattr(net, kind)(theta, x, y), repeat)
        print(f"{kind:14s} N={n:.0e} in memory: {t_mem * 1e3:9.1f} ms", flush=True)
        for chunk in (10_000, 100_000):
            data = tk.Batches(x, y, chunk_size=chunk)
            t = best(lambda: getattr(net, kind)(theta, data), repeat)
            print(f"{kind:14s} N={n:.0e} Batches chunk={chunk:>7d}: {t * 1e3:9.1f} ms "
                  f"({t / t_mem:.2f}x)", flush=True)


# ------------------------------------------------------------------ cluster
def lm_marginal_overhead(client, sizes, repeat):
    """The LM iteration's overhead above the shard compute, per iteration and without the run's
    start-up: runs of 5 and 15 iterations (no stopping test can end them early) on 64 rows in
    two 32-row shards and in process, the difference of the two run times over the 10
    iterations between them; ``repeat`` such pairs, in process and cluster alternating."""
    import taylorkern as tk
    from taylorkern.distributed import ShardedData
    net, theta, X, Y = problem(64, sizes)
    data = ShardedData(X, Y, client=client, chunk_size=32)
    net.loss_and_grad(theta, data)
    per = {"in process": [], "cluster": []}
    for _ in range(repeat):
        for name, d in (("in process", (X, Y)), ("cluster", (data,))):
            times, nits = [], []
            for max_iter in (5, 15):
                t = time.perf_counter()
                r = tk.minimize(net, theta, *d, method="lm", max_iter=max_iter, ftol=0, gtol=0, xtol=0,
                                space="parameters")
                times.append(time.perf_counter() - t)
                nits.append(r.nit)
            per[name].append((times[1] - times[0]) / (nits[1] - nits[0]))
    diff = np.subtract(per["cluster"], per["in process"])
    print(f"lm overhead (P={net.num_params}, 64 rows in 2 shards, per iteration between the 5th and 15th, "
          f"{repeat} runs): in process {spread(per['in process'])}, cluster {spread(per['cluster'])}, "
          f"difference per pair {spread(diff)}", flush=True)


def cluster(args):
    from distributed import Client, LocalCluster

    import taylorkern as tk
    from taylorkern.distributed import ShardedData
    tk.set_num_threads(2)
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as lc, \
            Client(lc) as client:
        # per-call overhead: 2 shards of 1 row, nothing to compute
        for sizes in ((10, 16, 1), (10, 32, 32, 1)):
            net, theta, X, Y = problem(2, sizes)
            tiny = ShardedData(X, Y, client=client, chunk_size=1)
            for kind in ("loss_and_grad", "loss_grad_ggn"):
                getattr(net, kind)(theta, tiny)
                ts = []
                for _ in range(max(20, args.repeat)):
                    t = time.perf_counter()
                    getattr(net, kind)(theta, tiny)
                    ts.append(time.perf_counter() - t)
                t_mem = best(lambda: getattr(net, kind)(theta, X, Y), 20)
                print(f"overhead {kind:14s} (P={net.num_params}, 2 one-row shards): median {spread(ts)} "
                      f"(in process, best {t_mem * 1e3:.2f} ms)", flush=True)
            lm_marginal_overhead(client, sizes, args.repeat)
        for N in (n for n in (10_000, 100_000, 1_000_000) if n <= args.rows):
            net, theta, X, Y = problem(N)
            data = ShardedData(X, Y, client=client)  # one shard per worker
            for kind in ("loss_and_grad", "loss_grad_ggn") if N <= args.ggn_rows else ("loss_and_grad",):
                repeat = args.repeat if kind == "loss_and_grad" else 1
                getattr(net, kind)(theta, data) if repeat > 1 else None
                t_mem = best(lambda: getattr(net, kind)(theta, X, Y), repeat)
                t_dist = best(lambda: getattr(net, kind)(theta, data), repeat)
                print(f"{kind:14s} N={N:.0e}: in process {t_mem * 1e3:9.1f} ms ({N / t_mem:.3g} rows/s), "
                      f"cluster {t_dist * 1e3:9.1f} ms ({N / t_dist:.3g} rows/s), {t_dist / t_mem:.2f}x",
                      flush=True)
            if N <= args.lm_rows:
                # in process and on the cluster alternately, args.repeat runs each: the difference
                # of each pair is the overhead under the same load
                per = {"in process": [], "cluster": []}
                runs = {}
                for _ in range(args.repeat):
                    for name, d in (("in process", (X, Y)), ("cluster", (data,))):
                        t = time.perf_counter()
                        r = tk.minimize(net, theta, *d, method="lm", max_iter=5)
                        per[name].append((time.perf_counter() - t) / max(r.nit, 1))
                        runs[name] = r
                r_mem, r_dist = runs["in process"], runs["cluster"]
                diff = np.subtract(per["cluster"], per["in process"])
                print(f"lm N={N:.0e}: {r_mem.nit} iterations ({r_mem.nfev} evaluations), {args.repeat} runs; "
                      f"per iteration in process {spread(per['in process'])}, cluster {spread(per['cluster'])}; "
                      f"overhead (cluster - in process, per pair) {spread(diff)}; max |theta difference| "
                      f"{np.max(np.abs(r_mem.theta - r_dist.theta)):.2g}", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_memmap_child":
        _memmap_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("memmap", "stream", "cluster"))
    ap.add_argument("--rows", type=int, default=None, help="memmap: 10^7; stream: 10^6; cluster: the largest N (10^6)")
    ap.add_argument("--chunk", type=int, default=100_000, help="memmap: rows per chunk")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lm-rows", type=int, default=10_000, help="cluster: the largest N of the LM runs")
    ap.add_argument("--ggn-rows", type=int, default=100_000,
                    help="cluster: the largest N timed with the GGN (10^6 is minutes per call)")
    ap.add_argument("--tmp", default=None, help="memmap: directory for the files (default: TMPDIR)")
    args = ap.parse_args()
    if args.rows is None:
        args.rows = 10_000_000 if args.part == "memmap" else 1_000_000
    {"memmap": memmap, "stream": stream, "cluster": cluster}[args.part](args)


if __name__ == "__main__":
    main()
