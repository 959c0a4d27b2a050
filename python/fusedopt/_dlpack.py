"""Reading a DLPack capsule's tensor description in place, without copying: pointer, shape, strides,
dtype, device and read-only flag. Used by :mod:`fusedopt._cuda_arrays` only for CUDA arrays that have no
``__cuda_array_interface__``; the structures mirror ``dlpack.h`` (v0.8 unversioned and v1.x
versioned capsules).

The capsule is not consumed: it is kept alive until the kernels are queued and then dropped, so the
producer's own capsule destructor releases its reference, as for any capsule nobody renamed.
"""

from __future__ import annotations

import ctypes


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),  # in elements; NULL: C-contiguous
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64),
                ("dl_tensor", _DLTensor)]


_FLAG_READ_ONLY = 1 << 0  # DLPACK_FLAG_BITMASK_READ_ONLY
_TYPE_CODES = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 5: "complex", 6: "bool"}

_api = ctypes.pythonapi
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def view(x, stream, make_view, layout):
    """``make_view(ptr, shape, dtype, layout, readonly, device, stream, keep=capsule)`` for ``x``.

    ``stream`` is the stream the kernels will be queued on: the producer is asked, through the
    protocol's ``stream`` argument, to order its pending work on ``x`` before it.
    """
    dl_stream = stream if stream != 0 else 1  # DLPack forbids 0; 1 is the legacy default stream
    try:
        capsule = x.__dlpack__(stream=dl_stream, max_version=(1, 0))
    except TypeError:  # a producer from before DLPack 1.0
        capsule = x.__dlpack__(stream=dl_stream)
    managed: _DLManagedTensorVersioned | _DLManagedTensor
    if _api.PyCapsule_IsValid(capsule, b"dltensor_versioned"):
        managed = _DLManagedTensorVersioned.from_address(
            _api.PyCapsule_GetPointer(capsule, b"dltensor_versioned"))
        readonly = bool(managed.flags & _FLAG_READ_ONLY)
    elif _api.PyCapsule_IsValid(capsule, b"dltensor"):
        managed = _DLManagedTensor.from_address(_api.PyCapsule_GetPointer(capsule, b"dltensor"))
        readonly = False  # an unversioned capsule cannot say
    else:
        raise TypeError(f"is a {type(x).__name__} whose __dlpack__() returned no DLPack capsule")
    t = managed.dl_tensor
    shape = tuple(t.shape[d] for d in range(t.ndim))
    bits, lanes = t.dtype.bits, t.dtype.lanes
    if t.dtype.code == 2 and lanes == 1 and bits in (32, 64):
        dtype = f"float{bits}"
    else:
        dtype = f"{_TYPE_CODES.get(t.dtype.code, 'code' + str(t.dtype.code))}{bits}" + (
            f"x{lanes}" if lanes != 1 else "")
    itemsize = max(1, bits * lanes // 8)
    strides = tuple(t.strides[d] * itemsize for d in range(t.ndim)) if t.strides else None
    ptr = (t.data or 0) + t.byte_offset
    return make_view(ptr, shape, dtype, layout(shape, strides, itemsize), readonly,
                     t.device.device_id, None, keep=capsule)
