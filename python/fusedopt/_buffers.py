"""The one place that decides which backend a list of buffers goes to.

NumPy arrays go to ``_core.cpu``, which checks every array itself (dtype, shape, memory order,
writeability, alignment, overlap) in C++, where checking a few thousand arrays costs microseconds;
deciding that costs one look at the first parameter, never a pass over the list.

CUDA arrays go to ``_core.cuda`` through :class:`_CudaBackend`: any object exposing
``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba) or DLPack on a CUDA device. Each
array is read here (pointer, shape, dtype, layout, read-only flag, device) and refused with a
``TypeError`` or ``ValueError`` naming it before anything is launched; the C++ side checks the
pointers again (null, alignment, overlap, and with the driver that every buffer is device memory
of one device). The update is queued on the producer's current stream (PyTorch's or CuPy's current
stream, else the stream of the ``__cuda_array_interface__``, else the legacy default stream), so it
is ordered after the user's earlier work there and nothing synchronizes.

Anything else is refused with a ``TypeError`` that names what was given.
"""

from __future__ import annotations

import functools
import operator
import sys
import threading

import numpy as np

from . import _core

_cuda = getattr(_core, "cuda", None)  # None when built without CUDA

# DLPack device types (dlpack.h): memory the CUDA kernels can update in place.
_KDL_CUDA = 2
_KDL_CUDA_MANAGED = 13
_DLPACK_DEVICES = (_KDL_CUDA, _KDL_CUDA_MANAGED)

# __cuda_array_interface__ stream values with a fixed meaning (v3 of the interface).
_LEGACY_STREAM = 1  # cudaStreamLegacy; a stream handle of 0 means the same to the CUDA runtime

_C, _F = 1, 2  # layout flags: C-contiguous, Fortran-contiguous

_DTYPES = {"f4": "float32", "f8": "float64"}


def cuda_available():
    """Whether fusedopt was built with CUDA **and** a CUDA device can be used here."""
    return _cuda is not None and _cuda.is_available()


def as_list(x):
    """A bare array is a list of one; lists and tuples pass through; anything else is left for the
    backend to refuse with a message that names the argument."""
    if isinstance(x, (list, tuple)) or x is None:
        return x
    if isinstance(x, np.ndarray) or _is_cuda_array(x):
        return [x]
    return x


def backend(arrays):
    """The backend that updates ``arrays`` (a list or tuple, already normalised): ``_core.cpu``
    unless the first array is a CUDA array. One look at the first element, so that a NumPy call
    pays nothing per array here. While this thread prepares the calls of a step
    (:class:`staging`), a stand-in that passes its plan and checks each call and keeps it for
    later."""
    try:
        first = arrays[0]
    except Exception:  # empty, or not a sequence: the CPU backend refuses it with a message
        b = _core.cpu
    else:
        if type(first) is np.ndarray or not isinstance(arrays, (list, tuple)):
            b = _core.cpu
        else:
            b = _CUDA if _is_cuda_array(first) else _core.cpu
    st = _stage
    if st.pending is None and st.plan is None:
        return b
    return _Staged(b, st.pending, st.plan)


# Note [Every call checked before the first] (optim/optimizer.py): a step of several calls
# prepares them all, then runs them. While a thread prepares (``staging(pending, ...)``), every
# backend call of fusedopt.functional is checked and kept in ``pending`` instead of made: on the
# CPU, ``_core.cpu.<fn>(..., prepare=True)`` checks the call once and returns a
# ``_core.cpu.Prepared`` that runs it; on a GPU, ``_core.cuda.check`` checks it and the launch is
# kept for later (it checks its arrays once more when it runs). The functional layer's return
# value is known at once: NAdam's new ``mu_product`` (the only one) comes with the Prepared, or,
# for a GPU call, from the same C++ expression run over no arrays.
# ``staging(..., plan)`` also hands a NumPy call the ``_core.cpu.Plan`` of its group's steady run
# (Note [The plan of a run], csrc/bindings/buffers.h); a GPU call ignores it.
class _StageState(threading.local):
    # Class defaults: reading them raises nothing in a thread that never set them.
    pending = None
    plan = None


_stage = _StageState()


