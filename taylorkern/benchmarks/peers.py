"""The benchmark quantities computed by other libraries, returned in taylorkern's conventions.

Peers (each used the way a practitioner would use it, on data converted once in :func:`prepare`):

* ``"torch"``      -- eager autograd on a function of the flat parameter vector;
* ``"torch.func"`` -- functorch transforms (grad, jvp, vjp, vmap, jacrev, hessian) on that function;
* ``"jax.jit"``    -- the same transforms in JAX, every callable compiled ahead of time in prepare;
* ``"backpack"``   -- BackPACK extensions on an ``nn.Sequential`` with ``MSELoss``/``CrossEntropyLoss``;
* ``"curvlinops"`` -- curvlinops' exact ``HessianLinearOperator``/``GGNLinearOperator`` on that
  ``nn.Sequential``, all N samples as one batch.

``nn.Linear`` stores ``W`` as (out, in); taylorkern's flat layout holds ``W`` as (in, out) row-major.
:meth:`Prepared.numpy` maps every result back to that layout (outside any timing).

Nothing here imports torch or jax at module level, and nothing pins threads: the caller sets
``torch.set_num_threads`` / ``OMP_NUM_THREADS`` and XLA's CPU thread settings (``XLA_FLAGS``) before
the first :func:`prepare` (which imports them). ``prepare("jax.jit", ...)`` switches on
``jax_enable_x64`` for the process (float32 problems stay float32). ``prepare("backpack", ...)``
silences torch's "Full backward hook is firing" warning, which BackPACK's hooks raise on every pass.

Memory: a dense quantity whose estimated peak (result plus dense intermediates such as the
per-sample Jacobian) exceeds :data:`MEMORY_BUDGET` is not offered; ``Prepared.skipped`` says why.
Hessians by vmapped Hessian-vector products process identity columns in chunks sized so that the
tangents of all activations stay inside the same budget.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable

import numpy as np

PEERS = ("torch", "torch.func", "jax.jit", "backpack", "curvlinops")

MEMORY_BUDGET = 2 << 30  # bytes a dense quantity (result + workspace) may use; callers may change it

# modules each peer needs, and the pip name to report when one is missing
_NEEDS = {"torch": ("torch",), "torch.func": ("torch", "torch.func"), "jax.jit": ("jax", "jaxlib"),
          "backpack": ("torch", "backpack"), "curvlinops": ("torch", "curvlinops")}
_PIP = {"backpack": "backpack-for-pytorch", "curvlinops": "curvlinops-for-pytorch"}

PRERUN_MAX_P = 2000  # prepare pre-runs the dense quantities (hessian, ggn, blocks) only up to this P


def _check_name(name):
    if name not in PEERS:
        raise ValueError(f"peer: unknown {name!r}; expected one of {PEERS}")


@functools.cache
def why_unavailable(name) -> str | None:
    """None when ``name`` can run here, else the reason. Imports lazily; raises only for unknown names."""
    _check_name(name)
    for mod in _NEEDS[name]:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            if e.name == mod.split(".")[0]:
                return f"{_PIP.get(mod, mod)} is not installed"
            return f"{mod} failed to import: {e}"
        except Exception as e:  # a broken install must not break the caller
            return f"{mod} failed to import: {type(e).__name__}: {e}"
    return None


def available_peers() -> list[str]:
    """The peers that can run here, in :data:`PEERS` order."""
    return [p for p in PEERS if why_unavailable(p) is None]


class Prepared:
    """One peer set up on one problem.

    Attributes
    ----------
    peer : str
    calls : dict[str, Callable[[], object]]
        quantity -> zero-argument callable returning the peer's native result, fully computed.
    notes : dict[str, str]
        quantity -> how the peer computes it.
    skipped : dict[str, str]
        quantity -> why a quantity this peer offers is not offered for this problem (memory).
    """

    def __init__(self, peer, problem, calls, notes, skipped, convert):
        self.peer = peer
        self.calls: dict[str, Callable[[], object]] = calls
        self.notes: dict[str, str] = notes
        self.skipped: dict[str, str] = skipped
        self._dtype, self._convert = problem.dtype, convert

    def numpy(self, quantity, result):
        """A native result in taylorkern's layout and the problem's dtype: loss_and_grad ->
        (float, (P,)); blocks -> list of (P_l, P_l); jacobian -> (N*dL, P); others as taylorkern."""
        if quantity not in self.calls:
            raise ValueError(f"quantity: {self.peer} does not offer {quantity!r}; it offers {list(self.calls)}")
        out, dt = self._convert(quantity, result), self._dtype
        if quantity == "loss_and_grad":
            return float(out[0]), np.asarray(out[1], dt)
        if quantity.endswith("_blocks"):
            return [np.asarray(B, dt) for B in out]
        return np.asarray(out, dt)

    def __repr__(self):
        return f"Prepared({self.peer}: {list(self.calls)})"


def prepare(name, problem, quantities=None) -> Prepared:
    """Set ``name`` up on ``problem`` (a :class:`~taylorkern.benchmarks.problems.Problem`),
    for ``quantities`` (default: all it offers).

    Converts the data once, compiles what compiles, and runs each callable once so that timing
    excludes first-call costs -- except the dense quantities of problems with more than
    :data:`PRERUN_MAX_P` parameters, which take seconds (their notes say so; jax has compiled them).
    """
    _check_name(name)
    reason = why_unavailable(name)
    if reason is not None:
        raise RuntimeError(f"peer {name!r} is unavailable: {reason}")
    if problem.net.l2:
        raise ValueError("problem: peers compute the data term only; expected l2 == 0")
    sz = _Sizes(problem)
    entries, convert = _BUILDERS[name](problem, sz)
    calls, notes, skipped = {}, {}, {}
    for q, (make, note, peak_elems) in entries.items():
        if quantities is not None and q not in quantities:
            continue
        need = peak_elems * sz.item + sz.tangent
        if need > MEMORY_BUDGET:
            skipped[q] = f"needs ~{need / 2**30:.1f} GiB > MEMORY_BUDGET ({MEMORY_BUDGET / 2**30:.1f} GiB)"
            continue
        calls[q] = make()
        if q in ("hessian", "ggn", "hessian_blocks", "ggn_blocks") and problem.P > PRERUN_MAX_P:
            note += "; not pre-run in prepare"
        else:
            calls[q]()
        notes[q] = note
    return Prepared(name, problem, calls, notes, skipped, convert)


# --------------------------------------------------------------------------- shared pieces
class _Sizes:
    """Element counts of the dense quantities and the chunking of vmapped Hessian products."""

    def __init__(self, p):
        self.P, self.item = p.P, p.dtype.itemsize
        self.NJ = p.N * p.sizes[-1] * p.P                    # per-sample Jacobian (N, dL, P)
        self.full = p.P * p.P
        self.blocks = sum(n * n for n in p.net.layer_sizes)
        # one forward-over-reverse tangent: a few (N, d_l) arrays per layer plus P-vectors
        self.tangent = self.item * (6 * p.N * sum(p.sizes) + 4 * p.P)

    def chunk(self, result_elems):
        """Tangents per vmapped chunk so that result (twice, while assembled) + chunk fit the budget."""
        free = MEMORY_BUDGET - 2 * result_elems * self.item
        return int(max(1, min(self.P, free // self.tangent)))


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _flat_convert(quantity, r):
    """Results of the flat-parameter peers are already in taylorkern's layout."""
    if quantity == "loss_and_grad":
        return _np(r[0]), _np(r[1])
    if quantity.endswith("_blocks"):
        return [_np(B) for B in r]
    a = _np(r)
    return a.reshape(-1, a.shape[-1]) if quantity == "jacobian" else a


