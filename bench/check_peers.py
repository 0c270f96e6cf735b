"""Check every available peer against taylorkern's reference backend.

    PYTHONPATH=. python bench/check_peers.py [config ...] [--full] [--peers torch,jax.jit] [--dtype float64]

For each configuration (default: all of them), both dtypes, every available peer and every quantity
it offers, prints max|peer - reference| / max|reference| and fails (exit 1) above 1e-10 (float64) or
1e-4 (float32). Without --full, the dense quantities (jacobian, hessian, ggn, blocks) are checked only
on problems with P <= 2000 (seed, small); --full checks them everywhere memory allows.

The reference forms full matrices through P Hessian-vector products, which does not fit in memory
beyond P ~ 2000. There a dense peer result M is checked by its products instead: M @ V[:, :4] against
the reference hvp/ggn_vp; block l against the reference product with V[:, :4] zeroed outside layer l;
diagonals at 48 sampled entries, from the reference product with those unit vectors.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import taylorkern as tk
from taylorkern.benchmarks import peers
from taylorkern.benchmarks.problems import CONFIGS, Problem

TOL = {"float64": 1e-10, "float32": 1e-4}
DENSE = ("jacobian", "ggn", "hessian", "ggn_blocks", "hessian_blocks")
REF_FULL_MAX_P = 2000  # above this the reference's full matrices do not fit; check through products


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return np.inf
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float64).tiny))


class Reference:
    """Reference-backend values for one problem, computed once and shared by all peers."""

    def __init__(self, pb):
        self.pb, self.cache = pb, {}
        self.small = pb.P <= REF_FULL_MAX_P
        rng = np.random.default_rng(1)
        self.idx = np.sort(rng.choice(pb.P, size=min(48, pb.P), replace=False))

    def _get(self, key, fn):
        if key not in self.cache:
            with tk.use_backend("reference"):
                self.cache[key] = fn()
        return self.cache[key]

    def product(self, kind, V):  # kind: "hvp" or "ggn_vp"; V columns built from pb.V
        pb = self.pb
        return getattr(pb.net, kind)(pb.theta, pb.X, pb.Y, V)

    def compare(self, q, got):
        """(relative error, how it was compared)."""
        pb = self.pb
        if q == "loss_and_grad":
            want = self._get(q, pb.call(q))
            return max(abs(got[0] - want[0]) / abs(want[0]), rel_err(got[1], want[1])), ""
        if self.small or q not in ("hessian", "ggn", "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag"):
            want = self._get(q, pb.call(q))
            if q.endswith("_blocks"):
                if len(got) != len(want):
                    return np.inf, "wrong number of blocks"
                return max(rel_err(g, w) for g, w in zip(got, want)), ""
            return rel_err(got, want), ""
        kind = "hvp" if q.startswith("hessian") else "ggn_vp"
        V4 = pb.V[:, :4]
        if q in ("hessian", "ggn"):
            want = self._get((kind, "V4"), lambda: self.product(kind, V4))
            return rel_err(got @ V4, want), "M @ V[:, :4] vs reference product"
        if q.endswith("_blocks"):
            slices = [slice(a, b) for a, b in zip(pb.net.offsets[:-1], pb.net.offsets[1:])]

            def masked():
                Vm = np.zeros((pb.P, 4 * len(slices)), pb.dtype)
                for l, s in enumerate(slices):
                    Vm[s, 4 * l:4 * l + 4] = V4[s]
                return self.product(kind, Vm)

            want = self._get((kind, "blocks"), masked)
            if len(got) != len(slices):
                return np.inf, "wrong number of blocks"
            err = max(rel_err(B @ V4[s], want[s, 4 * l:4 * l + 4]) for l, (B, s) in enumerate(zip(got, slices)))
            return err, "B_l @ V[l, :4] vs reference product, V zero outside layer l"
        E = np.zeros((pb.P, self.idx.size), pb.dtype)
        E[self.idx, np.arange(self.idx.size)] = 1
        want = self._get((kind, "diag"), lambda: self.product(kind, E)[self.idx, np.arange(self.idx.size)])
        return rel_err(np.asarray(got)[self.idx], want), f"{self.idx.size} sampled entries vs reference product"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", default=list(CONFIGS), help=f"of {list(CONFIGS)} (default: all)")
    ap.add_argument("--full", action="store_true", help="also the dense quantities on problems with P > 2000")
    ap.add_argument("--peers", default=None, help="comma-separated subset of the available peers")
    ap.add_argument("--dtype", choices=("float64", "float32"), default=None, help="one dtype only")
    args = ap.parse_args(argv)

    for name in peers.PEERS:
        reason = peers.why_unavailable(name)
        if reason:
            print(f"# {name}: unavailable ({reason})")
    names = peers.available_peers() if args.peers is None else args.peers.split(",")
    dtypes = [args.dtype] if args.dtype else ["float64", "float32"]
    peers.PRERUN_MAX_P = 0  # every callable runs below anyway: no need to pre-run the slow ones

    failures, rows = [], 0
    print(f"{'config':8s} {'dtype':7s} {'peer':10s} {'quantity':15s} {'max rel err':>11s} {'time':>8s}  status")
    for cfg in args.configs:
        for dt in dtypes:
            pb = Problem(cfg, np.dtype(dt))
            ref = Reference(pb)
            for name in names:
                t0 = time.perf_counter()
                prep = peers.prepare(name, pb)
                t_prep = time.perf_counter() - t0
                print(f"# {cfg} {dt} {name}: prepare {t_prep:.2f} s, P={pb.P}")
                todo = [q for q in prep.calls if args.full or pb.P <= REF_FULL_MAX_P or q not in DENSE]
                if len(todo) < len(prep.calls):
                    print(f"#   not checked without --full: {', '.join(q for q in prep.calls if q not in todo)}")
                for q in todo:
                    t0 = time.perf_counter()
                    res = prep.calls[q]()
                    elapsed = time.perf_counter() - t0
                    err, how = ref.compare(q, prep.numpy(q, res))
                    ok = err <= TOL[dt]
                    rows += 1
                    if not ok:
                        failures.append(f"{cfg} {dt} {name} {q}: {err:.2e}")
                    print(f"{cfg:8s} {dt:7s} {name:10s} {q:15s} {err:11.2e} {elapsed:8.3f}  "
                          f"{'ok' if ok else 'FAIL'}{'  (' + how + ')' if how else ''}")
                    del res
                for q, why in prep.skipped.items():
                    print(f"{cfg:8s} {dt:7s} {name:10s} {q:15s} {'':11s} {'':8s}  skipped: {why}")
                del prep

    print(f"\n{rows} checks, {len(failures)} failures")
    for f in failures:
        print("  FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
