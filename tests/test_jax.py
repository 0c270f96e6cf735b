"""taylorkern.jax: Flax linen Dense stacks and plain JAX parameter pytrees <-> (MLP, theta),
checked against JAX's own forward pass and autograd (losses and gradients to 1e-12 in
float64); exact round trips; JAX CPU arrays read in place by every MLP call; refusals naming
the layer, the activation's position or the argument."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import BACKENDS, MLP_CALLS, call_mlp, compare

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install 'taylorkern[jax]')")
jax.config.update("jax_enable_x64", True)  # float64 comparisons; each test below sets what it needs
jnp = jax.numpy

import taylorkern as tk  # noqa: E402
from taylorkern.jax import (  # noqa: E402
    activation_functions,
    apply,
    from_flax,
    from_pytree,
    identity,
    to_flax,
    to_pytree,
)

JAX_ACT = {"identity": identity, "relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
           "softplus": jax.nn.softplus, "gelu": jax.nn.gelu, "sin": jnp.sin}

CASES = [
    ([3, 5, 2], "tanh", "mse", 7), ([4, 6, 3], "tanh", "ce", 9),
    ([2, 7, 1], "relu", "mse", 11), ([5, 4, 4, 3], "relu", "ce", 6),
    ([3, 6, 2], "sigmoid", "mse", 5), ([3, 4, 5, 4], "sigmoid", "ce", 8),
    ([4, 3, 3], "softplus", "mse", 10), ([2, 6, 3], "softplus", "ce", 4),
    ([3, 8, 2], "gelu", "mse", 6), ([6, 5, 2], "gelu", "ce", 12),
    ([2, 5, 5, 1], "sin", "mse", 9), ([3, 4, 3], "sin", "ce", 7),
    ([3, 4, 2], "identity", "mse", 5),
    ([3, 5, 4, 6, 2], ["gelu", "sin", "relu"], "mse", 8), ([2, 4, 3, 3], ["softplus", "tanh"], "ce", 10),
]


def case_id(c):
    sizes, act, loss, N = c
    return f"{loss}-{act if isinstance(act, str) else '+'.join(act)}-{'x'.join(map(str, sizes))}"


def hidden(case):
    sizes, act, _, _ = case
    return [act] * (len(sizes) - 2) if isinstance(act, str) else list(act)


def random_layers(sizes, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray((rng.standard_normal((a, b)) * 1.2 / np.sqrt(a)).astype(dtype)),
             jnp.asarray((0.4 * rng.standard_normal(b)).astype(dtype))) for a, b in zip(sizes[:-1], sizes[1:])]


def random_data(sizes, loss, N, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((N, sizes[0])).astype(dtype))
    Y = (jnp.asarray(rng.standard_normal((N, sizes[-1])).astype(dtype)) if loss == "mse"
         else jnp.asarray(rng.integers(0, sizes[-1], N)))
    return X, Y


def data_term(F, Y, loss):
    """The losses as JAX users write them: mean squared error, mean softmax cross-entropy."""
    if loss == "mse":
        return jnp.mean((F - Y) ** 2)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(F, axis=1), Y[:, None], axis=1))


def l2_term(tree, l2):
    return 0.5 * l2 * sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(tree))


def layout(layers):
    """[(W, b), ...] in taylorkern's layout, written out here: concat(W.ravel(), b, ...)."""
    return np.concatenate([np.concatenate([np.ravel(W), np.ravel(b)]) for W, b in layers]).astype(np.float64)


# ----------------------------------------------------------------------------- plain pytrees
# JAX's side is computed once per case, jitted (eager JAX compiles op by op: 5x slower here), and
# compared with every backend in turn; l2 on every other case.
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pytree_loss_and_gradient_match_jax_autograd(case):
    sizes, _, loss, N = case
    l2 = 0.2 * (CASES.index(case) % 2)
    acts = hidden(case)
    layers = random_layers(sizes, seed=N + len(sizes))
    X, Y = random_data(sizes, loss, N)

    def objective(params):
        a = X
        for l, (W, b) in enumerate(params):
            a = a @ W + b
            if l < len(acts):
                a = JAX_ACT[acts[l]](a)
        return data_term(a, Y, loss) + l2_term(params, l2)

    value, grads = jax.jit(jax.value_and_grad(objective))(layers)  # one compilation, not one per op
    net, theta = from_pytree(layers, [JAX_ACT[a] for a in acts], loss=loss, l2=l2)
    assert net.sizes == tuple(sizes) and net.activations == tuple(acts) and net.dtype == np.float64
    np.testing.assert_array_equal(theta, layout(layers))
    outputs = np.asarray(apply(net, to_pytree(net, theta), X))
    for name in BACKENDS:
        with tk.use_backend(name):
            ours, grad = net.loss_and_grad(theta, X, Y)  # JAX arrays as they are
            compare(ours, float(value), rtol=1e-12, what=f"{name}: loss")
            compare(grad, layout(grads), rtol=1e-12, what=f"{name}: gradient")
            compare(net.predict(theta, X), outputs, rtol=1e-12, what=f"{name}: apply")


