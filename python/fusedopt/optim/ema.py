"""Weight EMA: an exponential moving average of the parameters, kept by one fused call per update."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from .. import _arrays, _backend, _core
from ._checks import as_list, as_step, check_param, load_array

__all__ = ["EMA"]


class EMA:
    r"""An exponential moving average of parameters (Polyak averaging with exponential weights),
    with the bias correction of a zero start.

    .. math::
        a_k \leftarrow \beta a_{k-1} + (1 - \beta)\, \theta_k \quad (a_0 = 0), \qquad
        \bar\theta_k = \frac{a_k}{1 - \beta^k}

    where :math:`k` is the number of updates. :math:`\bar\theta_k` is a weighted mean of the params
    seen so far whose weights sum to one at every :math:`k`, so it needs no warm-up (as the
    "debiased" EMA of Kingma & Ba, 2015, sec. 3; the averages start at zero, unlike timm's
    ``ModelEmaV2`` which starts from a copy of the weights). Polyak & Juditsky, "Acceleration of
    Stochastic Approximation by Averaging", SIAM J. Control Optim. 30 (1992).

    Args:
        params: the params to average: an array or a list of arrays (float32 or float64,
            contiguous; NumPy arrays, or CUDA arrays of CuPy or PyTorch). Their shapes, dtypes,
            memory orders and devices fix those of the averages, which are allocated with the same
            library; they are also what :meth:`update` and :meth:`copy_to` use when called without
            arguments.
        decay (float): :math:`\beta`, in [0, 1) (default: 0.999).

    Each :meth:`update` is one fused call over all the arrays (one per device where they live on
    several), :func:`fusedopt.functional.ewa`'s; the averages are kept in the dtype of their params.

    >>> import numpy as np, fusedopt
    >>> w = np.array([0.0, 10.0])
    >>> ema = fusedopt.EMA([w], decay=0.5)
    >>> for value in (1.0, 2.0, 3.0):
    ...     w[:] = value
    ...     ema.update()
    >>> ema.averages()[0].round(6)  # (1*1 + 2*2 + 3*4) / 7
    array([2.428571, 2.428571])
    >>> ema.copy_to()  # write them into w
    >>> w.round(6)
    array([2.428571, 2.428571])
    """

    _backend: Any = _backend
    _algorithms = ("ewa", "ewa_readout")  # the calls it makes, whose rule its docstring holds
    _bare: bool
    _metas: list
    _parts: list[list[int]]
    _decay: float
    _params: list
    _averages: list
    _updates: list | None
    num_updates: int

    def __init__(self, params: Any, decay: float = 0.999) -> None:
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
            raise TypeError(f"EMA: decay must be a real number, got {type(decay).__name__}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got decay={decay}")
        self._bare = _arrays.looks_like_array(params)
        params = as_list("EMA", "params", params, groups=False)
        if not params:
            raise ValueError("EMA: got an empty parameter list")
        self._metas = [check_param("EMA", f"params[{i}]", p) for i, p in enumerate(params)]
        # One call per place (host, or a CUDA device) the arrays live in, in first-seen order.
        by_place: dict = {}
        for i, m in enumerate(self._metas):
            by_place.setdefault(m.place, []).append(i)
        self._parts = list(by_place.values())
        self._decay = float(decay)
        self._params = params
        self._averages = [_arrays.state_like(p, 0.0, 0) for p in params]
        self._updates = None  # the bound update calls (Note [A bound call])
        self.num_updates = 0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_updates"] = None  # they hold the original's averages
        return state

    @property
    def decay(self) -> float:
        """:math:`\\beta` (read-only: the bias correction assumes one value for the whole run)."""
        return self._decay

    def _given(self, fn: str, params: Any) -> list:
        """``params`` (or those given at construction) as a list of the right length; the calls
        check each array."""
        if params is None:
            return self._params
        if self._bare and _arrays.looks_like_array(params):
            params = [params]
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"EMA.{fn}: params must be a list of arrays, got {type(params).__name__}")
        if len(params) != len(self._averages):
            raise ValueError(f"EMA.{fn}: got {len(params)} arrays for {len(self._averages)} averages")
        return list(params)

    def _split(self, arrays: list) -> list:
        return [[arrays[i] for i in part] for part in self._parts]

    def _index(self, part: list) -> Any:
        return None if part == list(range(len(self._averages))) else part

    def update(self, params: Any = None) -> None:
        """Fold the current values of ``params`` (default: the params given at construction) into
        the averages: one fused call over every array (one per device where they live on several)."""
        params = self._given("update", params)
        if self._updates is None:
            self._updates = [
                self._backend.bind("ewa", (avgs, None), (self._decay,), name="EMA.update",
                                   index=self._index(part), grads_later=True,
                                   aliases={"values": "params"})
                for part, avgs in zip(self._parts, self._split(self._averages))]
        _check_and_run(self._updates, self._split(params), {})
        self.num_updates += 1

    def _check_updated(self, fn: str) -> None:
        if self.num_updates == 0:
            raise RuntimeError(f"EMA.{fn}: no update yet, so there is no average to read")

    def _readout(self, fn: str, outs: list, aliases: dict | None) -> None:
        calls = [
            self._backend.bind("ewa_readout", (avgs, dst), (self._decay,), name=f"EMA.{fn}",
                               index=self._index(part), aliases=aliases)
            for part, avgs, dst in zip(self._parts, self._split(self._averages), self._split(outs))]
        _check_and_run(calls, [None] * len(calls), {"step": self.num_updates})

    def averages(self) -> Any:
        """New arrays holding the bias-corrected averages :math:`\\bar\\theta_k` (a bare array if
        the EMA was built on one)."""
        self._check_updated("averages")
        outs = [_arrays.adapter_of(a).empty_like(a) for a in self._averages]
        self._readout("averages", outs, None)
        return outs[0] if self._bare else outs

    def copy_to(self, params: Any = None) -> None:
        """Write the bias-corrected averages into ``params`` (default: the params given at
        construction), in place: one fused call (one per device where they live on several)."""
        params = self._given("copy_to", params)
        self._check_updated("copy_to")
        for i, p in enumerate(params):
            check_param("EMA.copy_to", f"params[{i}]", p)
        self._readout("copy_to", params, {"outs": "params"})

    def state_dict(self) -> dict:
        """``{"decay": float, "num_updates": int, "averages": {index: array}}``, the raw
        (uncorrected) averages copied."""
        return {
            "decay": self._decay,
            "num_updates": self.num_updates,
            "averages": {i: _arrays.copy(a) for i, a in enumerate(self._averages)},
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore a :meth:`state_dict`; raises ``ValueError`` naming the entry that does not match
        (count, shape, dtype, decay), and then changes nothing."""
        fail = "EMA.load_state_dict"
        if not isinstance(state_dict, Mapping) or not {"decay", "num_updates", "averages"} <= set(state_dict):
            raise ValueError(f"{fail}: expected a dict with 'decay', 'num_updates' and 'averages'")
        if state_dict["decay"] != self._decay:
            raise ValueError(
                f"{fail}: the state dict has decay={state_dict['decay']}, this EMA decay={self._decay}"
            )
        num_updates = as_step(fail, "state", state_dict["num_updates"])
        saved = state_dict["averages"]
        if not isinstance(saved, Mapping) or sorted(saved) != list(range(len(self._averages))):
            n = len(saved) if isinstance(saved, Mapping) else "no dict of"
            raise ValueError(f"{fail}: the state dict has {n} averages, this EMA has {len(self._averages)}")
        new = [
            load_array(fail, f"averages[{i}]", saved[i], p, m, i, 0)
            for i, (p, m) in enumerate(zip(self._params, self._metas))
        ]
        self._averages = new
        self._updates = None
        self.num_updates = num_updates

    def __repr__(self) -> str:
        return f"EMA(decay={self._decay}, arrays={len(self._averages)}, num_updates={self.num_updates})"


def _check_and_run(calls: list, grads: list, run: dict) -> None:
    """Bound calls made together: each checked (and, for several, across their memory) before the
    first runs (Note [A bound call])."""
    if len(calls) > 1:
        cores = [getattr(c, "core", c) for c in calls]
        if all(isinstance(c, _core.Bound) for c in cores):
            _core.Calls(cores).check(
                [getattr(c, "grads_arg", _same)(g) for c, g in zip(calls, grads)])
        else:
            for c, g in zip(calls, grads):
                c.check(g)
    for c, g in zip(calls, grads):
        c.run(g, **run)


def _same(x: Any) -> Any:
    return x
