"""Every backend present, forced in turn, against the float64 reference and against the
identities every correct implementation satisfies.

test_matches_reference compares every quantity of every backend with the float64 reference:
each compiled backend in both dtypes, the reference itself in float32 only (its float64 run
is the very computation it would be compared with; test_reference.py checks the reference
by finite differences and plain numpy instead).  The identity tests (symmetry, PSD,
blocks/diagonals as slices, J^T H_out J, products, sum vs mean, dtypes, determinism,
threads) are checks of the reference too, and of any compiled backend.
"""

from __future__ import annotations

import dataclasses
import functools
import threading

import numpy as np
import pytest
from conftest import (
    BACKENDS,
    DATA_QUANTITIES,
    QUANTITIES,
    Problem,
    bitwise_equal,
    cases,
    compare,
    compute,
    make_problem,
    output_hessians,
    reference,
    rel_err,
    rtol_for,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import taylorkern as tk

DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]
REDUCTIONS = ["mean", "sum"]
L2_ON = 0.25
# Tests of paths particular to the compiled backends run the reference in float32 only: in
# float64 it would be compared with the very computation it is.
BACKEND_DTYPES = [pytest.param(b, d, id=f"{b}-{i}") for b in BACKENDS
                  for d, i in ((np.float64, "f64"), (np.float32, "f32"))
                  if not (b == "reference" and d == np.float64)]
COMPILED = [b for b in BACKENDS if b != "reference"]


def _reductions(q):
    return (None,) if q in ("predict", "jacobian") else REDUCTIONS


def _compute(p, q, r):
    return compute(p, q) if r is None else compute(p, q, r)


@functools.cache
def _reference_results(case, dtype, l2):
    """Every quantity (both reductions) of a case from the float64 reference, computed once
    and shared by the backends compared with it."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=l2, dtype=dtype)
    with tk.use_backend("reference"):
        p64 = p.astype(np.float64)
        return {(q, r): _compute(p64, q, r) for q in QUANTITIES for r in _reductions(q)}


def _matrix_params():
    """backend x case x dtype (x l2 on a subset).

    Backends receive the reduction and scale by 1/N themselves, in every kernel path
    (csrc: sample_weight), so every case runs both reductions on every backend.  l2 never
    reaches a backend: MLP adds it to the backend's data term (model.py, _l2_active), the same
    code whatever the backend, so l2 > 0 runs on a subset: two cases per loss, every backend,
    dtype and quantity.  The dev loop (``-m "not exhaustive"``) keeps one shape of each
    activation x loss (rotating through the shapes: one layer, four layers, one output, N = 1,
    the largest, the random ones) and the l2 subset; the other two shapes are ``exhaustive``."""
    out = []
    all_cases = cases(per_combo=3)
    for i, case in enumerate(all_cases):
        combo, shape = divmod(i, 3)
        dev = shape == combo % 3
        act = case.values[0][1]
        l2s = [0.0, L2_ON] if dev and act in ("tanh", "gelu") else [0.0]
        for name in BACKENDS:
            for dt in DTYPES:
                if name == "reference" and dt.values[0] == np.float64:
                    continue
                for l2 in l2s:
                    marks = () if dev else (pytest.mark.exhaustive,)
                    out.append(pytest.param(name, case.values[0], dt.values[0], l2, marks=marks,
                                            id=f"{name}-{case.id}-{dt.id}-{'l2on' if l2 else 'l2off'}"))
    return out


@pytest.mark.parametrize("name, case, dtype, l2", _matrix_params())
def test_matches_reference(name, case, dtype, l2):
    """Every quantity, both reductions: all mismatches are reported, not just the first."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=l2, dtype=dtype)
    want = _reference_results(case, dtype, l2)
    tol = rtol_for(dtype)
    failures = []
    with tk.use_backend(name):
        for (q, r), w in want.items():
            try:
                err = rel_err(_compute(p, q, r), w)
            except AssertionError as exc:  # shape mismatch or non-finite values
                failures.append(f"{q} ({r}): {exc}")
                continue
            if not err <= tol:
                failures.append(f"{q} ({r}): relative error {err:.3g} exceeds {tol:.1g}")
    assert not failures, f"{name} against the reference:\n" + "\n".join(failures)


