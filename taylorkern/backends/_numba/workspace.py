"""The reusable scratch of every kernel (csrc/workspace.hpp): one flat arena per concurrent
call on a network, kept in a pool by the backend (taylorkern.backends.numba), so that repeated
calls (an optimizer's iterations) allocate nothing and touch no fresh pages.

Kernels take ``(ws, top)``: ``ws`` the arena (1-D, the network's dtype), ``top`` an int64
array whose top[0] is the next free position.  ``carve`` hands out consecutive, 64-byte
aligned pieces; when the arena is too small it allocates the piece instead and still advances
top[0], so that after the call top[0] is the size the arena needs, and the backend grows it
once for the next call.  Freshly allocated tapes cost more in page faults than the forward
pass itself (glibc returns freed large blocks to the OS); with the arena, none.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def carve(ws, top, n):
    """n values of scratch (uninitialised)."""
    s = top[0]
    top[0] = s + (n + 7) // 8 * 8
    if top[0] <= ws.size:
        return ws[s:s + n]
    return np.empty(n, ws.dtype)


@njit(inline="always")
def carve_zeros(ws, top, n):
    """n values of scratch, zeroed."""
    v = carve(ws, top, n)
    for i in range(n):
        v[i] = 0
    return v
