"""GPU benchmarks of the cuda backend (run by bench/gpu_check.sh after the build and tests).

Times the problems of issue 7's table on the GPU, float64, each the median of several calls
after warm-up (every call returns only when its work is done):

  [32,128,128,1] tanh mse, N=8192:   ggn, hessian (full)
  [784,1024,1024,10] relu ce, N=8192: loss_and_grad, hvp, ggn_vp (one direction)

with X, Y resident on the GPU (DeviceData) and theta on the GPU; "device" leaves the result on
the GPU (what a GPU framework's timing means), "numpy" includes the copy back to the host.
PyTorch baselines (torch.func / eager, same card, float64) when torch sees the GPU, and the
cpp backend on this machine's CPU; then a short crossover ladder (cpp vs cuda through the
plain numpy protocol) to calibrate taylorkern.backends.cuda.CROSSOVER.

    python3 bench/gpu_check.py [--quick] [--no-peers] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import taylorkern as tk
from taylorkern.backends import cpp, cuda


def timeit(fn, repeat=5, warmup=2, budget_s=20.0):
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def problem(sizes, act, loss, N, seed=0):
    net = tk.MLP(sizes, activation=act, loss=loss)
    rng = np.random.default_rng(seed)
    theta = net.init(seed=seed)
    X = rng.standard_normal((N, sizes[0]))
    Y = rng.integers(0, sizes[-1], size=N) if loss == "ce" else rng.standard_normal((N, sizes[-1]))
    V = rng.standard_normal(net.num_params)
    return net, theta, X, Y, V


def fmt(t):
    if t is None:
        return "-"
    return f"{t * 1e3:9.2f} ms" if t < 10 else f"{t:9.2f} s "


# ----------------------------------------------------------------------------- torch peers
def torch_peers(sizes, act, loss, theta, X, Y, V, quantities):
    try:
        import torch
        import torch.func  # noqa: F401
    except Exception:
        return {}
    if not torch.cuda.is_available():
        return {}
    dev = torch.device("cuda")
    th = torch.as_tensor(theta, device=dev)
    Xt = torch.as_tensor(X, device=dev)
    Yt = torch.as_tensor(Y, device=dev)
    Vt = torch.as_tensor(V, device=dev)
    shapes = list(zip(sizes[:-1], sizes[1:]))
    actf = {"tanh": torch.tanh, "relu": torch.relu}[act]

    def forward(t, x):
        o, a = 0, x
        for l, (i, j) in enumerate(shapes):
            W = t[o:o + i * j].view(i, j)
            b = t[o + i * j:o + (i + 1) * j]
            o += (i + 1) * j
            a = a @ W + b
            if l + 1 < len(shapes):
                a = actf(a)
        return a

    def lossf(t):
        f = forward(t, Xt)
        if loss == "mse":
            return torch.mean((f - Yt) ** 2)
        return torch.nn.functional.cross_entropy(f, Yt)

    def sync(fn):
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run

    out = {}
    g = torch.func.grad(lossf)
    if "loss_and_grad" in quantities:
        def eager():
            t = th.detach().requires_grad_(True)
            v = lossf(t)
            v.backward()
            return v, t.grad
        out["loss_and_grad"] = ("torch eager", timeit(sync(eager)))
    if "hvp" in quantities:
        out["hvp"] = ("torch.func jvp(grad)", timeit(sync(lambda: torch.func.jvp(g, (th,), (Vt,))[1])))
    if "ggn_vp" in quantities:
        def ggn_vp():
            f, jv = torch.func.jvp(lambda t: forward(t, Xt), (th,), (Vt,))
            if loss == "mse":
                hjv = 2.0 / f.numel() * jv
            else:
                p = torch.softmax(f, dim=1)
                hjv = (p * jv - p * (p * jv).sum(1, keepdim=True)) / f.shape[0]
            _, vjp = torch.func.vjp(lambda t: forward(t, Xt), th)
            return vjp(hjv)[0]
        out["ggn_vp"] = ("torch.func jvp+vjp", timeit(sync(ggn_vp)))
    if "ggn" in quantities:
        def ggn():  # per-sample Jacobians (N, k, P), then J^T H J for mse with k = 1
            J = torch.func.vmap(torch.func.jacrev(lambda t, x: forward(t, x[None])[0]), in_dims=(None, 0))(th, Xt)
            J = J.reshape(-1, th.numel())
            return (2.0 / J.shape[0]) * (J.T @ J)
        try:
            out["ggn"] = ("torch.func vmap(jacrev), JtJ", timeit(sync(ggn), repeat=3, warmup=1))
        except Exception as exc:  # out of memory and the like
            out["ggn"] = (f"torch.func failed: {type(exc).__name__}", None)
        torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------- kernel profile
def profile(calls):
    """Per-kernel GPU time of each call (torch.profiler sees every kernel of the process through
    CUPTI, ours and cuBLAS's), and the card's float64 GEMM rate on the shapes of the
    [784,1024,1024,10] problem, to place the remaining time."""
    try:
        import torch
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile
    except Exception as exc:
        print(f"(no kernel profile: {exc})")
        return {}
    if not torch.cuda.is_available():
        return {}
    out = {}
    for q, call in calls.items():
        call()
        torch.cuda.synchronize()
        with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                call()
            torch.cuda.synchronize()
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if t:
                rows.append((t / 5.0, e.count // 5, e.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        print(f"\n# kernels of one {q} call (us of GPU time; total {total:.0f} us)")
        for t, n, key in rows[:14]:
            print(f"  {t:9.1f} us  x{n:<3d} {key[:110]}")
        out[q] = [{"us": t, "count": n, "kernel": key} for t, n, key in rows]
    dev = torch.device("cuda")
    print("\n# cuBLAS float64 GEMM rate on this problem's shapes (torch.matmul)")
    for m, n, k in ((8192, 1024, 784), (8192, 1024, 1024), (8192, 10, 1024), (8192, 1024, 10),
                    (784, 1024, 8192), (1024, 1024, 8192)):
        a = torch.randn(m, k, dtype=torch.float64, device=dev)
        b = torch.randn(k, n, dtype=torch.float64, device=dev)
        t = timeit(lambda: (a @ b, torch.cuda.synchronize()), repeat=20, warmup=3)
        print(f"  {m:5d} x {n:5d} x {k:5d}: {t * 1e6:8.1f} us  {2 * m * n * k / t / 1e12:6.1f} TFLOP/s")
        out[f"gemm {m}x{n}x{k}"] = t
    return out


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller crossover ladder")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny problems (checks the script itself, e.g. under csrc/cuda/emulate)")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    args = ap.parse_args()
    info = cuda.info()
    card = info.get("name", "?")
    print(f"# {card}, driver {info.get('driver_version')}, runtime {info.get('runtime_version')}, "
          f"cuBLAS {info.get('cublas_version')} ({info.get('cublas_path')}), CPU threads {tk.get_num_threads()}")
    rows, record = [], {"card": card, "info": {k: str(v) for k, v in info.items()}, "rows": [], "crossover": []}
    rep = 3 if args.quick else 7
    S = {"big_ggn": ([32, 128, 128, 1], 8192), "big_first": ([784, 1024, 1024, 10], 8192), "n_cpu": 1024}
    if args.smoke:
        S = {"big_ggn": ([8, 12, 10, 1], 64), "big_first": ([20, 24, 16, 10], 64), "n_cpu": 16}
        rep = 1

    def add(prob, q, what, t, target=None, peer=None):
        target = None if args.smoke else target
        rows.append((prob, q, what, t, target, peer))
        record["rows"].append({"problem": prob, "quantity": q, "variant": what, "seconds": t, "target_s": target,
                               "peer": peer})
        print(f"{prob:34s} {q:14s} {what:26s} {fmt(t)}" + (f"   target {fmt(target)}" if target else ""),
              flush=True)

    # --- [32,128,128,1] tanh mse, N = 8192: full GGN and Hessian
    net, theta, X, Y, V = problem(S["big_ggn"][0], "tanh", "mse", S["big_ggn"][1])
    name = f"{S['big_ggn'][0]} tanh mse N={S['big_ggn'][1]}".replace(" ", "").replace("tanhmse", " tanh mse ")
    data = cuda.DeviceData(net, X, Y)
    th = cuda._cuda.to_device(theta)
    for q, target in (("ggn", 0.080), ("hessian", 0.400)):
        add(name, q, "cuda, result on GPU", timeit(lambda: getattr(data, q)(th, out="device"), repeat=rep),
            target)
        add(name, q, "cuda, result to numpy", timeit(lambda: getattr(data, q)(th), repeat=3, warmup=1))
    if not args.no_peers:
        for q, (what, t) in torch_peers(net.sizes, "tanh", "mse", theta, X, Y, V, ("ggn",)).items():
            add(name, q, what, t, peer=True)
    n_cpu, n_all = S["n_cpu"], S["big_ggn"][1]  # the CPU's time is linear in N: time a part, scale
    cpu_t = timeit(lambda: cpp.ggn(net, theta, X[:n_cpu], Y[:n_cpu], "mean"), repeat=1, warmup=1)
    add(name, "ggn", f"cpp on this CPU (N={n_cpu}, x{n_all // n_cpu})", cpu_t * n_all / n_cpu, peer=True)
    data = None  # frees the resident copies

    # --- [784,1024,1024,10] relu ce, N = 8192: first-order and products
    net, theta, X, Y, V = problem(S["big_first"][0], "relu", "ce", S["big_first"][1])
    name = f"{S['big_first'][0]} relu ce N={S['big_first'][1]}".replace(" ", "").replace("reluce", " relu ce ")
    data = cuda.DeviceData(net, X, Y)
    th = cuda._cuda.to_device(theta)
    Vd = cuda._cuda.to_device(V)
    for q, target, call in (
            ("loss_and_grad", 0.0015, lambda o: data.loss_and_grad(th, out=o)),
            ("hvp", 0.0025, lambda o: data.hvp(th, Vd, out=o)),
            ("ggn_vp", 0.0020, lambda o: data.ggn_vp(th, Vd, out=o))):
        add(name, q, "cuda, result on GPU", timeit(lambda: call("device"), repeat=3 * rep), target)
        add(name, q, "cuda, result to numpy", timeit(lambda: call("numpy"), repeat=rep))
    add(name, "loss_and_grad", "cuda, numpy in and out", timeit(lambda: cuda.loss_and_grad(net, theta, X, Y, "mean"),
                                                                 repeat=rep))
    if not args.smoke:
        try:  # a diagnostic: its failure must not cost the rest of the run
            record["profile"] = profile({"loss_and_grad": lambda: data.loss_and_grad(th, out="device"),
                                         "hvp": lambda: data.hvp(th, Vd, out="device"),
                                         "ggn_vp": lambda: data.ggn_vp(th, Vd, out="device")})
        except Exception as exc:
            print(f"(kernel profile failed: {type(exc).__name__}: {exc})")
    if not args.no_peers:
        for q, (what, t) in torch_peers(net.sizes, "relu", "ce", theta, X, Y, V,
                                        ("loss_and_grad", "hvp", "ggn_vp")).items():
            add(name, q, what, t, peer=True)
    add(name, "loss_and_grad", "cpp on this CPU", timeit(lambda: cpp.loss_and_grad(net, theta, X, Y, "mean"),
                                                           repeat=3, warmup=1), peer=True)
    data = None  # frees the resident copies

    # --- crossover ladder: cpp vs cuda with numpy in and out (what dispatch would route)
    print("\n# crossover: cpp (CPU) vs cuda (numpy in/out), and what cuda.worth_it predicts")
    ladder = [([32, 128, 128, 1], "tanh", "mse", n, q) for n in (64, 512, 4096, 32768)
              for q in ("loss_and_grad", "hvp")]
    ladder += [(s, "tanh", "mse", n, q) for s, n in (([8, 16, 1], 256), ([16, 32, 32, 1], 1024),
                                                   ([32, 64, 64, 1], 2048), ([32, 128, 128, 1], 1024))
               for q in ("ggn", "hessian", "ggn_diag")]
    if args.quick:
        ladder = ladder[::2]
    if args.smoke:
        ladder = [([6, 8, 1], "tanh", "mse", 16, q) for q in ("loss_and_grad", "hvp", "hessian", "ggn_diag")]
    for sizes, act, loss, N, q in ladder:
        net, theta, X, Y, V = problem(sizes, act, loss, N)
        Y2 = Y if loss == "ce" else Y.reshape(N, -1)
        argv = (net, theta, X, Y2, V.reshape(-1, 1), "mean") if q == "hvp" else (net, theta, X, Y2, "mean")
        # sub-millisecond calls on 16 threads vary by 2-4x from call to call: many repeats
        t_cpu = timeit(lambda: getattr(cpp, q)(*argv), repeat=30, warmup=3, budget_s=2)
        t_gpu = timeit(lambda: getattr(cuda, q)(*argv), repeat=30, warmup=3, budget_s=2)
        pred = cuda.worth_it(net, q, N)
        ok = (t_gpu < t_cpu) == pred
        record["crossover"].append({"sizes": sizes, "N": N, "quantity": q, "cpu_s": t_cpu, "gpu_s": t_gpu,
                                    "predicted_gpu": pred})
        print(f"{str(sizes):18s} N={N:<6d} {q:14s} cpp {fmt(t_cpu)}  cuda {fmt(t_gpu)}  "
              f"faster: {'cuda' if t_gpu < t_cpu else 'cpp '}  predicted: {'cuda' if pred else 'cpp '}"
              f"{'' if ok else '   <-- rule wrong here'}", flush=True)

    print(f"\n# summary on {card} (float64; 'target' from issue 7)")
    print(f"{'problem':34s} {'quantity':14s} {'variant':26s} {'time':>12s}")
    for prob, q, what, t, target, _peer in rows:
        mark = ""
        if target and t is not None:
            mark = "  meets target" if t <= target else f"  target {fmt(target).strip()} missed"
        print(f"{prob:34s} {q:14s} {what:26s} {fmt(t)}{mark}")
    try:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"\n(written to {args.json})")
    except OSError as exc:
        print(f"(could not write {args.json}: {exc})", file=sys.stderr)


if __name__ == "__main__":
    main()