def _block_slices(net):
    return [slice(a, b) for a, b in zip(net.offsets[:-1], net.offsets[1:])]


# Builders return ({quantity: (make, note, peak_elements)}, convert): make() builds the callable
# (compiling where the peer compiles); peak_elements sizes the dense results and intermediates
# (0 for products); convert(quantity, native) maps a native result to taylorkern's layout.
def _transform_entries(sz, make, grad_note, hessian_note, blocks_note):
    """Entries of the function-transform peers (torch.func, jax.jit), which share their routes."""
    jac = "vmap over samples of jacrev(f(theta, x_n))"
    notes = {
        "loss_and_grad": grad_note,
        "hvp": "jvp(grad(loss)) (forward-over-reverse)",
        "ggn_vp": "jvp of the net, jvp(grad) of the loss in F, vjp of the net",
        "hvp_V32": "vmap over the 32 columns of jvp(grad(loss))",
        "jacobian": jac,
        "ggn": f"J^T H_out J, J by {jac}, H_out in closed form",
        "hessian": hessian_note,
        "ggn_blocks": "per-layer column slices of J^T H_out J (J as for ggn)",
        "hessian_blocks": f"per layer, {blocks_note}, w.r.t. that layer's slice of theta",
        "ggn_diag": "sum over rows of J * (H_out J), J as for ggn (no P x P matrix)",
    }
    peaks = {"jacobian": 2 * sz.NJ, "ggn": 2 * sz.NJ + sz.full, "hessian": 2 * sz.full,
             "ggn_blocks": 2 * sz.NJ + sz.blocks, "hessian_blocks": 2 * sz.blocks, "ggn_diag": 2 * sz.NJ}
    return {q: (mk, notes[q], peaks.get(q, 0)) for q, mk in make.items()}


