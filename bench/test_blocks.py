"""Per-layer diagonal blocks of the GGN and the Hessian.  Each block is checked against the
reference's product with V[:, :4] restricted to its layer; wide's first block alone is
100,480^2 values (81 GB) and is skipped."""

QUANTITIES = ("ggn_blocks", "hessian_blocks")


def test_blocks(bench, case):
    bench(case)