def _cases_with_l2():
    """cases(per_combo=1), l2 on for every other one (so for both losses and dtypes on every
    backend).  Each identity below holds for the data term alone exactly when it holds with
    model.py's l2 I added, and that addition is checked against the reference by
    test_matches_reference and against its formula by test_sum_and_mean_reductions."""
    out = []
    for i, c in enumerate(cases(per_combo=1)):  # activation-major, losses alternating
        on = (i + i // 2) % 2
        out.append(pytest.param(c.values[0], L2_ON if on else 0.0, id=f"{c.id}-{'l2on' if on else 'l2off'}"))
    return out


CASES_L2 = _cases_with_l2()


def _data_l2(p, reduction):
    return p.net.l2 if reduction == "mean" else 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, l2", CASES_L2)
def test_symmetric_and_ggn_psd(backend, case, dtype, l2):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=l2, dtype=dtype)
    tol = rtol_for(dtype)
    for red in REDUCTIONS:
        H = p.net.hessian(p.theta, p.X, p.Y, reduction=red)
        G = p.net.ggn(p.theta, p.X, p.Y, reduction=red)
        compare(H, H.T, dtype, what=f"H symmetric ({red})")
        compare(G, G.T, dtype, what=f"G symmetric ({red})")
        G64 = G.astype(np.float64)
        ev = np.linalg.eigvalsh(0.5 * (G64 + G64.T))
        scale = max(float(np.max(np.abs(ev))), 1e-300)
        # G = J^T H_out J + l2 I with H_out PSD: every eigenvalue >= l2 (mean) or >= 0 (sum).
        assert ev.min() >= _data_l2(p, red) - tol * scale, (red, ev.min(), scale)
        for blocks in (p.net.hessian_blocks(p.theta, p.X, p.Y, reduction=red),
                       p.net.ggn_blocks(p.theta, p.X, p.Y, reduction=red)):
            for B in blocks:
                compare(B, B.T, dtype, what="block symmetric")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, l2", CASES_L2)
def test_blocks_and_diagonals_are_slices(backend, case, dtype, l2):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=l2, dtype=dtype)
    net = p.net
    for red in REDUCTIONS:
        for full, blocks, diag in (("hessian", "hessian_blocks", "hessian_diag"),
                                   ("ggn", "ggn_blocks", "ggn_diag")):
            M = getattr(net, full)(p.theta, p.X, p.Y, reduction=red)
            Bs = getattr(net, blocks)(p.theta, p.X, p.Y, reduction=red)
            d = getattr(net, diag)(p.theta, p.X, p.Y, reduction=red)
            assert isinstance(Bs, list) and len(Bs) == net.num_layers
            for l, B in enumerate(Bs):
                s = slice(net.offsets[l], net.offsets[l + 1])
                assert B.shape == (net.layer_sizes[l],) * 2
                compare(B, M[s, s], dtype, what=f"{blocks}[{l}] ({red})")
            compare(d, np.diagonal(M), dtype, what=f"{diag} ({red})")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, l2", CASES_L2)
def test_ggn_is_jacobian_outer_product(backend, case, dtype, l2):
    """G == J^T H_out J (+ l2 I) with H_out written here from the loss definitions."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=l2, dtype=dtype)
    net = p.net
    k, P = net.num_outputs, net.num_params
    J = net.jacobian(p.theta, p.X).astype(np.float64).reshape(N, k, P)
    F = net.predict(p.theta, p.X)
    for red in REDUCTIONS:
        C = output_hessians(p, F, red)
        want = np.einsum("ncp,ncd,ndq->pq", J, C, J, optimize=True) + _data_l2(p, red) * np.eye(P)
        compare(net.ggn(p.theta, p.X, p.Y, reduction=red), want, dtype, what=f"ggn ({red})")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases(per_combo=1))
def test_products_with_many_directions(backend, case, dtype):
    """V of shape (P, m) gives the m single products, and equals the full matrix times V."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.25, dtype=dtype)
    net = p.net
    for red in REDUCTIONS:
        for prod, full in (("hvp", "hessian"), ("ggn_vp", "ggn")):
            many = getattr(net, prod)(p.theta, p.X, p.Y, p.V, reduction=red)
            assert many.shape == p.V.shape
            for c in range(p.V.shape[1]):
                one = getattr(net, prod)(p.theta, p.X, p.Y, p.V[:, c], reduction=red)
                assert one.shape == (net.num_params,)
                compare(many[:, c], one, dtype, what=f"{prod} column {c} ({red})")
            M = getattr(net, full)(p.theta, p.X, p.Y, reduction=red).astype(np.float64)
            compare(many, M @ p.V.astype(np.float64), dtype, what=f"{prod} vs {full} @ V ({red})")
            one_col = getattr(net, prod)(p.theta, p.X, p.Y, p.V[:, :1], reduction=red)
            assert one_col.shape == (net.num_params, 1)
            compare(one_col[:, 0], many[:, 0], dtype, what=f"{prod} with m=1 ({red})")


