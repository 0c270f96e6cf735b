"""How long OpenMP's idle threads spin before they sleep: taylorkern's default (standard
library only, so that the benchmarks can apply it before anything numeric loads).

A whole kernel call is one parallel region with one barrier (csrc/common.hpp: over_samples),
so its waits last microseconds; the default libgomp policy then spins each idle thread for
~300,000 iterations (milliseconds) after every region, which starves whatever else runs on a
busy machine (a small Hessian ran 7x slower with another process on the second core), while
fully passive waits pay a futex wake-up per region and barrier (small loss_and_grad 172 us
instead of 90 us on the quiet 2-core machine).  A spin count of 1,000 keeps both: measured
with csrc kernels, 2 threads, [10,32,32,1] N=1000 loss_and_grad quiet 90 us (passive 172,
default 94); with a busy second core 264 us (passive 190; 3,000: 5x worse for hvp; default
spinning: 15 ms).
"""

SPIN_COUNT = "1000"


def apply_defaults(environ):
    """Set GOMP_SPINCOUNT in ``environ`` unless the user chose a wait policy or spin count.
    libgomp reads it once, when it loads: call before importing anything that uses OpenMP."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT
