"""The arguments the optimizer classes and :class:`fusedopt.EMA` check themselves, with the
messages they raise: the params they are given, the hyper-parameters of a param group (through the
spec's own check, ``_core.check_hyper``), a schedule's learning rate, and the values a state dict
holds. What a call checks (grads, state buffers, overlap) the bound calls check in C++.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _arrays, _core

_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


def as_list(cls: str, where: str, params: Any, *, groups: bool = True) -> list:
    """``params`` as a list: a bare array is a list of one; any ordered iterable (a list, a tuple,
    a generator) is taken in order; a set, whose order changes between runs, is refused."""
    if _arrays.looks_like_array(params):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{cls}: {where} is a set; optimizer parameters need to be organized in ordered "
            "collections (a list), because the order of a set changes between runs"
        )
    if isinstance(params, (str, bytes, Mapping)) or not hasattr(params, "__iter__"):
        what = "a list of arrays or a list of param-group dicts" if groups else "a list of arrays"
        raise TypeError(f"{cls}: {where} must be a numpy array, {what}, got {type(params).__name__}")
    return list(params)


def check_param(cls: str, where: str, p: Any) -> _arrays.Meta:
    """What the kernels need of an array they update in place, checked when it is handed over;
    returns its :class:`fusedopt._arrays.Meta`. A NumPy array, or a CUDA array of a library the
    classes can allocate state with (CuPy, PyTorch)."""
    ad, m = _arrays.describe(p, f"{cls}: {where}")
    if ad is None:
        if _arrays.is_cuda_array(p):
            raise TypeError(
                f"{cls}: {where} is a CUDA array of type {type(p).__name__}, whose library the "
                "optimizer classes cannot allocate state with (they use CuPy or PyTorch); allocate "
                "the state yourself and use fusedopt.functional"
            )
        raise TypeError(
            f"{cls}: {where} is a {type(p).__name__}, expected a numpy.ndarray "
            "(or a CUDA array of CuPy or PyTorch)"
        )
    if m.masked:
        raise TypeError(
            f"{cls}: {where} is a masked array (numpy.ma.MaskedArray), whose mask fusedopt would "
            "ignore; pass its data (arr.data) or a plain ndarray"
        )
    if m.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{cls}: {where} has dtype {m.dtype}, expected float32, float64, "
                        "bfloat16 or float16")
    if m.dtype not in ("float32", "float64") and not isinstance(p, np.ndarray):
        raise TypeError(f"{cls}: {where} has dtype {m.dtype}: 16-bit params are taken as NumPy "
                        "arrays only (the CUDA kernels run float32 and float64)")
    if not m.native:
        raise TypeError(
            f"{cls}: {where} has a non-native byte order (dtype {p.dtype}); fusedopt updates "
            "params in place and cannot convert it"
        )
    if m.readonly:
        raise ValueError(f"{cls}: {where} is read-only")
    if not m.order:
        raise ValueError(
            f"{cls}: {where} is not contiguous (params are updated in place, never through a copy; "
            "pass a contiguous array)"
        )
    if not m.aligned:
        raise ValueError(f"{cls}: {where} is not aligned")
    return m


def check_no_shared_memory(cls: str, metas: list) -> None:
    """Two params sharing memory would be updated twice per step: refuse (views included).
    Host and device addresses never coincide (CUDA's unified virtual addressing)."""
    spans = sorted((*m.span, i) for i, m in enumerate(metas) if m.span[1])
    reach = None
    for lo, hi, i in spans:
        if reach is not None and lo < reach[0]:
            a, b = sorted((reach[1], i))
            raise ValueError(
                f"{cls}: params[{a}] and params[{b}] share memory "
                "(each would be updated once per step through the other)"
            )
        if reach is None or hi > reach[0]:
            reach = (hi, i)


def check_hyper(cls: str, spec: Any, group: Mapping, where: str | None = None) -> None:
    """A param group's hyper-parameters, by the spec's own check: torch's texts (with " (in
    <where>)" for a value out of range in a named group), the learning rate a float or a
    schedule."""
    try:
        _core.check_hyper(spec.name, tuple(group[h.name] for h in spec.hypers), cls)
    except ValueError as e:
        if where is None:
            raise
        raise ValueError(f"{e} (in {where})") from None


def resolve_lr(gi: int, lr: Any, t: int) -> float:
    """A group's ``lr`` at ``t`` completed steps: the float itself, or ``schedule(t)``, which must
    be a finite real >= 0 (checked here, where the message can name the schedule and t)."""
    if not callable(lr):
        return float(lr)
    value = lr(t)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"Invalid learning rate: {value!r} (from the schedule of param_groups[{gi}] at t={t})"
        )
    return float(value)


def as_scalar(value: Any) -> Any:
    """A 0-d array of any library (torch keeps ``step`` as a tensor) as its Python number."""
    if not isinstance(value, numbers.Number) and getattr(value, "shape", None) == () \
            and hasattr(value, "item"):
        return value.item()
    return value


def as_step(fail: str, where: str, value: Any) -> int:
    """A saved step count: an int >= 0; a float or 0-d array holding one (torch keeps a float
    tensor) is taken as that int."""
    value = as_scalar(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value != int(float(value))
        or value < 0
    ):
        raise ValueError(f"{fail}: {where}['step'] is {value!r}, expected an int >= 0")
    return int(float(value))


def as_float(fail: str, where: str, value: Any) -> float:
    value = as_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{fail}: {where} is {value!r}, expected a float")
    return float(value)


def load_array(fail: str, where: str, value: Any, p: Any, m: _arrays.Meta, i: int,
               slot: int, dtype: Any = None) -> Any:
    """A new state buffer for param ``p`` (Meta ``m``, flat index ``i``) holding the saved
    ``value``: an array of NumPy, CuPy or PyTorch on any device, moved to ``p``'s. ``dtype``: the
    state's NumPy dtype where it is not the param's (Note [State dtypes]); then a saved array of
    any float dtype is taken and converted (torch keeps a bfloat16 param's state in bfloat16)."""
    sd = _arrays.shape_dtype(value)
    if sd is None:
        raise TypeError(
            f"{fail}: {where} is a {type(value).__name__}, expected a numpy.ndarray "
            "(or a CuPy or PyTorch array)"
        )
    want = dtype
    shape, dtype = sd
    if shape != m.shape:
        raise ValueError(
            f"{fail}: {where} has shape {shape}, expected {m.shape} (the shape of params[{i}])"
        )
    if want is not None and str(want) != m.dtype:
        if dtype not in _FLOAT_DTYPES:  # (shape_dtype names a torch dtype without "torch.")
            raise ValueError(f"{fail}: {where} has dtype {dtype}, expected a float dtype (the "
                             f"state of params[{i}] is {want})")
        return _arrays.load_like(p, value, slot, want)
    if dtype != m.dtype:
        raise ValueError(
            f"{fail}: {where} has dtype {dtype}, expected {m.dtype} (the dtype of params[{i}])"
        )
    return _arrays.load_like(p, value, slot)


def mutable_parts(values: tuple) -> tuple:
    """The values of a group snapshot that can be edited in place (a list, an array: ``betas``),
    as ``(position, copy)``: an edit in place keeps the object, so its contents are compared."""
    return tuple((i, tuple(v)) for i, v in enumerate(values) if isinstance(v, (list, np.ndarray)))