def _expected_shape(p, q):
    net, N = p.net, p.N
    P, k = net.num_params, net.num_outputs
    return {"predict": (N, k), "hvp": (P,), "ggn_vp": (P,), "hvp_multi": p.V.shape,
            "ggn_vp_multi": p.V.shape, "jacobian": (N * k, P), "hessian": (P, P), "ggn": (P, P),
            "hessian_diag": (P,), "ggn_diag": (P,)}.get(q)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases(per_combo=1))
def test_result_types_dtypes_and_shapes(backend, case, dtype, request):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.25, dtype=dtype)
    dt = np.dtype(dtype)
    wrong = []
    for q in QUANTITIES:
        r = compute(p, q)
        if q == "loss":
            assert type(r) is float
        elif q == "loss_and_grad":
            assert isinstance(r, tuple) and len(r) == 2 and type(r[0]) is float
            assert r[1].shape == (p.net.num_params,)
            wrong += [q] if r[1].dtype != dt else []
        elif q.endswith("_blocks"):
            assert [B.shape for B in r] == [(s, s) for s in p.net.layer_sizes]
            wrong += [q] if any(B.dtype != dt for B in r) else []
        else:
            assert isinstance(r, np.ndarray) and r.shape == _expected_shape(p, q), q
            wrong += [q] if r.dtype != dt else []
    assert not wrong, f"results not of dtype {dt}: {wrong}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases(per_combo=1))
def test_repeated_calls_identical_and_not_aliased(backend, case, dtype):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.25, dtype=dtype)
    q2 = make_problem(sizes, act, loss, N, l2=0.25, dtype=dtype, seed=1)
    for q in QUANTITIES:
        first = compute(p, q, "sum")
        kept = [np.array(x, copy=True) for x in (first if isinstance(first, (list, tuple)) else [first])]
        again = compute(p, q, "sum")
        assert bitwise_equal(first, again), f"{q}: two identical calls differ"
        compute(q2, q, "sum")  # a later call with other inputs must not overwrite the first result
        assert bitwise_equal(first if isinstance(first, (list, tuple)) else [first], kept), \
            f"{q}: an earlier result was modified by a later call (reused output buffer)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases(per_combo=1, activations=("tanh", "relu", "gelu")))
def test_inputs_untouched_and_read_only_accepted(backend, case, dtype):
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.25, dtype=dtype)
    saved = [a.copy() for a in (p.theta, p.X, p.Y, p.V)]
    results = {q: compute(p, q, "mean") for q in QUANTITIES}
    for a, b in zip((p.theta, p.X, p.Y, p.V), saved):
        assert bitwise_equal(a, b), "an input array was modified"
    for a in (p.theta, p.X, p.Y, p.V):
        a.flags.writeable = False
    for q in QUANTITIES:
        compare(compute(p, q, "mean"), results[q], dtype, what=f"{q} with read-only inputs")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cases(per_combo=1, activations=("sigmoid", "softplus")))
