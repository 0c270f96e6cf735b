"""Baselines: gradient descent, heavy-ball / Nesterov momentum and Adam, full-batch or
mini-batched.

Full-batch, one iteration is one step.  With ``batch_size`` < N one iteration is one epoch
(a pass over a fresh permutation drawn from ``seed``); the loss and gradient recorded after
it are the full-data ones.  Steps and optimizer state are float64; theta is rounded to the
network's dtype after every step.
"""

from __future__ import annotations

import math

import numpy as np


def _batches(run, batch_size, rng):
    if batch_size is None or batch_size >= run.N:
        yield None
        return
    perm = rng.permutation(run.N)
    for s in range(0, run.N, batch_size):
        yield np.sort(perm[s:s + batch_size])


def first_order(run, *, kind, lr, momentum=0.0, nesterov=False, beta1=0.9, beta2=0.999, eps=1e-8,
                batch_size=None, seed=None):
    rng = np.random.default_rng(seed)
    z, f, g = run.z0, run.f0, run.g0
    run.check_finite("the initial loss or gradient", f, g)
    v = np.zeros(run.F)                  # momentum velocity / Adam first moment
    s = np.zeros(run.F)                  # Adam second moment
    t = 0                                # Adam step count
    while True:
        run.check_gtol(float(np.linalg.norm(g)))
        run.check_budget()
        z_start = z
        for batch in _batches(run, batch_size, rng):
            if batch is None:
                gb = g
            else:
                _, gb = run.loss_and_grad(z, batch)
                run.check_finite("the mini-batch gradient", gb)
            if kind == "gd":
                p = -lr * gb
            elif kind == "momentum":
                v = momentum * v - lr * gb
                p = momentum * v - lr * gb if nesterov else v
            else:  # adam
                t += 1
                v = beta1 * v + (1 - beta1) * gb
                s = beta2 * s + (1 - beta2) * gb * gb
                vhat = v / (1 - beta1 ** t)
                shat = s / (1 - beta2 ** t)
                p = -lr * vhat / (np.sqrt(shat) + eps)
            z, _ = run.step(z, p)
            if not np.isfinite(z).all():
                break
        snorm = float(np.linalg.norm(z.astype(np.float64) - z_start))
        f_new, g_new = run.loss_and_grad(z)
        run.record(z, f_new, float(np.linalg.norm(g_new)) if g_new is not None else math.nan,
                   snorm, lr)
        run.check_finite("the loss or gradient", f_new, g_new)
        run.check_ftol(f, f_new)
        run.check_xtol(z_start, snorm)
        f, g = f_new, g_new
