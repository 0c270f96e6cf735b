"""taylorkern.torch: nn.Sequential <-> (MLP, theta), checked against PyTorch's own forward pass
and autograd (losses, gradients, a full Hessian) to 1e-12 in float64; exact round trips; CPU
tensors read in place by every MLP call; refusals naming the layer or the argument."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MLP_CALLS, call_mlp, compare
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'taylorkern[torch]')")
nn = torch.nn

import taylorkern as tk  # noqa: E402
from taylorkern.torch import Sin, from_torch, to_torch  # noqa: E402

TORCH_ACT = {"identity": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
             "softplus": nn.Softplus, "gelu": lambda: nn.GELU(approximate="tanh"), "sin": Sin}
TDTYPE = {np.float64: torch.float64, np.float32: torch.float32}
RTOL_TORCH = {np.float64: 1e-12, np.float32: 1e-4}


def build(sizes, acts, dtype=np.float64, seed=0):
    """A torch Sequential with O(1) pre-activations and non-zero biases, its own generator."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, dtype=TDTYPE[dtype])
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) * 1.2 / np.sqrt(a))
            lin.bias.copy_(0.4 * torch.randn(b, generator=g, dtype=torch.float64))
        layers.append(lin)
        if l < len(sizes) - 2:
            layers.append(TORCH_ACT[acts[l]]())
    return nn.Sequential(*layers)


def data(sizes, loss, N, dtype=np.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, sizes[0], generator=g, dtype=TDTYPE[dtype])
    if loss == "mse":
        Y = torch.randn(N, sizes[-1], generator=g, dtype=TDTYPE[dtype])
    else:
        Y = torch.randint(0, sizes[-1], (N,), generator=g)
    return X, Y


def torch_loss(model, X, Y, loss, l2=0.0):
    out = model(X)
    value = nn.MSELoss()(out, Y) if loss == "mse" else nn.CrossEntropyLoss()(out, Y)
    if l2:
        value = value + 0.5 * l2 * sum((p ** 2).sum() for p in model.parameters())
    return value


def theta_layout(model, attr="data"):
    """The Linear layers' weights (transposed) and biases of ``model`` in taylorkern's layout,
    written out here independently of taylorkern.torch: concat(weight.T.ravel(), bias, ...)."""
    parts = []
    for m in model:
        if isinstance(m, nn.Linear):
            parts += [getattr(m.weight, attr).detach().T.reshape(-1), getattr(m.bias, attr).detach()]
    return torch.cat(parts).to(torch.float64).numpy()


# Every activation with both losses, several shapes (1 to 3 hidden layers, mixed lists too).
CASES = [
    ([3, 5, 2], "tanh", "mse", 7), ([4, 6, 3], "tanh", "ce", 9),
    ([2, 7, 1], "relu", "mse", 11), ([5, 4, 4, 3], "relu", "ce", 6),
    ([3, 6, 2], "sigmoid", "mse", 5), ([3, 4, 5, 4], "sigmoid", "ce", 8),
    ([4, 3, 3], "softplus", "mse", 10), ([2, 6, 3], "softplus", "ce", 4),
    ([3, 8, 2], "gelu", "mse", 6), ([6, 5, 2], "gelu", "ce", 12),
    ([2, 5, 5, 1], "sin", "mse", 9), ([3, 4, 3], "sin", "ce", 7),
    ([3, 4, 2], "identity", "mse", 5), ([4, 5, 3], "identity", "ce", 6),
    ([3, 5, 4, 6, 2], ["gelu", "sin", "relu"], "mse", 8), ([2, 4, 3, 3], ["softplus", "tanh"], "ce", 10),
]


