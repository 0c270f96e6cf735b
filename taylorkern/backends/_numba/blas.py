"""Row-major matrix products on top of the BLAS numba itself uses (scipy's cython_blas).

The port of csrc/blas.cpp's gemm: C (M x N) = alpha op(A) op(B) + beta C on flat buffers with
offsets and leading dimensions.  The call goes through ``numba_xxgemm``, the helper that
numba's own np.dot calls (a symbol of numba's helper library that looks up scipy's dgemm /
sgemm once per process): a symbol resolved when the compiled code is loaded, so the kernels
stay cacheable (a ctypes pointer would be a "dynamic global" and disable the cache).  The
column-major BLAS computes C^T = op(B)^T op(A)^T, i.e. the row-major product, with the
operands swapped.  Products too small for a BLAS call to pay off run as plain loops.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .common import kernel, ro

BLAS_MIN = 4096        # below this many multiply-adds, loops beat a BLAS call (as blas.cpp)
INT_MAX = 2 ** 31 - 1  # the Fortran BLAS takes 32-bit sizes


@intrinsic
def _xxgemm(typingctx, ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc):
    if not all(isinstance(x, types.Array) for x in (A, B, C)):
        return None
    dt = C.dtype
    if dt not in (types.float32, types.float64) or A.dtype != dt or B.dtype != dt:
        return None
    ip = types.intp
    sig = types.int32(types.boolean, types.boolean, ip, ip, ip, dt, A, ip, ip, B, ip, ip, dt, C,
                      ip, ip)

    def codegen(context, builder, sig, args):
        ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc = args
        char, voidp, intp = ir.IntType(8), ir.IntType(8).as_pointer(), context.get_value_type(ip)
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, voidp, voidp,
                                                intp, voidp, intp, voidp, voidp, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def ptr(ty, val, offset):
            ary = context.make_array(ty)(context, builder, val)
            return builder.bitcast(builder.gep(ary.data, [offset]), voidp)

        def op(flag):
            return builder.select(flag, ir.Constant(char, ord("t")), ir.Constant(char, ord("n")))

        kind = ir.Constant(char, ord("d" if dt == types.float64 else "s"))
        alpha_p = builder.bitcast(cgutils.alloca_once_value(builder, alpha), voidp)
        beta_p = builder.bitcast(cgutils.alloca_once_value(builder, beta), voidp)
        return builder.call(fn, (kind, op(tb), op(ta), N, M, K, alpha_p, ptr(sig.args[9], B, ob),
                                 ldb, ptr(sig.args[6], A, oa), lda, beta_p,
                                 ptr(sig.args[13], C, oc), ldc))

    return sig, codegen


@kernel
def _gemm_loops(ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc):
    for i in range(M):
        c = oc + i * ldc
        if beta == 0:
            for j in range(N):
                C[c + j] = 0
        elif beta != 1:
            for j in range(N):
                C[c + j] *= beta
        if not tb:
            for p in range(K):
                a = alpha * (A[oa + p * lda + i] if ta else A[oa + i * lda + p])
                b = ob + p * ldb
                for j in range(N):
                    C[c + j] += a * B[b + j]
        else:
            for j in range(N):
                b = ob + j * ldb
                s = 0.0
                if not ta:
                    for p in range(K):
                        s += A[oa + i * lda + p] * B[b + p]
                else:
                    for p in range(K):
                        s += A[oa + p * lda + i] * B[b + p]
                C[c + j] += alpha * s


@kernel
def _gemm(ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc):
    """C[oc:] (M x N, row stride ldc) = alpha op(A) op(B) + beta C; op(A) is M x K (A is
    K x M when ta), op(B) is K x N (B is N x K when tb); A, B, C flat with offsets."""
    if M <= 0 or N <= 0:
        return
    # Operand extents (cheap, and a wrong offset would otherwise write outside a buffer).
    ra, ca = (K, M) if ta else (M, K)
    rb, cb = (N, K) if tb else (K, N)
    if (oa < 0 or ob < 0 or oc < 0 or lda < ca or ldb < cb or ldc < N
            or (K > 0 and (oa + (ra - 1) * lda + ca > A.size or ob + (rb - 1) * ldb + cb > B.size))
            or oc + (M - 1) * ldc + N > C.size):
        raise IndexError("taylorkern: gemm operand out of bounds (a bug in the numba kernels)")
    if (K <= 0 or M * N * K < BLAS_MIN
            or max(max(M, N), max(K, max(lda, max(ldb, ldc)))) > INT_MAX):
        _gemm_loops(ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc)
        return
    if _xxgemm(ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc) != 0:
        raise RuntimeError("taylorkern: BLAS gemm from scipy.linalg.cython_blas failed")


@njit(inline="always")
def gemm(ta, tb, M, N, K, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc):
    """_gemm with A and B typed read-only and no literal arguments: one compiled _gemm per
    dtype (numba compiles a callee once per distinct argument type, and a constant argument
    such as False or 0 has a type of its own, Literal[bool](False))."""
    i = np.int64
    _gemm(bool(ta), bool(tb), i(M), i(N), i(K), float(alpha), ro(A), i(oa), i(lda), ro(B), i(ob), i(ldb),
          float(beta), C, i(oc), i(ldc))
