"""Bound calls over CUDA arrays (Note [A bound call] in ``csrc/bindings/bound.h``): the arrays of a
call read into device pointers for ``_core.cuda``.

Each array is read once, when it is bound or given (:mod:`fusedopt._cuda_arrays`: PyTorch CUDA
tensors, ``__cuda_array_interface__``, DLPack), and refused with a ``TypeError`` or ``ValueError``
naming it before anything is launched: its dtype, shape and memory order against its param, a
read-only array that would be written, a mix of host and device arrays or of devices. The C++ side
checks the pointers again (null, alignment, overlap, and with the driver that every buffer is
device memory of one device). A run queues the update on the producer's current stream (PyTorch's
or CuPy's current stream, else the stream of the ``__cuda_array_interface__``, else the legacy
default stream), after waiting for the streams of the arrays that name another one, so it is
ordered after the user's earlier work and nothing synchronizes.

Before each run a bound call reads its held arrays' pointers again (one C-level map per list for
PyTorch tensors) and refuses one that was changed in place (``p.data = ...``, ``resize_``), as the
CPU binder does.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _core, _cuda_arrays
from ._cuda_arrays import C, F, LEGACY_STREAM
from ._spec import SPECS, Spec

__all__ = ["bind", "CudaCall"]


def _cuda_module() -> Any:
    return getattr(_core, "cuda", None)


class _Names:
    """How a call names itself and its arrays, as the C++ binders do (``Names``)."""

    __slots__ = ("fn", "_index", "_aliases")

    def __init__(self, fn: str, index: Any, aliases: dict | None) -> None:
        self.fn = fn
        self._index = index
        self._aliases = aliases or {}

    def list(self, name: str) -> str:
        return self._aliases.get(name, name)

    def item(self, name: str, i: int) -> str:
        index = self._index
        j = i if index is None else index + i if isinstance(index, int) else index[i]
        return f"{self.list(name)}[{j}]"


def _where(x: Any) -> str:
    import numpy as np

    return "host memory (numpy.ndarray)" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"


def _order(layout: int) -> str:
    return "C" if layout & C else "F"


class _Read:
    """The arrays of some lists, read and checked against their params' views."""

    __slots__ = ("ptrs", "views", "waits", "device")

    def __init__(self) -> None:
        self.ptrs: list = []  # per list: its pointers, or None
        self.views: list = []  # per list: its views (None on the PyTorch fast path)
        self.waits: set = set()
        self.device: Any = None


def _read(names: _Names, lists: list, stream: int, ref: Any = None, ref_name: str = "") -> _Read:
    """``lists``: ``(name, written, arrays or None)``, the first the reference (the params) unless
    ``ref`` (the views of list ``ref_name``) is given. The general path of Note [The PyTorch fast
    path]."""
    out = _Read()
    n = len(lists[0][2]) if ref is None else len(ref)
    cols: list[list | None] = []
    for name, _, arr in lists:
        if arr is None:
            cols.append(None)
            continue
        col: list[Any] = []
        if not isinstance(arr, (list, tuple)):
            raise TypeError(
                f"{names.fn}: {names.list(name)} must be a list or tuple of CUDA arrays, "
                f"got {type(arr).__name__}")
        if len(arr) != n:
            raise ValueError(f"{names.fn}: {names.list(name)} has {len(arr)} arrays, expected {n} "
                             "(one per param)")
        for i, x in enumerate(arr):
            try:
                col.append(_cuda_arrays.view(x, stream))
            except (TypeError, ValueError) as e:
                raise type(e)(f"{names.fn}: {names.item(name, i)} {e}") from None
        cols.append(col)
    refs: Any = cols[0] if ref is None else ref
    ref_name = lists[0][0] if ref is None else ref_name
    device = None
    if ref is not None and ref and ref[0].device is not None:  # grads go where their params are
        device = (ref[0].device, names.item(ref_name, 0))
    for (name, written, arr), views in zip(lists, cols):
        if views is None:
            out.ptrs.append(None)
            out.views.append(None)
            continue
        ptrs = []
        for i, v in enumerate(views):
            p: Any = refs[i]
            if v is None:
                raise TypeError(
                    f"{names.fn}: {names.item(name, i)} is {_where(arr[i])}, but "
                    f"{names.item(ref_name, i)} is a CUDA array; all arrays of one call must be on "
                    "one CUDA device")
            if v is p:
                if v.dtype not in ("float32", "float64"):
                    raise TypeError(f"{names.fn}: {names.item(name, i)} has dtype {v.dtype}, "
                                    "expected float32 or float64")
            elif v.dtype != p.dtype:
                raise TypeError(f"{names.fn}: {names.item(name, i)} has dtype {v.dtype}, expected "
                                f"{p.dtype} (the dtype of {names.item(ref_name, i)})")
            if v.shape != p.shape:
                raise ValueError(f"{names.fn}: {names.item(name, i)} has shape {v.shape}, expected "
                                 f"{p.shape} (the shape of {names.item(ref_name, i)})")
            if written and v.readonly:
                raise ValueError(f"{names.fn}: {names.item(name, i)} is read-only")
            if not v.layout:
                raise ValueError(f"{names.fn}: {names.item(name, i)} is not contiguous (fusedopt "
                                 "never copies a buffer; pass a contiguous array)")
            order = C if p.layout & C else F
            if not v.layout & order:
                raise ValueError(
                    f"{names.fn}: {names.item(name, i)} has a different memory order "
                    f"({_order(v.layout)}) than {names.item(ref_name, i)} ({_order(order)})")
            if v.device is not None:
                if device is None:
                    device = (v.device, names.item(name, i))
                elif v.device != device[0]:
                    raise ValueError(f"{names.fn}: {names.item(name, i)} is on cuda:{v.device}, "
                                     f"expected cuda:{device[0]} (the device of {device[1]})")
            if v.stream is not None and v.stream != stream:
                out.waits.add(v.stream)
            ptrs.append(v.ptr)
        out.ptrs.append(ptrs)
        out.views.append(views)
    out.device = device
    return out


