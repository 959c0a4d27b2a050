"""The one place that decides which backend binds a call (Note [A bound call] in
``csrc/bindings/bound.h``).

NumPy arrays go to ``_core.cpu``, which checks every array itself, in C++, where checking a few
thousand arrays costs little; deciding that costs one look at the first array of the first list,
never a pass over the list. CUDA arrays (anything with ``__cuda_array_interface__`` or CUDA
DLPack: CuPy, PyTorch CUDA tensors, Numba) go to :mod:`fusedopt._cuda_calls`, which reads them
into device pointers for ``_core.cuda``. Anything else goes to ``_core.cpu``, which refuses it with
a message that names it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core, _cuda_arrays

__all__ = ["bind", "call", "as_list", "cuda_available"]

_ndarray = np.ndarray


def as_list(x: Any) -> Any:
    """A bare array is a list of one; lists, tuples and None pass through; anything else is left
    for the backend to refuse with a message that names the argument."""
    if type(x) is list or type(x) is tuple or x is None:
        return x
    if isinstance(x, _ndarray) or _cuda_arrays.is_cuda_array(x):
        return [x]
    return x


def on_device(arrays: Any) -> bool:
    """Whether a call whose first list is ``arrays`` goes to the CUDA backend."""
    try:
        first = arrays[0]
    except Exception:  # empty, or not a sequence: the CPU backend refuses it with a message
        return False
    if type(first) is _ndarray or not isinstance(arrays, (list, tuple)):
        return False
    return _cuda_arrays.is_cuda_array(first)


def bind(algo: str, lists: tuple, hyper: tuple, *, name: str, index: Any = None,
         grads_later: bool = False, aliases: dict | None = None, grad_dtype: Any = None,
         param_copies: Any = None, sr_seed: Any = None, kahan_comps: Any = None) -> Any:
    """The bound call of ``algo`` over ``lists`` (its lists in its signature's order) with the
    call's hyper-parameters ``hyper``, on the backend of the first list's arrays. ``name``,
    ``index`` and ``aliases`` say how its messages name the call, the indices and the lists;
    ``grad_dtype`` the dtype of grads that come later, where it is not their params';
    ``param_copies`` the 16-bit copies of the params the call writes (Note [Param copies]);
    ``sr_seed`` the seed of stochastic rounding (Note [Stochastic rounding]); ``kahan_comps``
    the Kahan compensations of 16-bit params (Note [Kahan summation])."""
    if on_device(lists[0]):
        from . import _cuda_calls

        _no_copies(name, param_copies, sr_seed, kahan_comps)
        return _cuda_calls.bind(algo, lists, hyper, name=name, index=index,
                                grads_later=grads_later, aliases=aliases)
    return _core.cpu.bind(algo, lists, hyper, name=name, index=index, grads_later=grads_later,
                          aliases=aliases, grad_dtype=grad_dtype, param_copies=param_copies,
                          sr_seed=sr_seed, kahan_comps=kahan_comps)


def _no_copies(name: str, copies: Any, sr_seed: Any = None, kahan: Any = None) -> None:
    for arg, value in (("param_copies", copies), ("sr_seed", sr_seed), ("kahan_comps", kahan)):
        if value is not None:
            raise TypeError(f"{name}: {arg} is for the CPU kernels only (the CUDA kernels run "
                            "float32 and float64)")


def call(algo: str, lists: tuple, hyper: tuple, step: Any, scalars: Any, **run: Any) -> Any:
    """One call, bound and run at once (fusedopt.functional's): returns what the run returns.
    ``run``: the spec's run input (LAMB's ``grad_norm``), if given."""
    if on_device(lists[0]):
        from . import _cuda_calls

        _no_copies(algo, run.pop("param_copies", None), run.pop("sr_seed", None),
                   run.pop("kahan_comps", None))
        return _cuda_calls.bind(algo, lists, hyper, name=algo).run(step=step, scalars=scalars,
                                                                   **run)
    return _core.cpu.call(algo, lists, hyper, step, scalars, algo, **run)


def cuda_available() -> bool:
    """Whether fusedopt was built with CUDA **and** a CUDA device can be used here."""
    cuda = getattr(_core, "cuda", None)
    return cuda is not None and cuda.is_available()