def test_sum_and_mean_reductions(backend, case, dtype):
    """mean = sum / N + the l2 term; and loss(sum) == N * loss(mean) without l2."""
    sizes, act, loss, N = case
    p = make_problem(sizes, act, loss, N, l2=0.3, dtype=dtype)
    P, l2, th = p.net.num_params, p.net.l2, p.theta.astype(np.float64)
    l2_term = {"loss": 0.5 * l2 * th @ th, "loss_and_grad": (0.5 * l2 * th @ th, l2 * th),
               "hvp": l2 * p.V[:, 0], "ggn_vp": l2 * p.V[:, 0], "hvp_multi": l2 * p.V,
               "ggn_vp_multi": l2 * p.V, "hessian": l2 * np.eye(P), "ggn": l2 * np.eye(P),
               "hessian_blocks": [l2 * np.eye(s) for s in p.net.layer_sizes],
               "ggn_blocks": [l2 * np.eye(s) for s in p.net.layer_sizes],
               "hessian_diag": l2 * np.ones(P), "ggn_diag": l2 * np.ones(P)}

    def combine(s, t):
        if isinstance(s, (list, tuple)):
            return [combine(a, b) for a, b in zip(s, t)]
        return np.asarray(s, np.float64) / N + t

    for q in DATA_QUANTITIES:
        mean = compute(p, q, "mean")
        total = compute(p, q, "sum")
        compare(mean, combine(total, l2_term[q]), dtype, what=f"{q}: mean vs sum / N + l2")
    p0 = p.astype(dtype, l2=0.0)
    assert p0.net.l2 == 0.0
    compare(p0.net.loss(p0.theta, p0.X, p0.Y, reduction="sum"),
            N * p0.net.loss(p0.theta, p0.X, p0.Y), dtype, what="loss(sum) vs N * loss(mean)")
    # l2 never enters the "sum" reduction
    compare(p.net.hessian(p.theta, p.X, p.Y, reduction="sum"),
            p0.net.hessian(p0.theta, p0.X, p0.Y, reduction="sum"), dtype, what="sum ignores l2")


@pytest.mark.parametrize("case", [c for c in cases(per_combo=1, activations=("tanh", "relu"))])
def test_one_and_two_threads_agree(backend, case, restore_threads, split_every_call):
    sizes, act, loss, _ = case
    p = make_problem(sizes, act, loss, N=96, l2=0.1)  # enough samples to split across threads
    tk.set_num_threads(1)
    one = {q: compute(p, q, r) for q in QUANTITIES for r in REDUCTIONS}
    tk.set_num_threads(2)
    two = {q: compute(p, q, r) for q in QUANTITIES for r in REDUCTIONS}
    for key in one:
        compare(two[key], one[key], np.float64, what=f"{key}: 2 threads vs 1")


@pytest.mark.parametrize("dtype", DTYPES)
def test_concurrent_calls_share_one_network(backend, dtype):
    """Python threads calling one network at once, each with its own sample count and
    quantity, so that workspaces are leased and grown while others are in use: every result
    as the reference's."""
    sizes, act, loss = [6, 12, 9, 3], "tanh", "ce"
    jobs = [(q, N, seed) for seed, (q, N) in enumerate(
        [("hvp_multi", 7), ("hessian", 40), ("loss_and_grad", 300), ("ggn_diag", 19),
         ("jacobian", 11), ("ggn_vp", 150), ("hessian_blocks", 1), ("ggn", 64)])]
    problems = [make_problem(sizes, act, loss, N=N, dtype=dtype, seed=seed) for _, N, seed in jobs]
    net = problems[0].net
    problems = [dataclasses.replace(p, net=net) for p in problems]
    want = [reference(p, q) for p, (q, _, _) in zip(problems, jobs)]
    got, errors = {}, []

    def work(i):
        try:
            for r in range(3):
                got[i, r] = compute(problems[i], jobs[i][0])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 3 * len(jobs)
    for (i, r), value in got.items():
        compare(value, want[i], dtype, what=f"{jobs[i][0]} (N={jobs[i][1]}) from thread {i}, call {r}")


@functools.cache
def _split_reference(sizes, act, loss, N, dtype):
    """test_calls_split_over_samples_match_reference's expected values, computed once for all
    the backends compared with them."""
    p = make_problem(sizes, act, loss, N=N, l2=0.1, dtype=dtype, seed=7)
    quantities = ("predict", "loss", "loss_and_grad", "hvp", "ggn_vp", "hvp_multi", "ggn_vp_multi",
                  "hessian_diag", "ggn_diag")
    return {(q, r): reference(p, q, r) for q in quantities for r in REDUCTIONS}


