"""Diagonals of the GGN and the Hessian, checked at up to 64 indices spread over P against
the reference's products with unit vectors."""

QUANTITIES = ("ggn_diag", "hessian_diag")


def test_diag(bench, case):
    bench(case)
