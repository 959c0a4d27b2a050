"""Adafactor, ``torch.optim.Adafactor``.

Adafactor's state is not of its params' shapes (a row and a column factor for a param of 2 or more
dims), and its step needs row and column sums, so it is not made from a spec of
``csrc/algorithms/registry.h`` like the other classes: ``csrc/algorithms/adafactor.h`` holds its
math, ``csrc/cpu/factored.h`` its driver, ``csrc/bindings/adafactor.cpp`` its check. This module is
its NumPy front end (the class, and the call :func:`fusedopt.functional.adafactor` makes).
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _arrays, _core
from ._checks import as_float, as_list, as_scalar, as_step, check_no_shared_memory, check_param
from ._checks import resolve_lr
from ._state_dict import saved_seed
from .optimizer import call_seed, check_bool, check_exclusive, check_rounding, new_low_precision_state

__all__ = ["Adafactor"]

_DEFAULTS = {"lr": 1e-2, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0,
             "weight_decay": 0.0, "foreach": None, "maximize": False}
_STATES = ("row_var", "col_var", "variance")


def _real(cls: str, name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{cls}: {name} must be a float, got {type(x).__name__}")
    return float(x)


def check_hyper(cls: str, group: Mapping) -> None:
    """torch's checks of Adafactor's hyper-parameters, in its order and words (the learning rate
    may also be a schedule)."""
    lr = group["lr"]
    if not callable(lr) and not 0.0 <= _real(cls, "lr", lr):
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    beta2_decay = _real(cls, "beta2_decay", group["beta2_decay"])
    if not 0.0 >= beta2_decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {group['beta2_decay']}")
    eps = group["eps"]
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise TypeError(f"{cls}: eps must be a pair (eps1 or None, eps2), got {eps!r}")
    if eps[0] is not None and not 0.0 <= _real(cls, "eps[0]", eps[0]):
        raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
    if not 0.0 <= _real(cls, "eps[1]", eps[1]):
        raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
    if not 1.0 <= _real(cls, "d", group["d"]):
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {group['d']}")
    if not 0.0 <= _real(cls, "weight_decay", group["weight_decay"]):
        raise ValueError(f"weight_decay should be >= 0 but is: {group['weight_decay']}")
    if not isinstance(group["maximize"], bool):
        raise TypeError(f"{cls}: maximize must be a bool, got {type(group['maximize']).__name__}")


def call(params: list, grads: list, row_vars: list, col_vars: list, variances: list, steps: list,
         *, lr: float, beta2_decay: float, eps: Any, d: float, weight_decay: float,
         maximize: bool, name: str = "adafactor", index: Any = None,
         check_only: bool = False, sr_seed: int | None = None, param_copies: Any = None,
         kahan_comps: Any = None) -> None:
    """One fused Adafactor update of NumPy arrays (checked in C++ before anything is written).
    ``eps[0]`` None is the machine epsilon of ``params[0]``'s dtype, as torch's loop sets it;
    ``sr_seed`` an int: 16-bit params are stored with stochastic rounding under that seed;
    ``param_copies`` the 16-bit copies of float32 params (master weights), ``kahan_comps`` the
    compensations of 16-bit params (None entries: none)."""
    for x in params:
        if type(x) is not np.ndarray and _arrays.is_cuda_array(x):
            raise TypeError(f"{name}: params are CUDA arrays; Adafactor has no CUDA kernel yet "
                            "(only NumPy arrays)")
    eps1, eps2 = eps
    if eps1 is None:  # (np.finfo knows ml_dtypes.bfloat16 once ml_dtypes is imported)
        eps1 = float(np.finfo(params[0].dtype).eps) if params and isinstance(
            params[0], np.ndarray) and params[0].dtype.name in _FLOATS else 0.0
    _core.cpu.adafactor(params, grads, row_vars, col_vars, variances, steps, lr=float(lr),
                        beta2_decay=float(beta2_decay), eps1=float(eps1), eps2=float(eps2),
                        d=float(d), weight_decay=float(weight_decay), maximize=bool(maximize),
                        name=name, index=index, check_only=check_only, sr_seed=sr_seed,
                        param_copies=param_copies, kahan_comps=kahan_comps)


_FLOATS = ("float16", "bfloat16", "float32", "float64")


def state_dtype(p: Any) -> np.dtype:
    """The dtype of a param's states: its own, float32 for a 16-bit param (Note [Adafactor in
    16 bits] in csrc/algorithms/adafactor.h)."""
    return np.dtype(np.float32) if p.dtype.name in ("float16", "bfloat16") else p.dtype


def new_state(p: np.ndarray) -> dict:
    """torch's state of a param before its first step: its factors, or its variance."""
    dtype = state_dtype(p)
    if p.ndim >= 2:
        row = np.zeros((*p.shape[:-1], 1), dtype)
        col = np.zeros((*p.shape[:-2], 1, p.shape[-1]), dtype)
        return {"step": 0, "row_var": row, "col_var": col}
    # (its own offset in the page, as the generic classes' state: Note [State at its own 4 KiB
    # offset])
    return {"step": 0, "variance": _arrays.state_like(p, 0.0, 0, dtype)}


