"""taylorkern.init_report and ``python -m taylorkern init-report``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import taylorkern as tk
from taylorkern import init_report as ir
from taylorkern.__main__ import main


@pytest.fixture(scope="module")
def data():
    X, Y, loss = ir.example_data("synthetic", n_samples=80, seed=0)
    net = tk.MLP([X.shape[1], 6, Y.shape[1]], activation="tanh", loss=loss)
    return net, X, Y


def test_report_rows_match_direct_computation(data):
    net, X, Y = data
    mine = lambda net_, seed: net_.init(seed=seed, scheme="lecun") * 0.5  # noqa: E731
    schemes = {"he": "he", "normal(0.01)": ("normal", 0.01), "normal(1)": ("normal", 1.0), "mine": mine}
    rep = ir.init_report(net, X, Y, schemes=schemes, seed=3, train="lm", train_options={"max_iter": 10})
    assert rep.method == "exact" and [r["scheme"] for r in rep.rows] == list(schemes)
    for r in rep.rows:
        theta = rep.thetas[r["scheme"]]
        L, g = net.loss_and_grad(theta, X, Y)
        H, G = net.hessian(theta, X, Y), net.ggn(theta, X, Y)
        eh, eg = np.linalg.eigvalsh(H), np.linalg.eigvalsh(G)
        assert r["loss"] == pytest.approx(L) and r["grad_norm"] == pytest.approx(np.linalg.norm(g))
        assert r["h_max"] == pytest.approx(eh[-1], rel=1e-10) and r["g_max"] == pytest.approx(eg[-1], rel=1e-10)
        assert r["h_trace"] == pytest.approx(np.trace(H), rel=1e-10, abs=1e-12)
        assert r["g_trace"] == pytest.approx(np.trace(G), rel=1e-10)
        assert r["g_rank"] == np.linalg.matrix_rank(G, hermitian=True)
        assert 0 <= r["h_negative"] <= 1 and r["h_negative"] == pytest.approx(np.mean(eh < -1e-12 * abs(eh).max()),
                                                                             abs=2 / len(eh))
        assert r["trained_loss"] < r["loss"]  # ten LM steps always help
    np.testing.assert_array_equal(rep.thetas["he"], net.init(seed=3, scheme="he"))
    np.testing.assert_array_equal(rep.thetas["mine"], mine(net, 3))
    # a tiny init sits near the origin, a saddle: small gradient, and a GGN that is nearly
    # singular (with W2 ~ 0 the outputs barely depend on W1), far worse conditioned than He's
    rows = {r["scheme"]: r for r in rep.rows}
    assert rows["normal(0.01)"]["grad_norm"] < 0.1 * rows["normal(1)"]["grad_norm"]
    assert rows["normal(0.01)"]["g_trace"] < 0.2 * rows["normal(1)"]["g_trace"]
    assert rows["normal(0.01)"]["g_cond"] > 1e3 * rows["he"]["g_cond"]
    assert rows["normal(0.01)"]["h_negative"] > 0.3  # +- pairs from the W1-W2 coupling
    text = rep.table()
    assert all(name in text for name in schemes) and "cond(G)" in text and len(text.splitlines()) == 5


def test_report_lanczos_agrees_with_exact(data):
    net, X, Y = data
    schemes = {"xavier": "xavier"}
    ex = ir.init_report(net, X, Y, schemes=schemes, train=None, method="exact").rows[0]
    lz = ir.init_report(net, X, Y, schemes=schemes, train=None, method="lanczos", n_probes=20).rows[0]
    assert lz["h_max"] == pytest.approx(ex["h_max"], rel=1e-7)
    assert lz["g_max"] == pytest.approx(ex["g_max"], rel=1e-7)
    assert lz["g_trace"] == pytest.approx(ex["g_trace"], rel=1e-12)
    assert lz["g_rank"] == -1 and math.isnan(lz["trained_loss"])
    assert lz["h_negative"] == pytest.approx(ex["h_negative"], abs=0.2)


def test_bad_schemes(data):
    net, X, Y = data
    with pytest.raises(ValueError, match="schemes"):
        ir.init_report(net, X, Y, schemes={"x": 3}, train=None)
    with pytest.raises(ValueError, match="schemes"):
        ir.init_report(net, X, Y, schemes={"x": lambda n, s: np.zeros(3)}, train=None)
    with pytest.raises(ValueError, match="scheme"):
        ir.init_report(net, X, Y, schemes={"x": "orthogonal"}, train=None)


def test_command_line(capsys, tmp_path):
    plot = tmp_path / "spectra.png"
    main(["init-report", "--data", "synthetic", "--samples", "60", "--hidden", "5", "--train-iter", "5",
          "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "scheme" in out and "lmax(H)" in out and "trained" in out
    for name in ir.DEFAULT_SCHEMES:
        assert name in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not plot.exists()
    else:
        assert plot.exists() and plot.stat().st_size > 1000
