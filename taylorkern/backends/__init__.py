"""Backends: one protocol, several implementations (see taylorkern._dispatch).

Each backend module has a ``name`` and the functions
predict, loss, loss_and_grad, hvp, ggn_vp, jacobian, ggn, hessian,
ggn_blocks, hessian_blocks, ggn_diag, hessian_diag
taking ``(net, theta, X[, Y][, V], reduction)`` with inputs already checked,
contiguous and of ``net.dtype`` (labels int64, V of shape (P, m)), and returning
the data term only (the MLP adds l2).
"""
