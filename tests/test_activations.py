"""Every backend's hidden activations and their two derivatives, value by value, against the
same formulas in extended precision (np.longdouble), over the whole range: the tails
(saturated tanh, sigmoid's small side, gelu's left tail) must keep their digits, not only
their absolute size.  The network-level tests compare norm-wise and cannot see a tail that
lost every digit; these can.

Per value: |got - want| <= ULPS ulp of the magnitude of the formula's terms (which is |want|
except for gelu, whose derivatives cross zero and whose u = c (z + 0.044715 z^3) is itself
rounded), or <= FLOOR absolutely: past |x| = 350 in tanh(x) the kernels hold 1 - tanh at
~1e-304 (gelu: at 0) instead of its true, smaller value, which gelu's act'' multiplies by
du^2 ~ z^4.  float32 the same, in float32 ulps, past |x| = 40 and with FLOOR32.
"""

from __future__ import annotations

import numpy as np
import pytest

import taylorkern as tk

L = np.longdouble
ULPS = 8       # measured: at most 5 on the C++ kernels (either dtype), 4 on numba
FLOOR = 1e-280
FLOOR32 = 1e-30  # float32: the clamp is at x = 40, h ~ 1e-35 there

needs_long_double = pytest.mark.skipif(np.finfo(L).eps > 1e-18,
                                       reason="np.longdouble is no wider than float64 on this platform")


def _points():
    rng = np.random.default_rng(7)
    return np.concatenate([
        np.linspace(-40, 40, 20_001), rng.standard_normal(10_000) * 3, rng.standard_normal(1000) * 1e-6,
        [0.0, -0.0, 0.625, -0.625, 19.0, 20.0, 21.0, 349.0, 351.0, 700.0, -700.0, 710.0, 1e300, -1e300,
         1e-300, -1e-300, 5e-324]])


def _tail(x):
    """(1 - tanh(x/2)) / 2 = 1/(e^x + 1), x >= 0."""
    e = np.exp(-x)
    return e / (1 + e)


def expected(name, z):
    """(values, scales) for (a, d1, d2) in long double; scale = sum of |terms| of each formula."""
    zl = z.astype(L)
    if name == "identity":
        v = (zl, np.ones_like(zl), np.zeros_like(zl))
    elif name == "relu":
        v = (np.maximum(zl, 0), (zl > 0).astype(L), np.zeros_like(zl))
    elif name == "sin":
        v = (np.sin(zl), np.cos(zl), -np.sin(zl))
    elif name == "tanh":
        t, h = np.tanh(zl), _tail(2 * np.abs(zl))
        d1 = 4 * h * (1 - h)
        v = (t, d1, -2 * t * d1)
    elif name in ("sigmoid", "softplus"):
        e = np.exp(-np.abs(zl))
        s = np.where(zl >= 0, 1 / (1 + e), e / (1 + e))
        ds = e / (1 + e) ** 2
        if name == "sigmoid":
            v = (s, ds, -ds * np.sign(zl) * np.tanh(np.abs(zl) / 2))
        else:
            v = (np.maximum(zl, 0) + np.log1p(e), s, ds)
    else:  # gelu
        c, k = np.sqrt(L(2) / L(np.pi)), L("0.044715")
        u = c * (zl + k * zl ** 3)
        du, ddu = c * (1 + 3 * k * zl ** 2), c * 6 * k * zl
        t, h = np.tanh(u), _tail(2 * np.abs(u))
        s, onep = 4 * h * (1 - h), 2 * np.where(u >= 0, 1 - h, h)
        t1, t2 = 0.5 * onep, 0.5 * zl * s * du
        u1, u2, u3 = s * du, -zl * t * s * du ** 2, 0.5 * zl * s * ddu
        # u itself is rounded in float64 (relative 2^-53): the terms, ~exp(-2|u|) in the tails,
        # carry that error times 2|u| (1700 ulp at z = -20), whatever the kernel does next.
        cond = 1 + 2 * np.abs(u)
        return ((0.5 * zl * onep, t1 + t2, u1 + u2 + u3),
                (np.abs(0.5 * zl * onep) * cond, (np.abs(t1) + np.abs(t2)) * cond,
                 (np.abs(u1) + np.abs(u2) + np.abs(u3)) * cond))
    return v, tuple(np.abs(x) for x in v)


def _cpp(name, z):
    from taylorkern import _core
    return _core._activate(_core.ACTIVATION_CODES[name], z)


def _numba(name, z):
    from taylorkern.backends._numba.activations import activate
    a, d1, d2 = z.copy(), np.empty_like(z), np.empty_like(z)
    activate(tk.ACTIVATIONS.index(name), a, d1, d2, True)
    return a, d1, d2


def _reference(name, z):
    from taylorkern.backends.reference import act
    return act(name, z)


KERNELS = {"cpp": _cpp, "numba": _numba, "reference": _reference}


@needs_long_double
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", tk.ACTIVATIONS)
@pytest.mark.parametrize("backend", sorted(KERNELS))
def test_activations_keep_their_digits(backend, name, dtype):
    if backend not in tk.available_backends():
        pytest.skip(f"{backend} is not available here")
    z = _points()
    if dtype == np.float32:  # float32 is computed in float32 by cpp: its own ulps and tails
        z = z[np.abs(z) < 1e30].astype(np.float32)
    # gelu's z^3 overflows past |z| ~ 1e102 (float32: 1e12), where act' = 0 * inf
    if name == "gelu":
        z = z[np.abs(z) < (1e100 if dtype == np.float64 else 1e10)]
    got = KERNELS[backend](name, z)
    want, scale = expected(name, z)
    floor = FLOOR if dtype == np.float64 else FLOOR32
    for g, w, sc, what in zip(got, want, scale, ("act", "act'", "act''")):
        assert g.dtype == dtype
        tol = np.maximum(ULPS * np.spacing(sc.astype(dtype)).astype(np.float64), floor)
        err = np.abs(g.astype(L) - w).astype(np.float64)
        worst = np.argmax(err / tol)
        assert err[worst] <= tol[worst], (
            f"{backend} {name} {what} at z = {z[worst]!r}: {g[worst]!r}, want {float(w[worst])!r}")
    if name in ("identity", "tanh", "sin"):  # odd functions keep the sign of zero
        assert np.signbit(got[0][z == 0]).tolist() == np.signbit(z[z == 0]).tolist()


def test_code_tables_agree():
    """The activation and loss codes: one C++ definition (csrc/formulas.hpp), exported by _core and
    _cuda; numba keeps a Python copy (it runs without _core), which must match it."""
    from taylorkern import model

    tables = {}
    for mod in ("_core", "_cuda"):
        try:
            m = __import__(f"taylorkern.{mod}", fromlist=["x"])
        except ImportError:
            continue
        tables[mod] = (m.ACTIVATION_CODES, m.LOSS_CODES)
    try:
        from taylorkern.backends import numba as nb
    except ImportError:
        pass
    else:
        tables["numba"] = (nb._ACT_CODE, nb._LOSS_CODE)
    if "_core" not in tables:
        pytest.skip("taylorkern._core is not built here")
    acts, losses = tables["_core"]
    assert sorted(acts) == sorted(model.ACTIVATIONS) and sorted(losses) == sorted(model.LOSSES)
    assert sorted(acts.values()) == list(range(len(acts))) and sorted(losses.values()) == list(range(len(losses)))
    for mod, table in tables.items():
        assert table == (acts, losses), mod
