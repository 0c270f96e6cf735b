"""Worst relative error of every backend against the numpy reference, per loss, over random
networks, with and without sample weights, including saturated outputs (logits of +-40 for
bce, log-rates up to 20 for poisson, residuals far past loss_scale for huber and soft_l1).

    python bench/loss_errors.py [--cases 12] [--dtype float64]

For each loss and backend it prints the largest max|a - b| / max|b| over the quantities
(loss_and_grad, hvp, ggn_vp, hessian, ggn, their blocks and diagonals) and the cases, and
which quantity gave it.  The reference itself is checked against finite differences by the
test suite (tests/test_reference.py, tests/test_losses.py).
"""

from __future__ import annotations

import argparse

import numpy as np
from build_ab import flat  # bench/, beside this script

import taylorkern as tk

QUANTITIES = ("loss_and_grad", "hvp", "ggn_vp", "hessian", "ggn", "hessian_blocks", "ggn_blocks",
              "hessian_diag", "ggn_diag")


def targets(loss, rng, N, k):
    if loss == "ce":
        return rng.integers(0, k, N)
    if loss == "bce":
        return (rng.random((N, k)) < 0.5).astype(float) * rng.choice([1.0, 0.7], (N, k))
    if loss == "poisson":
        return rng.poisson(3.0, (N, k)).astype(float)
    return 3.0 * rng.standard_normal((N, k))


def case(loss, rng, saturated):
    depth = rng.integers(1, 4)
    sizes = [int(v) for v in rng.integers(1, 7, depth + 1)]
    if loss == "ce":
        sizes[-1] = max(sizes[-1], 2)
    if loss == "gaussian":  # a mean and a log-variance per target
        sizes[-1] = 2 * max(sizes[-1] // 2, 1)
    net = tk.MLP(sizes, activation=str(rng.choice(["tanh", "gelu", "softplus", "relu"])), loss=loss,
                 loss_scale=0.5 if loss in ("huber", "soft_l1") else 1.0)
    theta = net.init(seed=int(rng.integers(1 << 30))) + 0.3 * rng.standard_normal(net.num_params)
    if saturated:  # push the outputs far out through the last bias
        shift = {"bce": 40.0, "ce": 40.0, "poisson": 20.0}.get(loss, 30.0)
        theta[net.num_params - sizes[-1]:] += shift * rng.choice([-1.0, 1.0], sizes[-1])
        if loss == "poisson":
            theta[net.num_params - sizes[-1]:] = np.abs(theta[net.num_params - sizes[-1]:])
    N = int(rng.integers(1, 40))
    X = rng.standard_normal((N, sizes[0]))
    k = sizes[-1] // 2 if loss == "gaussian" else sizes[-1]
    return net, theta, X, targets(loss, rng, N, k), rng.standard_normal(net.num_params)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    args = ap.parse_args()
    backends = [b for b in tk.available_backends() if b != "reference"]
    rng = np.random.default_rng(0)
    print(f"{args.cases} random networks per loss (a third saturated), each with and without weights, "
          f"{args.dtype}; backends {', '.join(backends)}")
    for loss in tk.LOSSES:
        worst = {b: (0.0, "") for b in backends}
        for i in range(args.cases):
            net, theta, X, Y, V = case(loss, rng, saturated=i % 3 == 2)
            net = tk.MLP(net.sizes, activation=net.activations, loss=loss, loss_scale=net.loss_scale,
                         dtype=np.dtype(args.dtype))
            theta, X, V = (a.astype(args.dtype) for a in (theta, X, V))
            weights = rng.random(X.shape[0])
            weights[0] = 0.0 if len(weights) > 1 else weights[0]
            for w in (None, weights):
                for q in QUANTITIES:
                    extra = (V,) if q in ("hvp", "ggn_vp") else ()
                    with tk.use_backend("reference"):
                        want = flat(getattr(net, q)(theta, X, Y, *extra, sample_weight=w))
                    scale = max(np.max(np.abs(want)), np.finfo(np.float64).tiny)
                    for b in backends:
                        with tk.use_backend(b):
                            got = flat(getattr(net, q)(theta, X, Y, *extra, sample_weight=w))
                        err = float(np.max(np.abs(got - want)) / scale)
                        if not err <= worst[b][0]:
                            worst[b] = (err, f"{q}{' weighted' if w is not None else ''} on {net.sizes}")
        print(f"{loss:8s} " + "   ".join(f"{b}: {e:.1e} ({where})" for b, (e, where) in worst.items()))


if __name__ == "__main__":
    main()