@pytest.mark.parametrize("case", [CASES[1], CASES[8], CASES[14]], ids=case_id)
def test_float32_pytrees(case):
    sizes, _, loss, N = case
    acts = hidden(case)
    layers = random_layers(sizes, seed=2, dtype=np.float32)
    X, Y = random_data(sizes, loss, N, np.float32)
    net, theta = from_pytree(layers, acts, loss=loss)
    assert net.dtype == np.float32 and theta.dtype == np.float32
    wide = [(W.astype(jnp.float64), b.astype(jnp.float64)) for W, b in layers]

    def objective(params):
        return data_term(apply(net, params, X.astype(jnp.float64)), Y if loss == "ce" else Y.astype(jnp.float64),
                         loss)

    value, grads = jax.jit(jax.value_and_grad(objective))(wide)  # one compilation, not one per op
    for name in BACKENDS:
        with tk.use_backend(name):
            ours, grad = net.loss_and_grad(theta, X, Y)
            compare(ours, float(value), np.float32, what=f"{name}: loss")
            compare(grad, layout(grads), np.float32, what=f"{name}: gradient")


def test_pytree_forms_and_order():
    sizes = [2] + [3] * 10 + [2]  # 11 layers: Dense_10 comes after Dense_9, not after Dense_1
    layers = random_layers(sizes, seed=4)
    net, theta = from_pytree(layers, "tanh")
    as_dicts = [{"kernel": W, "bias": b} for W, b in layers]
    as_wb = [{"W": np.asarray(W), "b": np.asarray(b)} for W, b in layers]
    shuffled = {f"Dense_{i}": as_dicts[i] for i in np.random.default_rng(0).permutation(len(layers))}
    for form in (as_dicts, as_wb, shuffled, tuple(layers), {"params": shuffled}):
        if isinstance(form, dict) and "params" in form:
            net2, theta2 = from_flax(form, jnp.tanh)
        else:
            net2, theta2 = from_pytree(form, "tanh")
        assert net2.sizes == net.sizes and np.array_equal(theta2, theta)
    # names without one numbered prefix: the mapping's own order
    named = {"encoder": as_dicts[0], "middle": as_dicts[1], "head": as_dicts[2]}
    net3, theta3 = from_pytree(named, "relu")
    assert net3.sizes == (2, 3, 3, 3) and np.array_equal(theta3, layout(layers[:3]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("acts", [["tanh"], ["relu", "sigmoid"], ["softplus", "gelu", "sin"], ["identity"], []],
                         ids=lambda a: "+".join(a) or "linear")
def test_round_trips_are_exact(acts, dtype):
    sizes = [3] + [4 + i for i in range(len(acts))] + [2]
    net = tk.MLP(sizes, activation=acts, loss="ce", l2=0.1, dtype=dtype)
    theta = net.init(seed=1, scheme="normal", std=0.7) + np.linspace(-1, 1, net.num_params).astype(dtype)
    variables = to_flax(net, theta)
    assert list(variables["params"]) == [f"Dense_{l}" for l in range(net.num_layers)]
    assert all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(variables))
    for source, back in ((variables, from_flax), (to_pytree(net, theta), from_pytree)):
        net2, theta2 = back(source, activation_functions(net), loss="ce", l2=0.1)
        assert (net2.sizes, net2.activations, net2.dtype, net2.loss_name, net2.l2) == \
            (net.sizes, net.activations, net.dtype, net.loss_name, net.l2)
        assert theta2.dtype == theta.dtype and np.array_equal(theta2, theta)
    net3, theta3 = from_pytree(to_pytree(net, theta), list(net.activations), loss="ce")
    assert np.array_equal(theta3, theta)


def test_apply_is_jax_friendly():
    net = tk.MLP([3, 6, 4, 2], activation=["gelu", "sin"], loss="mse")
    theta = net.init(seed=3)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((5, 3)))
    fast = jax.jit(functools.partial(apply, net))
    for params in (to_flax(net, theta), to_pytree(net, theta)):
        compare(fast(params, X), net.predict(theta, X), rtol=1e-12)


