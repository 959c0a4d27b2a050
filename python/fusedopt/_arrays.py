"""What the optimizer classes and :class:`fusedopt.EMA` need of the arrays they are given and of
the state they allocate, for each array library they can hold state in: NumPy (host memory, updated
by ``_core.cpu``), and for CUDA memory PyTorch and CuPy (updated by ``_core.cuda``).

:mod:`fusedopt.functional` needs none of this: it takes any CUDA array (``__cuda_array_interface__``
or DLPack) and leaves allocation to the caller. The classes must also *create* arrays (state like a
param, copies for ``state_dict``, values loaded by ``load_state_dict``), which takes the library
that made the param; an :class:`_Adapter` says how, one per library. A CUDA array of another
library (Numba, a DLPack-only producer) is refused by the classes with a message that points to
:mod:`fusedopt.functional`.

Nothing here runs per step on the steady path: params are described once, when they are added,
and again only when a step is refused, to say what changed. Grads are checked by the bound calls
themselves (Note [A bound call] in ``csrc/bindings/bound.h``).
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np

from . import _cuda_arrays

CPU = "cpu"  # the place of host (NumPy) arrays; a CUDA array's place is ("cuda", device index)


def place_name(place):
    return CPU if place == CPU else f"cuda:{place[1]}"


class Meta(NamedTuple):
    """What the classes check and remember of one array."""

    place: object  # CPU or ("cuda", index)
    shape: tuple
    dtype: str  # "float32", "float64", or another dtype's name (refused by the checks)
    order: str  # "C", "F" (contiguous, in that order; "C" when both), or "" (not contiguous)
    span: tuple  # (first byte, one past the last byte); (0, 0) for an empty array
    readonly: bool
    aligned: bool
    native: bool = True  # native byte order
    masked: bool = False  # a numpy.ma.MaskedArray (its mask would be ignored)


# ---- the adapters --------------------------------------------------------------------------------


class _Adapter:
    """One array library: which arrays it owns, how to describe them, make new ones like them,
    copy them on their device, read them back to the host and write values into them."""

    label = ""  # how messages name one of its arrays, with the article

    def owns(self, x):
        raise NotImplementedError

    def meta(self, x):
        raise NotImplementedError

    def full_like(self, x, fill_value, slot):
        """A new array of ``x``'s shape, dtype, memory order and device, filled."""
        raise NotImplementedError

    def empty_like(self, x):
        """A new, uninitialised array like ``x`` (shape, dtype, memory order, device)."""
        raise NotImplementedError

    def copy(self, x):
        """A copy of ``x`` in the same library, on the same device, in the same memory order."""
        raise NotImplementedError

    def to_host(self, x):
        """``x``'s values as a NumPy array (a view where the memory is the host's)."""
        raise NotImplementedError

    def write(self, dst, src):
        """Copy ``src`` (an array of this library, or a NumPy array) into ``dst``, which this
        library owns; shapes and dtypes were checked."""
        raise NotImplementedError

    def f64_zeros(self, x, n):
        """A new float64 array of ``n`` zeros on ``x``'s device, and its data pointer: where the
        CUDA kernels write a reduction's sums."""
        raise NotImplementedError

    def sumsq(self, xs):
        """The sum of the squares of every element of the arrays ``xs`` (all this library's),
        as a float: on their device where the library can (one synchronization), else on the
        host, from copies (``to_host``), by fusedopt's own reduction."""
        from .clip import sumsq

        return sumsq("sumsq", [self.to_host(x) for x in xs])


def _order(c, f):
    return "C" if c else ("F" if f else "")


class _NumPy(_Adapter):
    label = "a numpy.ndarray"

    def owns(self, x):
        return isinstance(x, np.ndarray)

    def meta(self, x):
        lo = x.__array_interface__["data"][0]
        return Meta(CPU, x.shape, x.dtype.name, _order(x.flags.c_contiguous, x.flags.f_contiguous),
                    (lo, lo + x.nbytes) if x.size else (0, 0), not x.flags.writeable,
                    x.flags.aligned, x.dtype.byteorder != ">", isinstance(x, np.ma.MaskedArray))

    def full_like(self, x, fill_value, slot):
        return _staggered(x, fill_value, slot, x.dtype)

    def empty_like(self, x):
        return np.empty_like(x)

    def copy(self, x):
        return x.copy(order="K")

    def to_host(self, x):
        return x

    def write(self, dst, src):
        np.copyto(dst, src)


