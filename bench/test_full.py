"""Full P x P matrices: the GGN and the exact Hessian.  Checked through M @ V[:, :4] against
the reference's products.  The reference's own matrices past 64 parameters are estimated
from products with 64 identity columns (extra_info's note); wide (P = 101,770: 83 GB) is
skipped for everyone."""

QUANTITIES = ("ggn", "hessian")


def test_full(bench, case):
    bench(case)