def case_id(c):
    sizes, act, loss, N = c
    return f"{loss}-{act if isinstance(act, str) else '+'.join(act)}-{'x'.join(map(str, sizes))}"


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_loss_and_gradient_match_torch_autograd(backend, case, l2):
    sizes, act, loss, N = case
    acts = [act] * (len(sizes) - 2) if isinstance(act, str) else act
    model = build(sizes, acts, seed=len(sizes) + N)
    X, Y = data(sizes, loss, N)
    net, theta = from_torch(model, loss, l2=l2)
    assert net.sizes == tuple(sizes) and net.activations == tuple(acts) and net.loss_name == loss
    value = torch_loss(model, X, Y, loss, l2)
    value.backward()
    ours, grad = net.loss_and_grad(theta, X, Y)  # the tensors themselves, no conversion
    compare(ours, value.item(), rtol=1e-12, what="loss")
    compare(grad, theta_layout(model, "grad"), rtol=1e-12, what="gradient")
    compare(net.loss(theta, X, Y), value.item(), rtol=1e-12, what="loss alone")
    with torch.no_grad():
        compare(net.predict(theta, X), model(X).numpy(), rtol=1e-12, what="outputs")


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[9], CASES[15]], ids=case_id)
def test_float32_models_match_torch(backend, case):
    sizes, act, loss, N = case
    acts = [act] * (len(sizes) - 2) if isinstance(act, str) else act
    model = build(sizes, acts, np.float32, seed=3)
    X, Y = data(sizes, loss, N, np.float32)
    net, theta = from_torch(model, loss)
    assert net.dtype == np.float32 and theta.dtype == np.float32
    value = torch_loss(model.double(), X.double(), Y if loss == "ce" else Y.double(), loss)
    value.backward()
    ours, grad = net.loss_and_grad(theta, X, Y)
    assert grad.dtype == np.float32
    compare(ours, value.item(), np.float32, what="loss")
    compare(grad, theta_layout(model, "grad"), np.float32, what="gradient")


@pytest.mark.parametrize("case", [([3, 4, 2], "tanh", "mse", 6), ([2, 3, 3, 3], ["gelu", "sin"], "ce", 5),
                                  ([3, 4, 2], "softplus", "ce", 7)], ids=case_id)
def test_hessian_matches_torch(backend, case):
    """The exact Hessian against torch's double backward through the same layout."""
    sizes, act, loss, N = case
    acts = [act] * (len(sizes) - 2) if isinstance(act, str) else act
    model = build(sizes, acts, seed=5)
    X, Y = data(sizes, loss, N, seed=6)
    net, theta = from_torch(model, loss, l2=0.05)

    def f(t):
        m = to_torch(net, theta)  # only for its structure; parameters come from t
        out, o = X, 0
        for layer in m:
            if isinstance(layer, nn.Linear):
                a, b = layer.in_features, layer.out_features
                out = out @ t[o:o + a * b].reshape(a, b) + t[o + a * b:o + (a + 1) * b]
                o += (a + 1) * b
            else:
                out = layer(out)
        value = nn.MSELoss()(out, Y) if loss == "mse" else nn.CrossEntropyLoss()(out, Y)
        return value + 0.025 * (t ** 2).sum()

    H = torch.autograd.functional.hessian(f, torch.from_numpy(theta.copy())).numpy()
    compare(net.hessian(theta, X, Y), H, rtol=1e-10, what="hessian")
    V = np.random.default_rng(0).standard_normal((net.num_params, 2))
    compare(net.hvp(theta, X, Y, torch.from_numpy(V)), H @ V, rtol=1e-10, what="hvp")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("acts", [["tanh"], ["relu", "sigmoid"], ["softplus", "gelu", "sin"], ["identity"],
                                  []], ids=lambda a: "+".join(a) or "linear")
def test_round_trips_are_exact(acts, dtype):
    sizes = [3] + [4 + i for i in range(len(acts))] + [2]
    net = tk.MLP(sizes, activation=acts, loss="mse", l2=0.1, dtype=dtype)
    theta = net.init(seed=len(acts), scheme="normal", std=0.7) + np.linspace(-1, 1, net.num_params).astype(dtype)
    model = to_torch(net, theta)
    assert [type(m) for m in model] == sum(([nn.Linear, type(TORCH_ACT[a]())] for a in acts), []) + [nn.Linear]
    assert all(p.dtype == TDTYPE[dtype] for p in model.parameters())
    net2, theta2 = from_torch(model, "mse", l2=0.1)
    assert (net2.sizes, net2.activations, net2.dtype, net2.l2) == (net.sizes, net.activations, net.dtype, net.l2)
    assert theta2.dtype == theta.dtype and np.array_equal(theta2, theta)
    for (W, b), lin in zip(net.unflatten(theta), [m for m in model if isinstance(m, nn.Linear)]):
        assert np.array_equal(lin.weight.detach().numpy(), W.T) and np.array_equal(lin.bias.detach().numpy(), b)
    # torch -> taylorkern -> torch: the same state
    model3 = to_torch(*from_torch(model))
    for (k, v), (k3, v3) in zip(model.state_dict().items(), model3.state_dict().items()):
        assert k == k3 and torch.equal(v, v3)


