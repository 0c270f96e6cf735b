"""A/B of the signal polling of long calls (csrc/interrupt.hpp): a copy of taylorkern._core built
before it against the installed one, alternating in one process; medians.

    mkdir -p /tmp/base/old && touch /tmp/base/old/__init__.py && cp <old _core*.so> /tmp/base/old/
    python bench/interrupt_ab.py /tmp/base 3000

Two builds of _core coexist in one process because the installed one binds Net module-locally
(csrc/bindings.cpp); the old copy may be any build.
"""

import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
import old._core as A

import taylorkern._core as B

sizes, acts = [10, 32, 32, 1], [2, 2]  # tanh, mse
rng = np.random.default_rng(0)
na, nb = A.Net(sizes, acts, 0), B.Net(sizes, acts, 0)
P = nb.num_params
th = rng.standard_normal(P) * 0.3
X, Y, V = rng.standard_normal((1000, 10)), rng.standard_normal((1000, 1)), rng.standard_normal((P, 1))
calls = {"loss_and_grad": lambda m, n: m.loss_and_grad(n, th, X, Y, True),
         "hvp": lambda m, n: m.hvp(n, th, X, Y, V, True)}
for name, f in calls.items():
    for m, n in ((A, na), (B, nb)):
        for _ in range(50):
            f(m, n)
    ta, tb = [], []
    for r in range(int(sys.argv[2])):
        for m, n, out in ((A, na, ta), (B, nb, tb)) if r % 2 else ((B, nb, tb), (A, na, ta)):
            t = time.perf_counter()
            f(m, n)
            out.append(time.perf_counter() - t)
    ma, mb = np.median(ta), np.median(tb)
    print(f"{name}: before {ma * 1e6:.1f} us, after {mb * 1e6:.1f} us, after/before {mb / ma:.3f}")
