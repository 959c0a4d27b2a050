"""Weight EMA: an exponential moving average of the parameters, kept by one fused call per update."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from .. import _arrays, _buffers, functional
from .optimizer import _as_list, _as_step, _check_param, _flat_indices, _load_array

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

    Each :meth:`update` is one :func:`fusedopt.functional.ewa` call over all the arrays (one per
    device where they live on several); the averages are kept in the dtype of their params.

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

    _functional = functional

    def __init__(self, params, decay=0.999):
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
            raise TypeError(f"EMA: decay must be a real number, got {type(decay).__name__}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got decay={decay}")
        self._bare = _arrays.looks_like_array(params)
        params = _as_list("EMA", "params", params, groups=False)
        if not params:
            raise ValueError("EMA: got an empty parameter list")
        self._metas = [_check_param("EMA", f"params[{i}]", p) for i, p in enumerate(params)]
        # One fused call per place (host, or a CUDA device) the arrays live in, in first-seen order.
        by_place = {}
        for i, m in enumerate(self._metas):
            by_place.setdefault(m.place, []).append(i)
        self._parts = None if len(by_place) == 1 else list(by_place.values())
        self._decay = float(decay)
        self._params = params
        self._averages = [_arrays.state_like(p, 0.0, 0) for p in params]
        self.num_updates = 0

    @property
    def decay(self):
        """:math:`\\beta` (read-only: the bias correction assumes one value for the whole run)."""
        return self._decay

    def _arrays(self, fn, params):
        """``params`` (or those given at construction), checked against the averages."""
        if params is None:
            return self._params
        if self._bare and _arrays.looks_like_array(params):
            params = [params]
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"EMA.{fn}: params must be a list of arrays, got {type(params).__name__}")
        if len(params) != len(self._averages):
            raise ValueError(f"EMA.{fn}: got {len(params)} arrays for {len(self._averages)} averages")
        for i, (p, m) in enumerate(zip(params, self._metas)):
            pm, wrong = _arrays.mismatch(p, m, f"EMA.{fn}: params[{i}]")
            if wrong == "type":
                raise TypeError(f"EMA.{fn}: params[{i}] is a {type(p).__name__}, expected "
                                f"{'a numpy.ndarray' if m.place == _arrays.CPU else 'a CUDA array'}")
            if wrong == "place":
                raise TypeError(f"EMA.{fn}: params[{i}] is {_arrays.kind(p)}, but its average is "
                                f"{_arrays.kind(self._averages[i])}")
            if wrong == "dtype":
                raise TypeError(f"EMA.{fn}: params[{i}] has dtype {pm.dtype}, expected {m.dtype}")
            if wrong == "shape":
                raise ValueError(f"EMA.{fn}: params[{i}] has shape {pm.shape}, expected {m.shape}")
            if wrong is not None:  # "aligned" or "order"
                raise ValueError(
                    f"EMA.{fn}: params[{i}] is not contiguous in the memory order of its average "
                    f"({m.order}) or not aligned"
                )
        return list(params)

    def update(self, params=None):
        """Fold the current values of ``params`` (default: the params given at construction) into
        the averages: one fused call over every array."""
        params = self._arrays("update", params)
        self._calls("update", "ewa", self._averages, params, True, beta=self._decay)
        self.num_updates += 1

    def _check_updated(self, fn):
        if self.num_updates == 0:
            raise RuntimeError(f"EMA.{fn}: no update yet, so there is no average to read")

    def averages(self):
        """New arrays holding the bias-corrected averages :math:`\\bar\\theta_k` (a bare array if
        the EMA was built on one)."""
        self._check_updated("averages")
        outs = [_arrays.adapter_of(a).empty_like(a) for a in self._averages]
        self._calls("averages", "ewa_readout", self._averages, outs, False, beta=self._decay,
                    step=self.num_updates)
        return outs[0] if self._bare else outs

    def copy_to(self, params=None):
        """Write the bias-corrected averages into ``params`` (default: the params given at
        construction), in place: one fused call."""
        params = self._arrays("copy_to", params)
        self._check_updated("copy_to")
        for i, p in enumerate(params):
            _check_param("EMA.copy_to", f"params[{i}]", p)
        self._calls("copy_to", "ewa_readout", self._averages, params, True, beta=self._decay,
                    step=self.num_updates)

    def _calls(self, method, fn, averages, others, others_are_params, **hyper):
        """``fn`` over the averages and ``others`` (the params, or new arrays): one call per place
        the arrays live in, every call checked before the first is made (the optimizers' Note
        [Every call checked before the first]). What only the kernel refuses
        (params given to ``copy_to`` that overlap) is reported as ``EMA.<method>: ...``, with
        ``params[i]`` for the kernel's name of ``others`` when they are the params."""
        if self._parts is None:
            parts = [(range(len(averages)), averages, others)]
        else:
            parts = [(part, [averages[i] for i in part], [others[i] for i in part])
                     for part in self._parts]
        current = None
        try:
            if len(parts) == 1:  # the call checks itself before it writes
                current = parts[0]
                getattr(self._functional, fn)(current[1], current[2], **hyper)
                return
            pending = []
            with _buffers.preparing(pending):
                for current in parts:
                    getattr(self._functional, fn)(current[1], current[2], **hyper)
            for run in pending:
                run()
        except ValueError as e:
            message = _flat_indices(str(e), current[0])
            message = message.replace(f"{fn}: ", f"EMA.{method}: ", 1)
            if others_are_params:
                message = message.replace("outs[", "params[").replace("values[", "params[")
            raise ValueError(message) from None

    def state_dict(self):
        """``{"decay": float, "num_updates": int, "averages": {index: array}}``, the raw
        (uncorrected) averages copied."""
        return {
            "decay": self._decay,
            "num_updates": self.num_updates,
            "averages": {i: _arrays.copy(a) for i, a in enumerate(self._averages)},
        }

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`; raises ``ValueError`` naming the entry that does not match
        (count, shape, dtype, decay), and then changes nothing."""
        fail = "EMA.load_state_dict"
        if not isinstance(state_dict, Mapping) or not {"decay", "num_updates", "averages"} <= set(state_dict):
            raise ValueError(f"{fail}: expected a dict with 'decay', 'num_updates' and 'averages'")
        if state_dict["decay"] != self._decay:
            raise ValueError(
                f"{fail}: the state dict has decay={state_dict['decay']}, this EMA decay={self._decay}"
            )
        num_updates = _as_step(fail, "state", state_dict["num_updates"])
        saved = state_dict["averages"]
        if not isinstance(saved, Mapping) or sorted(saved) != list(range(len(self._averages))):
            n = len(saved) if isinstance(saved, Mapping) else "no dict of"
            raise ValueError(f"{fail}: the state dict has {n} averages, this EMA has {len(self._averages)}")
        new = [
            _load_array(fail, f"averages[{i}]", saved[i], p, m, i, 0)
            for i, (p, m) in enumerate(zip(self._params, self._metas))
        ]
        self._averages = new
        self.num_updates = num_updates

    def __repr__(self):
        return f"EMA(decay={self._decay}, arrays={len(self._averages)}, num_updates={self.num_updates})"
