"""Global-norm gradient clipping over lists of arrays, as ``torch.nn.utils.clip_grad_norm_``.

:func:`global_norm` is one reduction pass over every tensor: each tensor's sum of squares formed
and added in double, in an order fixed by the data alone (Note [Deterministic reductions] in
``csrc/cpu/driver.h``), so the norm has the same bits for any thread count and on every SIMD
path. :func:`clip_grad_norm_` then scales every tensor by one fused multi-tensor call (the
``scale`` pass of ``fusedopt.functional``). Twins: :func:`fusedopt.reference.global_norm` and
:func:`fusedopt.reference.clip_grad_norm_`.

Accuracy: the sum of squares is that of a pairwise-and-linear sum of doubles (relative error
about 1e-16 times log2 of the lane count plus the number of chunks), its square root is taken
in double, and only the result is rounded to the tensors' dtype: the norm of float32 tensors is
the exact norm correctly rounded but for ties, where torch's own float32 reductions are a few
ulp off. The 2-norm is the one computed (``norm_type=2.0``); other orders are refused.

Arrays: NumPy arrays, torch CPU tensors (through NumPy views of their memory: no copy), and CUDA
arrays (torch CUDA tensors, CuPy, ``__cuda_array_interface__``, all on one device): the same
reduction and scaling passes by the CUDA kernels, queued on the arrays' stream; the norm is read
back to the host (one synchronization), as torch's ``.item()`` would. The tensors are checked
(dtype float32 or float64, contiguous, writeable for the clip) before anything is written; a
refused call changes nothing.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from . import _arrays as _libs
from . import _backend, _core

__all__ = ["clip_grad_norm_", "global_norm"]

_NONFINITE = ("The total norm of order {} for gradients from `parameters` is non-finite, so it "
              "cannot be clipped. To disable this error and scale the gradients by the non-finite "
              "norm anyway, set `error_if_nonfinite=False`")


def _torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _arrays(fn: str, tensors: Any) -> tuple[list, Any]:
    """``tensors`` as a list of NumPy arrays (views of torch CPU tensors), and the dtype of the
    result: float64 if any tensor is float64, else float32."""
    if isinstance(tensors, np.ndarray) or _torch_tensor(tensors):
        tensors = [tensors]
    elif not isinstance(tensors, (list, tuple)):
        try:
            tensors = list(tensors)
        except TypeError:
            raise TypeError(f"{fn}: tensors must be an array or a list of arrays, got "
                            f"{type(tensors).__name__}") from None
    out = list(tensors)
    if all(type(t) is np.ndarray for t in out):
        pass
    elif _backend.on_device(out):  # the CUDA kernels, which refuse a host array among them
        return out, (np.float64 if any(map(_is_f64, out)) else np.float32)
    elif out and _torch_tensor(out[0]):
        try:  # the common case, one C call per tensor (a view, never a copy)
            out = [t.numpy() for t in out]
        except (RuntimeError, TypeError, AttributeError):
            out = [_view(fn, i, t) for i, t in enumerate(out)]
    elif any(map(_torch_tensor, out)):
        out = [_view(fn, i, t) for i, t in enumerate(out)]
    dtypes = set(map(_dtype_of, out))
    return out, (np.float64 if np.dtype(np.float64) in dtypes else np.float32)


def _dtype_of(t: Any) -> Any:
    return getattr(t, "dtype", None)  # not an array: the kernel's check names it


def _is_f64(t: Any) -> bool:
    """Whether a CUDA array is float64 (a torch dtype, a NumPy dtype, or a typestr)."""
    dt = getattr(t, "dtype", None)
    if dt is None:
        dt = getattr(t, "__cuda_array_interface__", {}).get("typestr")
    return str(dt) in ("float64", "torch.float64", "<f8")


def _view(fn: str, i: int, t: Any) -> Any:
    """The NumPy view of ``tensors[i]`` if it is a torch tensor that has one, a clear error if
    it cannot; other arrays as they are (the kernels' checks name what is wrong with them)."""
    if not _torch_tensor(t):
        if _backend.on_device([t]):
            raise TypeError(f"{fn}: tensors[{i}] is in device memory, tensors[0] in host "
                            "memory; one call takes arrays of one place")
        return t
    torch = sys.modules["torch"]
    if t.layout is not torch.strided:
        raise TypeError(f"{fn}: tensors[{i}] has layout {t.layout}, expected a dense tensor")
    if t.device.type != "cpu":
        raise TypeError(f"{fn}: tensors[{i}] is on {t.device}, tensors[0] in host memory; one "
                        "call takes arrays of one place")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{fn}: tensors[{i}] has dtype {t.dtype}, expected torch.float32 or "
                        "torch.float64")
    return t.detach().numpy()


def _check_norm_type(fn: str, norm_type: Any) -> None:
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)):
        raise TypeError(f"{fn}: norm_type must be a number, got {type(norm_type).__name__}")
    if float(norm_type) != 2.0:
        raise ValueError(f"{fn}: norm_type={norm_type!r}: fusedopt computes the 2-norm only "
                         "(norm_type=2.0)")


