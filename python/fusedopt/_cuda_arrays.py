"""What a CUDA array is, read without copying it: its device pointer, shape, dtype, memory order,
read-only flag, device and stream, from ``__cuda_array_interface__`` (CuPy, Numba), a PyTorch CUDA
tensor's own attributes, or DLPack (:mod:`fusedopt._dlpack`). :mod:`fusedopt._cuda_calls` turns a
call's arrays into the pointers ``_core.cuda`` takes; :mod:`fusedopt._arrays` describes params with
the same views. This module never imports torch or CuPy: it looks them up in ``sys.modules``.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

# DLPack device types (dlpack.h): memory the CUDA kernels can update in place.
_KDL_CUDA = 2
_KDL_CUDA_MANAGED = 13
_DLPACK_DEVICES = (_KDL_CUDA, _KDL_CUDA_MANAGED)

# __cuda_array_interface__ stream values with a fixed meaning (v3 of the interface).
LEGACY_STREAM = 1  # cudaStreamLegacy; a stream handle of 0 means the same to the CUDA runtime

C, F = 1, 2  # layout flags: C-contiguous, Fortran-contiguous

_DTYPES = {"f4": "float32", "f8": "float64"}


def is_cuda_array(x: Any) -> bool:
    """Whether ``x`` is an array in CUDA memory (PyTorch, ``__cuda_array_interface__``, DLPack)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.is_cuda
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dlpack_device = getattr(x, "__dlpack_device__", None)
    if dlpack_device is None or not hasattr(x, "__dlpack__"):
        return False
    try:
        return dlpack_device()[0] in _DLPACK_DEVICES
    except Exception:  # a producer that cannot say is not a CUDA array to us
        return False


def layout(shape: tuple, strides: tuple | None, itemsize: int) -> int:
    """Layout flags (C, F) of an array with ``strides`` in bytes (``None``: C-contiguous)."""
    if strides is None:
        return C | (F if sum(n != 1 for n in shape) <= 1 else 0)
    if 0 in shape:
        return C | F
    flags = 0
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expect:
            break
        expect *= n
    else:
        flags |= C
    expect = itemsize
    for n, s in zip(shape, strides):
        if n != 1 and s != expect:
            break
        expect *= n
    else:
        flags |= F
    return flags


class View:
    """What the CUDA backend needs of one array. ``device`` is None where the interface does not
    say (the C++ side checks it then); ``stream`` is the __cuda_array_interface__ v3 stream."""

    __slots__ = ("ptr", "shape", "dtype", "layout", "readonly", "device", "stream", "keep")

    def __init__(self, ptr, shape, dtype, layout, readonly, device, stream=None, keep=None):
        self.ptr = ptr
        self.shape = shape
        self.dtype = dtype  # "float32", "float64", or another dtype's name (refused later)
        self.layout = layout
        self.readonly = readonly
        self.device = device
        self.stream = stream
        self.keep = keep  # a DLPack capsule that must outlive the launch


def torch_view(t: Any) -> View:
    if t.is_neg():
        raise ValueError("is a negative view (torch's lazy negation); call .resolve_neg() first")
    shape = tuple(t.shape)
    dtype = str(t.dtype).removeprefix("torch.")
    if t.is_contiguous():
        lay = C | (F if sum(n != 1 for n in shape) <= 1 else 0)
    else:
        itemsize = t.element_size()
        lay = layout(shape, tuple(s * itemsize for s in t.stride()), itemsize)
    # A tensor that requires grad is updated in place through its storage, as torch.optim does
    # under no_grad. Tensors of 0 elements may have no storage (data_ptr 0); they are skipped.
    return View(t.data_ptr(), shape, dtype, lay, False, t.get_device())


def cai_view(x: Any, cai: dict) -> View:
    version = cai.get("version", 0)
    shape = tuple(cai["shape"])
    typestr = cai["typestr"]
    if typestr[0] in "<|=" and typestr[1:] in _DTYPES:
        dtype = _DTYPES[typestr[1:]]
    else:
        try:
            dtype = np.dtype(typestr).name + ("" if typestr[0] in "<|=" else " (big-endian)")
        except TypeError:
            dtype = repr(typestr)
    itemsize = int(typestr[2:]) if typestr[2:].isdigit() else 1
    if cai.get("mask") is not None:
        raise ValueError("has a mask; masked arrays are not supported")
    ptr, readonly = cai["data"]
    lay = layout(shape, cai.get("strides"), itemsize)
    device = None
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        device = x.device.id
    stream = cai.get("stream") if version >= 3 else None
    return View(ptr, shape, dtype, lay, bool(readonly), device, stream)


def _dlpack_view(x, stream):
    from . import _dlpack

    return _dlpack.view(x, stream, View, layout)