@st.composite
def architectures(draw):
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    acts = draw(st.lists(st.sampled_from(tk.ACTIVATIONS), min_size=depth - 1, max_size=depth - 1))
    loss = draw(st.sampled_from(["mse", "ce"] if sizes[-1] >= 2 else ["mse"]))
    return sizes, acts, loss, draw(st.integers(1, 9)), draw(st.integers(0, 2 ** 31 - 1))


@settings(max_examples=40)
@given(arch=architectures())
def test_random_architectures(arch):
    """Outputs, loss and gradient against torch on random widths, depths and activation lists,
    and the round trip through to_torch, all on the active backend."""
    sizes, acts, loss, N, seed = arch
    model = build(sizes, acts, seed=seed)
    X, Y = data(sizes, loss, N, seed=seed + 1)
    net, theta = from_torch(model, loss)
    value = torch_loss(model, X, Y, loss)
    value.backward()
    ours, grad = net.loss_and_grad(theta, X, Y)
    compare(ours, value.item(), rtol=1e-12, what="loss")
    compare(grad, theta_layout(model, "grad"), rtol=1e-12, what="gradient")
    with torch.no_grad():
        compare(net.predict(theta, X), model(X).numpy(), rtol=1e-12, what="outputs")
    net2, theta2 = from_torch(to_torch(net, theta), loss)
    assert net2.activations == net.activations and np.array_equal(theta2, theta)


def test_to_torch_leaves_torch_generator_alone():
    net = tk.MLP([4, 8, 3], activation="relu")
    theta = net.init(seed=0)
    state = torch.get_rng_state()
    to_torch(net, theta)
    assert torch.equal(state, torch.get_rng_state())


def test_to_torch_writes_into_an_existing_model():
    model = build([3, 5, 2], ["tanh"])
    net, theta = from_torch(model)
    new = theta + 1.0
    out = to_torch(net, new, model=model)
    assert out is model
    np.testing.assert_array_equal(from_torch(model)[1], new)
    with pytest.raises(ValueError, match="model: its layers"):
        to_torch(net, theta, model=build([3, 5, 2], ["relu"]))
    with pytest.raises(ValueError, match="theta: expected shape"):
        to_torch(net, theta[:-1])
    with pytest.raises(TypeError, match="net: expected a taylorkern.MLP"):
        to_torch("mlp", theta)


def test_skipped_and_nested_layers():
    base = build([3, 4, 4, 2], ["tanh", "relu"])
    lin = [m for m in base if isinstance(m, nn.Linear)]
    drop = nn.Dropout(0.3)
    drop.eval()
    model = nn.Sequential(nn.Sequential(lin[0], nn.Tanh(), drop), nn.Identity(), lin[1], nn.ReLU(),
                          nn.Dropout(0.0), lin[2], nn.Identity())
    net, theta = from_torch(model)
    assert net.activations == ("tanh", "relu")
    np.testing.assert_array_equal(theta, from_torch(base)[1])
    # no activation (or Identity alone) between two Linears is the identity activation
    net2, _ = from_torch(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5), nn.Identity(), nn.Linear(5, 1)))
    assert net2.activations == ("identity", "identity")


def _train_dropout():
    return nn.Dropout(0.5).train()


