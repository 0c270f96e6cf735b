"""Array-likes in MLP calls, without any optional framework: inputs are read in place where
their memory allows (numpy arrays, objects with only ``__dlpack__``), and objects that are not
in host memory or cannot be read are refused with a TypeError naming the argument before any
kernel runs.  PyTorch and JAX tensors: test_torch.py and test_jax.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MLP_CALLS, call_mlp, compare, make_problem


class DLPackOnly:
    """An array that offers nothing but DLPack (as some array-API libraries do)."""

    def __init__(self, arr):
        self._arr = arr
        self.shape = arr.shape

    def __dlpack__(self, **kwargs):
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


class OnDevice:
    """Claims to live on a CUDA device; reading it as a host array must never be tried."""

    shape = (4, 3)

    def __dlpack_device__(self):
        return (2, 0)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("a device array was read as a host array")


class Unreadable:
    """Refuses conversion, as a torch tensor that requires grad does."""

    shape = (4, 3)

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("cannot convert this array")


def _args(p):
    return dict(theta=p.theta, X=p.X, Y=p.Y, V=p.V[:, 0])


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_dlpack_only_inputs_are_read_in_place(recording_backend, loss):
    p = make_problem([3, 4, 2], "tanh", loss, N=6, l2=0.1)
    names = ["theta", "X"] + (["Y"] if loss == "mse" else []) + ["V"]
    for name in MLP_CALLS:
        args = _args(p)
        wrapped = {k: DLPackOnly(v) for k, v in args.items() if k in names}
        recording_backend.calls.clear()
        got = call_mlp(p.net, name, **{**args, **wrapped})
        compare(got, call_mlp(p.net, name, **args), what=name)
        seen = recording_backend.calls[0][1]
        for index, key in ((1, "theta"), (2, "X")):
            assert np.shares_memory(seen[index], args[key]), f"{name}: {key} was copied"


@pytest.mark.parametrize("arg", ["theta", "X", "Y", "V"])
@pytest.mark.parametrize("bad, fragment", [(OnDevice(), "on a device"), (Unreadable(), "cannot be read")])
def test_unreadable_inputs_are_refused_naming_the_argument(recording_backend, arg, bad, fragment):
    p = make_problem([3, 4, 2], "relu", "mse", N=4)
    args = {**_args(p), arg: bad}
    for name in ("hvp", "loss_and_grad", "predict"):
        if name == "predict" and arg in ("Y", "V") or name == "loss_and_grad" and arg == "V":
            continue
        with pytest.raises(TypeError, match=rf"^{arg}: .*{fragment}"):
            call_mlp(p.net, name, **args)
    assert recording_backend.calls == [], "a kernel ran before the input was refused"


def test_numpy_inputs_reach_the_kernels_uncopied(recording_backend):
    p = make_problem([3, 5, 2], "tanh", "mse", N=7)
    for name in MLP_CALLS:
        recording_backend.calls.clear()
        call_mlp(p.net, name, **_args(p))
        attr, seen = recording_backend.calls[0]
        assert seen[1] is p.theta or np.shares_memory(seen[1], p.theta), f"{name}: theta copied"
        assert np.shares_memory(seen[2], p.X), f"{name}: X copied"