def view(x: Any, stream: int) -> View | None:
    """The View of ``x``, or None if ``x`` is not a CUDA array. ``stream`` is the launch stream
    (handed to DLPack producers, which order their pending work before it)."""
    if type(x) is np.ndarray:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch_view(x) if x.is_cuda else None
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return cai_view(x, cai)
    if is_cuda_array(x):
        return _dlpack_view(x, stream)
    return None


def launch_stream(x: Any) -> int:
    """The stream to queue on for arrays whose first parameter is ``x``: the producer's current
    stream on that array's device."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.cuda.current_stream(x.device).cuda_stream
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        with x.device:
            return cupy.cuda.get_current_stream().ptr
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None and cai.get("version", 0) >= 3 and cai.get("stream") is not None:
        return int(cai["stream"])
    return 0


# Note [The PyTorch fast path]
# Reading each tensor through torch_view and checking it in the general loops of _cuda_calls is a
# few Python calls per tensor and list, which for a step over tens of thousands of params costs
# more than the update itself. The common call -- every array a plain, contiguous CUDA tensor of
# its param's dtype, device and shape, one device for the call -- is read instead with one C-level
# map per fact over each list (type, negative bit, contiguity, dtype, device, shape, data
# pointer). Anything else (another array library, a tensor subclass, Fortran order, a mismatch,
# an error to word) goes to the general path, which reads each array and names the first bad one.
# The C++ side checks the pointers themselves either way (null, alignment, overlap, device memory).
# bench/README.md has the measured cost of both paths.


def plain_tensor_types(torch: Any) -> frozenset:
    return _torch_consts(torch)[0]


def _torch_consts(torch):
    """(the plain tensor types, {torch float dtype: its name}), made once per torch module."""
    consts = _TORCH_CONSTS.get(id(torch))
    if consts is None:
        consts = _TORCH_CONSTS[id(torch)] = (
            frozenset((torch.Tensor, torch.nn.Parameter)),
            {torch.float32: "float32", torch.float64: "float64"},
        )
    return consts


_TORCH_CONSTS: dict[int, tuple] = {}
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")


def _torch_facts(torch, arr, device_of):
    """(dtypes, devices, shapes) of a list of plain, contiguous tensors without a negative bit,
    or None."""
    T = torch.Tensor
    if type(arr) not in (list, tuple) or not set(map(type, arr)) <= plain_tensor_types(torch):
        return None
    if any(map(T.is_neg, arr)) or not all(map(T.is_contiguous, arr)):
        return None
    return list(map(_DTYPE, arr)), list(map(device_of, arr)), list(map(_SHAPE, arr))


def _torch_param_facts(torch, params, device_of):
    """``_torch_facts`` of a non-empty list of params that are all on CUDA devices, or None."""
    if not params:
        return None
    facts = _torch_facts(torch, params, device_of)
    return facts if facts is not None and min(facts[1]) >= 0 else None


def torch_fast(torch: Any, args: Any, device_of: Any = None) -> tuple | None:
    """``(pointer lists, sizes, dtype)`` for ``_core.cuda`` when every array of the call is a
    plain, contiguous CUDA tensor matching its param (dtype, device, shape) and all are on one
    device; None otherwise (Note [The PyTorch fast path]). ``device_of`` (a tensor's device
    index, ``Tensor.get_device`` by default) lets the tests run it over CPU tensors."""
    T = torch.Tensor
    device_of = device_of or T.get_device
    params = args[0]
    facts = _torch_param_facts(torch, params, device_of)
    if facts is None:
        return None
    dtypes, devices, _ = facts
    if devices.count(devices[0]) != len(devices):
        return None
    names = _torch_consts(torch)[1]
    if dtypes.count(dtypes[0]) == len(dtypes):
        dtype = names.get(dtypes[0])
        if dtype is None:
            return None
    else:
        dtype = [names.get(d) for d in dtypes]
        if None in dtype:
            return None
    ptrs: list[list[int] | None] = []
    for arr in args:
        if arr is None:
            ptrs.append(None)
            continue
        if arr is not params and _torch_facts(torch, arr, device_of) != facts:
            return None
        ptrs.append(list(map(T.data_ptr, arr)))
    return ptrs, list(map(T.numel, params)), dtype


def torch_lists_match(arrays: Any, params: Any, device_of: Any = None) -> bool:
    """Whether ``arrays`` are plain, contiguous CUDA tensors, each of the dtype, device and shape of
    the tensor at its index in ``params`` (themselves plain and contiguous): the check of the
    PyTorch fast path, for the optimizer classes' grads. False means "look at each one".
    ``device_of`` as in :func:`_torch_fast`."""
    torch = sys.modules.get("torch")
    if torch is None or not params or type(params[0]) not in plain_tensor_types(torch):
        return False
    device_of = device_of or torch.Tensor.get_device
    facts = _torch_param_facts(torch, params, device_of)
    return facts is not None and _torch_facts(torch, arrays, device_of) == facts


def numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
