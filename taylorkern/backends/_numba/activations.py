"""Hidden activations with their first and second derivatives, fused in one pass
(csrc/formulas.hpp, same formulas and codes):

    code  name      a = act(z)                     act'(z)          act''(z)
    0     identity  z                              1                0
    1     relu      max(z, 0)                      [z > 0]          0
    2     tanh      t = tanh z                     1 - t^2          -2 t (1 - t^2)
    3     sigmoid   s = 1 / (1 + e^-z)             s (1 - s)        s (1 - s)(1 - 2s)
    4     softplus  log(1 + e^z)                   s                s (1 - s)
    5     gelu      z/2 (1 + tanh u), u = c (z + 0.044715 z^3), c = sqrt(2/pi)   (tanh form)
    6     sin       sin z                          cos z            -sin z

tanh is computed here rather than by libm: numba calls libm's scalar tanh, which does
not vectorise, where the C++ compiler vectorizes the loop, and tanh dominated the forward
pass.  ``tanh`` below is pure arithmetic that LLVM vectorizes:
Cephes' rational approximation for |x| < 0.625 and 1 - 2 / (exp(2|x|) + 1) above, with exp
from Cephes' Pade form and 2^n built from its bits.  Accuracy: within 2 ulp of numpy's tanh
(tests/test_numba_backend.py allows 4).  The tails
are carried by h = (1 - tanh|x|)/2 (``tanh_h``): 1 - t^2 = 4 h (1 - h), sigmoid's small side is
h at x = z/2, gelu's 1 + tanh u is 2h for u < 0, so that no tail loses digits
(tests/test_activations.py).  The
loops must be compiled with error_model="numpy" (common.kernel) for LLVM to vectorize them.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

from .common import kernel

GELU_C = 0.7978845608028654
GELU_K = 0.044715


@intrinsic
def _pow2(typingctx, n):
    """2.0**n from the bits, for -1022 <= n <= 1023."""
    sig = types.float64(types.int64)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        bits = builder.shl(builder.add(args[0], ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())

    return sig, codegen


@njit(inline="always")
def _exp_pos(x):
    """exp(x) for 0 <= x <= 700, about 1 ulp (Cephes exp: x = n ln2 + r, Pade form in r)."""
    n = math.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 6.93145751953125e-1
    r = r - n * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    qx = (((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
           + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0)
    return (1.0 + 2.0 * px / (qx - px)) * _pow2(np.int64(n))


@njit(inline="always")
def tanh_h(x):
    """(tanh x, h) with h = (1 - tanh|x|)/2 = 1/(exp(2|x|) + 1), both to a few ulp: h carries
    every tail (tanh' = 4 h (1 - h), sigmoid's small side, gelu's 1 + tanh); branch-free so
    that loops over it vectorize.  Past |x| = 350 h stays at its value there (~1e-304)."""
    ax = abs(x)
    z = x * x
    small = x * (1.0 + z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                             - 1.61468768441708447952e3)
                            / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                               + 4.84406305325125486048e3)))  # x * (...) keeps tanh(-0) = -0
    h = 1.0 / (_exp_pos(2.0 * min(ax, 350.0)) + 1.0)
    big = 1.0 - 2.0 * h
    big = big if x >= 0 else -big
    return (small if ax < 0.625 else big), h


@njit(inline="always")
def tanh(x):
    """tanh of a float64."""
    return tanh_h(x)[0]


@kernel
def tanh_array(z, out):
    """out = tanh(z) elementwise (for the accuracy test)."""
    for i in range(z.size):
        out[i] = tanh(z[i])


@kernel
def activate(f, z, d1, d2, second):
    """In place over the views z, d1, d2 (same length): z <- act(z), d1 = act'(z), and
    d2 = act''(z) when ``second`` (else d2 is empty and untouched)."""
    n = z.size
    if f == 0:
        for i in range(n):
            d1[i] = 1
        if second:
            for i in range(n):
                d2[i] = 0
    elif f == 1:
        for i in range(n):
            v = z[i]
            z[i] = v if v > 0 else 0
            d1[i] = 1 if v > 0 else 0
        if second:
            for i in range(n):
                d2[i] = 0
    elif f == 2:
        for i in range(n):
            t, h = tanh_h(z[i])
            s = 4 * (h - h * h)
            z[i] = t
            d1[i] = s
            if second:
                d2[i] = -2 * t * s
    elif f == 3 or f == 4:
        for i in range(n):
            v = z[i]
            t, h = tanh_h(0.5 * v)
            s = 1 - h if v >= 0 else h
            ds = h - h * h
            if f == 3:
                z[i] = s
                d1[i] = ds
                if second:
                    d2[i] = -ds * t
            else:
                z[i] = (v if v > 0 else 0) + math.log1p(math.exp(-abs(v)))
                d1[i] = s
                if second:
                    d2[i] = ds
    elif f == 5:
        for i in range(n):
            v = z[i]
            u = GELU_C * (v + GELU_K * v * v * v)
            du = GELU_C * (1 + 3 * GELU_K * v * v)
            t, h = tanh_h(u)
            h = h if abs(u) <= 350 else 0.0  # 1e-304 there, times du^2 ~ z^4: not negligible
            s = 4 * (h - h * h)
            onep = 2 * (1 - h) if u >= 0 else 2 * h  # 1 + t, exact in the left tail too
            z[i] = 0.5 * v * onep
            d1[i] = 0.5 * onep + 0.5 * v * s * du
            if second:
                d2[i] = s * du - v * t * s * du * du + 0.5 * v * s * (GELU_C * 6 * GELU_K * v)
    else:
        for i in range(n):
            v = z[i]
            sv = math.sin(v)
            z[i] = sv
            d1[i] = math.cos(v)
            if second:
                d2[i] = -sv
