"""JAX and Flax parameter pytrees of a dense MLP as taylorkern networks, and back.

A JAX network is its parameter pytree plus the code that applies it, so the activations
are given alongside the parameters:

    net, theta = from_flax(variables, activation="tanh", loss="mse")   # Flax linen Dense stack
    net, theta = from_pytree([(W1, b1), (W2, b2)], activation=jax.nn.relu)
    variables = to_flax(net, theta)          # {"params": {"Dense_0": {"kernel", "bias"}, ...}}
    layers = to_pytree(net, theta)           # [{"kernel": W1, "bias": b1}, ...]

The layouts agree with taylorkern's: a Flax ``Dense`` layer computes ``x @ kernel + bias``
with ``kernel`` of shape ``(d_{l-1}, d_l)``, which is taylorkern's ``Wl`` as it is
(docs/design.md §1), so the mapping copies numbers and transposes nothing.

Activations may be taylorkern's names or the JAX functions that compute them:
``jax.nn.relu``, ``jax.numpy.tanh`` (= ``jax.nn.tanh``, ``flax.linen.tanh``),
``jax.nn.sigmoid``, ``jax.nn.softplus``, ``jax.nn.gelu`` (its default ``approximate=True``
is the tanh form, taylorkern's gelu), ``jax.numpy.sin``, and :func:`identity`; a function
is recognised by identity, so ``functools.partial(jax.nn.gelu, approximate=False)`` or a
lambda is refused with a ``ValueError`` naming its position.

Arrays need no conversion: every ``MLP`` call reads a JAX CPU array's memory in place
(through ``__array__``, read-only, no copy).  Arrays on a GPU are refused with a
``TypeError`` naming the argument (``taylorkern.backends.cuda.DeviceData`` takes them).
JAX computes in float32 unless ``jax_enable_x64`` is set: :func:`to_flax` and
:func:`to_pytree` refuse a float64 network then, rather than round it silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised without jax
    raise ImportError(f"taylorkern.jax needs JAX ({exc}); install it, e.g. pip install 'taylorkern[jax]'") from exc

from .model import ACTIVATIONS, MLP

__all__ = ["activation_functions", "apply", "from_flax", "from_pytree", "identity", "to_flax", "to_pytree"]


def identity(x):
    """The identity activation, ``x`` itself (taylorkern's ``"identity"``)."""
    return x


_FUNCTIONS = {
    "identity": identity,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,  # approximate=True by default: the tanh form
    "sin": jnp.sin,
}
_NAMES = {id(f): name for name, f in _FUNCTIONS.items()}
for _f, _name in ((getattr(jax.nn, "tanh", None), "tanh"), (jax.lax.tanh, "tanh"), (jax.lax.sin, "sin"),
                  (getattr(jax.nn, "identity", None), "identity")):
    if _f is not None:
        _NAMES[id(_f)] = _name
_KEYS = (("kernel", "bias"), ("W", "b"), ("w", "b"))


def _activation_names(activation, n_hidden):
    """taylorkern's names for ``activation`` (a name or function, or one per hidden layer), and
    whether one was given for all layers."""
    single = isinstance(activation, str) or callable(activation)
    items = [activation] * n_hidden if single else None
    if items is None:
        try:
            items = list(activation)
        except TypeError:
            raise TypeError(f"activation: expected a name, a function or a list of them, got {activation!r}") from None
        if len(items) != n_hidden:
            raise ValueError(f"activation: a list needs one entry per hidden layer ({n_hidden}), got {len(items)}")
    names = []
    for i, a in enumerate(items):
        where = "activation" if single else f"activation[{i}]"
        if isinstance(a, str):
            if a not in ACTIVATIONS:
                raise ValueError(f"{where}: unknown {a!r}; expected one of {ACTIVATIONS}")
            names.append(a)
        elif callable(a) and id(a) in _NAMES:
            names.append(_NAMES[id(a)])
        else:
            raise ValueError(f"{where}: {a!r} is not an activation taylorkern has; pass one of {ACTIVATIONS} "
                             "or jax.nn.relu, jax.numpy.tanh, jax.nn.sigmoid, jax.nn.softplus, jax.nn.gelu "
                             "(approximate=True), jax.numpy.sin, taylorkern.jax.identity")
    return names, single


def _layer_order(params):
    """The layer names of a mapping in network order: by their trailing number when every
    name is ``<prefix>_<number>`` with one prefix (Flax's ``Dense_0``, ``Dense_1``, ... and
    ``nn.Sequential``'s ``layers_0``, ``layers_2``, ...), else the mapping's own order."""
    names = list(params)
    found = [re.fullmatch(r"(.*)_(\d+)", str(n)) for n in names]
    if names and all(found) and len({m.group(1) for m in found}) == 1:
        return [n for _, n in sorted(zip((int(m.group(2)) for m in found), names))]
    return names


def _pair(layer, where):
    """(W, b) of one layer: a (W, b) pair or a mapping with kernel/bias (or W/b, w/b)."""
    if isinstance(layer, Mapping):
        for kw, kb in _KEYS:
            if kw in layer:
                if kb not in layer:
                    raise ValueError(f"{where}: has {kw!r} but no {kb!r} (a layer without bias); taylorkern's "
                                     "layers all have one")
                extra = sorted(set(map(str, layer)) - {kw, kb})
                if extra:
                    raise ValueError(f"{where}: entries {extra} have no counterpart in a dense layer")
                return layer[kw], layer[kb]
        raise ValueError(f"{where}: expected a dense layer's 'kernel' and 'bias', got keys {sorted(map(str, layer))}")
    if isinstance(layer, (tuple, list)) and len(layer) == 2:
        return layer[0], layer[1]
    raise ValueError(f"{where}: expected a (W, b) pair or a mapping with 'kernel' and 'bias', "
                     f"got {type(layer).__name__}")


def _host(x, where):
    try:
        return np.asarray(x)
    except (TypeError, RuntimeError, BufferError) as exc:
        raise TypeError(f"{where}: cannot be read as an array in host memory ({exc})") from exc


def from_pytree(params, activation, loss="mse", l2=0.0, dtype=None):
    """The taylorkern network and parameters of a dense MLP's parameter pytree.

    Parameters
    ----------
    params : sequence or mapping of layers
        In network order, each layer a ``(W, b)`` pair or a mapping ``{"kernel": W,
        "bias": b}`` (also ``W``/``b`` or ``w``/``b``), ``W`` of shape ``(d_{l-1}, d_l)`` and
        ``b`` of shape ``(d_l,)``, as arrays of any kind (JAX, numpy).  A mapping of named
        layers is ordered by the names' trailing numbers (``Dense_0``, ``Dense_1``, ...,
        ``Dense_10``) when they all have one and one prefix, else taken in its own order.
    activation : str or callable, or a sequence of them
        The hidden activation, one for all hidden layers or one per hidden layer: a
        taylorkern name or a JAX function listed in the module docstring.
    loss : {"mse", "ce"}
    l2 : float
    dtype : float64, float32 or None
        None takes the arrays' dtype (float64 or float32).

    Returns
    -------
    net : MLP
    theta : numpy.ndarray of shape (net.num_params,), a new array.

    Raises
    ------
    ValueError
        A layer without a bias or with other entries, shapes that do not chain, an activation
        taylorkern does not have (each named by its position), NaN or Inf parameters.
    TypeError
        Arrays of a dtype other than float64/float32 without ``dtype=``.
    """
    if isinstance(params, Mapping):
        order = _layer_order(params)
        layers = [(f"params[{n!r}]", params[n]) for n in order]
    elif isinstance(params, (list, tuple)):
        layers = [(f"params[{i}]", layer) for i, layer in enumerate(params)]
    else:
        raise TypeError(f"params: expected a list of layers or a mapping of named layers, got {type(params).__name__}")
    if not layers:
        raise ValueError("params: has no layer")
    pairs = []
    for where, layer in layers:
        W, b = _pair(layer, where)
        W, b = _host(W, where), _host(b, where)
        if W.ndim != 2 or b.shape != (W.shape[1],):
            raise ValueError(f"{where}: expected W of shape (d_in, d_out) and b of shape (d_out,), "
                             f"got {W.shape} and {b.shape}")
        if pairs and W.shape[0] != pairs[-1][1][0].shape[1]:
            raise ValueError(f"{where}: takes {W.shape[0]} inputs but {pairs[-1][0]} gives "
                             f"{pairs[-1][1][0].shape[1]}")
        pairs.append((where, (W, b)))
    if dtype is None:
        found = {a.dtype for _, pair in pairs for a in pair}
        if len(found) > 1:
            raise TypeError(f"params: arrays of several dtypes {sorted(map(str, found))}; pass dtype=")
        (dt,) = found
        if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise TypeError(f"params: arrays of dtype {dt}; pass dtype=np.float32 or np.float64 to convert")
    else:
        dt = dtype
    sizes = [pairs[0][1][0].shape[0]] + [W.shape[1] for _, (W, _) in pairs]
    acts, single = _activation_names(activation, len(sizes) - 2)
    net = MLP(sizes, activation=acts[0] if single and acts else acts, loss=loss, l2=l2, dtype=dt)
    for where, (W, b) in pairs:
        if W.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
            raise TypeError(f"{where}: expected real arrays, got dtypes {W.dtype} and {b.dtype}")
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ValueError(f"{where}: has NaN or Inf parameters")
        limit = np.finfo(net.dtype).max  # an explicit narrower dtype= must hold the values
        if max(np.abs(W).max(initial=0), np.abs(b).max(initial=0)) > limit:
            raise ValueError(f"{where}: values beyond the {net.dtype.name} range (|x| > {limit:.3g})")
    return net, net.flatten([pair for _, pair in pairs])


def from_flax(variables, activation, loss="mse", l2=0.0, dtype=None):
    """The taylorkern network and parameters of a Flax (linen) stack of ``nn.Dense`` layers.

    Parameters
    ----------
    variables : mapping
        What ``module.init`` returns, ``{"params": {"Dense_0": {"kernel", "bias"}, ...}}``,
        or its ``"params"`` entry alone.  Other collections (``batch_stats``, ...) have no
        counterpart and are refused.
    activation, loss, l2, dtype
        As in :func:`from_pytree`.

    Returns
    -------
    net : MLP
    theta : numpy.ndarray of shape (net.num_params,)
    """
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables: expected Flax variables (a mapping), got {type(variables).__name__}")
    if "params" in variables:
        extra = sorted(map(str, set(variables) - {"params"}))
        if extra:
            raise ValueError(f"variables: collections {extra} have no counterpart in a dense MLP")
        params = variables["params"]
        if not isinstance(params, Mapping):
            raise TypeError(f"variables['params']: expected a mapping of layers, got {type(params).__name__}")
    else:
        params = variables
    for name, layer in params.items():
        if not (isinstance(layer, Mapping) and "kernel" in layer):
            keys = sorted(map(str, layer)) if isinstance(layer, Mapping) else type(layer).__name__
            raise ValueError(f"params[{name!r}]: not a Dense layer (expected 'kernel' and 'bias', got {keys})")
    return from_pytree(params, activation, loss=loss, l2=l2, dtype=dtype)


def _jax_arrays(net, theta):
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a taylorkern.MLP, got {type(net).__name__}")
    pairs = net.unflatten(theta)  # checks theta
    activation_functions(net)  # every hidden activation has its JAX function
    if net.dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError("net: a float64 network, but JAX is in float32 mode and would round it; "
                         "set jax.config.update('jax_enable_x64', True) first, or use a float32 network")
    return [(jnp.array(W), jnp.array(b)) for W, b in pairs]


def to_pytree(net, theta):
    """``[{"kernel": W1, "bias": b1}, ...]``: theta as a list of JAX arrays, one dict per layer
    (new arrays of the network's dtype; ``Wl`` of shape ``(d_{l-1}, d_l)``)."""
    return [{"kernel": W, "bias": b} for W, b in _jax_arrays(net, theta)]


def to_flax(net, theta):
    """``{"params": {"Dense_0": {"kernel", "bias"}, ...}}``: theta as the variables of a Flax
    linen module that applies ``nn.Dense(d_1)``, ..., ``nn.Dense(d_L)`` in turn with
    :func:`activation_functions` between them."""
    return {"params": {f"Dense_{l}": {"kernel": W, "bias": b} for l, (W, b) in enumerate(_jax_arrays(net, theta))}}


def activation_functions(net):
    """The JAX functions of net's hidden activations, one per hidden layer."""
    missing = [a for a in net.activations if a not in _FUNCTIONS]
    if missing:
        raise ValueError(f"net: activation {missing[0]!r} has no JAX function in taylorkern.jax yet")
    return [_FUNCTIONS[a] for a in net.activations]


def apply(net, params, X):
    """The network's outputs ``f(X)`` in JAX (jit- and grad-friendly) for ``params`` as
    :func:`to_pytree` or :func:`to_flax` gives them; shape (N, dL)."""
    if isinstance(params, Mapping):
        inner = params["params"] if "params" in params else params
        layers = [inner[n] for n in _layer_order(inner)]
    else:
        layers = list(params)
    acts = activation_functions(net)
    a = X
    for l, layer in enumerate(layers):
        W, b = _pair(layer, f"params[{l}]")
        a = a @ W + b
        if l < len(acts):
            a = acts[l](a)
    return a
