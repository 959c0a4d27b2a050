"""The base of :mod:`fusedopt.torch`: a :class:`torch.optim.Optimizer` whose ``step`` runs one
fused call per param group, device and dtype (and step count), through the same bound calls as the
NumPy classes (Note [A bound call] in ``csrc/bindings/bound.h``).

Everything an algorithm is comes from its NumPy class (``fusedopt.optim.<Name>``) and so from its
spec: hyper-parameters, defaults, torch's messages for bad values, state names and the values new
state starts at, scalar state (NAdam's ``mu_product``), and how a group is split into calls
(SGD's fresh momentum buffers). What torch's base class does is left to it: param groups (named
ones too), ``zero_grad``, ``state_dict`` / ``load_state_dict`` and their hooks, step hooks.

Note [Torch tensors without a copy]
    A CPU tensor is handed to the CPU kernels as the NumPy array that ``Tensor.numpy()`` returns,
    which shares its memory; a CUDA tensor goes to the CUDA kernels as it is (it has
    ``__cuda_array_interface__``). No param, grad or state tensor is ever copied or made
    contiguous: a tensor the kernels cannot update where it lies is refused by name.

Note [Step counts as torch keeps them]
    ``state[p]["step"]`` is a 0-d float tensor on the CPU, as torch.optim keeps it (exact to 2**24
    steps), so state dicts move between these classes and torch.optim's both ways; NAdam's
    ``mu_product`` is a 0-d float64 tensor (torch's is float32: loaded into torch it is cast).
    The kernels take the count as an int, read once per call.

Note [The steady step of a torch optimizer]
    Most steps repeat the last one: the same params, all with grads, the same hyper-parameters
    and state tensors, one step count further. After a step that updated a whole param group of
    CPU tensors in one call, the group keeps a ``_Run``: its bound call (params and state held as
    NumPy views) and its step count. A steady step then reads each grad and its data address
    (Note [Grads by address] in ``csrc/bindings/cpu.cpp``) and checks, by C loops over the
    group, that every param has a contiguous grad, that the params' storage did not move (``p.data
    = ...``), that the group's ``params`` list and hyper-parameters are the ones the call was
    bound for (``lr`` is read at every step). Its state dicts cannot have been edited: the only
    way to them is ``opt.state``, which ends the run (below). Anything else takes the general
    step, which checks, allocates and binds anew.
    The step counts (and NAdam's ``mu_product``) of a steady run live in the run; they are written
    into the state tensors, in place, when anything can read them: ``state_dict()``, a copy of
    the optimizer, a look through ``opt.state`` -- which hands out the live dicts, so the groups
    it shows take the general step from then on, until ``load_state_dict`` replaces their dicts.

Note [GradScaler]
    The classes set ``_step_supports_amp_scaling``: ``torch.amp.GradScaler.step`` then hands them
    ``grad_scale`` and ``found_inf`` instead of unscaling the grads itself. A step whose
    ``found_inf`` is non-zero changes nothing: no param, no state, no step count, and no state is
    created for params seen for the first time. Otherwise the CPU kernels unscale each grad as
    they load it (Note [The fused unscale] in ``csrc/algorithms/algorithm.h``: the bits of a step
    on grads unscaled by GradScaler's ``unscale_``, and the grads are left scaled, as torch's fused
    optimizers leave them); CUDA grads are multiplied by ``1 / grad_scale`` in place before their
    calls run, after every call of the step was checked.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import operator
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from .. import _arrays, _backend, _core
from .._spec import Spec
from ..optim._checks import check_hyper, mutable_parts, resolve_lr
from ..optim._state_dict import (
    check_entry_names,
    check_group_names,
    group_state_values,
    with_group_state,
)
from ..optim.optimizer import (
    call_seed,
    check_bool,
    check_exclusive,
    check_rounding,
    hyper_value,
    low_precision_state,
    make_init,
    prepare_step_fns,
    run_input,
)

__all__ = ["Optimizer", "make_class"]

# torch.optim's implementation switches, and how these classes take them.
_FLAGS = ("foreach", "fused", "capturable", "differentiable")
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LOW = (torch.bfloat16, torch.float16)
# The low-precision options, group keys that torch.optim's state dicts lack.
LOW_PRECISION_FLAGS = ("state_dtype", "stochastic_rounding", "seed", "kahan_summation",
                       "master_weights")


def _is_low(p: Any) -> bool:
    return p.dtype in _LOW


def load_keeping(opt: torch.optim.Optimizer, load: Any, state_dict: Any, kept: Any) -> None:
    """``load(state_dict)`` (torch's ``load_state_dict`` of ``opt``), then each group's values of
    the keys ``kept`` back where its loaded group lacks them (a ``torch.optim`` dict has none of
    this library's options). What the loaded groups lack is read before ``load``, so before
    torch's load pre-hooks."""
    groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
    own = [{k: g[k] for k in kept if k in g} for g in opt.param_groups]
    missing = [[k for k in kept if k not in saved] if isinstance(saved, dict) else []
               for saved in (groups if isinstance(groups, (list, tuple)) else ())]
    load(state_dict)
    for group, mine, gone in zip(opt.param_groups, own, missing):
        group.update((k, mine[k]) for k in gone if k in mine)


def loaded_entries(opt: torch.optim.Optimizer, state_dict: Any) -> Any:
    """(param, its entry in ``state_dict``, its entry in ``opt.state``) for each param of ``opt``
    that has both, after ``opt`` loaded ``state_dict``: where to undo what torch's load did to the
    saved tensors."""
    groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
    states = state_dict.get("state") if isinstance(state_dict, Mapping) else None
    if not isinstance(groups, (list, tuple)) or not isinstance(states, Mapping):
        return
    params = (p for g in opt.param_groups for p in g["params"])
    ids = (i for g in groups for i in g["params"])
    for p, i in zip(params, ids):
        entry, mine = states.get(i), dict.get(opt.state, p)
        if entry and mine:
            yield p, entry, mine


def _scalar(name: str, value: Any) -> Any:
    """A hyper-parameter given as a tensor (torch allows a 1-element ``lr`` or ``betas``) as its
    Python number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return value.item()
    return value


class _Call:
    """One fused call of a step: a param group's params of one device, dtype and step count."""

    __slots__ = ("gi", "key", "params", "grads", "states", "lr", "bound", "created", "step",
                 "scalars", "where")

    def __init__(self, gi, key, params, grads, states, lr, where):
        self.gi, self.key, self.params, self.grads, self.states = gi, key, params, grads, states
        self.lr, self.where = lr, where
        self.bound: Any = None
        self.created: list = []  # (param, name or None for its whole state dict)
        self.step = 0
        self.scalars: Any = None


class _StateMap(collections.defaultdict):
    """``opt.state``: torch's mapping from a param to its state dict. Reading it writes the step
    counts of the steady steps into the state dicts first, and hands the dicts out, so their
    groups take the general step from then on (Note [The steady step of a torch optimizer])."""

    def __init__(self, opt: Any, data: Any = ()) -> None:
        super().__init__(dict, data)
        self.opt = opt

    def __reduce__(self) -> Any:
        self.opt._expose(None)
        return (collections.defaultdict, (dict, dict(super().items())))

    def __copy__(self) -> Any:
        self.opt._expose(None)
        return collections.defaultdict(dict, super().items())

    copy = __copy__

    def __getitem__(self, p: Any) -> Any:
        self.opt._expose(p)
        return super().__getitem__(p)

    def get(self, p: Any, default: Any = None) -> Any:
        self.opt._expose(p)
        return super().get(p, default)

    def items(self) -> Any:
        self.opt._expose(None)
        return super().items()

    def values(self) -> Any:
        self.opt._expose(None)
        return super().values()

    def __iter__(self) -> Any:  # dict(opt.state), copies: every dict goes out
        self.opt._expose(None)
        return super().__iter__()

    def keys(self) -> Any:
        self.opt._expose(None)
        return super().keys()

    def __repr__(self) -> str:
        self.opt._expose(None)
        return super().__repr__()


class _Run:
    """A param group's steady step (Note [The steady step of a torch optimizer])."""

    __slots__ = ("plist", "params", "snapshot", "mutable", "pptrs", "states", "bound",
                 "step", "scalars", "stale", "kernel_step", "key_rest")
    step: int
    scalars: Any
    key_rest: tuple

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    def key(self, n: int) -> tuple:
        """The call key the run stands for: its step count, its ``n`` scalars, the rest."""
        return (self.step, *((self.scalars,) if n == 1 else (self.scalars or ())), *self.key_rest)


_grad = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous


def _view(t: torch.Tensor) -> Any:
    """What the kernels take for tensor ``t`` (Note [Torch tensors without a copy]): a bfloat16
    tensor, which NumPy cannot hold, as an ml_dtypes.bfloat16 view of its memory."""
    t = t.detach()
    if t.device.type != "cpu":
        return t
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_arrays.bfloat16_dtype())
    return t.numpy()


class Optimizer(torch.optim.Optimizer):
    """Base class of the :mod:`fusedopt.torch` optimizers; not used directly.

    Each subclass takes torch.optim's constructor arguments (the flags ``foreach``, ``fused``,
    ``capturable``, ``differentiable`` too, where torch's class has them): ``foreach`` and
    ``fused`` choose between torch's implementations and are accepted and ignored (every step
    here is fused); ``capturable=True`` (step counts on the device, for CUDA graphs) and
    ``differentiable=True`` (autograd through the step) cannot be honoured and are refused.

    Params must be float32 or float64 tensors, dense and contiguous, on the CPU or a CUDA
    device, or bfloat16 or float16 tensors on the CPU; params of several devices and dtypes may
    share a group (one call each). ``state_dtype`` (keyword-only, kept in each group like the
    implementation flags) chooses the state's dtype as :mod:`fusedopt.optim`'s does (Note [State
    dtypes]): None keeps float32 state for 16-bit params (torch.optim keeps their dtype) and the
    param's dtype otherwise; ``torch.bfloat16`` (or ``"bfloat16"``) halves the state's memory.
    ``stochastic_rounding`` and ``seed`` (Note [Stochastic rounding]), ``kahan_summation``
    (Note [Kahan summation]: a ``kahan_comp`` state of each 16-bit param's dtype) and
    ``master_weights`` (Note [Master weights]: a float32 ``master_param`` state of each 16-bit
    param, updated, and the param written from it in the same pass) are group flags too, as in
    :mod:`fusedopt.optim`. A step reads
    ``p.grad``; params whose grad is None are skipped, as in torch. Sparse grads are refused.
    """

    _numpy: ClassVar[Any]  # the NumPy class of the algorithm (fusedopt.optim.<Name>)
    _spec: ClassVar[Spec]
    _kernel: ClassVar[Spec]
    _scalar_state: ClassVar[dict] = {}
    _flags: ClassVar[dict] = {}  # the implementation flags torch's class takes, with defaults
    _step_supports_amp_scaling = True
    state: Any  # torch's mapping, made a _StateMap
    # the ZeroRedundancyOptimizer that runs this optimizer over its rank's slice, if any
    # (Note [A sharded step])
    _shard: Any = None

    def __init__(self, params: Any, hyper: dict, flags: dict) -> None:
        self._reset_runs()
        if "seed" in flags:  # Note [Stochastic rounding]: drawn once, kept in every group
            flags = {**flags, "seed": check_rounding(type(self).__name__,
                                                     flags["stochastic_rounding"],
                                                     flags["seed"])[1]}
        self._check_flags(hyper, flags)
        check_hyper(type(self).__name__, self._kernel, self._plain(hyper))
        super().__init__(params, {**hyper, **flags, **self._numpy._group_defaults})
        self.state = _StateMap(self, self.state)

    def _reset_runs(self) -> None:
        self._calls_cache: dict = {}
        self._runs: dict = {}  # group index -> _Run
        self._exposed: set = set()  # groups whose state dicts were handed out
        # what a steady step compares with the last general one: an edit of any of these (a
        # flag included) sends the step down the general path, which checks it
        self._hyper_names = tuple(h.name for h in self._kernel.hypers if h.name != "lr") \
            + tuple(self._flags)

    def _flush(self, gi: int) -> None:
        run = self._runs.get(gi)
        if run is None or not run.stale:
            return
        for s in run.states:
            dict.__getitem__(s, "step").fill_(float(run.step))
        names = tuple(self._scalar_state)
        values = () if not names else (run.scalars,) if len(names) == 1 else tuple(run.scalars)
        for name, v in zip(names, values):
            for s in run.states:
                dict.__getitem__(s, name).fill_(v)
        run.stale = False

    def _flush_all(self) -> None:
        for gi in list(self._runs):
            self._flush(gi)

    def _expose(self, p: Any) -> None:
        """The state dict of ``p`` (None: every one) is being handed out."""
        if not self._runs:
            return
        if p is None:
            self._flush_all()
            self._exposed.update(self._runs)
            self._runs.clear()
            return
        for gi, run in list(self._runs.items()):
            if any(map(operator.is_, run.params, itertools.repeat(p))):
                self._flush(gi)
                self._exposed.add(gi)
                del self._runs[gi]

    def state_dict(self) -> dict:
        """torch's ``state_dict``, with every step count up to date, and each entry's ``step``
        (and NAdam's ``mu_product``) a copy: the entries are new dicts, their other tensors the
        live state, as torch's are."""
        self._flush_all()
        runs, self._runs = self._runs, {}  # torch's state_dict reads self.state: hand out nothing
        try:
            sd = super().state_dict()
        finally:
            self._runs = runs
        scalars = ("step", *self._scalar_state)
        sd["state"] = {k: {n: v.clone() if n in scalars and isinstance(v, torch.Tensor) else v
                           for n, v in entry.items()}
                       for k, entry in sd["state"].items()}
        for group in sd["param_groups"]:  # code, not state (ADOPT's clip_lambda): left out
            for name in self._numpy._step_fns:
                group.pop(name, None)
        kept = self._numpy._group_state  # what the peer keeps per group (Schedule-Free's k)
        if kept:
            initial = {"step": 0, **self._scalar_state}
            for group in sd["param_groups"]:
                group.update(group_state_values(kept, map(sd["state"].get, group["params"]),
                                                initial))
        return sd

    def __getstate__(self) -> dict:
        self._flush_all()
        return super().__getstate__()

    # ---- checks ----------------------------------------------------------------------------------

    def _check_flags(self, values: dict, flags: dict, where: str | None = None) -> None:
        """The implementation flags (at construction, of each group at each general step: an
        edit after construction is refused at the next step, before anything is written)."""
        cls = type(self).__name__ + (f": {where}" if where else "")
        if flags.get("capturable"):
            raise ValueError(
                f"{cls}: capturable=True is not supported: fusedopt keeps step counts on the host "
                "and reads them there (it cannot be captured in a CUDA graph)")
        if flags.get("differentiable"):
            raise ValueError(
                f"{cls}: differentiable=True is not supported: fusedopt's update runs outside "
                "autograd")
        if flags.get("state_dtype") is not None:
            _arrays.state_dtype_name(cls, flags["state_dtype"])
        for name in ("kahan_summation", "master_weights"):
            if flags.get(name) is not None:
                check_bool(cls, name, flags[name])
        check_exclusive(cls, flags)
        if "seed" in flags:
            seed = check_rounding(cls, flags.get("stochastic_rounding"), flags["seed"])[1]
            if seed != flags["seed"] and where is not None:  # a group turned it on: drawn here
                flags["seed"] = seed
        lr, betas = values.get("lr"), values.get("betas")
        if isinstance(betas, (tuple, list)) and len(betas) == 2 and \
                isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
            raise ValueError("betas must be either both floats or both Tensors")
        if flags.get("foreach") and self._spec.kernel == "adam":  # torch's Adam and AdamW refuse
            if isinstance(lr, torch.Tensor):
                raise ValueError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True")
            if isinstance(betas, (tuple, list)) and isinstance(betas[0], torch.Tensor):
                raise ValueError(
                    "betas[0] as a Tensor is not supported for capturable=False and foreach=True")

    def _plain(self, group: dict) -> dict:
        """The group's hyper-parameters with tensors as numbers (``lr``, ``betas``)."""
        out = {}
        for h in self._kernel.hypers:
            if h.name not in group:
                continue
            v = group[h.name]
            if h.kind == "pair" and isinstance(v, (tuple, list)):
                v = tuple(_scalar(f"{h.name}[{i}]", x) for i, x in enumerate(v))
            elif h.name == "lr" and callable(v) and not isinstance(v, torch.Tensor):
                pass  # a fusedopt.schedules schedule
            else:
                v = _scalar(h.name, v)
            out[h.name] = v
        return out

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group`` (its checks and messages), then what the kernels need of
        the new params and of the group's values; a group refused is not added."""
        n = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[n], n)
        except BaseException:
            del self.param_groups[n:]
            raise

    def _check_group(self, group: dict, gi: int) -> None:
        cls = type(self).__name__
        where = f"param_groups[{gi}]['params']"
        params = group["params"]
        for j, p in enumerate(params):
            what = f"{cls}: {where}[{j}]"
            if p.is_complex():
                raise TypeError(f"{what} is complex ({p.dtype}); fusedopt updates real tensors "
                                "(optimize torch.view_as_real(p) instead)")
            if p.dtype not in _DTYPES:
                raise TypeError(f"{what} has dtype {p.dtype}, expected torch.float32, "
                                "torch.float64, torch.bfloat16 or torch.float16")
            if p.dtype in _LOW and p.device.type != "cpu":
                raise TypeError(f"{what} has dtype {p.dtype} on {p.device}: 16-bit params are "
                                "taken on the CPU only (the CUDA kernels run float32 and float64)")
            if p.layout != torch.strided:
                raise TypeError(f"{what} has layout {p.layout}, expected a dense tensor")
            if p.device.type not in ("cpu", "cuda"):
                raise TypeError(f"{what} is on device {p.device}, expected the CPU or CUDA")
            if not p.is_contiguous():
                raise ValueError(f"{what} is not contiguous (params are updated in place, never "
                                 "through a copy)")
        if len(set(map(id, params))) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        spans = []
        for k, g in enumerate(self.param_groups[: gi + 1]):
            for j, p in enumerate(g["params"]):
                if p.numel():
                    lo = p.data_ptr()
                    spans.append((p.device, lo, lo + p.numel() * p.element_size(), k, j))
        spans.sort(key=lambda s: (str(s[0]), s[1]))
        for a, b in zip(spans, spans[1:]):
            if a[0] == b[0] and b[1] < a[2]:
                raise ValueError(
                    f"{cls}: param_groups[{a[3]}]['params'][{a[4]}] and "
                    f"param_groups[{b[3]}]['params'][{b[4]}] share memory (each would be "
                    "updated once per step through the other)")
        self._check_flags(group, group, f"param_groups[{gi}]")
        check_hyper(cls, self._kernel, self._plain(group), f"param_groups[{gi}]")

    # ---- state -----------------------------------------------------------------------------------

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._reset_runs()
        self.state = _StateMap(self, dict.items(self.state))
        flags = {h.name: h.default for h in self._spec.hypers if h.kind == "flag"}
        for group in self.param_groups:
            for k, v in {**flags, **self._flags}.items():
                group.setdefault(k, v)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``: a state dict of this class or of ``torch.optim``'s
        class of the same name (their state names and layouts are the same). One of another
        algorithm is refused (``ValueError`` naming the group key or state entry) before anything
        changes: a group without one of the algorithm's hyper-parameters (its flags may be
        missing: they take their defaults, as torch's ``__setstate__`` gives them; those the
        peer keeps on its optimizer, ``_kept_on_load``, keep this optimizer's values) or with one
        only another algorithm uses, a state entry with a name the algorithm does not keep, or
        without its step count, scalar state or always-present buffers."""
        cls = type(self).__name__
        fail = f"{cls}.load_state_dict"
        state_dict = self._with_group_state(state_dict)
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        states = state_dict.get("state") if isinstance(state_dict, dict) else None
        if isinstance(groups, (list, tuple)) and isinstance(states, dict):
            kept = self._numpy._kept_on_load
            wanted = [h.name for h in self._spec.hypers if h.kind != "flag" and h.name not in kept]
            allowed = [h.name for h in self._spec.hypers]
            for gi, saved in enumerate(groups):
                if isinstance(saved, dict):
                    check_group_names(fail, cls, f"param_groups[{gi}]", saved, wanted,
                                      self._numpy._all_hyper_names, allowed)
            numpy = self._numpy
            known = ("step", *numpy._scalar_state, *numpy._state_names)
            required = (() if numpy._step_optional else ("step",)) \
                + (*numpy._scalar_state, *numpy._always)
            for sid, entry in states.items():
                if isinstance(entry, dict) and entry:
                    check_entry_names(fail, cls, f"state[{sid!r}]", entry, known, required)
        # torch.optim's dicts lack these; its __setstate__ resets the runs
        load_keeping(self, super().load_state_dict, state_dict,
                     (*self._numpy._kept_on_load, *LOW_PRECISION_FLAGS))
        names = self._numpy._state_names
        for p, entry, mine_ in loaded_entries(self, state_dict):
            # torch's load cast the state tensors to the param's dtype: in the state's dtype again,
            # from the saved tensors (a bfloat16 param's float32 state is not rounded on the way);
            # scalar state float64 again
            dtype = self._state_dtype(p, self._group_of(p))
            for name in names:
                saved = entry.get(name)
                want = p.dtype if name == "kahan_comp" else \
                    torch.float32 if name == "master_param" else dtype
                if isinstance(saved, torch.Tensor) and mine_[name].dtype != want:
                    mine_[name] = saved.detach().to(p.device, want, copy=True)
            for name in self._scalar_state:
                if isinstance(entry.get(name), torch.Tensor):
                    mine_[name] = entry[name].detach().to(torch.float64, copy=True)

    def _with_group_state(self, state_dict: Any) -> Any:
        """``with_group_state`` (``optim/_state_dict.py``) with the values as torch keeps them: a
        step count as a float tensor, scalar state as float64."""
        return with_group_state(state_dict, self._numpy._group_state, lambda name, v: torch.tensor(
            float(v), dtype=_step_dtype() if name == "step" else torch.float64))

    def _plain_states(self, states: list) -> list:
        """What the NumPy class's ``_call_keys`` reads of each state dict (None: no state yet):
        the step count as an int, the scalar state as floats, and which buffers exist."""
        out: list[dict | None] = []
        names = self._kernel.state_names
        for s in states:
            if not s:
                out.append(None)
                continue
            step = s.get("step", 0)
            d: dict = {"step": int(step.item() if isinstance(step, torch.Tensor) else step)}
            for k in self._scalar_state:
                v = s[k]
                d[k] = float(v.item() if isinstance(v, torch.Tensor) else v)
            for name in names:
                if s.get(name) is not None:
                    d[name] = True
            out.append(d)
        return out

    # ---- step ------------------------------------------------------------------------------------

    def step(self, closure: Any = None) -> Any:
        """One update of every param that has a grad: one fused call per param group, device,
        dtype and step count. Every call is checked before any tensor is written; a step that
        is refused changes nothing (Note [GradScaler] for a step GradScaler skips; Note [The
        steady step of a torch optimizer] for the steps that repeat the last one)."""
        self._before_step()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        if found_inf is not None and float(found_inf) != 0.0:
            return loss
        if self._runs and self._steady_step(grad_scale):
            return loss
        with torch.no_grad():
            self._general_step(grad_scale)
        return loss

    def _before_step(self) -> None:
        """What a class checks before each step (Schedule-Free: train mode)."""

    def _params_with_state(self, gi: int, name: str) -> list:
        """The (params, state ``name``) lists of group ``gi``'s params that have that state, one
        pair per device, as the kernels take them (Note [Torch tensors without a copy])."""
        places: dict = {}
        for p in self.param_groups[gi]["params"]:
            state = dict.get(self.state, p)
            if state and state.get(name) is not None:
                pair = places.setdefault(p.device, ([], []))
                pair[0].append(_view(p))
                pair[1].append(_view(state[name]))
        return list(places.values())

    def _general_step(self, grad_scale: Any) -> None:
        """Every group checked, its state allocated and its calls bound anew."""
        self._flush_all()  # the general step reads the step counts from the state dicts
        self._runs.clear()
        calls: list[_Call] = []
        try:
            for gi, group in enumerate(self.param_groups):
                calls += self._prepare(gi, group)
            self._check_calls(calls)
            if len(calls) > 1 and self._numpy._step_fns:
                prepare_step_fns((c.bound, c.step) for c in calls)
            if self._shard is not None:  # Note [A sharded step]
                self._shard.before_run([call.grads for call in calls])
        except BaseException:
            for call in calls:
                self._undo(call)
            raise
        scale = None if grad_scale is None else float(grad_scale)
        cuda_grads: dict = {}  # the CUDA kernels take no factor: their grads are unscaled first
        if scale is not None:
            for call in calls:
                if call.params[0].device.type != "cpu":
                    cuda_grads.setdefault(call.params[0].device, []).extend(call.grads)
            for device, grads in cuda_grads.items():
                torch._foreach_mul_(grads, torch.reciprocal(grad_scale.double()).float().to(device))
        # (CUDA grads were unscaled above; the CPU kernels unscale theirs as they load them)
        run = self._run_input([call.grads for call in calls], scale,
                              [call.params[0].device.type == "cpu" for call in calls])
        for call in calls:
            kw = {} if scale is None or call.params[0].device.type != "cpu" else {"grad_scale": scale}
            out = call.bound.run([_view(g) for g in call.grads], step=call.step, lr=call.lr,
                                 scalars=call.scalars, **kw, **run)
            self._finish(call, out)
        self._start_runs(calls)

    def _run_input(self, grad_lists: list, scale: float | None, scaled: list) -> dict:
        """``run_input`` of the NumPy classes for the grads (tensors) of each call: LAMB's norm of
        the grads of every call of a step of several, the grads still scaled (``scaled``: the CPU
        calls') unscaled by GradScaler's factor as the kernels unscale them. Nothing is read for
        a step of one call or an algorithm without a run input (the steady step's case). A
        sharded step's input is its shard's (Note [A sharded step])."""
        if self._kernel.run_input is None:
            return {}
        if self._shard is not None:
            return {self._kernel.run_input: self._shard.run_input}
        if len(grad_lists) < 2:
            return {}
        factor = 1.0 if scale is None else float(np.float32(1.0 / scale))
        return run_input(self._kernel, [list(map(_view, g)) for g in grad_lists],
                         [factor if s else 1.0 for s in scaled])

    def _start_runs(self, calls: list) -> None:
        """After a general step: a run for each group of CPU tensors updated whole by one call
        (Note [The steady step of a torch optimizer])."""
        per_group: dict = {}
        for call in calls:
            per_group.setdefault(call.gi, []).append(call)
        n = len(self._scalar_state)
        for gi, cs in per_group.items():
            group = self.param_groups[gi]
            call = cs[0]
            if len(cs) != 1 or gi in self._exposed or len(call.params) != len(group["params"]) \
                    or not hasattr(call.bound, "run_addresses"):
                continue
            plain = self._plain(group)
            keys = self._numpy._call_keys(self, plain, self._plain_states(call.states))
            if self._shard is not None:  # Note [A sharded step]
                keys = self._shard.keys(gi, keys)
            if keys.count(keys[0]) != len(keys):
                continue
            key = keys[0]
            snapshot = tuple(map(group.get, self._hyper_names))
            self._runs[gi] = _Run(
                plist=group["params"], params=tuple(call.params), snapshot=snapshot,
                mutable=mutable_parts(snapshot), pptrs=list(map(_data_ptr, call.params)),
                states=call.states, bound=call.bound, step=key[0],
                scalars=key[1] if n == 1 else (tuple(key[1 : 1 + n]) if n else None),
                stale=False, kernel_step=None, key_rest=tuple(key[1 + n :]))

    def _steady_step(self, grad_scale: Any) -> bool:
        """A step by the groups' runs, if every group has one that still holds; False (nothing
        done) otherwise (Note [The steady step of a torch optimizer])."""
        if len(self._runs) != len(self.param_groups):
            return False
        plans = []
        n = len(self._scalar_state)
        for gi, group in enumerate(self.param_groups):
            run = self._runs.get(gi)
            if run is None:
                return False
            plist = group["params"]
            if plist is not run.plist or len(plist) != len(run.params) \
                    or not all(map(operator.is_, plist, run.params)):
                return False
            snapshot = tuple(map(group.get, self._hyper_names))
            if not all(map(operator.is_, snapshot, run.snapshot)) \
                    or (run.mutable and mutable_parts(snapshot) != run.mutable):
                return False
            grads = list(map(_grad, run.params))
            if not all(map(operator.is_not, grads, itertools.repeat(None))):
                return False
            try:
                addresses = list(map(_data_ptr, grads))
            except RuntimeError:  # a sparse grad: the general step names it
                return False
            if not all(map(_is_contiguous, grads)) or list(map(_data_ptr, run.params)) != run.pptrs:
                return False
            lr = group["lr"]
            if callable(lr) and not isinstance(lr, torch.Tensor):
                lr = resolve_lr(gi, lr, run.step)
            else:
                lr = _scalar("lr", lr)
                if isinstance(lr, bool) or not isinstance(lr, (int, float)) \
                        or not 0 <= lr < float("inf"):
                    return False  # the general step's check words it
            key = run.key(n)
            step = self._numpy._kernel_step(self, group, key, run.step + 1)
            plans.append((run, grads, addresses, lr, step))
        if len(plans) > 1:  # every call checked before the first one writes
            bounds = [plan[0].bound for plan in plans]
            for k, (run, _, addresses, lr, step) in enumerate(plans):
                run.bound.run_addresses(addresses, step=step, lr=lr, scalars=run.scalars,
                                        others=bounds[:k] + bounds[k + 1 :], run=False)
        if self._shard is not None:  # Note [A sharded step]
            self._shard.before_run([plan[1] for plan in plans])
        scale = None if grad_scale is None else float(grad_scale)
        extra = self._run_input([plan[1] for plan in plans], scale,
                                [True] * len(plans))  # steady runs are of CPU tensors
        for run, _, addresses, lr, step in plans:
            out = run.bound.run_addresses(addresses, step=step, lr=lr, scalars=run.scalars,
                                          grad_scale=scale, **extra)
            run.step += 1
            if n:
                run.scalars = out
            run.stale = True
        return True

    def _prepare(self, gi: int, group: dict) -> list:
        """The calls of group ``gi``, bound, with the state they need allocated."""
        cls = type(self).__name__
        self._check_flags(group, group, f"param_groups[{gi}]")
        plain = self._plain(group)
        check_hyper(cls, self._kernel, plain, f"param_groups[{gi}]")
        params, grads, where = [], [], []
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{cls} does not support sparse gradients "
                                   f"(param_groups[{gi}]['params'][{j}].grad)")
            params.append(p)
            grads.append(g)
            where.append(j)
        if not params:
            return []
        states = [dict.get(self.state, p) for p in params]
        keys = self._numpy._call_keys(self, plain, self._plain_states(states))
        if self._shard is not None:  # Note [A sharded step]
            keys = self._shard.keys(gi, keys)
        split: dict = {}
        for k, (p, key) in enumerate(zip(params, keys)):
            split.setdefault((key, p.device, p.dtype), []).append(k)
        calls = []
        for (key, _, _), ks in split.items():
            lr = resolve_lr(gi, plain["lr"], key[0])
            call = _Call(gi, key, [params[k] for k in ks], [grads[k] for k in ks],
                         [states[k] for k in ks], lr, [where[k] for k in ks])
            calls.append(call)
            self._allocate(call, plain)
            call.step = self._numpy._kernel_step(self, plain, key, key[0] + 1)
            n = len(self._scalar_state)
            call.scalars = key[1] if n == 1 else (tuple(key[1 : 1 + n]) if n else None)
            call.bound = self._bind(call, plain)
        return calls

    def _allocate(self, call: _Call, plain: dict) -> None:
        names = tuple(b.state for b in self._kernel.used_states(plain))
        for k, p in enumerate(call.params):
            state = call.states[k]
            if not state:
                state = {"step": torch.tensor(0.0, dtype=_step_dtype())}
                for name, value in self._scalar_state.items():
                    state[name] = torch.tensor(value, dtype=torch.float64)
                self.state[p] = state
                call.states[k] = state
                call.created.append((p, None))
            dtype = self._state_dtype(p, self.param_groups[call.gi])
            for name in names:
                if state.get(name) is None:
                    buf = next(b for b in self._kernel.states if b.state == name)
                    if buf.init == "params":  # a copy of the param (Schedule-Free's z)
                        state[name] = p.detach().to(dtype, copy=True,
                                                    memory_format=torch.preserve_format)
                    else:
                        fill = plain[buf.init] if buf.init else 0.0
                        state[name] = torch.full_like(p, fill, dtype=dtype,
                                                      memory_format=torch.preserve_format)
                    call.created.append((p, name))
            group = self.param_groups[call.gi]
            if p.dtype in _LOW and group.get("kahan_summation") and \
                    state.get("kahan_comp") is None:  # Note [Kahan summation]
                state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                call.created.append((p, "kahan_comp"))
            if p.dtype in _LOW and group.get("master_weights") and \
                    state.get("master_param") is None:  # Note [Master weights]: exact
                state["master_param"] = p.detach().to(torch.float32, copy=True,
                                                      memory_format=torch.preserve_format)
                call.created.append((p, "master_param"))

    def _group_of(self, p: Any) -> dict:
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    @staticmethod
    def _state_dtype(p: Any, group: dict) -> Any:
        """The dtype of a state tensor of ``p`` in ``group`` (Note [State dtypes])."""
        name = _arrays.state_dtype_name("state_dtype", group.get("state_dtype"))
        if name is None:
            return torch.float32 if p.dtype in _LOW else p.dtype
        return getattr(torch, name)

    def _bind(self, call: _Call, plain: dict) -> Any:
        kernel = self._kernel
        names = {b.state for b in kernel.used_states(plain)}
        group = self.param_groups[call.gi]
        # the call updates the float32 masters and writes the params (Note [Master weights]), and
        # carries the compensations (Note [Kahan summation])
        masters = comps = None
        if group.get("master_weights"):
            masters = low_precision_state(call.params, call.states, "master_param", _is_low)
        if group.get("kahan_summation"):
            comps = low_precision_state(call.params, call.states, "kahan_comp", _is_low)
        params = call.params if masters is None else \
            [p if m is None else m for p, m in zip(call.params, masters)]
        tensors = [params] + [[s[b.state] for s in call.states]
                              for b in kernel.states if b.state in names]
        ident = (call.gi, call.key, tuple(call.where),
                 tuple(map(id, call.params)), tuple(map(_data_ptr, call.params)),
                 tuple(id(t) for ts in tensors for t in ts),
                 tuple(t.data_ptr() for ts in tensors for t in ts),
                 tuple(id(v) for v in plain.values()), tuple(map(repr, plain.values())),
                 self.param_groups[call.gi].get("stochastic_rounding"),
                 self.param_groups[call.gi].get("seed"),
                 tuple(map(id, comps or ())),
                 group.get("master_weights"), group.get("kahan_summation"))
        hit = self._calls_cache.get(call.gi)
        if hit is not None and hit[0] == ident:
            return hit[1]
        views = iter([[_view(t) for t in ts] for ts in tensors])
        lists = tuple(
            next(views) if b.role == "param" else None if b.role == "grad" else
            next(views) if b.state in names else None
            for b in kernel.buffers)
        hyper = tuple(call.lr if name == "lr" else plain[name] for name in kernel.call_hypers)
        sr: dict[str, Any] = {}
        if masters is not None:
            low = [_view(p) for p in call.params]
            sr["param_copies"] = [None if m is None else v for v, m in zip(low, masters)]
            sr["grad_dtype"] = [v.dtype for v in low]
        if group.get("stochastic_rounding"):  # Note [Stochastic rounding]: a seed per call
            first = sum(len(g["params"]) for g in self.param_groups[: call.gi]) + call.where[0]
            sr["sr_seed"] = call_seed(group["seed"], first)
        if comps is not None:
            sr["kahan_comps"] = [None if c is None else _view(c) for c in comps]
        bound = _backend.bind(kernel.name, lists, hyper, name=f"{type(self).__name__}.step",
                              index=call.where, grads_later=True,
                              aliases={"params": f"param_groups[{call.gi}]['params']"}, **sr)
        if self._shard is not None and self._kernel.passes > 1:
            bound.pass_hook = self._shard.pass_hook(call.params)
        self._calls_cache[call.gi] = (ident, bound)
        return bound

    def _check_calls(self, calls: list) -> None:
        """Every call's grads, and across the calls their memory (``_core.Calls``)."""
        cores = [getattr(c.bound, "core", c.bound) for c in calls]
        grads = [[_view(g) for g in c.grads] for c in calls]
        if len(calls) > 1 and all(isinstance(c, _core.Bound) for c in cores):
            _core.Calls(cores).check([getattr(c.bound, "grads_arg", _same)(g)
                                      for c, g in zip(calls, grads)])
            return
        for c, g in zip(calls, grads):
            c.bound.check(g)

    def _undo(self, call: _Call) -> None:
        for p, name in reversed(call.created):
            if name is None:
                dict.__delitem__(self.state, p)
            else:
                del dict.__getitem__(self.state, p)[name]
        call.created = []

    def _finish(self, call: _Call, out: Any) -> None:
        step = call.key[0] + 1
        for s in call.states:
            t = s.get("step")
            if isinstance(t, torch.Tensor) and t.dim() == 0 and t.is_floating_point():
                t.fill_(float(step))
            else:
                s["step"] = torch.tensor(float(step), dtype=_step_dtype())
        names = tuple(self._scalar_state)
        values = () if not names else (out,) if len(names) == 1 else tuple(out)
        for name, v in zip(names, values):
            for s in call.states:
                s[name] = torch.tensor(v, dtype=torch.float64)


def _same(x: Any) -> Any:
    return x


def _step_dtype() -> torch.dtype:
    """torch.optim's dtype for a step count on the host."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _constructor(name: str, spec: Spec, flags: dict, torch_sig: Any) -> Any:
    """``__init__`` with the signature of torch's class (``torch_sig``): each argument where
    torch has it, positional or keyword-only as there, its default the spec's (a flag's:
    torch's)."""
    hypers = {h.name: h for h in spec.arguments}
    args, star = ["self", "params"], False
    for k, p in list(torch_sig.items())[2:]:
        if k not in hypers and k not in flags:
            continue
        if p.kind == p.KEYWORD_ONLY and not star:
            args.append("*")
            star = True
        args.append(f"{k}={(hypers[k].default if k in hypers else flags[k])!r}")
    rest = [h for h in hypers.values() if h.name not in torch_sig]
    rest_flags = [k for k in flags if k not in torch_sig]  # a peer's flags (no torch.optim twin)
    if (rest or rest_flags) and not star:
        args.append("*")
    args += [f"{h.name}={h.default!r}" for h in rest]
    args += [f"{k}={flags[k]!r}" for k in rest_flags]
    hyper = ", ".join(f"{h.name!r}: {hyper_value(h)}" for h in spec.hypers)
    flag_values = ", ".join(f"{k!r}: {k}" for k in flags)
    return make_init(f"fusedopt.torch.{name}", args, [f"{{{hyper}}}", f"{{{flag_values}}}"],
                     Optimizer)


def make_class(numpy_cls: Any) -> type:
    """The torch class of a NumPy optimizer class: same name, spec and update."""
    name = numpy_cls.__name__
    torch_cls = getattr(torch.optim, name, None)
    if torch_cls is None:  # no torch.optim twin (Lion): the NumPy class's arguments, and the
        # implementation flags of the peer's torch class (ADOPT's), keyword-only
        sig = inspect.signature(numpy_cls.__init__).parameters
        flags: dict = dict(numpy_cls._peer_flags)
        doc = (f"A :class:`torch.optim.Optimizer` running :class:`fusedopt.{name}` (the same "
               "arguments, state names and update, over torch tensors), whose description "
               "follows.\n\n" + (numpy_cls.__doc__ or ""))
    else:
        sig = inspect.signature(torch_cls.__init__).parameters
        flags = {k: sig[k].default for k in sig if k in _FLAGS}
        doc = (f"``torch.optim.{name}`` run by fusedopt's fused kernels: its arguments (and "
               f"{', '.join(f'``{k}``' for k in flags)}, see :class:`Optimizer`), param groups, "
               f"state names and state dicts; the update of :class:`fusedopt.{name}`, whose "
               "description follows.\n\n" + (numpy_cls.__doc__ or ""))
    # Note [State dtypes], [Stochastic rounding]: kept in each group, as the flags
    flags.update(state_dtype=None, stochastic_rounding=False, seed=None, kahan_summation=False,
                 master_weights=False)
    cls = type(name, (*numpy_cls._front_mixins, Optimizer), {
        "__doc__": doc, "__module__": __name__.rsplit(".", 1)[0], "_numpy": numpy_cls,
        "_spec": numpy_cls._spec, "_kernel": numpy_cls._kernel,
        "_scalar_state": dict(numpy_cls._scalar_state), "_flags": flags,
    })
    cls.__init__ = _constructor(name, numpy_cls._spec, flags, sig)  # type: ignore[misc]
    return cls