# The reference's diagonals form the whole matrix from P products over all N samples: the
# larger of these problems are the suite's most expensive, so only the two smallest (one per
# loss) run in the dev loop.
@pytest.mark.parametrize("sizes, act, loss, N", [
    pytest.param([20, 32, 16, 2], "tanh", "mse", 601, marks=pytest.mark.exhaustive),  # odd N: uneven slices
    pytest.param([16, 40, 5], "sigmoid", "ce", 350, marks=pytest.mark.exhaustive),
    pytest.param([30, 24, 24, 1], "relu", "mse", 257, marks=pytest.mark.exhaustive),
    # deep: the diagonal's matrix recursion
    pytest.param([12, 16, 12, 10, 3], "tanh", "ce", 450, marks=pytest.mark.exhaustive),
    # one output unit, act'' != 0: its fused passes
    pytest.param([6, 40, 20, 1], "tanh", "mse", 150, marks=pytest.mark.exhaustive),
    ([25, 30, 1], "softplus", "mse", 97),      # ... straight onto the first hidden layer
    # the R-op's act'' terms by kind (rop.cpp, d2_term): zero, stored, linear in act
    pytest.param([12, 30, 20, 1], ["identity", "softplus"], "mse", 140, marks=pytest.mark.exhaustive),
    ([9, 24, 16, 3], ["gelu", "sigmoid"], "ce", 130),
])
@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES, indirect=["backend"])
def test_calls_split_over_samples_match_reference(backend, sizes, act, loss, N, dtype, restore_threads,
                                                  split_every_call):
    """Problems large enough that a whole call is split into one slice of samples per thread
    (and partial gradients / products / diagonals summed): every such quantity against the
    reference, with 1 and 2 threads."""
    p = make_problem(sizes, act, loss, N=N, l2=0.1, dtype=dtype, seed=7)
    want = _split_reference(tuple(sizes), act if isinstance(act, str) else tuple(act), loss, N, dtype)
    for threads in (1, 2):
        tk.set_num_threads(threads)
        for (q, r), w in want.items():
            compare(compute(p, q, r), w, dtype, what=f"{q} ({r}, {threads} threads)")


@pytest.mark.parametrize("sizes, act, loss", [  # N = 1501: the dev loop keeps the smallest
    pytest.param([4, 12, 10, 3], "tanh", "ce", marks=pytest.mark.exhaustive),                 # act'' linear in act
    pytest.param([5, 12, 10, 1], ["softplus", "gelu"], "mse", marks=pytest.mark.exhaustive),  # act'' stored; one output
    pytest.param([7, 16, 2], "relu", "mse", marks=pytest.mark.exhaustive),                    # act'' = 0
    ([3, 6, 5, 4, 2], "tanh", "ce"),                  # deep: the diagonal's matrix recursion
])
@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES, indirect=["backend"])
def test_calls_over_many_chunks_of_samples(backend, sizes, act, loss, dtype, restore_threads, split_every_call,
                                           small_chunks):
    """cpp takes each thread's slice of samples through the network a chunk of rows at a time,
    on a tape of one chunk, and sums the slice's gradient, products and diagonals over its
    chunks; the full matrices and blocks add each chunk's terms to their accumulators.  With
    small chunks (small_chunks) and 1501 samples every call has several (a slice's chunks
    differ in size by at most a row); so do the products with 40 directions over 301 samples
    and the full matrices and blocks over 101 (15 chunks).  Against the reference, with 1 and 2
    threads."""
    p = make_problem(sizes, act, loss, N=1501, l2=0.1, dtype=dtype, seed=5)
    many = make_problem(sizes, act, loss, N=301, l2=0.1, dtype=dtype, seed=6, m=40)
    few = make_problem(sizes, act, loss, N=101, l2=0.1, dtype=dtype, seed=7)
    cases = [(p, q) for q in ("predict", "loss", "loss_and_grad", "hvp", "ggn_vp", "hessian_diag", "ggn_diag")]
    cases += [(many, q) for q in ("hvp_multi", "ggn_vp_multi")]
    cases += [(few, q) for q in ("hessian", "ggn", "hessian_blocks", "ggn_blocks")]
    want = {(i, r): reference(pr, q, r) for i, (pr, q) in enumerate(cases) for r in REDUCTIONS}
    for threads in (1, 2):
        tk.set_num_threads(threads)
        for (i, r), w in want.items():
            pr, q = cases[i]
            compare(compute(pr, q, r), w, dtype, what=f"{q}, N={pr.N} ({r}, {threads} threads)")


