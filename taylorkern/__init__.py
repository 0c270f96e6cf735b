"""taylorkern: exact, fast Hessians and Gauss-Newton matrices for fully-connected networks."""

import os as _os

from . import _omp

_omp.apply_defaults(_os.environ)  # before libgomp loads (taylorkern._omp says why)

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
