"""The K-FAC Laplace posterior (``structure="kfac"``) timed, optionally against another revision.

    python bench/laplace_kfac.py [--rounds 5] [--threads 1] [--clock cpu] [--against REV]

Two workloads:

* the regression workload of bench/laplace_vs_peers.py ([10, 32, 32, 1] tanh mse, P = 1,441,
  N = 2,000): fit + 10 marginal likelihoods + the predictive at 1,000 points, for "kfac" and
  "full";
* a [784, 128, 10] relu classifier (P = 101,770, random data, N = 512), where the full
  posterior does not fit (one P x P matrix alone is 83 GB): fit, optimize_prior, the probit predictive at 100 points and
  10 samples, for "kfac".

With ``--against REV`` the classifier's steps also run with taylorkern/laplace.py at that git
revision (loaded into this process as bench/laplace_overhead_ab.py does), alternating round by
round.  Medians over the rounds.

Where torch and laplace-torch are installed, the regression workload also runs with
laplace-torch's KronLaplace (its default curvlinops backend, torch held to --threads), and
``kfac_kind="mc"`` with one draw per sample.  laplace-torch factorises each layer's weight and
bias apart (tests/test_laplace_peers.py), so its numbers differ from taylorkern's "kfac" by the
W-b cross terms; the test checks the two agree once that is mapped.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from laplace_overhead_ab import load_revision
from laplace_vs_peers import PRIORS, SIGMA, problem, torch_setup

import taylorkern as tk
from taylorkern import laplace


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--against", default=None, help="git revision of taylorkern/laplace.py to compare with")
    args = ap.parse_args()
    tk.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def med(fn):
        fn()  # warm-up
        ts = []
        for _ in range(args.rounds):
            s = clock()
            fn()
            ts.append(clock() - s)
        return 1e3 * statistics.median(ts)

    print(f"{args.threads} threads, {args.clock} clock, median of {args.rounds}")
    net, theta, X, Y, Xn = problem(2000, 1000)
    for structure in ("kfac", "full"):
        def workflow(structure=structure):
            post = laplace.fit(net, theta, X, Y, structure=structure, prior_precision=1.0, sigma_noise=SIGMA)
            [post.log_marginal_likelihood(float(d), SIGMA) for d in PRIORS]
            post.predict(Xn, noise=False)
        print(f"[10,32,32,1] P = {net.num_params}, fit + 10 lml + predict(1000): {structure:22s} "
              f"{med(workflow):9.1f} ms")

    def workflow_mc():
        post = laplace.fit(net, theta, X, Y, structure="kfac", prior_precision=1.0, sigma_noise=SIGMA,
                           kfac_kind="mc", seed=0)
        [post.log_marginal_likelihood(float(d), SIGMA) for d in PRIORS]
        post.predict(Xn, noise=False)
    print(f"[10,32,32,1] P = {net.num_params}, fit + 10 lml + predict(1000): {'kfac mc, 1 draw':22s} "
          f"{med(workflow_mc):9.1f} ms")
    try:
        import laplace as laplace_torch  # laplace-torch's package name
        import torch
    except ImportError as exc:
        print(f"laplace-torch: not installed ({exc})")
    else:
        model = torch_setup(net, theta, args.threads)
        data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
        loader = torch.utils.data.DataLoader(data, batch_size=len(X))
        Xt = torch.from_numpy(Xn)

        def workflow_torch():
            la = laplace_torch.Laplace(model, "regression", subset_of_weights="all", hessian_structure="kron",
                                       sigma_noise=SIGMA, prior_precision=1.0)
            la.fit(loader)
            [float(la.log_marginal_likelihood(torch.tensor(float(d)), torch.tensor(SIGMA))) for d in PRIORS]
            la.prior_precision = 1.0
            la(Xt, pred_type="glm")
        print(f"[10,32,32,1] P = {net.num_params}, fit + 10 lml + predict(1000): {'laplace-torch Kron':22s} "
              f"{med(workflow_torch):9.1f} ms")

    rng = np.random.default_rng(0)
    wide = tk.MLP([784, 128, 10], activation="relu", loss="ce")
    th = wide.init(seed=0)
    Xw, yw = rng.standard_normal((512, 784)), rng.integers(0, 10, 512)
    mods = {"new": laplace}
    if args.against:
        mods["old"] = load_revision(args.against)
    times = {(v, s): [] for v in mods for s in ("fit", "optimize_prior", "predict(100)", "sample(10)")}
    for i in range(args.rounds + 1):
        for v in (tuple(mods) if i % 2 == 0 else tuple(reversed(mods))):
            mod = mods[v]
            s = clock()
            post = mod.fit(wide, th, Xw, yw, structure="kfac")
            t1 = clock()
            post.optimize_prior()
            t2 = clock()
            post.predict(Xw[:100], link="probit")
            t3 = clock()
            post.sample(10)
            t4 = clock()
            if i:  # the first round warms up
                steps = ("fit", "optimize_prior", "predict(100)", "sample(10)")
                for step, t in zip(steps, (t1 - s, t2 - t1, t3 - t2, t4 - t3)):
                    times[v, step].append(t)
    print(f"[784,128,10] relu ce P = {wide.num_params}, N = 512, kfac:")
    for step in ("fit", "optimize_prior", "predict(100)", "sample(10)"):
        row = "  ".join(f"{v} {1e3 * statistics.median(times[v, step]):9.1f} ms" for v in mods)
        print(f"  {step:15s} {row}")


if __name__ == "__main__":
    main()