class staging:
    """``with staging(pending, plan):`` this thread's backend calls go to ``pending`` (a list of
    callables, each running one call and returning its result) instead of being made, unless
    ``pending`` is None; and NumPy calls go through ``plan`` (a ``_core.cpu.Plan``) unless it is
    None."""

    __slots__ = ("pending", "plan")

    def __init__(self, pending, plan):
        self.pending, self.plan = pending, plan

    def __enter__(self):
        if _stage.pending is not None or _stage.plan is not None:
            raise RuntimeError("fusedopt: calls are being staged already in this thread")
        _stage.pending, _stage.plan = self.pending, self.plan
        return self.pending

    def __exit__(self, *exc):
        _stage.pending = _stage.plan = None
        return False


def preparing(pending):
    """``with preparing(pending):`` the backend calls of this thread are prepared into
    ``pending`` (see :class:`staging`)."""
    return staging(pending, None)


class _Staged:
    """A backend's functions, each given the stage's plan and, while calls are prepared, checking
    its call and keeping it in ``pending``."""

    __slots__ = ("_backend", "_pending", "_plan")

    def __init__(self, backend, pending, plan):
        self._backend, self._pending, self._plan = backend, pending, plan

    def __getattr__(self, fn):
        pending, plan = self._pending, self._plan
        if self._backend is _core.cpu:
            kernel = getattr(_core.cpu, fn)

            def call(*args, **hyper):
                if plan is not None:
                    hyper["plan"] = plan
                if pending is None:
                    return kernel(*args, **hyper)
                prepared = kernel(*args, prepare=True, **hyper)
                pending.append(prepared)
                return prepared.result

            return call
        lists = _LISTS.get(fn)
        if lists is None:
            raise AttributeError(fn)

        def call_cuda(*args, **hyper):
            if pending is None:
                return _cuda_call(fn, lists, args, hyper)
            _cuda_call(fn, lists, args, hyper, check=True)
            pending.append(functools.partial(_cuda_call, fn, lists, args, hyper))
            if fn == "nadam":
                return _core.cpu.nadam([], [], [], [], **hyper)
            return None

        return call_cuda


def _is_cuda_array(x):
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


def _layout(shape, strides, itemsize):
    """Layout flags (_C, _F) of an array with ``strides`` in bytes (``None``: C-contiguous)."""
    if strides is None:
        return _C | (_F if sum(n != 1 for n in shape) <= 1 else 0)
    if 0 in shape:
        return _C | _F
    flags = 0
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expect:
            break
        expect *= n
    else:
        flags |= _C
    expect = itemsize
    for n, s in zip(shape, strides):
        if n != 1 and s != expect:
            break
        expect *= n
    else:
        flags |= _F
    return flags


class _View:
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


def _torch_view(t):
    if t.is_neg():
        raise ValueError("is a negative view (torch's lazy negation); call .resolve_neg() first")
    shape = tuple(t.shape)
    dtype = str(t.dtype).removeprefix("torch.")
    if t.is_contiguous():
        layout = _C | (_F if sum(n != 1 for n in shape) <= 1 else 0)
    else:
        itemsize = t.element_size()
        layout = _layout(shape, tuple(s * itemsize for s in t.stride()), itemsize)
    # A tensor that requires grad is updated in place through its storage, as torch.optim does
    # under no_grad. Tensors of 0 elements may have no storage (data_ptr 0); they are skipped.
    return _View(t.data_ptr(), shape, dtype, layout, False, t.get_device())


def _cai_view(x, cai):
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
    layout = _layout(shape, cai.get("strides"), itemsize)
    device = None
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        device = x.device.id
    stream = cai.get("stream") if version >= 3 else None
    return _View(ptr, shape, dtype, layout, bool(readonly), device, stream)


def _dlpack_view(x, stream):
    from . import _dlpack

    return _dlpack.view(x, stream, _View, _layout)


def _view(x, stream):
    """The _View of ``x``, or None if ``x`` is not a CUDA array. ``stream`` is the launch stream
    (handed to DLPack producers, which order their pending work before it)."""
    if type(x) is np.ndarray:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return _torch_view(x) if x.is_cuda else None
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return _cai_view(x, cai)
    if _is_cuda_array(x):
        return _dlpack_view(x, stream)
    return None


def _launch_stream(x):
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


def _where(x):
    return "host memory (numpy.ndarray)" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"


