"""taylorkern: exact, fast Hessians and Gauss-Newton matrices for fully-connected networks."""

import os as _os

# OpenMP threads that spin while waiting starve everything else on a busy machine: with
# another process on the second core, a small Hessian ran 7x slower with spinning waits than
# with passive ones (measured here). The kernels only open parallel regions for work worth
# tens of microseconds, so a futex wake per region costs little. Set before libgomp loads
# (it reads the variable once); an explicit user choice always wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from ._dispatch import available_backends, backend, set_backend, use_backend
from ._threads import get_num_threads, set_num_threads
from .model import ACTIVATIONS, LOSSES, MLP, TooLargeError
from .optim import OptimizeResult, minimize

__version__ = "0.1.0"

__all__ = [
    "MLP", "ACTIVATIONS", "LOSSES", "TooLargeError",
    "backend", "available_backends", "set_backend", "use_backend",
    "set_num_threads", "get_num_threads", "__version__",
    "minimize", "OptimizeResult",
]
