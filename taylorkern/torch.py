"""PyTorch networks as taylorkern networks, and back.

``from_torch(nn.Sequential(Linear, act, ..., Linear))`` gives ``(net, theta)``: the
:class:`~taylorkern.MLP` with the same widths and hidden activations, and its flat parameter
vector holding the same numbers.  ``to_torch(net, theta)`` builds the ``nn.Sequential``
again (or writes theta into an existing one).  The mapping is exact in both directions:
taylorkern's layer ``l`` computes ``a @ Wl + bl`` with ``Wl`` of shape ``(d_{l-1}, d_l)``, and
``torch.nn.Linear`` computes ``a @ weight.T + bias`` with ``weight`` of shape
``(d_l, d_{l-1})``, so ``Wl = weight.T`` and ``bl = bias``.

Activations (torch module <-> taylorkern name):

=============================================  ==========
``nn.Identity()`` or nothing between Linears   identity
``nn.ReLU()``                                  relu
``nn.Tanh()``                                  tanh
``nn.Sigmoid()``                               sigmoid
``nn.Softplus(beta=1)`` (threshold >= 20)      softplus
``nn.GELU(approximate="tanh")``                gelu
:class:`Sin` (defined here; torch has none)    sin
=============================================  ==========

``nn.Softplus`` returns x itself above its ``threshold`` (20 by default), where the exact
softplus that taylorkern computes differs from x by less than ``exp(-threshold)``;
``nn.GELU()``'s default (the erf form) is a different function from taylorkern's gelu (the
tanh form) and is refused.  ``nn.Dropout`` in evaluation mode (or with ``p=0``) and
``nn.Identity`` are skipped; anything else (another layer type, ``bias=False``, Dropout in
training mode, two activations in a row, an activation or a softmax after the last Linear)
is refused with a ``ValueError`` naming the layer.

Tensors need no conversion: every ``MLP`` call reads a CPU tensor's memory in place (a
float64 contiguous tensor for a float64 network is not copied).  A tensor on a GPU, or one
that requires grad, is refused with a ``TypeError`` naming the argument: pass
``t.detach()`` (its values, no copy) or ``t.cpu()``; GPU data for the cuda backend goes
through ``taylorkern.backends.cuda.DeviceData``.  The losses match torch's:
``loss="mse"`` is ``nn.MSELoss()``, ``loss="ce"`` is ``nn.CrossEntropyLoss()`` on the
logits, and ``l2`` adds ``0.5 * l2 * ||theta||^2``.
"""

from __future__ import annotations

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError(f"taylorkern.torch needs PyTorch ({exc}); install it, e.g. "
                      "pip install 'taylorkern[torch]'") from exc

from .model import MLP

__all__ = ["Sin", "from_torch", "to_torch"]

_TORCH_DTYPE = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}
_SOFTPLUS_MIN_THRESHOLD = 20.0  # torch's default; below it, torch's softplus is not taylorkern's


class Sin(nn.Module):
    """``sin(x)`` elementwise: taylorkern's ``"sin"`` activation, which ``torch.nn`` lacks."""

    def forward(self, x):
        return torch.sin(x)