BAD = [
    ("no-bias", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False)),
     r"layer '2' \(Linear\) has no bias"),
    ("erf-gelu", lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)),
     r"layer '1' \(GELU\).*erf form.*approximate='tanh'"),
    ("softplus-beta", lambda: nn.Sequential(nn.Linear(3, 4), nn.Softplus(beta=2), nn.Linear(4, 2)),
     r"layer '1' \(Softplus\).*beta"),
    ("softplus-threshold", lambda: nn.Sequential(nn.Linear(3, 4), nn.Softplus(threshold=5), nn.Linear(4, 2)),
     r"layer '1' \(Softplus\).*threshold"),
    ("silu", lambda: nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2)),
     r"layer '1' \(SiLU\) cannot be represented"),
    ("train-dropout", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), _train_dropout(), nn.Linear(4, 2)),
     r"layer '2' \(Dropout\) is in training mode.*eval"),
    ("conv", lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Linear(4, 2)),
     r"layer '0' \(Conv1d\) cannot be represented"),
    ("batchnorm", lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
     r"layer '1' \(BatchNorm1d\) cannot be represented"),
    ("act-first", lambda: nn.Sequential(nn.Tanh(), nn.Linear(3, 4)),
     r"layer '0' \(Tanh\) comes before the first Linear"),
    ("two-acts", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.ReLU(), nn.Linear(4, 2)),
     r"layer '2' \(ReLU\) is a second activation"),
    ("act-last", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Sigmoid()),
     r"layer '3' \(Sigmoid\) follows the last Linear"),
    ("softmax-last", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.LogSoftmax(dim=1)),
     r"layer '3' \(LogSoftmax\) cannot be represented.*logits"),
    ("nested-name", lambda: nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.ELU()), nn.Linear(4, 2)),
     r"layer '1.1' \(ELU\) cannot be represented"),
    ("widths", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(5, 2)),
     r"layer '2' \(Linear\) takes 5 inputs but layer '0' gives 4"),
    ("empty", lambda: nn.Sequential(), r"has no Linear layer"),
    ("nan", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).requires_grad_(False)
     .apply(lambda m: m.bias.fill_(float("nan")) if isinstance(m, nn.Linear) else None),
     r"layer '0' \(Linear\) has NaN or Inf"),
]


@pytest.mark.parametrize("make, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_unrepresentable_models_are_refused_naming_the_layer(make, pattern):
    with pytest.raises(ValueError, match=rf"^model: .*{pattern}"):
        from_torch(make())


def test_bad_arguments():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Sequential"):
        from_torch(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="loss: unknown"):
        from_torch(nn.Sequential(nn.Linear(3, 2)), loss="hinge")
    half = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).half()
    with pytest.raises(TypeError, match="model: parameters of dtype torch.float16; pass dtype="):
        from_torch(half)
    net, theta = from_torch(half, dtype=np.float32)  # widening float16 is exact
    assert theta.dtype == np.float32
    np.testing.assert_array_equal(theta, theta_layout(half).astype(np.float32))
    mixed = nn.Sequential(nn.Linear(3, 4).double(), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="several dtypes"):
        from_torch(mixed)
    with pytest.raises(TypeError, match="dtype: expected float64 or float32"):
        from_torch(mixed, dtype=np.int32)


# ----------------------------------------------------------------------------- tensors as inputs
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_cpu_tensors_reach_the_kernels_uncopied(recording_backend, loss):
    """Every MLP call on float64 contiguous CPU tensors hands the tensors' own memory to the
    backend: theta, X, V and (mse) Y, or (ce) int64 labels."""
    sizes = [4, 6, 3]
    net, theta_np = from_torch(build(sizes, ["tanh"]), loss)
    X, Y = data(sizes, loss, 9)
    theta = torch.from_numpy(theta_np)
    V = torch.randn(net.num_params, 2, dtype=torch.float64)
    for name in MLP_CALLS:
        expected = call_mlp(net, name, theta_np.copy(), X.numpy().copy(), Y.numpy().copy(), V.numpy().copy())
        recording_backend.calls.clear()
        got = call_mlp(net, name, theta, X, Y, V)
        compare(got, expected, rtol=0.0, what=name)  # the same arrays: the same numbers
        assert recording_backend.calls, name
        for attr, args in recording_backend.calls:
            assert np.shares_memory(args[1], theta.numpy()), f"{name} ({attr}): theta was copied"
            assert np.shares_memory(args[2], X.numpy()), f"{name} ({attr}): X was copied"
            if len(args) > 3 and not isinstance(args[3], str):
                assert np.shares_memory(args[3], Y.numpy()), f"{name} ({attr}): Y was copied"
            if attr in ("hvp", "ggn_vp"):
                assert np.shares_memory(args[4], V.numpy()), f"{name} ({attr}): V was copied"