def _view_meta(v):
    """Meta of a ``_cuda_arrays.View`` (a CUDA array)."""
    order = "C" if v.layout & _cuda_arrays.C else ("F" if v.layout & _cuda_arrays.F else "")
    nbytes = _cuda_arrays.numel(v.shape) * (8 if v.dtype == "float64" else 4)
    span = (v.ptr, v.ptr + nbytes) if nbytes else (0, 0)
    return Meta(("cuda", v.device), v.shape, v.dtype, order, span, v.readonly, True)


class _Torch(_Adapter):
    """CUDA tensors of PyTorch. A param that requires grad is updated in place through its storage
    (as torch.optim does under ``no_grad``); its state never requires grad."""

    label = "a torch.Tensor"

    def owns(self, x):
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(x, torch.Tensor) and x.is_cuda

    def meta(self, x):
        return _view_meta(_cuda_arrays.torch_view(x))

    def full_like(self, x, fill_value, slot):
        torch = sys.modules["torch"]
        return torch.full_like(x, fill_value, requires_grad=False)  # keeps x's strides

    def empty_like(self, x):
        return sys.modules["torch"].empty_like(x, requires_grad=False)

    def copy(self, x):
        return x.detach().clone()  # on x's device, strides kept

    def to_host(self, x):
        x = x.detach().cpu()
        if x.dtype == sys.modules["torch"].bfloat16:  # NumPy has no bfloat16: ml_dtypes's view
            return x.view(sys.modules["torch"].int16).numpy().view(bfloat16_dtype())
        return x.numpy()

    def f64_zeros(self, x, n):
        out = sys.modules["torch"].zeros(n, dtype=sys.modules["torch"].float64, device=x.device)
        return out, out.data_ptr()

    def sumsq(self, xs):
        if xs[0].device.type == "cpu":
            return super().sumsq(xs)
        torch = sys.modules["torch"]
        return float(torch.stack([torch.linalg.vector_norm(x, dtype=torch.float64).square()
                                  for x in xs]).sum())

    def write(self, dst, src):
        torch = sys.modules["torch"]
        if isinstance(src, np.ndarray):
            src = torch.from_numpy(np.ascontiguousarray(src))
        with torch.no_grad():
            dst.copy_(src)  # across devices too


class _CuPy(_Adapter):
    label = "a cupy.ndarray"

    def owns(self, x):
        cupy = sys.modules.get("cupy")
        return cupy is not None and isinstance(x, cupy.ndarray)

    def meta(self, x):
        return _view_meta(_cuda_arrays.cai_view(x, x.__cuda_array_interface__))

    def full_like(self, x, fill_value, slot):
        cupy = sys.modules["cupy"]
        with x.device:
            return cupy.full_like(x, fill_value)  # order "K"

    def empty_like(self, x):
        with x.device:
            return sys.modules["cupy"].empty_like(x)

    def copy(self, x):
        with x.device:
            return x.copy(order="K")

    def to_host(self, x):
        return x.get()

    def f64_zeros(self, x, n):
        cupy = sys.modules["cupy"]
        with x.device:
            out = cupy.zeros(n, dtype=cupy.float64)
        return out, out.data.ptr

    def sumsq(self, xs):
        cupy = sys.modules["cupy"]
        with xs[0].device:
            return float(cupy.stack([cupy.sum(cupy.square(x, dtype=cupy.float64))
                                     for x in xs]).sum())

    def write(self, dst, src):
        cupy = sys.modules["cupy"]
        if not isinstance(src, np.ndarray) and src.device != dst.device:
            src = src.get()  # another device: through the host, which needs no peer access
        with dst.device:
            cupy.copyto(dst, cupy.asarray(src))


# The libraries the classes allocate with, NumPy first (the common case). Tests append an adapter
# for a host-memory stand-in of a CUDA library.
_ADAPTERS = [_NumPy(), _Torch(), _CuPy()]
_NUMPY, _TORCH = _ADAPTERS[:2]


def adapter_of(x):
    """The adapter owning ``x``, or None."""
    for ad in _ADAPTERS:
        if ad.owns(x):
            return ad
    return None


def is_cuda_array(x):
    return _cuda_arrays.is_cuda_array(x)


def looks_like_array(x):
    """Whether ``x`` is one array (of any library, supported or not) rather than a list of them:
    a bare param is a list of one, and is then refused by name if it is not supported."""
    return isinstance(x, np.ndarray) or any(
        hasattr(x, a) for a in ("__cuda_array_interface__", "__dlpack__", "__array_interface__")
    )


def kind(x):
    """How messages name what ``x`` is."""
    if isinstance(x, np.ndarray):
        return "host memory (numpy.ndarray)"
    ad = adapter_of(x)
    if ad is not None:
        return f"{ad.label} on {place_name(ad.meta(x).place)}"
    return f"a {type(x).__name__}"