# --------------------------------------------------------------------------- torch, torch.func
def _torch_setup(p):
    """The flat-parameter MLP ``f(theta, X)``, the loss ``crit(F, Y)`` and resident tensors."""
    import torch
    import torch.nn.functional as Fn

    acts = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "softplus": Fn.softplus, "gelu": lambda z: Fn.gelu(z, approximate="tanh"), "sin": torch.sin}
    net = p.net
    layers = list(zip(net.offsets, net.sizes[:-1], net.sizes[1:]))
    hidden = [acts[a] for a in net.activations]

    def f(theta, X):
        for l, (o, a, b) in enumerate(layers):
            X = torch.addmm(theta[o + a * b:o + (a + 1) * b], X, theta[o:o + a * b].view(a, b))
            if l < len(hidden):
                X = hidden[l](X)
        return X

    crit = (lambda F, Y: torch.mean((F - Y) ** 2)) if net.loss_name == "mse" else Fn.cross_entropy
    t = torch.as_tensor
    Y = t(p.Y) if net.loss_name == "mse" else t(p.Y, dtype=torch.long)
    return f, crit, (t(p.theta), t(p.X), Y, t(p.v), t(p.V))


def _build_torch(p, sz):
    import torch

    f, crit, (theta, X, Y, v, V) = _torch_setup(p)
    th = theta.clone().requires_grad_()
    grad = torch.autograd.grad

    def loss_and_grad():
        L = crit(f(th, X), Y)
        return L.detach(), grad(L, th)[0]

    def hvp():
        g, = grad(crit(f(th, X), Y), th, create_graph=True)
        return grad(g, th, v)[0]

    def ggn_vp():
        F = f(th, X)
        u = torch.zeros_like(F, requires_grad=True)
        Jtu, = grad(F, th, u, create_graph=True)      # J^T u, linear in u ...
        Jv, = grad(Jtu, u, v)                         # ... so its vjp with v is J v
        gF, = grad(crit(F, Y), F, create_graph=True)
        HJv, = grad(gF, F, Jv)                        # H_out J v
        return grad(F, th, HJv)[0]                    # J^T H_out J v

    def hvp_V32():
        g, = grad(crit(f(th, X), Y), th, create_graph=True)
        return grad(g, th, V.T, is_grads_batched=True)[0].T

    entries = {
        "loss_and_grad": (lambda: loss_and_grad, "torch.autograd.grad of the loss (one backward)", 0),
        "hvp": (lambda: hvp, "double backward: grad(grad(loss, create_graph) . v)", 0),
        "ggn_vp": (lambda: ggn_vp, "double-vjp trick for J v, autograd H_out, then J^T by backward", 0),
        "hvp_V32": (lambda: hvp_V32, "double backward with is_grads_batched=True over the 32 columns", 0),
    }
    return entries, _flat_convert


def _torch_hessian(fn, x, k):
    """Hessian of scalar fn at x: torch.func.hessian, or its jacfwd(jacrev) by vmap in chunks of k."""
    import torch
    from torch.func import grad, hessian, jvp, vmap

    if k >= x.numel():
        return hessian(fn)(x)
    g = grad(fn)
    return vmap(lambda e: jvp(g, (x,), (e,))[1], chunk_size=k)(torch.eye(x.numel(), dtype=x.dtype))