# ----------------------------------------------------------------------------- Flax modules
def flax_module(sizes, acts, dtype, use_bias=True):
    fnn = pytest.importorskip("flax.linen", reason="Flax is not installed")

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            for l, width in enumerate(sizes[1:]):
                x = fnn.Dense(width, dtype=dtype, param_dtype=dtype, use_bias=use_bias)(x)
                if l < len(acts):
                    x = JAX_ACT[acts[l]](x)
            return x

    return Net()


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[9], CASES[13], CASES[14]], ids=case_id)
def test_flax_loss_and_gradient_match_jax_autograd(case):
    sizes, _, loss, N = case
    acts = hidden(case)
    module = flax_module(sizes, acts, jnp.float64)
    X, Y = random_data(sizes, loss, N)
    run = jax.jit(module.apply)  # jitted: JAX's eager first calls compile op by op, slowly
    variables = jax.jit(module.init)(jax.random.PRNGKey(N), X)
    rng = np.random.default_rng(N)  # non-zero biases
    variables = jax.tree_util.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), variables)
    l2 = 0.1

    def objective(v):
        return data_term(run(v, X), Y, loss) + l2_term(v, l2)

    value, grads = jax.jit(jax.value_and_grad(objective))(variables)  # one compilation, not one per op
    net, theta = from_flax(variables, [JAX_ACT[a] for a in acts], loss=loss, l2=l2)
    assert net.sizes == tuple(sizes) and net.activations == tuple(acts)
    g = grads["params"]
    expected = layout([(g[f"Dense_{l}"]["kernel"], g[f"Dense_{l}"]["bias"]) for l in range(len(g))])
    outputs = np.asarray(run(variables, X))
    for name in BACKENDS:
        with tk.use_backend(name):
            ours, grad = net.loss_and_grad(theta, X, Y)
            compare(ours, float(value), rtol=1e-12, what=f"{name}: loss")
            compare(grad, expected, rtol=1e-12, what=f"{name}: gradient")
            compare(net.predict(theta, X), outputs, rtol=1e-12, what=f"{name}: outputs")
    # and back: the module runs on to_flax's variables and gives the same outputs
    compare(run(to_flax(net, theta), X), outputs, rtol=0.0, what="to_flax")


def test_flax_sequential():
    fnn = pytest.importorskip("flax.linen", reason="Flax is not installed")
    module = fnn.Sequential([fnn.Dense(5, param_dtype=jnp.float64), fnn.tanh, fnn.Dense(4, param_dtype=jnp.float64),
                             fnn.relu, fnn.Dense(2, param_dtype=jnp.float64)])
    X = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)))
    variables = module.init(jax.random.PRNGKey(0), X)
    assert set(variables["params"]) == {"layers_0", "layers_2", "layers_4"}
    net, theta = from_flax(variables, [fnn.tanh, fnn.relu])
    compare(net.predict(theta, X), module.apply(variables, X), rtol=1e-12)


def test_flax_without_bias_is_refused():
    module = flax_module([3, 4, 2], ["tanh"], jnp.float64, use_bias=False)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"^params\['Dense_0'\]: has 'kernel' but no 'bias'"):
        from_flax(variables, "tanh")


# ----------------------------------------------------------------------------- arrays as inputs
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_jax_arrays_reach_the_kernels_uncopied(recording_backend, loss):
    sizes = [4, 6, 3]
    net, theta_np = from_pytree(random_layers(sizes, 0), "tanh", loss=loss)
    X, Y = random_data(sizes, loss, 9)
    theta = jnp.asarray(theta_np)
    V = jnp.asarray(np.random.default_rng(2).standard_normal((net.num_params, 2)))
    for name in MLP_CALLS:
        expected = call_mlp(net, name, theta_np, np.array(X), np.array(Y), np.array(V))  # copies
        recording_backend.calls.clear()
        got = call_mlp(net, name, theta, X, Y, V)
        compare(got, expected, rtol=0.0, what=name)
        assert recording_backend.calls, name
        for attr, args in recording_backend.calls:
            assert args[1].ctypes.data == theta.unsafe_buffer_pointer(), f"{name} ({attr}): theta was copied"
            assert args[2].ctypes.data == X.unsafe_buffer_pointer(), f"{name} ({attr}): X was copied"
            if len(args) > 3 and not isinstance(args[3], str):
                assert args[3].ctypes.data == Y.unsafe_buffer_pointer(), f"{name} ({attr}): Y was copied"
            if attr in ("hvp", "ggn_vp"):
                assert args[4].ctypes.data == V.unsafe_buffer_pointer(), f"{name} ({attr}): V was copied"


# ----------------------------------------------------------------------------- refusals
def _layers():
    return [{"kernel": W, "bias": b} for W, b in random_layers([3, 4, 2], 0)]


def _without(key, index=1):
    layers = _layers()
    del layers[index][key]
    return layers


