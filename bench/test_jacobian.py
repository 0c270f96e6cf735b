"""The Jacobian of the network outputs, (N*dL, P).  wide's (5120 x 101,770, 4.2 GB in
float64, 2.1 GB in float32) is skipped: over the suite's 2 GB limit for one result."""

QUANTITIES = ("jacobian",)


def test_jacobian(bench, case):
    bench(case)
