"""The benchmark machinery that CI can afford: the FLOP model against counts by hand, the
timing plan, the thread pins, and ``python -m taylorkern bench`` end to end on the seed
problem (peers are optional and not needed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taylorkern.benchmarks import harness, pinning
from taylorkern.benchmarks.cli import main as bench_main
from taylorkern.benchmarks.flops import flops
from taylorkern.benchmarks.problems import QUANTITIES


def macs(*products):
    """Multiply-adds of matrix products given as (rows, inner, cols)."""
    return sum(r * i * c for r, i, c in products)


# [2, 3, 1] on one sample: W1 (2, 3), W2 (3, 1); P = 9 + 4 = 13.
FORWARD = [(1, 2, 3), (1, 3, 1)]                 # X W1, a1 W2
ADJOINT = [(1, 1, 3)]                            # g2 W2^T
GRADS = [(2, 1, 3), (3, 1, 1)]                   # X^T g1, a1^T g2
TANGENTS = [(1, 2, 3), (1, 3, 1), (1, 3, 1)]     # X VW1; Ra1 W2, a1 VW2
R_BACK_GGN = [(2, 1, 3), (3, 1, 1), (1, 1, 3)]   # X^T Rg1, a1^T Rg2, Rg2 W2^T
R_BACK_H = [(3, 1, 1), (1, 1, 3)]                # Ra1^T g2, g2 VW2^T


def test_flops_by_hand_products():
    s = [2, 3, 1]
    assert flops("loss_and_grad", s, 1, "mse") == 2 * macs(*FORWARD, *ADJOINT, *GRADS) == 42
    assert flops("ggn_vp", s, 1, "mse") == 2 * macs(*FORWARD, *TANGENTS, *R_BACK_GGN)
    assert flops("hvp", s, 1, "mse") == 2 * macs(*FORWARD, *ADJOINT, *TANGENTS, *R_BACK_GGN, *R_BACK_H) == 84
    # m directions: only the R-op part scales; ce adds the dense k x k output curvature per direction
    per_direction = 2 * macs(*TANGENTS, *R_BACK_GGN, *R_BACK_H)
    assert flops("hvp_V32", s, 1, "mse", m=32) - flops("hvp", s, 1, "mse") == 31 * per_direction
    assert flops("hvp", [2, 3, 2], 1, "ce") - flops("hvp", [2, 3, 2], 1, "mse") == 2 * 2 * 2
    # jacobian: forward, one row backpropagated, one multiply per entry of the 1 x 13 result
    assert flops("jacobian", s, 1, "mse") == 2 * macs(*FORWARD, *ADJOINT) + 13


def kronecker_macs(sizes, N):
    """Per-sample multiply-adds of the Kronecker products, by enumerating the entries each
    one contributes to: the upper triangle of every diagonal block in both factors' symmetry
    (i <= i', j <= j'), and every entry of the blocks above the diagonal."""
    layers = [(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:])]
    count = 0
    for l, (Da, H) in enumerate(layers):
        count += sum(1 for i in range(Da) for i2 in range(i, Da) for j in range(H) for j2 in range(j, H))
        for Da2, H2 in layers[l + 1:]:
            count += sum(1 for _ in range(Da * H * Da2 * H2))
    return N * count


def test_flops_by_hand_curvature():
    s = [2, 3, 1]
    kron = 2 * kronecker_macs(s, 1)
    assert kron == 2 * (6 * 6 + 10 * 1 + 9 * 4)
    # GGN: forward, U (one row) backpropagated through W2, Q1 = U1^T U1 (upper triangle of 3 x 3)
    ggn_factors = 2 * macs(*FORWARD, (1, 1, 3)) + 2 * 6
    assert flops("ggn", s, 1, "mse") == ggn_factors + kron == 200
    # Hessian: forward, adjoints, Q1 = D W2 Q2 W2^T D (3x1 by 1x1, 3x1 by 1x3), and the bilinear
    # cross term of the adjacent layers (B = I): 2 N P1 d2
    h_factors = 2 * macs(*FORWARD, *ADJOINT, (3, 1, 1), (3, 1, 3))
    assert flops("hessian", s, 1, "mse") == h_factors + kron + 2 * 9 * 1 == 230
    diag_kron = 2 * (6 * 6 + 10 * 1)
    assert flops("ggn_blocks", s, 1, "mse") == ggn_factors + diag_kron
    assert flops("hessian_blocks", s, 1, "mse") == h_factors + diag_kron
    # diagonals: forward, U, column sums of U^2 (3 + 1), one (a~^2)^T q product per layer (2 N P)
    ggn_diag = 2 * macs(*FORWARD, (1, 1, 3)) + 2 * (3 + 1) + 2 * 13
    assert flops("ggn_diag", s, 1, "mse") == ggn_diag == 58
    assert flops("hessian_diag", s, 1, "mse", activation="relu") == ggn_diag   # no activation curvature
    assert flops("hessian_diag", s, 1, "mse", activation="tanh") == ggn_diag + 2 * macs(*ADJOINT)


def test_flops_scaling():
    for q in QUANTITIES:  # every term is per sample
        assert flops(q, [20, 64, 64, 1], 2000, "mse") == 2 * flops(q, [20, 64, 64, 1], 1000, "mse")
    # the full matrices cost ~N P^2 (the upper triangle of a P x P product over N), whatever k
    for sizes, loss in (([50, 100, 100, 1], "mse"), ([64, 64, 10], "ce"), ([30, 200, 5], "ce")):
        P = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        for q in ("ggn", "hessian"):
            assert 0.5 <= flops(q, sizes, 100, loss) / (100 * P * P) <= 1.1, (q, sizes)
    with pytest.raises(ValueError, match="quantity"):
        flops("trace", [2, 3, 1], 1, "mse")


def test_plan():
    assert harness.plan(1e-6, 0.1) == (100, 1000)   # rounds of >= 1 ms
    assert harness.plan(0.01, 1.0) == (100, 1)
    assert harness.plan(5.0, 1.0) == (1, 1)          # slower than the budget: one call


def test_thread_env():
    env = pinning.thread_env(1, {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --foo", "OPENBLAS_CORETYPE": "X"})
    assert all(env[v] == "1" for v in pinning.THREAD_VARS)
    assert env["XLA_FLAGS"].split() == ["--foo", "--xla_cpu_multi_thread_eigen=false"]
    assert env["OPENBLAS_CORETYPE"] == "X"  # never touched
    with pytest.raises(ValueError):
        pinning.thread_env(0)


def test_cli_runs(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "taylorkern", "bench", "--config", "seed", "--quantity", "loss_and_grad,hvp",
           "--budget", "0.02", "--json", str(out)]
    peers = harness.available_peers()
    if peers:  # keep the test quick where the peers happen to be installed
        cmd.append("--no-peers")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TAYLORKERN_CEILING_N": "256", "TAYLORKERN_CEILING_SECONDS": "0.05"})
    assert r.returncode == 0, r.stdout + r.stderr
    if not peers:
        assert 'pip install "taylorkern[bench]"' in r.stdout
    assert "seed" in r.stdout and "hvp" in r.stdout
    rec = json.loads(out.read_text())
    assert {"machine", "ceilings", "threads", "cases", "implementations", "failures"} <= set(rec)
    assert rec["failures"] == 0
    assert rec["machine"]["cores"] >= 1 and "OPENBLAS_CORETYPE" in rec["machine"]["environment"]
    c = rec["ceilings"]["float64"]
    assert c["gflops"] > 0 and c["gflops_without_coretype"] > 0
    cases = rec["cases"]
    assert {(c["config"], c["quantity"]) for c in cases} == {("seed", "loss_and_grad"), ("seed", "hvp")}
    assert {c["implementation"] for c in cases} == set(rec["implementations"])
    for c in cases:
        assert c["status"] == "ok", c
        assert c["median_s"] > 0 and all(t > 0 for t in c["times_s"])
        assert c["check_error"] <= c["tolerance"] and c["flops"] > 0 and c["gflops"] > 0


def test_cli_bad_arguments(capsys):
    r = subprocess.run([sys.executable, "-m", "taylorkern", "bench", "--config", "seed,nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--config: unknown 'nope'" in r.stderr and "medium" in r.stderr
    for argv, message in ((["--quantity", "trace"], "--quantity: unknown 'trace'"),
                          (["--dtype", "float16"], "--dtype: unknown 'float16'"),
                          (["--threads", "0"], "--threads: expected a positive integer"),
                          (["--budget", "0"], "--budget: expected seconds > 0")):
        with pytest.raises(SystemExit) as exc:
            bench_main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_checks_catch_wrong_results(dtype):
    """Every quantity of the active backend passes the check against the reference, and the
    same result 1% off (the whole, or one block) fails it."""
    cases = harness.Cases()
    impl = harness.taylorkern_impl()
    for q in QUANTITIES:
        case = cases.case("seed", dtype, impl, q)
        seconds, err = harness.first_call(case)
        assert seconds > 0 and err <= case.tolerance
        with case.context():
            good = case.numpy(case.fn())
        bad = (good[0], good[1] * 1.01) if q == "loss_and_grad" else \
            [good[0] * 1.01] + good[1:] if q.endswith("_blocks") else good * 1.01
        assert case.check(bad) > 10 * case.tolerance, q
        case.check = lambda r: 1.0
        with pytest.raises(AssertionError, match="against the reference"):
            harness.first_call(case)


def test_reference_estimate_from_identity_columns():
    case = harness.Cases(slab=8).case("small", "float64", "taylorkern-reference", "hessian")
    assert case.scale == case.problem.P / 8 and "estimated" in case.note
    seconds, err = harness.first_call(case)
    assert err <= case.tolerance
    assert harness.timed_once(case, seconds, budget=100.0)  # one call, scaled