# The list arguments of each _core.cuda function, in the positional order fusedopt.functional
# passes them, each with whether the kernel writes it: every list but the gradient-like input.
_LISTS = {
    "sgd": (("params", True), ("grads", False), ("momentum_buffers", True)),
    "adagrad": (("params", True), ("grads", False), ("state_sums", True)),
    "adadelta": (("params", True), ("grads", False), ("square_avgs", True), ("acc_deltas", True)),
    "rmsprop": (("params", True), ("grads", False), ("square_avgs", True),
                ("momentum_buffers", True), ("grad_avgs", True)),
    "adam": (("params", True), ("grads", False), ("exp_avgs", True), ("exp_avg_sqs", True),
             ("max_exp_avg_sqs", True)),
    "nadam": (("params", True), ("grads", False), ("exp_avgs", True), ("exp_avg_sqs", True)),
    "adamax": (("params", True), ("grads", False), ("exp_avgs", True), ("exp_infs", True)),
    "ewa": (("averages", True), ("values", False)),
    "ewa_readout": (("averages", False), ("outs", True)),
}


def _cuda_call(fn, lists, args, hyper, check=False):
    """Check the CUDA arrays of one call and hand their pointers to ``_core.cuda.<fn>``; with
    ``check``, to ``_core.cuda.check``, which checks them as ``<fn>`` would and launches nothing
    (the optimizer classes' Note [Every call checked before the first])."""
    if _cuda is None:
        raise TypeError(
            f"{fn}: got CUDA arrays, but this build of fusedopt has no CUDA kernels "
            "(build_info()['cuda'] is False); rebuild with nvcc on PATH"
        )
    if len(args) > len(lists):
        raise TypeError(f"{fn}: takes {len(lists)} lists of arrays, got {len(args)}")
    first_name = lists[0][0]
    ref = args[0]
    n = len(ref)
    stream = _launch_stream(ref[0])
    torch = sys.modules.get("torch")
    if torch is not None and type(ref[0]) in _plain_tensor_types(torch):
        fast = _torch_fast(torch, args)
        if fast is not None:
            ptrs, sizes, dtype = fast
            return _launch(fn, lists, ptrs, hyper, check, sizes=sizes, dtype=dtype, stream=stream,
                           wait_streams=None)
    views = []
    for (name, written), arr in zip(lists, args):
        if arr is None:
            views.append(None)
            continue
        if not isinstance(arr, (list, tuple)):
            raise TypeError(
                f"{fn}: {name} must be a list or tuple of CUDA arrays, got {type(arr).__name__}"
            )
        if len(arr) != n:
            raise ValueError(f"{fn}: {name} has {len(arr)} arrays, expected {n} (one per param)")
        col = []
        for i, x in enumerate(arr):
            try:
                col.append(_view(x, stream))
            except (TypeError, ValueError) as e:
                raise type(e)(f"{fn}: {name}[{i}] {e}") from None
        views.append(col)

    p_views = views[0]
    ptrs, sizes, dtypes, waits = [], [], [], set()
    device = None
    for (name, written), arr, vs in zip(lists, args, views):
        if vs is None:
            ptrs.append(None)
            continue
        col = []
        for i, v in enumerate(vs):
            p = p_views[i]
            if v is None:
                raise TypeError(
                    f"{fn}: {name}[{i}] is {_where(arr[i])}, but {first_name}[0] is a CUDA array; "
                    "all arrays of one call must be on one CUDA device"
                )
            if v is p:
                if v.dtype not in ("float32", "float64"):
                    raise TypeError(
                        f"{fn}: {name}[{i}] has dtype {v.dtype}, expected float32 or float64"
                    )
            elif v.dtype != p.dtype:
                raise TypeError(
                    f"{fn}: {name}[{i}] has dtype {v.dtype}, expected {p.dtype} "
                    f"(the dtype of {first_name}[{i}])"
                )
            if v.shape != p.shape:
                raise ValueError(
                    f"{fn}: {name}[{i}] has shape {v.shape}, expected {p.shape} "
                    f"(the shape of {first_name}[{i}])"
                )
            if written and v.readonly:
                raise ValueError(f"{fn}: {name}[{i}] is read-only")
            if not v.layout:
                raise ValueError(
                    f"{fn}: {name}[{i}] is not contiguous "
                    "(fusedopt never copies a buffer; pass a contiguous array)"
                )
            order = _C if p.layout & _C else _F
            if not v.layout & order:
                raise ValueError(
                    f"{fn}: {name}[{i}] has a different memory order "
                    f"({'C' if v.layout & _C else 'F'}) than {first_name}[{i}] "
                    f"({'C' if order == _C else 'F'})"
                )
            if v.device is not None:
                if device is None:
                    device = (v.device, f"{name}[{i}]")
                elif v.device != device[0]:
                    raise ValueError(
                        f"{fn}: {name}[{i}] is on cuda:{v.device}, expected cuda:{device[0]} "
                        f"(the device of {device[1]})"
                    )
            if v.stream is not None and v.stream != stream:
                waits.add(v.stream)
            col.append(v.ptr)
        ptrs.append(col)
    for v in p_views:
        sizes.append(_numel(v.shape))
        dtypes.append(v.dtype)
    dtype = dtypes[0] if dtypes and all(d == dtypes[0] for d in dtypes) else dtypes
    # 0 and 1 both name the legacy default stream: no wait between them.
    same = {stream, _LEGACY_STREAM} if stream in (0, _LEGACY_STREAM) else {stream}
    wait = [w for w in waits if w not in same] or None
    return _launch(fn, lists, ptrs, hyper, check, sizes=sizes, dtype=dtype, stream=stream,
                   wait_streams=wait)


