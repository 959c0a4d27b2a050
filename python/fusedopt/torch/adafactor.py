"""``fusedopt.torch.Adafactor``: ``torch.optim.Adafactor`` run by fusedopt's fused CPU kernel.

Adafactor is not made from a spec (:mod:`fusedopt.optim.adafactor` says why), so its torch class is
this one: torch's base class keeps the param groups, hooks and state dicts; the step hands the
params, grads and states, as NumPy views of the same memory, to the call the NumPy class makes.

Note [Adafactor's steady step]
    Most steps repeat the last one. After a step in which every param of every group had a grad,
    each group keeps what it gathered (``_Gathered``: its params, their state dicts and state
    tensors, the NumPy views of them, and the data addresses and shapes). The next step reuses
    it if, compared by C loops over the lists (``map``), every group has the same params list
    holding the same params, contiguous, each with a contiguous grad of its dtype, at the same
    address and shape, the same state dict, holding the same state tensors, contiguous, at the
    same addresses and of the same shapes and dtypes, the same step tensors at the same
    addresses, and the same 16-bit flags. Only the grads are read anew (their views are never
    kept: a grad set to None must be freed). The step counts are read and advanced through the
    step tensors' NumPy views (torch's ``_foreach_add_`` pays a dispatch per 0-d tensor;
    bench/README.md has the figures). Anything else, a ``load_state_dict`` included, takes the
    general gather, which checks, allocates and makes views where memory changed. The
    hyper-parameters are read at every step either way, and the call checks its arrays as
    always.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np
import torch

from ..optim import adafactor as _adafactor
from ..optim.optimizer import call_seed, check_bool, check_exclusive, check_rounding
from .optimizer import (_DTYPES, _LOW, _data_ptr, _grad, _is_contiguous, _view, load_keeping,
                        loaded_entries)

__all__ = ["Adafactor"]

# the low-precision group flags (Note [Adafactor in 16 bits])
_FLAGS = ("stochastic_rounding", "seed", "master_weights", "kahan_summation")


_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")
_STATES = ("row_var", "col_var", "variance", "master_param", "kahan_comp")
_STEP = ("step",)


class _Gathered(NamedTuple):
    """A group's last gather, all of whose params had grads (Note [Adafactor's steady step])."""

    plist: list  # the group's params list
    params: tuple
    flags: tuple  # master_weights, kahan_summation
    pptrs: list
    shapes: list
    dtypes: list
    states: list  # each param's state dict
    owners: list  # the state dict of each state tensor below
    names: list  # its name there
    tensors: list
    tptrs: list
    tshapes: list
    tdtypes: list
    counts: list  # the step tensors
    cptrs: list
    count_views: list
    views: tuple  # the views _gather made (without the grads')


def _number(lr: Any) -> Any:
    """A 1-element tensor lr as its float (torch takes one); anything else as it is."""
    return float(lr.item()) if isinstance(lr, torch.Tensor) else lr


class Adafactor(torch.optim.Optimizer):
    __doc__ = (
        "``torch.optim.Adafactor`` (the same arguments, defaults, state names and state dicts),\n"
        "each group's step one fused call over its CPU tensors (float32, float64, bfloat16 or\n"
        "float16, contiguous; a 16-bit param's states are float32, where torch keeps them in its\n"
        "dtype). ``stochastic_rounding``, ``seed`` (drawn once when None), ``master_weights`` and\n"
        "``kahan_summation`` are group flags, kept by the state dict; ``master_param`` and\n"
        "``kahan_comp`` are state tensors. ``step`` keeps torch's float32 step tensor per param.\n"
        "There is no CUDA kernel yet: a CUDA param is refused.\n\n"
        "The rule, from :class:`fusedopt.Adafactor`:\n\n"
        + (_adafactor.Adafactor.__doc__ or "")
    )

    def __init__(self, params: Any, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False,
                 stochastic_rounding: bool = False, seed: int | None = None,
                 master_weights: bool = False, kahan_summation: bool = False) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d,
                    "weight_decay": weight_decay, "foreach": foreach, "maximize": maximize}
        _adafactor.check_hyper("Adafactor", {**defaults, "lr": _number(lr)})
        on, seed = check_rounding("Adafactor", stochastic_rounding, seed)  # drawn once
        super().__init__(params, {**defaults, "stochastic_rounding": on, "seed": seed,
                                  "master_weights": master_weights,
                                  "kahan_summation": kahan_summation})

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then refused if the group holds a param twice (torch only warns: the fused
        call would update it twice) or its hyper-parameters are out of range."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if len(set(map(id, group["params"]))) != len(group["params"]):
                raise ValueError("optimizer contains a parameter group with duplicate parameters")
            _adafactor.check_hyper("Adafactor", {**group, "lr": _number(group["lr"])})
            self._check_flags("Adafactor", group)
        except BaseException:
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_flags(cls: str, group: dict) -> None:
        """A group's low-precision flags (Note [Adafactor in 16 bits]); one that turns stochastic
        rounding on without a seed draws one here."""
        for name in _FLAGS[2:]:
            check_bool(cls, name, group[name])
        check_exclusive(cls, group)
        group["seed"] = check_rounding(cls, group["stochastic_rounding"], group["seed"])[1]

    def _refuse(self, gi: int, k: int, p: torch.Tensor) -> None:
        """Raises what is wrong with param ``k`` of group ``gi`` or its grad."""
        where = f"Adafactor.step: param_groups[{gi}]['params'][{k}]"
        g = p.grad
        if g is None:
            return
        if torch.is_complex(p):
            raise RuntimeError("Adafactor does not support complex parameters")
        if g.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients")
        if p.device.type != "cpu":
            raise TypeError(f"{where} is on {p.device}; Adafactor has no CUDA kernel yet "
                            "(CPU tensors only)")
        if p.dtype not in _DTYPES:
            raise TypeError(f"{where} has dtype {p.dtype}, expected torch.float32, torch.float64, "
                            "torch.bfloat16 or torch.float16")
        if g.dtype != p.dtype:
            raise TypeError(f"{where}.grad has dtype {g.dtype}, expected {p.dtype}")
        for what, t in (("", p), (".grad", g)):
            if not t.is_contiguous():
                raise ValueError(f"{where}{what} is not contiguous (fusedopt updates in place "
                                 "and never copies)")

    @staticmethod
    def _view_of(t: torch.Tensor, kept: dict, seen: dict) -> Any:
        """The NumPy view of param or state ``t`` made at the last step (in ``kept``), if ``t``
        still has the memory, shape and dtype it had then, else a new one; put in ``seen`` for
        the next step. Replaced memory (``p.data = ...``) is always seen: a kept view holds its
        memory, which no other tensor can then have."""
        entry = kept.get(id(t))
        ptr = t.data_ptr()
        if entry is not None and entry[0] is t and entry[1] == ptr and entry[2] == t.shape \
                and entry[3] is t.dtype:
            view = entry[4]
        else:
            view = _view(t)
        seen[id(t)] = (t, ptr, t.shape, t.dtype, view)
        return view

    def _gather(self, gi: int, group: dict, kept: dict, seen: dict) -> tuple:
        """The params of group ``gi`` that have grads, their grads, their states (torch's
        _init_group for a new one, kept apart until the step is made), and NumPy views of each
        param and of its row_var, col_var and variance (None where it has not that state), made
        anew where a tensor's memory changed since the last step (``_view_of``)."""
        params, grads, states, extras = [], [], [], []
        views: tuple = ([], [], [], [], [], [])  # params, row, col, variance, copies, comps
        master, kahan = group["master_weights"], group["kahan_summation"]
        for k, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if p.device.type != "cpu" or p.dtype not in _DTYPES or g.dtype != p.dtype or \
                    g.is_sparse or not p.is_contiguous() or not g.is_contiguous():
                self._refuse(gi, k, p)
            state = self.state.get(p)
            if not state:
                state = {"step": torch.tensor(0.0, dtype=torch.float32)}
                dtype = torch.float32 if p.dtype in _LOW else p.dtype
                if g.dim() > 1:
                    state["row_var"] = g.new_zeros((*g.shape[:-1], 1), dtype=dtype)
                    state["col_var"] = g.new_zeros((*g.shape[:-2], 1, g.shape[-1]), dtype=dtype)
                else:
                    state["variance"] = torch.zeros_like(g, dtype=dtype,
                                                         memory_format=torch.preserve_format)
            m = c = None
            if p.dtype in _LOW and master:  # the master is the call's param, p its copy
                m = state.get("master_param")
                if m is None:
                    m = p.detach().float()
                    extras.append((state, "master_param", m))
            elif p.dtype in _LOW and kahan:
                c = state.get("kahan_comp")
                if c is None:
                    c = torch.zeros_like(p, memory_format=torch.preserve_format)
                    extras.append((state, "kahan_comp", c))
            views[0].append(self._view_of(p if m is None else m, kept, seen))
            for out, name in zip(views[1:4], ("row_var", "col_var", "variance")):
                t = state.get(name)
                out.append(None if t is None else self._view_of(t, kept, seen))
            views[4].append(None if m is None else self._view_of(p, kept, seen))
            views[5].append(None if c is None else self._view_of(c, kept, seen))
            params.append(p)
            grads.append(_view(g))  # not kept: a grad set to None must be freed
            states.append(state)
        return params, grads, states, views, extras

    def _steady(self, group: dict, last: _Gathered | None) -> list | None:
        """The grads of a group that repeats its last gather ``last``, or None (Note [Adafactor's
        steady step])."""
        plist = group["params"]
        if last is None or plist is not last.plist or len(plist) != len(last.params) \
                or not all(map(operator.is_, plist, last.params)) \
                or (group["master_weights"], group["kahan_summation"]) != last.flags:
            return None
        grads = list(map(_grad, plist))
        if not all(map(operator.is_not, grads, [None] * len(grads))):
            return None
        try:
            list(map(_data_ptr, grads))  # (raises for a sparse grad)
        except RuntimeError:  # the general step names it
            return None
        if not all(map(_is_contiguous, grads)) or list(map(_dtype, grads)) != last.dtypes \
                or list(map(_data_ptr, plist)) != last.pptrs \
                or list(map(_shape, plist)) != last.shapes \
                or not all(map(_is_contiguous, plist)) \
                or list(map(_dtype, plist)) != last.dtypes \
                or not all(map(operator.is_, map(self.state.get, plist), last.states)) \
                or not all(map(operator.is_, map(dict.get, last.owners, last.names), last.tensors)) \
                or list(map(_data_ptr, last.tensors)) != last.tptrs \
                or list(map(_shape, last.tensors)) != last.tshapes \
                or list(map(_dtype, last.tensors)) != last.tdtypes \
                or not all(map(_is_contiguous, last.tensors)) \
                or not all(map(operator.is_, map(dict.get, last.states, _STEP * len(plist)),
                               last.counts)) \
                or list(map(_data_ptr, last.counts)) != last.cptrs:
            return None
        return grads

    @staticmethod
    def _gathered(group: dict, params: list, states: list, views: tuple) -> _Gathered | None:
        """What ``_steady`` compares a group's next step with, if all its params had grads."""
        if len(params) != len(group["params"]):
            return None
        owners, names, tensors = [], [], []
        counts = [st["step"] for st in states]
        for st in states:
            for name in _STATES:
                t = st.get(name)
                if t is not None:
                    owners.append(st)
                    names.append(name)
                    tensors.append(t)
        return _Gathered(group["params"], tuple(params),
                         (group["master_weights"], group["kahan_summation"]),
                         list(map(_data_ptr, params)), list(map(_shape, params)),
                         list(map(_dtype, params)), list(states), owners, names, tensors,
                         list(map(_data_ptr, tensors)), list(map(_shape, tensors)),
                         list(map(_dtype, tensors)), counts, list(map(_data_ptr, counts)),
                         list(map(_view, counts)), views)

    def _call(self, group: dict, views: Any, grads: list, steps: list, check_only: bool,
              first: int = 0) -> None:
        """The call of a group whose first param has flat index ``first`` (its seed's key)."""
        copies, comps = views[4], views[5]
        eps = group["eps"]
        if eps[0] is None and copies and copies[0] is not None:  # the param's, not its master's
            eps = (float(np.finfo(copies[0].dtype).eps), eps[1])
        _adafactor.call(views[0], grads, views[1], views[2], views[3], steps,
                        lr=float(_number(group["lr"])), beta2_decay=group["beta2_decay"],
                        eps=eps, d=group["d"], weight_decay=group["weight_decay"],
                        maximize=group["maximize"], name="Adafactor.step", check_only=check_only,
                        sr_seed=call_seed(group["seed"], first)
                        if group.get("stochastic_rounding") else None,
                        param_copies=copies if any(x is not None for x in copies) else None,
                        kahan_comps=comps if any(x is not None for x in comps) else None)

    def load_state_dict(self, state_dict: Any) -> None:
        """torch's, then a 16-bit param's states made float32 again from the saved tensors
        (torch's load casts them to the param's dtype; a saved bfloat16 state is exact in
        float32)."""
        self.__dict__.pop("_views", None)  # (the views of the states it replaces)
        self.__dict__.pop("_last", None)
        load_keeping(self, super().load_state_dict, state_dict, _FLAGS)
        for group in self.param_groups:
            self._check_flags("Adafactor.load_state_dict", group)
        for p, entry, mine in loaded_entries(self, state_dict):
            if p.dtype not in _LOW:
                continue
            for name in ("row_var", "col_var", "variance", "master_param"):
                if isinstance(entry.get(name), torch.Tensor):
                    mine[name] = entry[name].detach().to(p.device, torch.float32, copy=True)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every param with a grad: one fused call per group, all of them checked
        before the first writes."""
        if getattr(self, "grad_scale", None) is not None or \
                getattr(self, "found_inf", None) is not None:
            # torch's Adafactor takes no part in GradScaler's fused unscale either
            raise AssertionError("Grad scaling should occur outside of optimizer.step()")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = []
        # the last step's gathers and views (copies and pickles have none: torch's __getstate__
        # keeps its own fields only)
        last: list = self.__dict__.get("_last", [])
        steady_grads: list = list(map(self._steady, self.param_groups, last)) \
            if len(last) == len(self.param_groups) else [None]
        steady = all(map(operator.is_not, steady_grads, [None] * len(steady_grads)))
        kept: dict = self.__dict__.get("_views", {})
        seen: dict = {}
        first = 0  # the flat index of each group's first param
        gathered = []
        for gi, group in enumerate(self.param_groups):
            if steady:
                params, states, views = list(last[gi].params), last[gi].states, last[gi].views
                grads = list(map(_view, steady_grads[gi] or ()))
                extras: list = []
                counts = last[gi].count_views
            else:
                params, grads, states, views, extras = self._gather(gi, group, kept, seen)
                gathered.append(None if extras else self._gathered(group, params, states, views))
            if params:
                _adafactor.check_hyper("Adafactor.step", {**group, "lr": _number(group["lr"])})
                if steady:  # the step tensors' NumPy views
                    steps = [int(c) + 1 for c in counts]
                else:
                    steps = [int(x) + 1
                             for x in torch.stack([s["step"] for s in states]).tolist()]
                    counts = None
                calls.append((group, params, grads, states, views, steps, first, extras, counts))
            first += len(group["params"])
        if not steady:
            self._views = seen
            self._last = gathered
        if len(calls) > 1:  # all of them checked together (overlap across groups) first
            every: list = [sum((c[4][k] for c in calls), []) for k in range(6)]
            self._call(calls[0][0], every, sum((c[2] for c in calls), []),
                       sum((c[5] for c in calls), []), check_only=True)
        for group, params, grads, states, views, steps, first, extras, counts in calls:
            self._call(group, views, grads, steps, check_only=False, first=first)
            for state, name, t in extras:  # a new master or compensation, once stepped
                state[name] = t
            if steady:  # (a steady step's states are in place)
                for c in counts:
                    c += 1  # in the step tensor's memory, as torch's float32 add
            else:
                torch._foreach_add_([s["step"] for s in states], 1.0)
                for p, s in zip(params, states):
                    self.state[p] = s
        return loss