def mismatch(x, ref, where):
    """``(Meta of x, wrong)``: ``wrong`` is the first of "place", "dtype", "shape", "aligned",
    "order" in which array ``x`` differs from the Meta ``ref``, "type" if ``x`` is not an array the
    classes take (its Meta is then None), or None: what an array handed in for ``ref`` (a grad for
    its param, a param for its average) must match. ``where`` as in :func:`describe`."""
    m = describe(x, where)[1]
    return m, _first_difference(m, ref)


def _first_difference(m, ref):
    if m is None:
        return "type"
    if m.place != ref.place:
        return "place"
    if m.dtype != ref.dtype:
        return "dtype"
    if m.shape != ref.shape:
        return "shape"
    if not m.aligned:
        return "aligned"
    if m.order != ref.order:
        return "order"
    return None


def describe(x, where):
    """``(adapter, Meta)`` of ``x``, or ``(None, None)`` if no adapter owns it. A CUDA array whose
    interface cannot be read raises ``TypeError`` / ``ValueError`` (e.g. a masked array), its
    message prefixed with ``where`` (how the caller names ``x``)."""
    ad = adapter_of(x)
    if ad is None:
        return None, None
    try:
        return ad, ad.meta(x)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where} {e}") from None


def copy(x):
    """A copy of a state array of the classes, in its library and on its device."""
    return adapter_of(x).copy(x)


def _torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def shape_dtype(x):
    """``(shape, dtype name)`` of a saved array: of a library the adapters know, or a PyTorch
    tensor on any device (a state dict of ``torch.optim``); None for anything else."""
    if _torch_tensor(x):
        return tuple(x.shape), str(x.dtype).removeprefix("torch.")
    ad = adapter_of(x)
    if ad is None:
        return None
    m = ad.meta(x)
    return m.shape, m.dtype


def load_like(p, value, slot, dtype=None):
    """A new state buffer for param ``p`` in ``slot`` holding the saved ``value`` (checked by
    :func:`shape_dtype`), in ``p``'s library, device and memory order, and in ``dtype`` (a NumPy
    param's state dtype; None: ``p``'s), rounded to nearest where narrower. A value of another
    library goes through host memory, so any pair of libraries and devices works."""
    ad = adapter_of(p)
    if dtype is not None and isinstance(p, np.ndarray):
        out = state_like(p, 0.0, slot, dtype)
        if not isinstance(value, np.ndarray):  # (a bfloat16 tensor: an ml_dtypes view)
            value = (_TORCH if _torch_tensor(value) else adapter_of(value)).to_host(value)
        out[...] = value  # rounded to nearest where the state is narrower
        return out
    out = ad.full_like(p, 0.0, slot)
    if not ad.owns(value):  # a CPU tensor has no adapter, but _Torch reads it back all the same
        value = (_TORCH if _torch_tensor(value) else adapter_of(value)).to_host(value)
    ad.write(out, value)
    return out


# ---- state_like ----------------------------------------------------------------------------------

# Note [State at its own 4 KiB offset]
# A large NumPy allocation starts at the same offset in its page as every other one (glibc maps
# it, NumPy adds its header), so the param, the gradient and every state buffer of a tensor
# usually share their address bits 0-11. A core then cannot tell a load of v[i] from an older,
# not yet retired store to m[i] at the same page offset ("4K aliasing"), and the load waits. The
# kernels load every buffer of an element before storing any in the source, but the compiler may
# sink a load below a store, and which one it sinks depends on the algorithm and the tuning: in
# cache (or when memory is fast) that cost 10-30% on some algorithms and nothing on others
# (bench/README.md, "4K aliasing"). Optimizer state is ours to allocate, so each state buffer of
# a large tensor is placed at its own offset in the page, _STAGGER bytes apart from the param's
# and from each other (a multiple of the 64-byte line, not of a power of two larger than that),
# at the cost of one page per buffer. Small tensors are left alone: malloc spreads them anyway,
# and a page would be a large share of them.
_STAGGER = 1088
_STAGGER_MIN_BYTES = 64 << 10


# Note [State dtypes]
# An optimizer keeps its state in the dtype its `state_dtype` names: None (the default) is the
# param's dtype, but float32 for 16-bit params (bfloat16, float16: their state is float32, as
# master-weight training keeps it); "float32" or "bfloat16" name it for every param. The CPU
# kernels take the combinations csrc/storage.h lists (AllCombos) and refuse the others by the
# name of the state list; bfloat16 arrays are ml_dtypes.bfloat16 NumPy arrays.
_STATE_DTYPES = ("float32", "bfloat16")


