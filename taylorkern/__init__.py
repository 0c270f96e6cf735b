"""taylorkern: exact, fast Hessians and Gauss-Newton matrices for fully-connected networks."""

from . import _omp

# The compiled module loads libgomp: with taylorkern's spin count, and os.environ as it was
# afterwards (taylorkern._omp says why and when).
with _omp.while_loading():
    from . import _native

    _native.install_core()  # the best build of the compiled kernels for this CPU
    try:
        from . import _core  # noqa: F401
    except ImportError:  # reported by the backend dispatch, which tries again
        pass

from ._dispatch import available_backends, backend, set_backend, use_backend
from ._threads import get_num_threads, set_num_threads
from .data import Batches
from .model import ACTIVATIONS, LOSSES, MLP, TooLargeError
from .optim import OptimizeResult, minimize

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Batches",
    "LOSSES",
    "MLP",
    "OptimizeResult",
    "TooLargeError",
    "__version__",
    "available_backends",
    "backend",
    "get_num_threads",
    "minimize",
    "set_backend",
    "set_num_threads",
    "use_backend",
]