def _norm(fn: str, arrays: list) -> float:
    """The 2-norm in double (``sumsq``'s square root)."""
    return math.sqrt(sumsq(fn, arrays))


def sumsq(fn: str, arrays: list) -> float:
    """The sum of the squares of every element of ``arrays``, in double: one reduction call (the
    CPU's, or for CUDA arrays the CUDA kernels' into a float64 array of the first array's library
    on their device, read back), the per-tensor sums added in list order. Messages name ``fn``;
    global-norm clipping and LAMB's norm over several calls (``optim.optimizer.run_input``)."""
    if not arrays:
        return 0.0
    if _backend.on_device(arrays):
        from . import _cuda_calls

        bound = _cuda_calls.bind("sumsq", (arrays,), (), name=fn)
        lib = _libs.adapter_of(arrays[0])
        if lib is None:  # a bare __cuda_array_interface__: no library to allocate with
            raise TypeError(f"{fn}: tensors[0] is a {type(arrays[0]).__name__}; the norm of "
                            "CUDA arrays needs them to be torch or CuPy arrays")
        out, ptr = lib.f64_zeros(arrays[0], len(arrays))
        bound.run(out=ptr)
        sums: Any = np.asarray(lib.to_host(out))
    else:
        sums = _core.cpu.call("sumsq", (arrays,), (), None, None, fn)  # float64, one a tensor
    total = 0.0
    for s in sums.tolist():
        total += s
    return total


def _scale(fn: str, arrays: list, factor: float) -> None:
    """Every array times ``factor``, by one fused call on the arrays' backend."""
    if _backend.on_device(arrays):
        _backend.bind("scale", (arrays,), (factor,), name=fn).run()
    else:
        _core.cpu.call("scale", (arrays,), (factor,), None, None, fn)


def global_norm(tensors: Any, norm_type: float = 2.0) -> Any:
    """The 2-norm of all of ``tensors`` together (as if concatenated), as
    ``torch.nn.utils.get_total_norm`` computes it: a NumPy scalar of the tensors' dtype (float64
    if any is float64), or a 0-d torch tensor when they are torch tensors; 0 for no tensors.
    Inf or NaN in a tensor gives an infinite or NaN norm.

    >>> import numpy as np, fusedopt
    >>> fusedopt.global_norm([np.array([3.0, 0.0]), np.array([4.0])])
    np.float64(5.0)
    """
    fn = "global_norm"
    _check_norm_type(fn, norm_type)
    arrays, dtype = _arrays(fn, tensors)
    value = dtype(_norm(fn, arrays))
    return _as_given(tensors, value)


def _as_given(tensors: Any, value: Any) -> Any:
    """``value`` as torch returns it for torch tensors (a 0-d tensor), else as it is."""
    first = tensors if not isinstance(tensors, (list, tuple)) else (tensors[0] if tensors else None)
    if first is not None and _torch_tensor(first):
        torch = sys.modules["torch"]
        return torch.as_tensor(value, device=first.device)  # 0-d, of its dtype, where the grads are
    return value


def clip_grad_norm_(grads: Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Any:
    """Scale ``grads`` in place so that their global 2-norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does, and return the norm before clipping
    (:func:`global_norm`'s value).

    With :math:`n` the norm, every grad is multiplied by
    :math:`c = \\min(1, \\text{max\\_norm} / (n + 10^{-6}))`, computed in the norm's dtype in
    torch's order (``1 / (n + 1e-6)``, then times ``max_norm``), so the grads get torch's bits
    whenever the norms agree. A norm of inf or NaN raises ``RuntimeError`` (torch's message) if
    ``error_if_nonfinite``, else scales by the resulting NaN or 0, as torch does. The grads
    are checked (writeable, contiguous, float32 or float64) before the first is written.

    >>> import numpy as np, fusedopt
    >>> g = [np.array([3.0, 0.0]), np.array([4.0])]
    >>> fusedopt.clip_grad_norm_(g, max_norm=1.0)
    np.float64(5.0)
    >>> [x.round(6) for x in g]
    [array([0.6, 0. ]), array([0.8])]
    """
    fn = "clip_grad_norm_"
    _check_norm_type(fn, norm_type)
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating)):
        raise TypeError(f"{fn}: max_norm must be a number, got {type(max_norm).__name__}")
    arrays, dtype = _arrays(fn, grads)
    if not arrays:
        return _as_given(grads, np.float32(0.0))
    _backend.bind("scale", (arrays,), (1.0,), name=fn)  # every grad checked: nothing written
    norm = dtype(_norm(fn, arrays))
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(_NONFINITE.format(float(norm_type)))
    with np.errstate(all="ignore"):
        coef = np.minimum((dtype(1.0) / (norm + dtype(1e-6))) * dtype(max_norm), dtype(1.0))
    if coef != 1.0:  # (torch multiplies by 1.0 too: the same bits, one pass less)
        _scale(fn, arrays, float(coef))
    return _as_given(grads, norm)
