"""numba kernels of the ``numba`` backend: the same algorithms as the C++ kernels in csrc/,
one module per csrc file stem (forward_backward, rop, jacobian, curvature, diagonal, kfac), plus
blas (row-major gemm, csrc/blas.cpp) and activations (csrc/activations.hpp).

Nothing here is imported by ``import taylorkern``: taylorkern.backends.numba imports these
modules on the first call, and each kernel compiles on its first call (cache=True: once per
machine, later processes load the compiled code from the cache next to this file).

Conventions shared by every kernel (they mirror csrc/common.hpp):

* Arrays are flat, C-contiguous 1-D buffers indexed by explicit offsets, as the C++ indexes
  pointers; so each kernel has ONE compiled specialisation per float dtype.  Inputs (theta, X,
  Y, labels, V) arrive read-only (the backend passes read-only views), so writable and
  read-only caller arrays share that specialisation.
* The network is three int64 arrays: ``d`` widths d[0..L], ``acts`` activation codes of the
  hidden layers (as in csrc/common.hpp's Act), ``off`` parameter offsets off[0..L] (off[L] = P);
  plus ``loss`` (0 mse, 1 ce).
* Per-sample tapes are indexed by *unit layer* j = 1..L (the units of width d[j]); block j of
  a tape holds N*d[j] values at o[j] with o = unit_offsets(d, N):
      A  block j < L: a_j = act(z_{j-1});   block L: the outputs F = z_{L-1}
      D1, D2  block j < L: act'(z_{j-1}), act''(z_{j-1})
      E  block j < L: e = dloss/da_j       G  block j: g = dloss/dz_{j-1}
  Layer l (0-based, as in csrc) reads unit layer l (X when l = 0) and writes unit layer l+1.
* Loops over samples run in parallel (prange) only above PAR_MIN values and with more than
  one thread (common.threaded), as the C++ does with kParallelMin; the large products are
  BLAS calls (blas.gemm) made outside the parallel regions (see taylorkern.backends.numba
  for the threading).
* Scratch comes from a reused arena (workspace.carve), never from per-call allocations.
* numba's on-disk cache is keyed on the hash of every module here (common.cache_by_directory),
  not numba's default of each function's own file: a function's cached code includes what it
  calls from other modules, which an edit or an upgrade of those would otherwise leave stale.
"""