@pytest.mark.parametrize("sizes, act, loss, N", [
    ([2, 8, 1], "relu", "mse", 100),                                  # the seed problem
    ([3, 5, 4, 2], ["sigmoid", "gelu"], "ce", 13),                    # N not a multiple of 8
    ([4, 32, 3], "softplus", "ce", 7),                                # the widest layer taken
    ([5, 6, 7, 6, 1], ["sin", "tanh", "identity"], "mse", 1),
    ([3, 33, 2], "tanh", "mse", 9),                                   # one unit too wide
    ([2, 12, 12, 1], "tanh", "mse", 21),                              # P = 205: lanes GGN, Kronecker Hessian
    ([8, 32, 1], "softplus", "mse", 17),                              # P = 321
    ([6, 32, 5, 3], "tanh", "ce", 11),                                # P = 407: one past the lanes path
])
@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES, indirect=["backend"])
def test_tiny_network_paths(backend, sizes, act, loss, N, dtype):
    """On tiny networks cpp takes paths of their own (eight samples per SIMD vector, lanes.hpp)
    for products with one direction and for the GGN and the Hessian; V with two columns takes
    the general one: the first column must agree with the single product, and all with the
    reference."""
    p = make_problem(sizes, act, loss, N=N, dtype=dtype, seed=11)
    for r in REDUCTIONS:
        for q in ("hvp", "ggn_vp"):
            one = getattr(p.net, q)(p.theta, p.X, p.Y, p.V[:, 0], reduction=r)
            two = getattr(p.net, q)(p.theta, p.X, p.Y, p.V[:, :2], reduction=r)
            compare(one, two[:, 0], dtype, what=f"{q} ({r}): one direction vs the first of two")
            compare(one, reference(p, q, r), dtype, what=f"{q} ({r})")
        for q in ("ggn", "hessian"):
            compare(getattr(p.net, q)(p.theta, p.X, p.Y, reduction=r), reference(p, q, r), dtype, what=f"{q} ({r})")


def test_set_num_threads_validates(restore_threads):
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match=r"\bn\b"):
            tk.set_num_threads(bad)


def test_get_num_threads_reports_what_was_set(restore_threads, request):
    tk.set_num_threads(1)
    assert tk.get_num_threads() == 1
    build = tk._native.BUILD
    if build.get("core_built") and not build.get("openmp"):
        pytest.skip(f"the compiled kernels were built without OpenMP ({build['openmp_why']}): one thread")
    tk.set_num_threads(2)
    assert tk.get_num_threads() == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", COMPILED, indirect=True)
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_larger_problem_matches_reference(backend, loss):
    """P ~ 500 and N = 64: beyond the tile sizes a compiled kernel might block by."""
    p = make_problem([10, 20, 12, 4], ["tanh", "gelu"], loss, N=64, l2=0.1, seed=3)
    for q in ("loss_and_grad", "hvp_multi", "ggn_vp_multi", "hessian", "ggn",
              "hessian_blocks", "ggn_blocks", "hessian_diag", "ggn_diag", "jacobian"):
        compare(compute(p, q), reference(p, q), np.float64, what=q)


# ----------------------------------------------------------------------------- hypothesis
@st.composite
def problems(draw):
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 5), min_size=depth + 1, max_size=depth + 1))
    loss = draw(st.sampled_from(tk.LOSSES))
    if loss == "ce" and sizes[-1] < 2:
        sizes[-1] = draw(st.integers(2, 4))
    if loss == "gaussian" and sizes[-1] % 2:  # a mean and a log-variance per target
        sizes[-1] += 1
    acts = draw(st.lists(st.sampled_from(tk.ACTIVATIONS), min_size=depth - 1, max_size=depth - 1))
    N = draw(st.integers(1, 6))
    l2 = draw(st.sampled_from([0.0, 0.3]))
    seed = draw(st.integers(0, 2 ** 16))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return make_problem(sizes, acts, loss, N, l2=l2, seed=seed, dtype=dtype)


