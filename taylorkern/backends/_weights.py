"""Sample weights as the compiled kernels take them (``_core`` and ``_cuda``: csrc/net.hpp,
Targets): shared by the cpp and cuda backends."""

from __future__ import annotations

import numpy as np


def kernel_weights(net, sample_weight, reduction):
    """(mean, w) for the kernels: without weights (None, the old path) the reduction's flag and
    None; with them, reduction "mean" folded into the weights (w / sum w, in float64, then in the
    network's dtype) and the kernels summing (csrc/net.hpp, Targets)."""
    if sample_weight is None:
        return reduction == "mean", None
    w = np.asarray(sample_weight, np.float64)
    if reduction == "mean":
        w = w / w.sum()
    return False, np.ascontiguousarray(w, dtype=net.dtype)
