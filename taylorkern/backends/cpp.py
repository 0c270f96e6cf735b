"""The compiled C++/OpenMP backend (taylorkern._core): thin adaptor to the kernels."""

from __future__ import annotations

from .. import _core
from ._weights import kernel_weights as _weights

name = "cpp"


def _net(net):
    h = net._handles.get(name)
    if h is None:
        h = net._handles[name] = _core.Net(list(net.sizes), [_core.ACTIVATION_CODES[a] for a in net.activations],
                                           _core.LOSS_CODES[net.loss_name], net.loss_scale)
    return h


def predict(net, theta, X):
    return _core.predict(_net(net), theta, X)


def jacobian(net, theta, X):
    return _core.jacobian(_net(net), theta, X)


# Without weights the kernels are called as before weights existed: on a network of a few
# dozen parameters the weights' plumbing (a call and an unpacked tuple) was 0.3 us of a 2.6 us
# call (bench/RESULTS.md).
def _with_data(fn_name):
    fn = getattr(_core, fn_name)

    def call(net, theta, X, Y, reduction, sample_weight=None):
        if sample_weight is None:
            return fn(_net(net), theta, X, Y, reduction == "mean")
        return fn(_net(net), theta, X, Y, *_weights(net, sample_weight, reduction))

    call.__name__ = fn_name
    return call


def _with_vectors(fn_name):
    fn = getattr(_core, fn_name)

    def call(net, theta, X, Y, V, reduction, sample_weight=None):
        if sample_weight is None:
            return fn(_net(net), theta, X, Y, V, reduction == "mean")
        return fn(_net(net), theta, X, Y, V, *_weights(net, sample_weight, reduction))

    call.__name__ = fn_name
    return call


def product_memory_values(net, n, m):
    """Values of memory hvp / ggn_vp hold for n samples and m directions, result included: the
    R-op keeps the tangents of a chunk of samples at a time (csrc/rop.cpp)."""
    return _core.product_memory_values(_net(net), n, m, net.dtype.itemsize)


loss = _with_data("loss")
loss_and_grad = _with_data("loss_and_grad")
loss_grad_ggn = _with_data("loss_grad_ggn")
hvp = _with_vectors("hvp")
ggn_vp = _with_vectors("ggn_vp")
hessian = _with_data("hessian")
ggn = _with_data("ggn")
hessian_blocks = _with_data("hessian_blocks")
ggn_blocks = _with_data("ggn_blocks")
hessian_diag = _with_data("hessian_diag")
ggn_diag = _with_data("ggn_diag")


def kfac_factors(net, theta, X, Y, reduction, noise=None, bases=None, sample_weight=None, input_factor=True):
    """K-FAC's factors [(A_l, B_l)], or with ``bases`` EKFAC's eigenvalues, in one pass over the
    samples (csrc/kfac.cpp)."""
    mean, w = _weights(net, sample_weight, reduction)
    if bases is not None:
        return list(_core.kfac_factors(_net(net), theta, X, Y, mean, noise, [tuple(b) for b in bases], w))
    return [tuple(p) for p in _core.kfac_factors(_net(net), theta, X, Y, mean, noise, None, w, input_factor)]
