"""Prune a trained digits classifier to 50-90% sparsity: OBS vs OBD vs magnitude.

    python examples/prune_digits.py [--hidden 16] [--retrain-iter 50] [--plot prune_digits.png]

(with taylorkern installed, ``pip install .``, or ``PYTHONPATH=.`` from the repository root)

A 64-16-10 tanh network (softmax cross-entropy, l2 = 1e-4) is trained with L-BFGS on 1000
of scikit-learn's 8x8 digits (the other 797 held out; a synthetic 3-class problem stands in
when scikit-learn is not installed).  Its weights (not the biases) are then pruned, in one
shot, to each sparsity with each method, and the training loss and test accuracy are
reported right after pruning and after retraining the remaining parameters with L-BFGS
(``taylorkern.minimize(..., mask=kept)``; pruned weights stay exactly zero).  OBS uses the
damped GGN over all parameters, inverted once per pruning and downdated weight by weight.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import taylorkern as tk
from taylorkern import prune as tkprune

SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
METHODS = ("obd", "obs", "magnitude")


def load(seed=0):
    """(X_train, y_train, X_test, y_test): digits, or a synthetic stand-in without sklearn."""
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn not installed: using a synthetic 3-class problem")
        X = rng.standard_normal((1500, 20))
        W = rng.standard_normal((20, 3))
        y = np.argmax(np.tanh(X @ W) + 0.3 * rng.standard_normal((1500, 3)), axis=1)
    else:
        d = load_digits()
        X, y = d.data / 16.0, d.target
    idx = rng.permutation(len(X))
    tr, te = idx[:1000], idx[1000:]
    return X[tr], y[tr], X[te], y[te]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--train-iter", type=int, default=500)
    ap.add_argument("--retrain-iter", type=int, default=50, help="0: no retraining")
    ap.add_argument("--plot", default=None, metavar="PATH", help="save loss vs sparsity (needs matplotlib)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    Xtr, ytr, Xte, yte = load(args.seed)
    k = int(ytr.max()) + 1
    net = tk.MLP([Xtr.shape[1], args.hidden, k], activation="tanh", loss="ce", l2=1e-4)
    t0 = time.perf_counter()
    res = tk.minimize(net, net.init(seed=args.seed), Xtr, ytr, method="lbfgs", max_iter=args.train_iter)
    theta = res.theta

    def acc(th):
        return float(np.mean(net.predict(th, Xte).argmax(axis=1) == yte))

    n_w = int(tkprune.weight_mask(net).sum())
    print(f"{net}: P = {net.num_params} ({n_w} weights), trained with lbfgs in {time.perf_counter() - t0:.1f} s: "
          f"train loss {res.loss:.4g}, test accuracy {acc(theta):.3f}\n")

    table = {}
    for s in SPARSITIES:
        for m in METHODS:
            t1 = time.perf_counter()
            one = tkprune.prune(net, theta, Xtr, ytr, s, method=m)
            t_prune = time.perf_counter() - t1
            row = dict(loss=one.loss_final, acc=acc(one.theta), pred=one.steps[0].predicted_increase,
                       t=t_prune)
            if args.retrain_iter:
                re = tk.minimize(net, one.theta, Xtr, ytr, method="lbfgs", max_iter=args.retrain_iter,
                                 mask=one.mask)
                assert np.all(re.theta[~one.mask] == 0)
                row.update(loss_rt=re.loss, acc_rt=acc(re.theta))
            table[s, m] = row

    head = f"{'sparsity':>8} {'method':>9} {'train loss':>11} {'predicted +':>11} {'test acc':>8}"
    if args.retrain_iter:
        head += f" {'retrained loss':>14} {'test acc':>8}"
    head += f" {'prune time':>10}"
    print(f"pruned weights only; loss = training cross-entropy + l2 term (before pruning {res.loss:.4g}); "
          f"retraining: lbfgs x {args.retrain_iter}\n")
    print(head)
    for s in SPARSITIES:
        for m in METHODS:
            r = table[s, m]
            line = f"{s:>8.0%} {m:>9} {r['loss']:>11.4g} {r['pred']:>11.3g} {r['acc']:>8.3f}"
            if args.retrain_iter:
                line += f" {r['loss_rt']:>14.4g} {r['acc_rt']:>8.3f}"
            line += f" {r['t']:>9.2f}s"
            print(line)

    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot")
            return table
        fig, axes = plt.subplots(1, 2 if args.retrain_iter else 1, figsize=(10, 4), squeeze=False)
        for m in METHODS:
            axes[0, 0].semilogy(SPARSITIES, [table[s, m]["loss"] for s in SPARSITIES], "o-", label=m)
            if args.retrain_iter:
                axes[0, 1].semilogy(SPARSITIES, [table[s, m]["loss_rt"] for s in SPARSITIES], "o-", label=m)
        axes[0, 0].set_title("right after pruning")
        if args.retrain_iter:
            axes[0, 1].set_title(f"after retraining (lbfgs x {args.retrain_iter})")
        for ax in axes[0]:
            ax.set_xlabel("sparsity (fraction of weights removed)")
            ax.set_ylabel("training loss")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot saved to {args.plot}")
    return table


if __name__ == "__main__":
    main()