@settings(max_examples=40)
@given(p=problems(), reduction=st.sampled_from(REDUCTIONS))
def test_random_architectures(backend, p, reduction):
    dtype = p.net.dtype
    net = p.net
    got = {q: compute(p, q, reduction) for q in QUANTITIES}
    for q in QUANTITIES:
        compare(got[q], reference(p, q, reduction), dtype, what=f"{q} of {net!r}")
    H, G = got["hessian"].astype(np.float64), got["ggn"].astype(np.float64)
    compare(H, H.T, dtype, what="H symmetric")
    compare(got["hvp_multi"], H @ p.V.astype(np.float64), dtype, what="hvp vs H @ V")
    compare(got["ggn_vp_multi"], G @ p.V.astype(np.float64), dtype, what="ggn_vp vs G @ V")
    compare(got["hessian_diag"], np.diagonal(H), dtype, what="hessian_diag")
    compare(got["ggn_diag"], np.diagonal(G), dtype, what="ggn_diag")
    J = got["jacobian"].astype(np.float64).reshape(p.N, net.num_outputs, -1)
    C = output_hessians(p, got["predict"], reduction)
    want = np.einsum("ncp,ncd,ndq->pq", J, C, J, optimize=True) + _data_l2(p, reduction) * np.eye(net.num_params)
    compare(G, want, dtype, what="G vs J^T H_out J")


# ----------------------------------------------------------------------------- saturated softmax
def _confident_classifier(sizes, seed=3, labels="random"):
    """A ce problem whose top class has logits 40-80 above the others for every sample (p_t
    within 1e-17 of 1): H_out's entries are then far below p_t's rounding, and where the label
    is that class ("correct"), so are the loss and dL/df."""
    rng = np.random.default_rng(seed)
    net = tk.MLP(sizes, activation="tanh", loss="ce")
    theta = net.init(seed=seed)
    k = sizes[-1]
    theta[net.offsets[-1] - k:] = 60.0 * (np.arange(k) == seed % k) + rng.standard_normal(k)  # b_{L-1}
    X = rng.standard_normal((7, sizes[0]))
    F = net.predict(theta, X)
    Y = np.argmax(F, axis=1) if labels == "correct" else rng.integers(0, k, 7)
    F = np.sort(F, axis=1)
    assert np.all((F[:, -1] - F[:, -2] > 40) & (F[:, -1] - F[:, 0] < 80)), F
    return net, theta, X, Y


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_confident_correct_loss_and_gradient_are_exact(backend, dtype):
    """One layer, every sample classified right by a logit gap of 40-80: the loss is
    mean log1p(sum_{j != y} q_j), q_j = e^(f_j - f_y) (~1e-18), and dL/df is p_j for j != y and
    -sum_{j != y} p_j for y, written here relative to the label.  log(sum_j e^(f_j - max)) and
    p_y - 1 give exactly 0 for both (as every backend did before)."""
    net, theta, X, Y = _confident_classifier([3, 4], labels="correct")
    theta, X = theta.astype(dtype), X.astype(dtype)
    Xt = np.hstack([X.astype(np.float64), np.ones((X.shape[0], 1))])
    F = Xt @ theta.astype(np.float64).reshape(Xt.shape[1], -1)  # [W; b], the layout's order
    rows = np.arange(len(Y))
    q = np.exp(F - F[rows, Y][:, None])
    q[rows, Y] = 0.0
    r = q.sum(axis=1)
    dF = q / (1.0 + r)[:, None]
    dF[rows, Y] = -r / (1.0 + r)
    value, grad = net.loss_and_grad(theta, X, Y)
    assert 1e-30 < np.mean(np.log1p(r)) < 1e-15  # the regime meant: far below 1's rounding
    compare(value, np.mean(np.log1p(r)), dtype, what="loss")
    compare(net.loss(theta, X, Y), np.mean(np.log1p(r)), dtype, what="loss alone")
    compare(grad, (Xt.T @ dF).ravel() / len(Y), dtype, what="gradient")


