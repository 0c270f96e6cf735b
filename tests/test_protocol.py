"""Every backend module that loads here follows taylorkern.backends.Backend: each member is
present and callable with the protocol's parameters, in order, and any parameter it adds
has a default (the MLP never passes one)."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

import taylorkern as tk
from taylorkern import _dispatch
from taylorkern.backends import Backend, ReportsProductMemory


def _functions(protocol):
    """{name: function} of the protocol's members (its own, in definition order)."""
    return {n: f for n, f in vars(protocol).items() if not n.startswith("_") and inspect.isfunction(f)}


BACKEND_FUNCTIONS = _functions(Backend)


def _module(name):
    try:
        return importlib.import_module(f"taylorkern.backends.{name}")
    except ImportError as exc:
        pytest.skip(f"backend {name!r} does not load here: {exc}")


def _check_signature(impl, spec, where):
    """impl's parameters start with spec's (less ``self``), by name and kind, and any
    further ones have defaults."""
    want = list(inspect.signature(spec).parameters.values())[1:]
    have = list(inspect.signature(impl).parameters.values())
    assert [p.name for p in have[:len(want)]] == [p.name for p in want], \
        f"{where}: parameters {[p.name for p in have]}, protocol {[p.name for p in want]}"
    for p in have[:len(want)]:
        assert p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD), f"{where}: {p.name} is {p.kind}"
        assert p.default is p.empty, f"{where}: protocol parameter {p.name} has a default"
    for p in have[len(want):]:
        assert p.default is not p.empty, f"{where}: extra parameter {p.name} has no default"


def test_protocol_lists_what_the_mlp_calls():
    """The protocol's functions are exactly the MLP's curvature calls, which dispatch to them."""
    calls = set(BACKEND_FUNCTIONS)
    assert calls == {"predict", "loss", "loss_and_grad", "hvp", "ggn_vp", "jacobian", "hessian", "ggn",
                     "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag"}
    for n in calls:
        assert callable(getattr(tk.MLP, n)), n


@pytest.mark.parametrize("name", _dispatch.ORDER)
def test_backend_module_follows_the_protocol(name):
    mod = _module(name)
    assert isinstance(mod, Backend), f"{name}: members missing"
    assert mod.name == name
    for fn_name, spec in BACKEND_FUNCTIONS.items():
        impl = getattr(mod, fn_name)
        assert callable(impl), f"{name}.{fn_name} is not callable"
        _check_signature(impl, spec, f"{name}.{fn_name}")
    if isinstance(mod, ReportsProductMemory):
        _check_signature(mod.product_memory_values, ReportsProductMemory.product_memory_values,
                         f"{name}.product_memory_values")


@pytest.mark.parametrize("name", _dispatch.ORDER)
def test_backend_results_keep_the_shape_contract(name):
    """A small mse and ce problem through the module directly (inputs as the MLP hands them
    over): the shapes and dtypes the protocol's docstrings promise, as fresh arrays."""
    mod = _module(name)
    rng = np.random.default_rng(0)
    for loss, dtype in (("mse", np.float64), ("ce", np.float32)):
        net = tk.MLP([3, 4, 2], "tanh", loss, dtype=dtype)
        P, N, m, k = net.num_params, 5, 2, 2
        theta = net.init(seed=1).astype(dtype)
        X = rng.standard_normal((N, 3)).astype(dtype)
        Y = rng.integers(0, k, N).astype(np.int64) if loss == "ce" else rng.standard_normal((N, k)).astype(dtype)
        V = rng.standard_normal((P, m)).astype(dtype)
        shapes = {"predict": (N, k), "jacobian": (N * k, P), "hvp": (P, m), "ggn_vp": (P, m),
                  "hessian": (P, P), "ggn": (P, P), "hessian_diag": (P,), "ggn_diag": (P,)}
        for fn_name, shape in shapes.items():
            if fn_name in ("predict", "jacobian"):
                out = getattr(mod, fn_name)(net, theta, X)
            elif fn_name in ("hvp", "ggn_vp"):
                out = getattr(mod, fn_name)(net, theta, X, Y, V, "mean")
            else:
                out = getattr(mod, fn_name)(net, theta, X, Y, "sum")
            assert isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype, \
                f"{name}.{fn_name} {loss}: {type(out).__name__} {getattr(out, 'shape', None)}"
            assert not np.shares_memory(out, theta) and out.flags.writeable
        value = mod.loss(net, theta, X, Y, "mean")
        assert np.ndim(value) == 0 and np.isfinite(value)
        value2, grad = mod.loss_and_grad(net, theta, X, Y, "mean")
        assert np.ndim(value2) == 0 and grad.shape == (P,) and grad.dtype == dtype
        for fn_name in ("hessian_blocks", "ggn_blocks"):
            blocks = getattr(mod, fn_name)(net, theta, X, Y, "mean")
            assert [B.shape for B in blocks] == [(p, p) for p in net.layer_sizes]
            assert all(B.dtype == dtype for B in blocks)
