"""Matrix-free products: loss_and_grad, hvp, ggn_vp (one direction) and hvp with V of shape
(P, 32), every implementation side by side per "config quantity dtype" (see conftest.py)."""

QUANTITIES = ("loss_and_grad", "hvp", "ggn_vp", "hvp_V32")


def test_products(bench, case):
    bench(case)