def test_confident_single_layer_curvature_is_exact(backend):
    """One layer: H = G = sum_n x~ x~^T (x) H_out, with conftest's H_out (its diagonal from
    positive terms only).  The form diag(p) - p p^T loses the top class's p_t (1 - p_t)
    entirely here (it was off by 50-70% before)."""
    net, theta, X, Y = _confident_classifier([3, 4])
    Hout = output_hessians(Problem(net, theta, X, Y, None, "confident"), net.predict(theta, X))
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    want = np.einsum("ni,nj,nab->iajb", Xt, Xt, Hout).reshape(net.num_params, net.num_params)
    v = np.random.default_rng(0).standard_normal(net.num_params)
    for name in ("hessian", "ggn"):
        compare(getattr(net, name)(theta, X, Y), want, what=name)
    for name in ("hessian_diag", "ggn_diag"):
        compare(getattr(net, name)(theta, X, Y), np.diag(want), what=name)
    for name in ("hvp", "ggn_vp"):
        compare(getattr(net, name)(theta, X, Y, v), want @ v, what=name)


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="np.longdouble is no wider than float64 here")
@pytest.mark.parametrize("spread", ["close", "confident"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_softmax_head_value_by_value(backend, dtype, spread):
    """The ce head's exp and log1p, value by value against long double: one sample, one
    layer [1, k] with W = 0 and X = 0, so the logits are b and dL/db = p - e_y.  1000 logits
    from the top down to where e^x underflows (~-745; float32 ~-103), subnormal p included;
    "close": several within 1 of the top (rest > 1), "confident": the others 40 (float32: 17)
    or more below it.  Per value within 8 ulp, or 8 of the smallest subnormals."""
    k, lo = 1000, (-760.0 if dtype == np.float64 else -110.0)
    gap = 0.0 if spread == "close" else (40.0 if dtype == np.float64 else 17.0)
    rng = np.random.default_rng(11)
    logits = np.concatenate([[0.0], -gap + (lo + gap) * rng.random(k - 1)]).astype(dtype)
    if spread == "close":
        logits[1:6] = -rng.random(5)
    perm = rng.permutation(k)
    logits = logits[perm]
    top = int(np.argmax(logits))
    L = np.longdouble
    e = np.exp(logits.astype(L) - L(logits[top]))
    e[top] = 0
    rest = e.sum()
    want_p = e / (1 + rest)
    want_p[top] = 1 / (1 + rest)
    net = tk.MLP([1, k], loss="ce", dtype=dtype)
    theta = np.concatenate([np.zeros(k), logits]).astype(dtype)
    X = np.zeros((1, 1), dtype)
    for y in (top, int(perm[3])):  # the top class, and another
        value, grad = net.loss_and_grad(theta, X, np.array([y]))
        want_g = want_p.copy()
        want_g[y] = -rest / (1 + rest) if y == top else want_p[y] - 1
        want_v = np.log1p(rest) + (L(logits[top]) - L(logits[y]))
        info = np.finfo(dtype)
        ulp = np.spacing(np.abs(want_g).astype(dtype))
        err = np.abs(grad[k:].astype(L) - want_g)
        bad = err > np.maximum(8 * ulp.astype(L), 8 * L(info.smallest_subnormal))
        assert not bad.any(), (y, logits[bad][:5], (err / ulp)[bad][:5])
        assert np.all(grad[:k] == 0)
        assert abs(L(value) - want_v) <= 8 * L(np.spacing(dtype(want_v))), (y, value, want_v)
        assert spread == "close" or y != top or 0 < value < 1e-6  # the regime meant


@pytest.mark.parametrize("backend, dtype", BACKEND_DTYPES, indirect=["backend"])
@pytest.mark.parametrize("labels", ["random", "correct"])
@pytest.mark.parametrize("sizes", [[4, 6, 5], [3, 7, 6, 4], [4, 40, 5]], ids=["2layers", "3layers", "wide"])
def test_confident_classifier_matches_reference(backend, sizes, labels, dtype):
    """Deeper networks with the same logits (a layer wider than 32 takes the compiled
    backends' layered kernels rather than the tiny-network ones): the gradient and every
    curvature quantity as the reference's (whose H_out and dL/df the tests above check).  With
    every label right, dL/df is as tiny as H_out, so the Hessian's second-derivative term
    depends on dL/df_y = -sum_{j != y} p_j too.  float32 as well: numba's GGN factor once
    mixed a float64 weight into float32 rows and was off by 1e9 here."""
    net, theta, X, Y = _confident_classifier(sizes, labels=labels)
    V = np.random.default_rng(1).standard_normal((net.num_params, 2))
    p = Problem(net, theta, X, Y, V, "confident").astype(dtype)
    for q in ("loss_and_grad", "hessian", "ggn", "hessian_diag", "ggn_diag", "hessian_blocks", "ggn_blocks",
              "hvp_multi", "ggn_vp_multi"):
        compare(compute(p, q), reference(p, q), dtype, what=q)
