"""Smoke test of an installed taylorkern (a wheel, or an install without a compiler).

Imports the package from outside any source tree, prints the backend chosen, and checks one
Hessian against the numpy reference.  `--expect NAME` fails unless NAME is the backend chosen.
"""

import argparse
import os
import sys

import numpy as np

import taylorkern as tk  # `python .ci/smoke.py` puts .ci/, not the checkout, on sys.path

parser = argparse.ArgumentParser()
parser.add_argument("--expect", help="the backend that must be chosen")
args = parser.parse_args()

print(f"taylorkern {tk.__version__} from {os.path.dirname(tk.__file__)}: backend {tk.backend()}")
if args.expect and tk.backend() != args.expect:
    sys.exit(f"smoke: expected the {args.expect!r} backend, got {tk.backend()!r} ({tk._dispatch.why()})")
net = tk.MLP([3, 6, 2], activation="tanh", loss="ce")
rng = np.random.default_rng(0)
theta, X, y = net.init(seed=0), rng.standard_normal((40, 3)), rng.integers(0, 2, 40)
H = net.hessian(theta, X, y)
with tk.use_backend("reference"):
    expected = net.hessian(theta, X, y)
err = np.abs(H - expected).max() / np.abs(expected).max()
print(f"hessian {H.shape}: relative difference from the reference {err:.1e}")
if not err <= 1e-10:
    sys.exit("smoke: the Hessian does not match the reference")
