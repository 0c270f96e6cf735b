"""Argument checks shared by the applications (spectrum, prune, taylor, init_report), the
optimizers and the scipy / scikit-learn adaptors.

Every check raises before any computation, with a message that starts with the argument's
name (``"k: expected an integer >= 1, got 0"``), and returns the value in its canonical form
(a Python int or float, an index in range).  The MLP checks its own inputs (theta, X, Y, V,
reduction) in taylorkern.model; the checks here are for the options around those calls.
"""

from __future__ import annotations

import math
import numbers

from . import model as _model
from .model import MLP, TooLargeError
from .model import _fmt_bytes as format_bytes

CURVATURES = ("hessian", "ggn")


def check_net(net) -> MLP:
    """``net`` itself, when it is a taylorkern.MLP (TypeError otherwise)."""
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a taylorkern.MLP, got {type(net).__name__}")
    return net


def choice(name, v, choices):
    """``v`` when it is one of ``choices``."""
    if v not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {v!r}")
    return v


def check_curvature(curvature) -> str:
    """The curvature a call works on: ``"hessian"`` or ``"ggn"``."""
    return choice("curvature", curvature, CURVATURES)


def integer(name, v, lo, none=False):
    """``int(v)`` for an integer (not a bool) ``v >= lo``; None passes when ``none``."""
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def real(name, v, lo=None, hi=None, lo_open=False, hi_open=False, none=False):
    """``float(v)`` for a finite real (not a bool) within the bounds given: ``lo <= v`` (``<``
    when ``lo_open``) and ``v <= hi`` (``<`` when ``hi_open``); None passes when ``none``."""
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name}: expected a number {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name}: expected a number {'<' if hi_open else '<='} {hi:g}, got {v!r}")
    return float(v)


def boolean(name, v) -> bool:
    """``v`` when it is True or False (not merely truthy)."""
    if not isinstance(v, bool):
        raise ValueError(f"{name}: expected True or False, got {v!r}")  # noqa: TRY004 - as every option
    return v


def available_memory() -> float:
    """Bytes of memory free now, as the MLP's own memory checks see it (looked up at each call,
    so that a test replacing ``taylorkern.model._available_memory_bytes`` reaches every check)."""
    return float(_model._available_memory_bytes())


def check_memory(what: str, n_float64: float, hint: str = "") -> None:
    """Raise TooLargeError when ``n_float64`` float64 values would not fit in free memory;
    ``what`` names the request, ``hint`` says what to do instead."""
    need = 8.0 * float(n_float64)
    have = available_memory()
    if need > have:
        raise TooLargeError(f"{what} would need {format_bytes(need)} but only {format_bytes(have)} of "
                            f"memory is available{'; ' + hint if hint else ''}")