_MODULES = {"identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "softplus": nn.Softplus, "gelu": lambda: nn.GELU(approximate="tanh"), "sin": Sin}


def _activation_module(name):
    if name not in _MODULES:
        raise ValueError(f"net: activation {name!r} has no torch module in taylorkern.torch yet")
    return _MODULES[name]()


def _activation_name(module):
    """taylorkern's name for an activation module; None if it is no activation; a string
    starting with '!' says why an activation module is not representable."""
    kind = type(module)
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", Sin: "sin"}
    if kind in simple:
        return simple[kind]
    if kind is nn.Softplus:
        if module.beta != 1:
            return f"!Softplus(beta={module.beta}) has no counterpart: taylorkern's softplus has beta=1"
        if module.threshold < _SOFTPLUS_MIN_THRESHOLD:
            return (f"!Softplus(threshold={module.threshold}) is the identity above {module.threshold}, where "
                    f"taylorkern's softplus is exact; use a threshold >= {_SOFTPLUS_MIN_THRESHOLD:g}")
        return "softplus"
    if kind is nn.GELU:
        if module.approximate != "tanh":
            return (f"!GELU(approximate={module.approximate!r}) is the erf form; taylorkern's gelu is "
                    "the tanh form, GELU(approximate='tanh')")
        return "gelu"
    return None


def _skipped(module):
    """Modules that compute the identity: nn.Identity, and Dropout that drops nothing."""
    kind = type(module)
    if kind is nn.Identity:
        return True
    if kind is nn.Dropout:
        return module.p == 0 or not module.training
    return False


def _children(module, prefix=""):
    """(dotted name, module) of a Sequential's layers, nested Sequentials flattened."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            yield from _children(child, full + ".")
        else:
            yield full, child


def _structure(model):
    """(Linear modules with their names, hidden activation names) of a Sequential, or a
    ValueError naming the first layer that has no counterpart."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected a torch.nn.Sequential of Linear layers and activations, "
                        f"got {type(model).__name__}")
    linears, acts, pending = [], [], []
    for name, m in _children(model):
        where = f"model: layer '{name}' ({type(m).__name__})"
        if type(m) is nn.Linear:
            if m.bias is None:
                raise ValueError(f"{where} has no bias (bias=False); taylorkern's layers all have one")
            if linears:
                prev_name, prev = linears[-1]
                if m.in_features != prev.out_features:
                    raise ValueError(f"{where} takes {m.in_features} inputs but layer '{prev_name}' gives "
                                     f"{prev.out_features}")
                if len(pending) > 1:
                    raise ValueError(f"model: layer '{pending[1][0]}' ({type(pending[1][1]).__name__}) is a "
                                     f"second activation after layer '{prev_name}'; taylorkern applies one "
                                     "activation between Linear layers")
                acts.append(pending[0][2] if pending else "identity")
            linears.append((name, m))
            pending = []
            continue
        if _skipped(m):
            continue
        act = _activation_name(m)
        if act is not None and act.startswith("!"):
            raise ValueError(f"{where}: {act[1:]}")
        if act is None:
            if type(m) is nn.Dropout:
                raise ValueError(f"{where} is in training mode with p={m.p} (random); call model.eval() first")
            hint = ""
            if type(m) in (nn.Softmax, nn.LogSoftmax):
                hint = "; loss='ce' takes the logits, so drop the final softmax"
            raise ValueError(f"{where} cannot be represented: taylorkern's networks are Linear layers with one "
                             f"elementwise activation between them (Identity, ReLU, Tanh, Sigmoid, Softplus, "
                             f"GELU(approximate='tanh'), taylorkern.torch.Sin){hint}")
        if not linears:
            raise ValueError(f"{where} comes before the first Linear layer; taylorkern's networks start "
                             "with a Linear layer")
        pending.append((name, m, act))
    if not linears:
        raise ValueError("model: has no Linear layer")
    if pending:
        name, m, _ = pending[0]
        raise ValueError(f"model: layer '{name}' ({type(m).__name__}) follows the last Linear layer; "
                         "taylorkern's last layer is linear (the loss takes its outputs as they are)")
    return linears, acts


def _np_dtype(dtype, what):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what}: expected float64 or float32, got {dtype!r}") from None
    if dt not in _TORCH_DTYPE:
        raise TypeError(f"{what}: expected float64 or float32, got {dt}")
    return dt