def _launch(fn, lists, ptrs, hyper, check, **call):
    if check:
        return _cuda.check(fn, kernel_order(lists, ptrs), **call)
    return getattr(_cuda, fn)(*ptrs, **call, **hyper)


def kernel_order(lists, cols):
    """The given lists of a call (``cols``, in ``_LISTS`` order, None where absent) as the
    (name, list) pairs the kernels' checks take: the first written list, then the read-only one,
    then the other written ones (``ewa_readout`` writes its second list, ``outs``)."""
    present = [(name, written, col) for (name, written), col in zip(lists, cols) if col is not None]
    written = [(name, col) for name, w, col in present if w]
    read = [(name, col) for name, w, col in present if not w]
    return written[:1] + read + written[1:]


# Note [The PyTorch fast path]
# Reading a tensor through _torch_view and checking it in _cuda_call's loops costs about 2 us of
# Python per tensor: 160 ms for a step over 20,000 params with three buffers each. The common
# call -- every array a plain, contiguous CUDA tensor of its param's dtype, device and shape, one
# device for the call -- is read instead with one C-level map per fact over each list (type,
# negative bit, contiguity, dtype, device, shape, data pointer), about 0.5 us per tensor.
# Anything else (another array library, a tensor subclass, Fortran order, a mismatch, an error to
# word) goes to the general path, which reads each array and names the first bad one. The C++
# side checks the pointers themselves either way (null, alignment, overlap, device memory).


def _plain_tensor_types(torch):
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


_TORCH_CONSTS = {}
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")


def _torch_facts(torch, arr, device_of):
    """(dtypes, devices, shapes) of a list of plain, contiguous tensors without a negative bit,
    or None."""
    T = torch.Tensor
    if type(arr) not in (list, tuple) or not set(map(type, arr)) <= _plain_tensor_types(torch):
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


def _torch_fast(torch, args, device_of=None):
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
    ptrs = []
    for arr in args:
        if arr is None:
            ptrs.append(None)
            continue
        if arr is not params and _torch_facts(torch, arr, device_of) != facts:
            return None
        ptrs.append(list(map(T.data_ptr, arr)))
    return ptrs, list(map(T.numel, params)), dtype


def torch_lists_match(arrays, params, device_of=None):
    """Whether ``arrays`` are plain, contiguous CUDA tensors, each of the dtype, device and shape of
    the tensor at its index in ``params`` (themselves plain and contiguous): the check of the
    PyTorch fast path, for the optimizer classes' grads. False means "look at each one".
    ``device_of`` as in :func:`_torch_fast`."""
    torch = sys.modules.get("torch")
    if torch is None or not params or type(params[0]) not in _plain_tensor_types(torch):
        return False
    device_of = device_of or torch.Tensor.get_device
    facts = _torch_param_facts(torch, params, device_of)
    return facts is not None and _torch_facts(torch, arrays, device_of) == facts


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


class _CudaBackend:
    """Stands in for ``_core.cpu`` when the arrays are CUDA arrays: the same functions and
    arguments, turned into device pointers, sizes, dtype and the producer's stream."""

    def __init__(self):
        for fn, lists in _LISTS.items():
            setattr(self, fn, self._caller(fn, lists))

    @staticmethod
    def _caller(fn, lists):
        def call(*args, **hyper):
            return _cuda_call(fn, lists, args, hyper)

        call.__name__ = fn
        return call


_CUDA = _CudaBackend()