def _build_torch_func(p, sz):
    import torch
    from torch.func import grad, grad_and_value, jacrev, jvp, vjp, vmap

    f, crit, (th, X, Y, v, V) = _torch_setup(p)
    net, mse = p.net, p.net.loss_name == "mse"
    loss = lambda t: crit(f(t, X), Y)                                   # noqa: E731
    net_out = lambda t: f(t, X)                                          # noqa: E731
    hvp = lambda u: jvp(grad(loss), (th,), (u,))[1]                      # noqa: E731

    def ggn_vp():
        F, Jv = jvp(net_out, (th,), (v,))
        HJv = jvp(grad(lambda F_: crit(F_, Y)), (F,), (Jv,))[1]
        return vjp(net_out, th)[1](HJv)[0]

    per_sample_jac = vmap(jacrev(lambda t, x: f(t, x[None])[0]), in_dims=(None, 0))  # (N, dL, P)

    def jac_and_hj():
        """Per-sample Jacobian J (N*dL, P) and H_out J, H_out = 2/(N dL) I or (diag(p) - p p^T)/N."""
        J = per_sample_jac(th, X)
        if mse:
            HJ = J * (2.0 / J.shape[0] / J.shape[1])
        else:
            q = torch.softmax(f(th, X), 1)[:, :, None]
            HJ = (q * J - q * (q * J).sum(1, keepdim=True)) / J.shape[0]
        return J.flatten(0, 1), HJ.flatten(0, 1)

    def ggn(per_layer=False):
        J, HJ = jac_and_hj()
        return [J[:, s].T @ HJ[:, s] for s in _block_slices(net)] if per_layer else J.T @ HJ

    def ggn_diag():
        J, HJ = jac_and_hj()
        return (J * HJ).sum(0)

    k_full, k_blocks = sz.chunk(sz.full), sz.chunk(sz.blocks)

    def hessian_blocks():
        out = []
        for s in _block_slices(net):
            fn = lambda tl, s=s: loss(torch.cat([th[:s.start], tl, th[s.stop:]]))  # noqa: E731
            out.append(_torch_hessian(fn, th[s], k_blocks))
        return out

    make = {
        "loss_and_grad": lambda: lambda: grad_and_value(loss)(th)[::-1],
        "hvp": lambda: functools.partial(hvp, v),
        "ggn_vp": lambda: ggn_vp,
        "hvp_V32": lambda: functools.partial(vmap(hvp, in_dims=1, out_dims=1), V),
        "jacobian": lambda: functools.partial(per_sample_jac, th, X),
        "ggn": lambda: ggn,
        "hessian": lambda: functools.partial(_torch_hessian, loss, th, k_full),
        "ggn_blocks": lambda: functools.partial(ggn, True),
        "hessian_blocks": lambda: hessian_blocks,
        "ggn_diag": lambda: ggn_diag,
    }
    def how(k, n):
        return "torch.func.hessian (jacfwd(jacrev))" if k >= n else \
            f"jacfwd(jacrev) as vmap(jvp(grad)) over identity columns, chunk_size={k}"

    return _transform_entries(sz, make, "grad_and_value", how(k_full, p.P),
                              how(k_blocks, max(net.layer_sizes))), _flat_convert


# --------------------------------------------------------------------------- jax
def _jax_hessian(fn, x, k):
    """Hessian of scalar fn at x: jax.hessian, or its jacfwd(jacrev) by lax.map in batches of k."""
    import jax
    import jax.numpy as jnp

    if k >= x.size:
        return jax.hessian(fn)(x)
    g = jax.grad(fn)
    return jax.lax.map(lambda e: jax.jvp(g, (x,), (e,))[1], jnp.eye(x.size, dtype=x.dtype), batch_size=k)