def from_torch(model, loss="mse", l2=0.0, dtype=None):
    """The taylorkern network and parameters of a PyTorch ``nn.Sequential``.

    Parameters
    ----------
    model : torch.nn.Sequential
        ``Linear, act, Linear, act, ..., Linear`` (nested Sequentials are flattened;
        Identity and evaluation-mode Dropout are skipped).  Activations as in the module
        docstring; no activation (or ``nn.Identity``) between two Linears is ``"identity"``.
    loss : {"mse", "ce"}
        The loss the network is trained with (torch's ``MSELoss()`` or
        ``CrossEntropyLoss()``); a Sequential does not say.
    l2 : float
        As in :class:`~taylorkern.MLP`.
    dtype : float64, float32 or None
        The network's dtype; None takes the parameters' (float64 or float32; other torch
        dtypes need an explicit ``dtype``).

    Returns
    -------
    net : MLP
    theta : numpy.ndarray of shape (net.num_params,)
        A new array: ``Wl = model's l-th Linear .weight.T`` and ``bl = .bias``, in
        taylorkern's layout (docs/design.md §1).  The model is left as it was.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Sequential``, or a dtype is not float64/float32.
    ValueError
        A layer has no counterpart (named by its index in the Sequential and its type), or a
        parameter is NaN or Inf.
    """
    linears, acts = _structure(model)
    if dtype is None:
        found = {lin.weight.dtype for _, lin in linears} | {lin.bias.dtype for _, lin in linears}
        if len(found) > 1:
            raise TypeError(f"model: parameters of several dtypes {sorted(map(str, found))}; pass dtype=")
        (tdt,) = found
        if tdt not in (torch.float64, torch.float32):
            raise TypeError(f"model: parameters of dtype {tdt}; pass dtype=np.float32 or np.float64 to convert")
        dt = np.dtype(np.float64 if tdt == torch.float64 else np.float32)
    else:
        dt = _np_dtype(dtype, "dtype")
    sizes = [linears[0][1].in_features] + [lin.out_features for _, lin in linears]
    net = MLP(sizes, activation=acts[0] if len(set(acts)) == 1 else acts, loss=loss, l2=l2, dtype=dt)
    params = []
    with torch.no_grad():
        for name, lin in linears:
            W = lin.weight.detach().to(device="cpu", dtype=_TORCH_DTYPE[dt]).numpy().T
            b = lin.bias.detach().to(device="cpu", dtype=_TORCH_DTYPE[dt]).numpy()
            if not (np.isfinite(W).all() and np.isfinite(b).all()):
                raise ValueError(f"model: layer '{name}' (Linear) has NaN or Inf parameters (as {dt.name})")
            params.append((W, b))
    return net, net.flatten(params)


def to_torch(net, theta, model=None, device=None):
    """The PyTorch ``nn.Sequential`` of a taylorkern network at parameters ``theta``.

    Parameters
    ----------
    net : MLP
    theta : array of shape (net.num_params,)
    model : torch.nn.Sequential, optional
        Write theta into this model's Linear layers in place (under ``torch.no_grad()``)
        instead of building a new one; its structure must be net's (as :func:`from_torch`
        reads it), or ValueError.  Its parameters keep their dtype and device.
    device : torch.device or str, optional
        Where a new model's parameters live (default: the CPU).

    Returns
    -------
    torch.nn.Sequential
        ``Linear(d0, d1), act, Linear(d1, d2), ..., Linear(d_{L-1}, dL)`` of the network's
        dtype, with ``weight = Wl.T`` and ``bias = bl``; hidden ``"identity"`` layers are
        ``nn.Identity()``.  ``from_torch(to_torch(net, theta), net.loss_name, net.l2)``
        gives net's structure and theta back exactly.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a taylorkern.MLP, got {type(net).__name__}")
    pairs = net.unflatten(theta)  # checks theta's shape, dtype and values
    if model is not None:
        linears, acts = _structure(model)
        sizes = [linears[0][1].in_features] + [lin.out_features for _, lin in linears]
        if tuple(sizes) != net.sizes or tuple(acts) != net.activations:
            raise ValueError(f"model: its layers (widths {sizes}, activations {acts}) are not net's "
                             f"(widths {list(net.sizes)}, activations {list(net.activations)})")
        with torch.no_grad():
            for (_, lin), (W, b) in zip(linears, pairs):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(np.array(b)))
        return model
    tdt = _TORCH_DTYPE[net.dtype]
    for name in net.activations:
        _activation_module(name)  # one taylorkern has but this table lacks: refused before building
    layers = []
    for l, (W, b) in enumerate(pairs):
        # skip_init: no random initialisation, so torch's global generator is left untouched
        lin = nn.utils.skip_init(nn.Linear, W.shape[0], W.shape[1], dtype=tdt,
                                 device="cpu" if device is None else device)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(np.array(b)))
        layers.append(lin)
        if l < net.num_layers - 1:
            layers.append(_activation_module(net.activations[l]))
    return nn.Sequential(*layers)

