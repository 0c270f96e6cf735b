"""GPU arrays as the cuda backend takes them, without a copy: objects with
``__cuda_array_interface__`` (CuPy, PyTorch, Numba, taylorkern's DeviceArray) and objects that
export a CUDA DLPack capsule (``__dlpack__`` / ``__dlpack_device__``: JAX, and any array-API
library).  Pure Python (ctypes), so that it imports and is tested where there is no GPU.

A DLPack capsule is read, not consumed: it stays named "dltensor", so when it is garbage
collected its own destructor hands the tensor back to the producer.  The memory stays valid
while the exporting object lives, which the caller holds for the duration of a call.
"""

from __future__ import annotations

import ctypes

KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13
_GPU_DEVICES = (KDL_CUDA, KDL_CUDA_MANAGED)
_TYPESTR = {(0, 64): "<i8", (0, 32): "<i4", (1, 64): "<u8", (2, 64): "<f8", (2, 32): "<f4"}  # (code, bits)


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):  # DLTensor, the first member of DLManagedTensor
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32), ("dtype", _DataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def dlpack_device(x):
    """(DLPack device type, device id) of x, or None where x exports no DLPack device."""
    get = getattr(x, "__dlpack_device__", None)
    if get is None:
        return None
    try:
        kind, dev = get()
        return int(kind), int(dev)
    except Exception:  # a producer that cannot say: not an array we can take
        return None


def is_device_array(x) -> bool:
    """Whether x is GPU memory the cuda backend takes in place."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = dlpack_device(x)
    return dev is not None and dev[0] in _GPU_DEVICES


def read_capsule(capsule):
    """The fields of a "dltensor" capsule as a ``__cuda_array_interface__`` (version 3) dict,
    plus "device": (DLPack device type, id).  Strides are in bytes (None: C-contiguous)."""
    if not _capsule_valid(capsule, b"dltensor"):
        raise TypeError("expected an unused DLPack capsule named 'dltensor'")
    t = _Tensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    key = (int(t.dtype.code), int(t.dtype.bits))
    if int(t.dtype.lanes) != 1 or key not in _TYPESTR:
        raise TypeError(f"DLPack dtype (code {key[0]}, {key[1]} bits, {t.dtype.lanes} lanes) is not supported")
    ndim, itemsize = int(t.ndim), key[1] // 8
    shape = tuple(int(t.shape[i]) for i in range(ndim))
    strides = tuple(int(t.strides[i]) * itemsize for i in range(ndim)) if t.strides else None
    return {"shape": shape, "typestr": _TYPESTR[key], "data": (int(t.data or 0) + int(t.byte_offset), False),
            "strides": strides, "version": 3, "stream": None,
            "device": (int(t.device.device_type), int(t.device.device_id))}


def interface(x):
    """x's ``__cuda_array_interface__``, or the same dict read from its DLPack export (the
    capsule kept in it under "capsule", alive as long as the dict)."""
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return cai
    try:  # stream 1: the producer orders its work before the legacy default stream, which ours follow
        capsule = x.__dlpack__(stream=1)
    except (TypeError, ValueError, NotImplementedError):  # a producer that does not take that argument
        ready = getattr(x, "block_until_ready", None)  # JAX's way of saying "its work is done"
        if ready is not None:
            ready()
        capsule = x.__dlpack__()
    cai = read_capsule(capsule)
    cai["capsule"] = capsule
    return cai