def _load(fail: str, where: str, value: Any, like: np.ndarray) -> np.ndarray:
    """A saved state array (NumPy, or a PyTorch tensor on any device) as a new array of ``like``'s
    shape and dtype; anything else (None, a string, a complex or integer array) is refused."""
    sd = _arrays.shape_dtype(value)
    if sd is None:
        raise TypeError(f"{fail}: {where} is a {type(value).__name__}, expected a numpy.ndarray "
                        "(or a PyTorch tensor)")
    shape, dtype = sd
    if shape != like.shape:
        raise ValueError(f"{fail}: {where} has shape {shape}, expected {like.shape}")
    if dtype not in _FLOATS:
        raise TypeError(f"{fail}: {where} has dtype {dtype}, expected a floating dtype")
    if _arrays._torch_tensor(value):  # on any device, bfloat16 too
        value = value.detach().cpu().double().numpy()
    elif not isinstance(value, np.ndarray):  # a CuPy array
        value = _arrays.adapter_of(value).to_host(value)
    return np.array(value, dtype=like.dtype, copy=True)


class Adafactor:
    r"""Adafactor as ``torch.optim.Adafactor`` (the same arguments, defaults, state names, error
    messages and update): a second moment kept as a row and a column factor for each matrix,
    a relative step size, and the update clipped to an RMS of ``d``.

    .. math::
        \hat\beta_{2,t} &= 1 - t^{c}, \qquad \rho_t = \min(\eta, 1/\sqrt{t}), \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\, \rho_t \\
        \theta &\leftarrow \theta (1 - \eta\lambda) \\
        R_t &= \hat\beta_{2,t} R_{t-1} + (1 - \hat\beta_{2,t}) \operatorname{mean}_j g_{ij}^2,
        \qquad C_t = \hat\beta_{2,t} C_{t-1} + (1 - \hat\beta_{2,t}) \operatorname{mean}_i g_{ij}^2 \\
        \hat V_t &= \frac{R_t C_t}{\max(\operatorname{mean}_i R_{t,i},\, \epsilon_1)}
            \quad \text{(2 or more dims: the last two)}, \qquad
        \hat V_t = \hat\beta_{2,t} \hat V_{t-1} + (1 - \hat\beta_{2,t}) g^2 \quad \text{(else)} \\
        U_t &= g / \sqrt{\max(\hat V_t, \epsilon_1^2)}, \qquad
        \theta \leftarrow \theta - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t) / d)} U_t

    per param, with :math:`c` = ``beta2_decay``, :math:`t` the param's own step, :math:`g = \pm
    \nabla f` and RMS the root mean square of a tensor. The EMAs are torch's ``lerp`` (weight
    :math:`t^c`: the first step takes the first grad's statistics whole). :math:`\epsilon_1`
    None is the machine epsilon of the group's first param's dtype (1.19e-7 for float32), as
    torch's loop sets it; note that torch clamps by :math:`\epsilon_1` (and its square) where
    the paper adds :math:`\epsilon_1` to :math:`g^2`. A NaN norm leaves :math:`\alpha` at
    :math:`\epsilon_2 \rho_t` and the divisor at 1 (Python's ``max``), as in torch. Leading dims
    of a param of 3 or more dims are batch dims, each matrix factored on its own. Shazeer and
    Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.

    One step makes three passes over a factored param (24 bytes per fp32 element) and two over
    the others (32): Note [Adafactor's passes] in ``csrc/algorithms/adafactor.h``. Every sum
    (the norms, the row and column sums) is formed in double in an order fixed by the shapes
    alone, so results are the same bits for any thread count and SIMD path; their relative error
    is that of a double sum (about 1e-16 times the number of terms), well below torch's float32
    reductions'. The norms are then rounded to the param's dtype as torch's ``norm()`` returns
    them, and overflow where torch's do (a float32 norm past 1.8e19 is inf; so is a variance
    estimate past 3.4e38, whose U is then 0): huge values give torch's results, inf and NaN
    included. A factored U is formed from a factor per row and one per column (Note
    [Adafactor's direction]), within about 1.5 ulp of the exact value. CPU only (NumPy arrays):
    there is no CUDA kernel yet.

    A bfloat16 (``ml_dtypes.bfloat16``) or float16 param, with a grad of its dtype, keeps float32
    states; the math is the float32 kernel's and the new param is rounded once to nearest even
    (Note [Adafactor in 16 bits]), and :math:`\epsilon_1` None is its dtype's machine epsilon
    (2^-7 for bfloat16), as torch's loop sets it. torch keeps such a param's states, and does its
    math, in the param's dtype. The other classes' remedies for 16-bit params are Adafactor's
    too: ``stochastic_rounding=True`` (``seed`` drawn from the OS when None, recorded in the
    state dict), ``master_weights=True`` (a float32 ``master_param`` in the state is the param
    the step updates, the 16-bit param written from it in the same pass) and
    ``kahan_summation=True`` (a ``kahan_comp`` of the param's dtype carries each store's
    rounding error into the next).

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32, float64,
            bfloat16 or float16, C-contiguous (F-ordered 1-D arrays are contiguous too), updated
            in place.
        lr (float or schedule): :math:`\eta`, the cap of the relative step size (default: 1e-2).
        beta2_decay (float): :math:`c \le 0` (default: -0.8).
        eps (tuple[float | None, float]): :math:`(\epsilon_1, \epsilon_2)` (default:
            (None, 1e-3)).
        d (float): the clipping threshold, >= 1 (default: 1.0).
        weight_decay (float): :math:`\lambda`, decoupled, times :math:`\eta` (default: 0.0;
            torch's docstring says 1e-2, its signature 0.0).
        foreach (bool | None): torch's implementation switch, kept in the groups; unused.
        maximize (bool): ascend instead of descend (default: False).
        stochastic_rounding (bool): store 16-bit params with stochastic rounding (default:
            False).
        seed (int | None): its seed, in [0, 2**64) (default: None, drawn when it is on).
        master_weights (bool): keep a float32 master of each 16-bit param (default: False).
        kahan_summation (bool): keep a Kahan compensation of each 16-bit param (default:
            False; excludes the two above).

    State per param: ``step``, and ``row_var`` (shape ``[..., R, 1]``) and ``col_var``
    (``[..., 1, C]``) for a param of 2 or more dims, else ``variance``; of the param's dtype,
    float32 for a 16-bit param. ``state_dict()`` and
    ``load_state_dict()`` take torch's layout: a state dict of ``torch.optim.Adafactor`` loads
    here, and ours into it (as tensors: ``torch.as_tensor`` of each array).

    ``step(grads)`` takes one grad per param (None: the param is skipped, as torch skips a param
    without ``.grad``).

    >>> import numpy as np, fusedopt
    >>> w = np.array([3.0, -4.0])
    >>> opt = fusedopt.Adafactor([w], lr=0.1)
    >>> opt.step([np.array([1.0, 1.0])])  # |U| = 1 everywhere; alpha = rms(w) * lr
    >>> np.round(w, 6)
    array([ 2.646447, -4.353553])
    """

    def __init__(self, params: Any, lr: Any = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False,
                 stochastic_rounding: bool = False, seed: int | None = None,
                 master_weights: bool = False, kahan_summation: bool = False) -> None:
        self.defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d,
                         "weight_decay": weight_decay, "foreach": foreach, "maximize": maximize}
        check_hyper("Adafactor", self.defaults)
        self._rounding = check_rounding("Adafactor", stochastic_rounding, seed)
        self._master = check_bool("Adafactor", "master_weights", master_weights)
        self._kahan = check_bool("Adafactor", "kahan_summation", kahan_summation)
        check_exclusive("Adafactor", self._options())
        self._bare = _arrays.looks_like_array(params)
        groups = as_list("Adafactor", "params", params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        self._params: list = []
        self._state: dict[int, dict] = {}
        self._lock = threading.Lock()
        for group in groups:
            self.add_param_group(group)

    @property
    def stochastic_rounding(self) -> bool:
        """Whether 16-bit params are stored with stochastic rounding."""
        return self._rounding[0]

    @stochastic_rounding.setter
    def stochastic_rounding(self, value: bool) -> None:
        rounding = check_rounding("Adafactor", value, self._rounding[1])
        check_exclusive("Adafactor", {**self._options(), "stochastic_rounding": rounding[0]},
                        "stochastic_rounding")
        self._rounding = rounding

    @property
    def master_weights(self) -> bool:
        """Whether 16-bit params keep a float32 master (``master_param``)."""
        return self._master

    @master_weights.setter
    def master_weights(self, value: bool) -> None:
        on = check_bool("Adafactor", "master_weights", value)
        check_exclusive("Adafactor", {**self._options(), "master_weights": on}, "master_weights")
        self._master = on

    @property
    def kahan_summation(self) -> bool:
        """Whether 16-bit params carry a Kahan compensation (``kahan_comp``)."""
        return self._kahan

    @kahan_summation.setter
    def kahan_summation(self, value: bool) -> None:
        on = check_bool("Adafactor", "kahan_summation", value)
        check_exclusive("Adafactor", {**self._options(), "kahan_summation": on}, "kahan_summation")
        self._kahan = on

    def _options(self) -> dict:
        return {"stochastic_rounding": self._rounding[0], "master_weights": self._master,
                "kahan_summation": self._kahan}

    @property
    def seed(self) -> int | None:
        """The seed of stochastic rounding (drawn from the OS when set to None with it on)."""
        return self._rounding[1]

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._rounding = (self._rounding[0],
                          check_rounding("Adafactor", self._rounding[0], value)[1])

    @property
    def state(self) -> Mapping:
        """The state of each param, by its flat index: ``step`` and its arrays (live)."""
        return self._state

    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"Adafactor: a param group must be a dict, got "
                            f"{type(param_group).__name__}")
        group = dict(param_group)
        params = as_list("Adafactor", "params", group.get("params", []), groups=False)
        unknown = set(group) - {"params", *_DEFAULTS}
        if unknown:
            raise ValueError(f"Adafactor: unknown key(s) in a param group: {sorted(unknown)}")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        check_hyper("Adafactor", group)
        start = len(self._params)
        metas = [check_param("Adafactor", f"params[{start + i}]", p) for i, p in enumerate(params)]
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"Adafactor: params[{start + i}] is a CUDA array; Adafactor has "
                                "no CUDA kernel yet (only NumPy arrays)")
            if p.ndim >= 2 and not p.flags.c_contiguous:
                raise ValueError(f"Adafactor: params[{start + i}] is not C-contiguous (Adafactor "
                                 "factors the last two dims of a param of 2 or more dims)")
        every = [check_param("Adafactor", f"params[{i}]", p) for i, p in enumerate(self._params)]
        check_no_shared_memory("Adafactor", every + metas)
        group["params"] = params
        self._params += params
        self.param_groups.append(group)

    def _groups(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for g in self.param_groups:
            out.append((start, start + len(g["params"])))
            start += len(g["params"])
        return out

    def step(self, grads: Any) -> None:
        """One update of every param that has a grad: one fused call per param group. Everything
        is checked before anything is allocated or written."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("Adafactor.step: this optimizer is being stepped in another "
                               "thread; steps of one optimizer must not overlap")
        try:
            self._step(grads)
        finally:
            self._lock.release()

    def _step(self, grads: Any) -> None:
        n = len(self._params)
        if self._bare and _arrays.looks_like_array(grads):
            grads = [grads]
        if not isinstance(grads, (list, tuple)):
            raise TypeError("Adafactor.step: grads must be a list of arrays (one per param), "
                            f"got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"Adafactor.step: got {len(grads)} grads for {n} params")
        calls = []
        for gi, (group, (start, stop)) in enumerate(zip(self.param_groups, self._groups())):
            check_hyper("Adafactor", group)
            idx = [i for i in range(start, stop) if grads[i] is not None]
            if not idx:
                continue
            states = [self._state.get(i) or new_state(self._params[i]) for i in idx]
            steps = [s["step"] + 1 for s in states]
            # torch's lr is one number per group; a schedule gives it at the group's first param's
            # completed steps
            lr = resolve_lr(gi, group["lr"], steps[0] - 1)
            extra = self._low_precision(idx, states)
            calls.append((group, idx, states, steps, lr, start, extra))
        if len(calls) > 1:  # all of them checked together (overlap across groups) first
            every = [(i, s, t, m, c) for _, idx, states, steps, _, _, (ms, cs) in calls
                     for i, s, t, m, c in zip(idx, states, steps, ms, cs)]
            idx_all, states_all, steps_all, ms_all, cs_all = (list(x) for x in zip(*every))
            self._run(calls[0][0], idx_all, states_all, steps_all, 0.0, grads,
                      (ms_all, cs_all), check_only=True)
        for group, idx, states, steps, lr, start, extra in calls:
            self._run(group, idx, states, steps, lr, grads, extra, start=start)
            for i, s, t, m, c in zip(idx, states, steps, *extra):
                s["step"] = t
                if m is not None:
                    s["master_param"] = m
                if c is not None:
                    s["kahan_comp"] = c
                self._state[i] = s

    def _low_precision(self, idx: list, states: list) -> tuple[list, list]:
        """Each 16-bit param's float32 master (master weights) and Kahan compensation, from its
        state or made new (None where the option is off or the param is not 16-bit); a new one
        enters the state once the step is made."""
        masters: list = [None] * len(idx)
        comps: list = [None] * len(idx)
        if self._master or self._kahan:
            for k, (i, s) in enumerate(zip(idx, states)):
                p = self._params[i]
                if p.dtype.name not in ("bfloat16", "float16"):
                    continue
                if self._master:
                    m = s.get("master_param")
                    masters[k] = new_low_precision_state(p, "master_param", 1) if m is None else m
                else:
                    c = s.get("kahan_comp")
                    comps[k] = new_low_precision_state(p, "kahan_comp", 1) if c is None else c
        return masters, comps

    def _run(self, group: dict, idx: list, states: list, steps: list, lr: float,
             grads: Any, extra: tuple, check_only: bool = False, start: int = 0) -> None:
        """The call over params ``idx`` (flat indices) with ``group``'s hyper-parameters (the
        group's first param at flat index ``start``: its seed's key) and the masters and
        compensations ``extra`` of ``_low_precision`` (a master is the param of the call, the
        16-bit param its copy); with check_only, params of several groups are only checked."""
        on, seed = self._rounding
        masters, comps = extra
        params = [self._params[i] if m is None else m for i, m in zip(idx, masters)]
        copies = None
        if any(m is not None for m in masters):
            copies = [None if m is None else self._params[i] for i, m in zip(idx, masters)]
        kahan = comps if any(c is not None for c in comps) else None
        eps = group["eps"]
        if eps[0] is None and idx and masters[0] is not None:  # the param's epsilon, not its master's
            eps = (float(np.finfo(self._params[idx[0]].dtype).eps), eps[1])
        call(params, [grads[i] for i in idx],
             [s.get("row_var") for s in states], [s.get("col_var") for s in states],
             [s.get("variance") for s in states], steps, lr=lr,
             beta2_decay=group["beta2_decay"], eps=eps, d=group["d"],
             weight_decay=group["weight_decay"], maximize=group["maximize"],
             name="Adafactor.step", index=idx, check_only=check_only,
             sr_seed=call_seed(seed or 0, start) if on else None, param_copies=copies,
             kahan_comps=kahan)

    # ---- state dicts (torch's layout) --------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's layout: ``state`` by flat index (copies of the arrays, ``step`` a float as
        torch keeps it), ``param_groups`` with their params as indices."""
        state = {i: {k: (float(v) if k == "step" else np.array(v, copy=True))
                     for k, v in s.items()} for i, s in self._state.items()}
        groups = []
        for g, (start, stop) in zip(self.param_groups, self._groups()):
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(start, stop))})
        out = {"state": state, "param_groups": groups}
        if self._rounding[0]:
            out["stochastic_rounding"] = {"seed": self._rounding[1]}
        return out

    def load_state_dict(self, state_dict: Mapping) -> None:
        """A state dict of this class or of ``torch.optim.Adafactor`` (tensors are read as
        arrays of the state's dtype: a torch state of a bfloat16 param, in bfloat16, exactly).
        Everything is checked before anything is replaced."""
        fail = "Adafactor.load_state_dict"
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        ids: dict = {}
        new_groups = []
        for g, saved, (start, stop) in zip(self.param_groups, groups, self._groups()):
            if len(saved["params"]) != stop - start:
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
            for k, i in zip(saved["params"], range(start, stop)):
                ids[k] = i
            # a torch state dict keeps a tensor lr as a tensor
            values = {k: as_scalar(v) for k, v in saved.items()
                      if k != "params" and k in _DEFAULTS}
            merged = {**g, **values}
            merged["eps"] = tuple(merged["eps"])
            check_hyper(fail, merged)
            new_groups.append(merged)
        loaded: dict[int, dict] = {}
        for k, entry in state_dict["state"].items():
            if k not in ids:
                raise ValueError(f"{fail}: state for param {k!r}, which no group holds")
            i = ids[k]
            p = self._params[i]
            want = new_state(p)
            # a 16-bit param's master and compensation: loaded (of a float32 param: ignored)
            extras = set(entry) & {"master_param", "kahan_comp"}
            names = set(entry) - {"step"} - extras
            if names != set(want) - {"step"}:
                raise ValueError(f"{fail}: the state of param {k} holds {sorted(names)}, "
                                 f"expected {sorted(set(want) - {'step'})}")
            if p.dtype.name in ("bfloat16", "float16"):
                if "master_param" in extras:
                    want["master_param"] = np.empty(p.shape, np.float32)
                    names.add("master_param")
                if "kahan_comp" in extras:
                    want["kahan_comp"] = np.empty(p.shape, p.dtype)
                    names.add("kahan_comp")
            s: dict[str, Any] = {"step": as_step(fail, f"state[{k}]['step']",
                                                 as_float(fail, f"state[{k}]['step']",
                                                          as_scalar(entry["step"])))}
            for name in sorted(names):
                s[name] = _load(fail, f"state[{k}][{name!r}]", entry[name], want[name])
            loaded[i] = s
        seed = saved_seed(fail, state_dict)
        for g, merged in zip(self.param_groups, new_groups):
            g.update({k: v for k, v in merged.items() if k != "params"})
        self._state = loaded
        if seed is not None:
            self.seed = seed

    def zero_grad(self) -> None:
        """Nothing to do: the NumPy classes hold no grads (kept for torch's interface)."""

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) takes everything but the step's lock."""
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        lines = ["Adafactor ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join([*lines, ")"])