def _build_jax(p, sz):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    acts = {"identity": lambda z: z, "relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
            "softplus": jax.nn.softplus, "gelu": functools.partial(jax.nn.gelu, approximate=True),
            "sin": jnp.sin}
    net, mse = p.net, p.net.loss_name == "mse"
    layers = list(zip(net.offsets, net.sizes[:-1], net.sizes[1:]))
    hidden = [acts[a] for a in net.activations]

    def f(t, X):
        for l, (o, a, b) in enumerate(layers):
            X = X @ t[o:o + a * b].reshape(a, b) + t[o + a * b:o + (a + 1) * b]
            if l < len(hidden):
                X = hidden[l](X)
        return X

    def crit(F, Y):
        if mse:
            return jnp.mean((F - Y) ** 2)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(F), Y[:, None], axis=1))

    loss = lambda t, X, Y: crit(f(t, X), Y)                                   # noqa: E731
    hvp = lambda t, X, Y, u: jax.jvp(lambda t_: jax.grad(loss)(t_, X, Y), (t,), (u,))[1]  # noqa: E731

    def ggn_vp(t, X, Y, u):
        F, Jv = jax.jvp(lambda t_: f(t_, X), (t,), (u,))
        HJv = jax.jvp(jax.grad(lambda F_: crit(F_, Y)), (F,), (Jv,))[1]
        return jax.vjp(lambda t_: f(t_, X), t)[1](HJv)[0]

    per_sample_jac = jax.vmap(jax.jacrev(lambda t, x: f(t, x[None])[0]), in_axes=(None, 0))

    def jac_and_hj(t, X):
        J = per_sample_jac(t, X)
        if mse:
            HJ = J * (2.0 / J.shape[0] / J.shape[1])
        else:
            q = jax.nn.softmax(f(t, X))[:, :, None]
            HJ = (q * J - q * (q * J).sum(1, keepdims=True)) / J.shape[0]
        return J.reshape(-1, t.size), HJ.reshape(-1, t.size)

    def ggn(t, X, Y):
        J, HJ = jac_and_hj(t, X)
        return J.T @ HJ

    def ggn_blocks(t, X, Y):
        J, HJ = jac_and_hj(t, X)
        return [J[:, s].T @ HJ[:, s] for s in _block_slices(net)]

    def ggn_diag(t, X, Y):
        J, HJ = jac_and_hj(t, X)
        return (J * HJ).sum(0)

    k_full, k_blocks = sz.chunk(sz.full), sz.chunk(sz.blocks)

    def hessian_blocks(t, X, Y):
        return [_jax_hessian(lambda tl, s=s: loss(t.at[s].set(tl), X, Y), t[s], k_blocks)
                for s in _block_slices(net)]

    theta, X, V = (jnp.asarray(a) for a in (p.theta, p.X, p.V))
    v, Y = jnp.asarray(p.v), jnp.asarray(p.Y)

    def compiled(fn, *args):
        exe = jax.jit(fn).lower(*args).compile()   # ahead of time: compiling runs nothing
        return lambda: jax.block_until_ready(exe(*args))

    d = (theta, X, Y)
    make = {
        "loss_and_grad": lambda: compiled(jax.value_and_grad(loss), *d),
        "hvp": lambda: compiled(hvp, *d, v),
        "ggn_vp": lambda: compiled(ggn_vp, *d, v),
        "hvp_V32": lambda: compiled(jax.vmap(hvp, in_axes=(None, None, None, 1), out_axes=1), *d, V),
        "jacobian": lambda: compiled(per_sample_jac, theta, X),
        "ggn": lambda: compiled(ggn, *d),
        "hessian": lambda: compiled(lambda t, X, Y: _jax_hessian(lambda t_: loss(t_, X, Y), t, k_full), *d),
        "ggn_blocks": lambda: compiled(ggn_blocks, *d),
        "hessian_blocks": lambda: compiled(hessian_blocks, *d),
        "ggn_diag": lambda: compiled(ggn_diag, *d),
    }

    def how(k, n):
        return "jax.hessian (jacfwd(jacrev))" if k >= n else \
            f"jacfwd(jacrev) as lax.map(jvp(grad)) over identity columns, batch_size={k}"

    entries = _transform_entries(sz, make, "value_and_grad", how(k_full, p.P), how(k_blocks, max(net.layer_sizes)))
    return {q: (mk, f"jit, compiled ahead of time in prepare: {note}", peak)
            for q, (mk, note, peak) in entries.items()}, _flat_convert