def _waits(stream: int, waits: set) -> list | None:
    # 0 and 1 both name the legacy default stream: no wait between them.
    same = {stream, LEGACY_STREAM} if stream in (0, LEGACY_STREAM) else {stream}
    return [w for w in waits if w not in same] or None


class CudaCall:
    """A bound call over CUDA arrays: the C++ bound call (``core``), the arrays it holds, and how
    to read grads for it."""

    def __init__(self, spec: Spec, lists: tuple, hyper: tuple, name: str, index: Any,
                 grads_later: bool, aliases: dict | None) -> None:
        cuda = _cuda_module()
        self._spec = spec
        self._names = names = _Names(name, index, aliases)
        values = dict(zip(spec.call_hypers, hyper))
        # The lists in slot order (Note [Kernel slots]); an unused optional list is left out.
        slots = []
        for role in ("param", "input", "grad"):
            slots += [b for b in spec.buffers if b.role == role]
        slots += [b for b in spec.states if not b.optional or _used(b, values)]
        self._slot_of = {b.list: k for k, b in enumerate(slots)}
        at = {b.list: j for j, b in enumerate(spec.buffers)}
        self._grad = next((b.list for b in slots if b.role == "grad"), None)
        held = [(b.list, b.role in ("param", "state"),
                 None if (b.role == "grad" and grads_later) else lists[at[b.list]]) for b in slots]
        params: Any = held[0][2]
        try:
            first = params[0]
        except Exception:
            first = None
        self._stream_of = first
        stream = _cuda_arrays.launch_stream(first) if first is not None else 0
        fast = self._fast(held)
        if fast is not None:
            ptrs, sizes, dtype, views, waits = fast
        else:
            r = _read(names, held, stream)
            ptrs, views, waits = r.ptrs, r.views, r.waits
            sizes = [_cuda_arrays.numel(v.shape) for v in views[0]]
            dtypes = [v.dtype for v in views[0]]
            dtype = dtypes[0] if dtypes and dtypes.count(dtypes[0]) == len(dtypes) else dtypes
        self._held: list[Any] = [arr for _, _, arr in held]
        self._views = views
        self._ptrs = ptrs
        self._waits = waits
        sig = [None] * len(spec.buffers)
        for (lst, _, _), p in zip(held, ptrs):
            sig[at[lst]] = p
        for b in spec.buffers:  # a used optional list given as None: the C++ side says so
            if b.list not in self._slot_of:
                sig[at[b.list]] = None
        self._ref = held[0][0]
        self._bound = cuda.bind(spec.name, tuple(sig), sizes, dtype, hyper, name=name, index=index,
                                grads_later=grads_later, aliases=aliases)

    @property
    def core(self) -> Any:
        """The C++ bound call (``_core.Calls`` checks the calls of a step through it)."""
        return getattr(self._bound, "core", self._bound)

    def _fast(self, held: list) -> tuple | None:
        """Note [The PyTorch fast path]: every held array a plain tensor of its param's facts."""
        torch = sys.modules.get("torch")
        params = held[0][2]
        if torch is None or not isinstance(params, (list, tuple)) or not params \
                or type(params[0]) not in _cuda_arrays.plain_tensor_types(torch):
            return None
        fast = _cuda_arrays.torch_fast(torch, [arr for _, _, arr in held])
        if fast is None:
            return None
        ptrs, sizes, dtype = fast
        return ptrs, sizes, dtype, None, set()

    def _current_ptrs(self) -> list:
        """The held arrays' pointers as they are now, where they can move: a PyTorch tensor's
        storage can be swapped or resized in place (``p.data = ...``, ``resize_``); the arrays of
        the other libraries keep their memory for life."""
        torch = sys.modules.get("torch")
        out = []
        for arr, ptrs in zip(self._held, self._ptrs):
            if arr is None or torch is None or \
                    not all(isinstance(x, torch.Tensor) for x in arr):
                out.append(ptrs)
            else:
                out.append(list(map(torch.Tensor.data_ptr, arr)))
        return out

    def verify(self) -> None:
        """Refuses a held array changed in place since it was bound (its memory moved)."""
        now = self._current_ptrs()
        if now == self._ptrs:
            return
        for k, (a, b) in enumerate(zip(now, self._ptrs)):
            if a != b:
                i = next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)
                lst = next(name for name, slot in self._slot_of.items() if slot == k)
                raise ValueError(f"{self._names.fn}: {self._names.item(lst, i)} was changed in "
                                 "place: its memory moved; the arrays of a call must keep their "
                                 "memory, dtype and shape")

    def _grad_ptrs(self, grads: Any) -> tuple:
        """The pointers of ``grads`` (read against the params) and the streams to wait for."""
        if grads is None:
            return None, set()
        torch = sys.modules.get("torch")
        params = self._held[0]
        if self._views is None and torch is not None and \
                _cuda_arrays.torch_lists_match(grads, params):
            return list(map(torch.Tensor.data_ptr, grads)), set()
        ref = self._views[0] if self._views is not None else [
            _cuda_arrays.view(x, 0) for x in params]
        r = _read(self._names, [(self._grad, False, grads)], 0, ref, self._ref)
        return r.ptrs[0], r.waits

    def grads_arg(self, grads: Any) -> Any:
        """What ``_core.Calls.check`` takes for these grads: their pointers (as the core takes
        them)."""
        self.verify()
        ptrs = self._grad_ptrs(grads)[0]
        return getattr(self._bound, "grads_arg", _same)(ptrs)

    def check(self, grads: Any) -> None:
        self.verify()
        self._bound.check(self._grad_ptrs(grads)[0])

    def run(self, grads: Any = None, *, step: Any = None, lr: Any = None,
            scalars: Any = None, **run: Any) -> Any:
        """``run``: the spec's run input (LAMB's ``grad_norm``), if given."""
        self.verify()
        ptrs, waits = self._grad_ptrs(grads)
        first = self._stream_of
        stream = _cuda_arrays.launch_stream(first) if first is not None else 0
        return self._bound.run(ptrs, step=step, lr=lr, scalars=scalars, stream=stream,
                               wait_streams=_waits(stream, self._waits | waits), **run)


def _same(x: Any) -> Any:
    return x


def _used(buffer: Any, values: dict) -> bool:
    if buffer.hyper not in values:
        return True
    return buffer.used(values)


def bind(algo: str, lists: tuple, hyper: tuple, *, name: str, index: Any = None,
         grads_later: bool = False, aliases: dict | None = None) -> CudaCall:
    """The bound call of ``algo`` over CUDA arrays (``_backend.bind``'s CUDA half)."""
    if _cuda_module() is None:
        raise TypeError(
            f"{name}: got CUDA arrays, but this build of fusedopt has no CUDA kernels "
            "(build_info()['cuda'] is False); rebuild with nvcc on PATH"
        )
    return CudaCall(SPECS[algo], lists, hyper, name, index, grads_later, aliases)