BAD = [
    ("no-bias", lambda: (_without("bias"), "tanh"), ValueError, r"^params\[1\]: has 'kernel' but no 'bias'"),
    ("extra-entry", lambda: ([{**_layers()[0], "scale": jnp.ones(4)}, _layers()[1]], "tanh"), ValueError,
     r"^params\[0\]: entries \['scale'\] have no counterpart"),
    ("not-a-layer", lambda: ([_layers()[0], {"mean": jnp.ones(2)}], "tanh"), ValueError,
     r"^params\[1\]: expected a dense layer's 'kernel' and 'bias'"),
    ("erf-gelu", lambda: (_layers(), functools.partial(jax.nn.gelu, approximate=False)), ValueError,
     r"^activation: .* is not an activation taylorkern has"),
    ("lambda", lambda: (random_layers([3, 4, 4, 2], 0), ["tanh", lambda x: x * 2]), ValueError,
     r"^activation\[1\]: .* is not an activation taylorkern has"),
    ("unknown-name", lambda: (_layers(), "swish"), ValueError, r"^activation: unknown 'swish'"),
    ("count", lambda: (_layers(), ["tanh", "relu"]), ValueError, r"^activation: a list needs one entry per hidden"),
    ("chain", lambda: ([_layers()[0], {"kernel": jnp.ones((5, 2)), "bias": jnp.ones(2)}], "tanh"), ValueError,
     r"^params\[1\]: takes 5 inputs but params\[0\] gives 4"),
    ("bias-shape", lambda: ([{"kernel": jnp.ones((3, 4)), "bias": jnp.ones(3)}], "tanh"), ValueError,
     r"^params\[0\]: expected W of shape"),
    ("int", lambda: ([(np.ones((3, 2), np.int32), np.ones(2, np.int32))], "tanh"), TypeError,
     r"^params: arrays of dtype int32; pass dtype="),
    ("mixed", lambda: ([(np.ones((3, 2)), np.ones(2, np.float32))], "tanh"), TypeError, r"several dtypes"),
    ("nan", lambda: ([(np.full((3, 2), np.nan), np.ones(2))], "tanh"), ValueError, r"^params\[0\]: has NaN or Inf"),
    ("empty", lambda: ([], "tanh"), ValueError, r"^params: has no layer"),
    ("overflow", lambda: ([(np.full((3, 2), 1e300), np.ones(2))], "tanh", np.float32), ValueError,
     r"^params\[0\]: values beyond the float32 range"),
    ("not-a-tree", lambda: (jnp.ones(3), "tanh"), TypeError, r"^params: expected a list of layers"),
]


@pytest.mark.parametrize("make, error, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_unrepresentable_pytrees_are_refused(make, error, pattern):
    params, activation, *dtype = make()
    with pytest.raises(error, match=pattern):
        from_pytree(params, activation, dtype=dtype[0] if dtype else None)


def test_flax_variables_refusals():
    params = {f"Dense_{i}": layer for i, layer in enumerate(_layers())}
    with pytest.raises(ValueError, match=r"^variables: collections \['batch_stats'\] have no counterpart"):
        from_flax({"params": params, "batch_stats": {}}, "tanh")
    with pytest.raises(ValueError, match=r"^params\['Dense_1'\]: not a Dense layer"):
        from_flax({"params": {**params, "Dense_1": {"embedding": jnp.ones((3, 2))}}}, "tanh")
    with pytest.raises(TypeError, match="^variables: expected Flax variables"):
        from_flax([params], "tanh")
    assert from_flax(params, "tanh")[0].sizes == (3, 4, 2)  # the "params" entry alone


def test_float64_network_needs_x64():
    net = tk.MLP([3, 4, 2])
    theta = net.init(seed=0)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="^net: a float64 network, but JAX is in float32 mode"):
            to_flax(net, theta)
        with pytest.raises(ValueError, match="float32 mode"):
            to_pytree(net, theta)
        net32 = tk.MLP([3, 4, 2], dtype=np.float32)
        assert to_pytree(net32, theta.astype(np.float32))[0]["kernel"].dtype == jnp.float32
    finally:
        jax.config.update("jax_enable_x64", True)
    with pytest.raises(TypeError, match="^net: expected a taylorkern.MLP"):
        to_flax("net", theta)


def test_activation_without_a_function_is_refused():
    """An activation taylorkern may gain before taylorkern.jax maps it: refused, not a KeyError."""
    net = tk.MLP([3, 4, 2], activation="tanh")
    net.activations = ("swish",)  # stands in for a name added to tk.ACTIVATIONS later
    for fn in (to_flax, to_pytree):
        with pytest.raises(ValueError, match="^net: activation 'swish' has no JAX function"):
            fn(net, np.zeros(net.num_params))
    with pytest.raises(ValueError, match="no JAX function"):
        activation_functions(net)