def state_dtype_name(cls, value):
    """``value`` as a state dtype's name: None, "float32" or "bfloat16" (NumPy, ml_dtypes and torch
    dtypes and their names are taken)."""
    if value is None:
        return None
    text = str(value)
    if text.startswith("torch."):
        name = text[len("torch."):]
    else:
        try:
            name = np.dtype(value).name
        except TypeError:  # "bfloat16" without ml_dtypes imported
            name = value if isinstance(value, str) else text
    if name not in _STATE_DTYPES:
        raise ValueError(f"{cls}: state_dtype must be None, 'float32' or 'bfloat16', got {value!r}")
    if name == "bfloat16":
        bfloat16_dtype(cls)  # ml_dtypes is there
    return name


def bfloat16_dtype(cls="fusedopt"):
    """NumPy's dtype of ml_dtypes.bfloat16 (ml_dtypes is imported only here, when asked)."""
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(f"{cls}: bfloat16 arrays need ml_dtypes (pip install ml_dtypes)") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_16_bit(p):
    """Whether ``p`` is a NumPy array of bfloat16 or float16."""
    return isinstance(p, np.ndarray) and p.dtype.itemsize == 2 and p.dtype.kind in "fV"


def state_dtype_for(cls, p, state_dtype):
    """The NumPy dtype of a state buffer of NumPy param ``p`` (Note [State dtypes]), or None for
    a param of another library (its state takes its dtype)."""
    if not isinstance(p, np.ndarray):
        if state_dtype is not None:
            raise TypeError(f"{cls}: state_dtype={state_dtype!r} is for NumPy params (the CPU "
                            f"kernels), got a {type(p).__name__}")
        return None
    if state_dtype is None:
        return np.dtype(np.float32) if is_16_bit(p) else p.dtype
    return bfloat16_dtype(cls) if state_dtype == "bfloat16" else np.dtype(state_dtype)


def state_like(x, fill_value=0.0, slot=0, dtype=None):
    """A new optimizer-state buffer for param ``x``, filled with ``fill_value``: same shape, dtype,
    memory order (C or Fortran), array library and device. Give each state buffer of one param its
    own ``slot`` (0, 1, 2, ...).

    For a NumPy param of 64 KiB or more, the buffer starts ``1088 * (slot + 1)`` bytes (mod 4 KiB)
    after the param's offset in its page, so the param and its state buffers never share their low
    12 address bits; buffers that do ("4K aliasing") make the CPU kernels up to 1.3x slower in cache
    (Note [State at its own 4 KiB offset]). The optimizer classes allocate their state this way; use
    it for the state you pass to :mod:`fusedopt.functional`. CuPy arrays and PyTorch tensors get
    their library's ``full_like`` (on the device of ``x``; a tensor's state never requires grad).

    >>> import numpy as np, fusedopt
    >>> w = np.zeros((256, 128), np.float32)
    >>> m, v = fusedopt.state_like(w, slot=0), fusedopt.state_like(w, slot=1)
    >>> len({w.ctypes.data % 4096, m.ctypes.data % 4096, v.ctypes.data % 4096})
    3
    """
    if isinstance(x, np.ndarray):
        return _staggered(x, fill_value, slot, np.dtype(dtype) if dtype is not None else x.dtype)
    if dtype is not None:
        raise TypeError(f"state_like: dtype is for NumPy arrays, got a {type(x).__name__}")
    if _torch_tensor(x):  # a CPU tensor too: torch allocates it
        return _TORCH.full_like(x, fill_value, slot)
    ad = adapter_of(x)
    if ad is None:
        raise TypeError(
            f"cannot allocate optimizer state like a {type(x).__name__}: fusedopt allocates "
            "NumPy, CuPy and PyTorch arrays; create the state buffers yourself and use "
            "fusedopt.functional"
        )
    return ad.full_like(x, fill_value, slot)


def _staggered(x, fill_value, slot, dtype):
    order: Any = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
    nbytes = x.size * dtype.itemsize
    if nbytes < _STAGGER_MIN_BYTES:
        return np.full(x.shape, fill_value, dtype=dtype, order=order)
    page = 4096
    raw = np.empty(nbytes + page, dtype=np.uint8)
    want = (x.ctypes.data + _STAGGER * (slot + 1)) % page
    want -= want % dtype.alignment
    off = (want - raw.ctypes.data) % page
    out = raw[off:off + nbytes].view(dtype).reshape(x.shape, order=order)
    out.fill(fill_value)
    return out


def sumsq(xs):
    """The sum of the squares of every element of the arrays ``xs``, as a float: NumPy arrays
    by fusedopt's reduction, device arrays by their library (``_Adapter.sumsq``)."""
    xs = list(xs)
    if not xs:
        return 0.0
    ad = adapter_of(xs[0])
    if ad is None:
        raise TypeError(f"expected arrays, got {type(xs[0]).__name__}")
    return ad.sumsq(xs)