# --------------------------------------------------------------------------- nn.Sequential peers
class _TorchLayout:
    """nn.Linear holds W as (out, in), taylorkern as (in, out): perm[j] is our index of torch entry j
    (torch order: W1.ravel(), b1, W2.ravel(), b2, ... of the nn.Linear parameters)."""

    def __init__(self, net):
        self.local = [np.concatenate([np.arange(a * b).reshape(a, b).T.ravel(), a * b + np.arange(b)])
                      for a, b in zip(net.sizes[:-1], net.sizes[1:])]
        self.perm = np.concatenate([o + loc for o, loc in zip(net.offsets, self.local)])

    def to_torch(self, x):
        return x[self.perm]

    @staticmethod
    def _back(perm, y, matrix=False):
        out = np.empty_like(y)
        out[np.ix_(perm, perm) if matrix else perm] = y
        return out

    def vec(self, y):  # torch order -> ours along axis 0; y a tensor or a list of per-parameter tensors
        y = np.concatenate([_np(t).ravel() for t in y]) if isinstance(y, (list, tuple)) else _np(y)
        return self._back(self.perm, y)

    def mat(self, M):
        return self._back(self.perm, _np(M), matrix=True)

    def block(self, l, B):
        return self._back(self.local[l], _np(B), matrix=True)


def _sequential_setup(p, peer):
    """nn.Sequential(Linear, act, ..., Linear) holding theta, the mean-reduced criterion, tensors."""
    import torch

    acts = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    net = p.net
    missing = [a for a in net.activations if a not in acts]
    if missing:
        raise RuntimeError(f"peer {peer!r}: no nn.Module activation set up for {missing}")
    dt = torch.float64 if p.dtype == np.float64 else torch.float32
    modules = []
    for l, (W, b) in enumerate(net.unflatten(p.theta)):
        lin = torch.nn.Linear(*W.shape, dtype=dt)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W.T))
            lin.bias.copy_(torch.as_tensor(b))
        modules.append(lin)
        if l < len(net.activations):
            modules.append(acts[net.activations[l]]())
    model = torch.nn.Sequential(*modules)
    mse = net.loss_name == "mse"
    crit = torch.nn.MSELoss() if mse else torch.nn.CrossEntropyLoss()   # both reduction="mean"
    layout = _TorchLayout(net)
    X = torch.as_tensor(p.X)
    Y = torch.as_tensor(p.Y) if mse else torch.as_tensor(p.Y, dtype=torch.long)
    v, V = (torch.as_tensor(layout.to_torch(a)) for a in (p.v, p.V))
    return model, crit, layout, (X, Y, v, V)


def _sequential_convert(layout):
    def convert(quantity, r):
        if quantity == "loss_and_grad":
            return _np(r[0]), layout.vec(r[1])
        if quantity.endswith("_blocks"):
            return [layout.block(l, B) for l, B in enumerate(r)]
        if quantity in ("hessian", "ggn"):
            return layout.mat(r)
        return layout.vec(r)
    return convert


def _build_backpack(p, sz):
    import torch
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact, DiagHessian, SqrtGGNExact
    from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist
    from backpack.hessianfree.hvp import hessian_vector_product

    # extend() adds full backward hooks; torch warns on every backward that no input requires grad
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    model, crit, layout, (X, Y, v, _) = _sequential_setup(p, "backpack")
    model, crit = extend(model), extend(crit)
    params = list(model.parameters())
    v_list = [c.view_as(q) for c, q in zip(v.split([q.numel() for q in params]), params)]

    def loss_and_grad():
        L = crit(model(X), Y)
        return L.detach(), torch.autograd.grad(L, params)

    def hvp():
        return hessian_vector_product(crit(model(X), Y), params, v_list)

    def ggn_vp():
        F = model(X)
        return ggn_vector_product_from_plist(crit(F, Y), F, params, v_list)

    def extension(ext, field):
        model.zero_grad()
        with backpack(ext):
            crit(model(X), Y).backward()
        return [getattr(q, field) for q in params]

    def ggn(per_layer=False):
        # G = S^T S with S (C*N, P) the concatenated sqrt_ggn_exact factors (BackPACK's documented route)
        S = torch.cat([s.flatten(2) for s in extension(SqrtGGNExact(), "sqrt_ggn_exact")], 2).flatten(0, 1)
        return [S[:, s].T @ S[:, s] for s in _block_slices(p.net)] if per_layer else S.T @ S

    entries = {
        "loss_and_grad": (lambda: loss_and_grad, "autograd.grad through the extended model (no extension)", 0),
        "hvp": (lambda: hvp, "backpack.hessianfree.hessian_vector_product (exact, double backward)", 0),
        "ggn_vp": (lambda: ggn_vp, "backpack.hessianfree.ggn_vector_product_from_plist (exact R-op/L-op)", 0),
        "ggn": (lambda: ggn, "SqrtGGNExact factors S, G = S^T S", 2 * sz.NJ + sz.full),
        "ggn_blocks": (lambda: functools.partial(ggn, True), "SqrtGGNExact factors S, per-layer S_l^T S_l",
                       2 * sz.NJ + sz.blocks),
        "ggn_diag": (lambda: functools.partial(extension, DiagGGNExact(), "diag_ggn_exact"),
                     "DiagGGNExact extension (one backward)", 0),
        "hessian_diag": (lambda: functools.partial(extension, DiagHessian(), "diag_h"),
                         "DiagHessian extension (one backward, exact incl. activation curvature)", 0),
    }
    return entries, _sequential_convert(layout)


