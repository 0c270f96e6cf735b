"""The benchmark configurations (float64 by default, X standard normal, seeded)."""

from __future__ import annotations

import numpy as np

# name: (sizes, activation, loss, N)
CONFIGS = {
    "seed": ([2, 8, 1], "relu", "mse", 100),
    "small": ([10, 32, 32, 1], "tanh", "mse", 1000),
    "medium": ([20, 64, 64, 1], "tanh", "mse", 2000),
    "classif": ([64, 64, 10], "tanh", "ce", 1000),
    "wide": ([784, 128, 10], "relu", "ce", 512),
}

# Quantities, in the order tables show them. "hvp_V32" is H @ V for V of shape (P, 32).
QUANTITIES = ("loss_and_grad", "hvp", "ggn_vp", "hvp_V32", "jacobian", "ggn", "hessian",
              "ggn_blocks", "hessian_blocks", "ggn_diag", "hessian_diag")


class Problem:
    """One configuration's network, parameters, data and directions (all seeded).

    Attributes: name, sizes, activation, loss, N, dtype, net (a taylorkern.MLP), theta (P,),
    X (N, d0), Y ((N, dL) for mse, int labels (N,) for ce), v (P,), V (P, 32).
    """

    def __init__(self, name, dtype=np.float64):
        import taylorkern as tk

        if name not in CONFIGS:
            raise ValueError(f"problem: unknown configuration {name!r}; expected one of {list(CONFIGS)}")
        self.name = name
        self.sizes, self.activation, self.loss, self.N = CONFIGS[name]
        self.dtype = np.dtype(dtype)
        self.net = tk.MLP(self.sizes, activation=self.activation, loss=self.loss, dtype=self.dtype)
        self.theta = self.net.init(seed=0)
        rng = np.random.default_rng(0)
        d0, dL = self.sizes[0], self.sizes[-1]
        self.X = rng.standard_normal((self.N, d0)).astype(self.dtype)
        if self.loss == "mse":
            self.Y = rng.standard_normal((self.N, dL)).astype(self.dtype)
        else:
            self.Y = rng.integers(0, dL, self.N)
        self.v = rng.standard_normal(self.net.num_params).astype(self.dtype)
        self.V = rng.standard_normal((self.net.num_params, 32)).astype(self.dtype)

    @property
    def P(self):
        return self.net.num_params

    def call(self, quantity):
        """A zero-argument callable computing ``quantity`` with the active taylorkern backend."""
        net, th, X, Y = self.net, self.theta, self.X, self.Y
        if quantity == "loss_and_grad":
            return lambda: net.loss_and_grad(th, X, Y)
        if quantity in ("hvp", "ggn_vp"):
            f, v = getattr(net, quantity), self.v
            return lambda: f(th, X, Y, v)
        if quantity == "hvp_V32":
            return lambda: net.hvp(th, X, Y, self.V)
        if quantity == "jacobian":
            return lambda: net.jacobian(th, X)
        if quantity in QUANTITIES:
            f = getattr(net, quantity)
            return lambda: f(th, X, Y)
        raise ValueError(f"quantity: unknown {quantity!r}; expected one of {QUANTITIES}")

    def __repr__(self):
        return (f"Problem({self.name}: {self.sizes} {self.activation} {self.loss} N={self.N} "
                f"P={self.P} {self.dtype.name})")