def test_other_tensors_are_converted():
    """Non-contiguous, float32 (for a float64 network) and integer-valued float labels: the same
    numbers as their numpy copies."""
    net, theta = from_torch(build([3, 5, 3], ["relu"]), "ce")
    X = torch.randn(3, 8, dtype=torch.float32).T  # (8, 3), a transposed view
    Y = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1])
    expected = net.loss_and_grad(theta, X.numpy().astype(np.float64), Y.numpy())
    compare(net.loss_and_grad(torch.from_numpy(theta), X, Y), expected, rtol=0.0)
    compare(net.loss_and_grad(theta, X, Y.to(torch.float64)), expected, rtol=0.0)


@pytest.mark.parametrize("arg", ["theta", "X", "Y", "V"])
def test_tensors_needing_grad_are_refused_naming_the_argument(recording_backend, arg):
    net, theta = from_torch(build([3, 4, 2], ["tanh"]))
    X, Y = data([3, 4, 2], "mse", 5)
    args = dict(theta=torch.from_numpy(theta), X=X, Y=Y, V=torch.ones(net.num_params, dtype=torch.float64))
    args[arg] = args[arg].clone().requires_grad_(True)
    with pytest.raises(TypeError, match=rf"^{arg}: cannot be read .*requires grad.*detach"):
        net.hvp(args["theta"], args["X"], args["Y"], args["V"])
    assert recording_backend.calls == []
    args[arg] = args[arg].detach()  # the documented way: no copy, and accepted
    net.hvp(args["theta"], args["X"], args["Y"], args["V"])


def test_minimize_takes_tensors():
    model = build([2, 6, 1], ["tanh"])
    net, theta = from_torch(model)
    X, Y = data([2, 6, 1], "mse", 40)
    res_t = tk.minimize(net, torch.from_numpy(theta), X, Y, method="lm", max_iter=5)
    res_n = tk.minimize(net, theta, X.numpy(), Y.numpy(), method="lm", max_iter=5)
    assert res_t.nit == res_n.nit and np.array_equal(res_t.theta, res_n.theta)
    assert res_t.loss < net.loss(theta, X, Y)
    to_torch(net, res_t.theta, model=model)  # the trained parameters back into the user's model
    with torch.no_grad():
        compare(nn.MSELoss()(model(X), Y).item(), res_t.loss, rtol=1e-12)


def test_activation_without_a_module_is_refused():
    """An activation taylorkern may gain before taylorkern.torch maps it: refused, not a KeyError."""
    net = tk.MLP([3, 4, 2], activation="tanh")
    net.activations = ("swish",)  # stands in for a name added to tk.ACTIVATIONS later
    with pytest.raises(ValueError, match="^net: activation 'swish' has no torch module"):
        to_torch(net, np.zeros(net.num_params))


def test_flatten_and_unflatten_take_tensors():
    model = build([3, 4, 2], ["relu"])
    net, theta = from_torch(model)
    pairs = [(m.weight.detach().T, m.bias.detach()) for m in model if isinstance(m, nn.Linear)]
    np.testing.assert_array_equal(net.flatten(pairs), theta)
    with pytest.raises(TypeError, match=r"^params\[0\]: cannot be read .*requires grad"):
        net.flatten([(model[0].weight.T, model[0].bias), pairs[1]])
    t = torch.from_numpy(theta)
    W1, b1 = net.unflatten(t)[0]  # views of the tensor's memory
    assert np.shares_memory(W1, t.numpy()) and np.array_equal(W1, model[0].weight.detach().numpy().T)


@pytest.mark.parametrize("arg", ["theta", "X", "Y", "V"])
def test_tensors_off_the_cpu_are_refused_naming_the_argument(recording_backend, arg):
    """A tensor that is not in host memory (here on torch's "meta" device, standing in for a GPU:
    the check is the same, Tensor.is_cpu) is refused before anything is read or copied."""
    net, theta = from_torch(build([3, 4, 2], ["tanh"]))
    X, Y = data([3, 4, 2], "mse", 5)
    args = dict(theta=torch.from_numpy(theta), X=X, Y=Y, V=torch.ones(net.num_params, dtype=torch.float64))
    args[arg] = torch.empty(args[arg].shape, dtype=args[arg].dtype, device="meta")
    with pytest.raises(TypeError, match=rf"^{arg}: an array on a device, not in host memory.*\.cpu\(\)"):
        net.hvp(args["theta"], args["X"], args["Y"], args["V"])
    assert recording_backend.calls == []