def _build_curvlinops(p, sz):
    import torch
    from curvlinops import GGNLinearOperator, HessianLinearOperator

    model, crit, layout, (X, Y, v, V) = _sequential_setup(p, "curvlinops")
    params = list(model.parameters())
    data = [(X, Y)]  # all N samples as one batch
    kinds = {"hessian": HessianLinearOperator, "ggn": GGNLinearOperator}
    ops = {}

    def op(kind, layer=None):
        key = (kind, layer)
        if key not in ops:
            ps = params if layer is None else params[2 * layer:2 * layer + 2]
            ops[key] = kinds[kind](model, crit, ps, data)
        return ops[key]

    def dense(A, k):
        """A @ I, the identity fed in column chunks of k when all at once would not fit."""
        n = A.shape[1]
        if k >= n:
            return A @ torch.eye(n, dtype=X.dtype)
        out = torch.empty(n, n, dtype=X.dtype)
        for i in range(0, n, k):
            m = min(k, n - i)
            E = torch.zeros(n, m, dtype=X.dtype)
            E[torch.arange(i, i + m), torch.arange(m)] = 1
            out[:, i:i + m] = A @ E
        return out

    k_full, k_blocks = sz.chunk(sz.full), sz.chunk(sz.blocks)
    n_layers = p.net.num_layers
    how_full = "H @ eye(P)" if k_full >= p.P else f"H @ eye(P) in column chunks of {k_full}"
    how_blocks = "H_l @ eye(P_l)" if k_blocks >= max(p.net.layer_sizes) else \
        f"H_l @ eye(P_l) in column chunks of {k_blocks}"
    entries = {"hvp": (lambda: functools.partial(op("hessian").__matmul__, v), "HessianLinearOperator @ v", 0),
               "ggn_vp": (lambda: functools.partial(op("ggn").__matmul__, v), "GGNLinearOperator @ v", 0),
               "hvp_V32": (lambda: functools.partial(op("hessian").__matmul__, V),
                           "HessianLinearOperator @ V (vmapped matmat)", 0)}

    def blocks(kind):
        layer_ops = [op(kind, l) for l in range(n_layers)]  # built (and probed) in prepare
        return lambda: [dense(A, k_blocks) for A in layer_ops]

    for kind, name in (("hessian", "Hessian"), ("ggn", "GGN")):
        entries[kind] = (lambda kind=kind: functools.partial(dense, op(kind), k_full),
                         f"{name}LinearOperator: {how_full.replace('H', name[0])}", 2 * sz.full)
        entries[kind + "_blocks"] = (
            functools.partial(blocks, kind),
            f"one {name}LinearOperator per layer (params [W_l, b_l]): {how_blocks.replace('H', name[0])}",
            2 * sz.blocks)
    return entries, _sequential_convert(layout)


_BUILDERS = {"torch": _build_torch, "torch.func": _build_torch_func, "jax.jit": _build_jax,
             "backpack": _build_backpack, "curvlinops": _build_curvlinops}
