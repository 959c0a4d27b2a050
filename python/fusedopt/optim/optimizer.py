"""The base every optimizer class shares: param groups, named per-parameter state, the step
count, ``lr`` as a float or a schedule, and the step itself (state dicts: ``_state_dict.py``;
argument checks: ``_checks.py``).

A class is declared by its algorithm's spec (``class Adam(Optimizer, algorithm="adam")``): its
constructor, defaults, checks, state names and the call it makes all come from the spec
(``csrc/algorithms/<algo>.h``), and the class body keeps its docstring and what is truly its own
(SGD's fresh momentum buffers). Each step turns every param group into one bound call (Note [A
bound call] in ``csrc/bindings/bound.h``) per place its params live in.

Note [State is keyed by flat index]
    NumPy arrays are not hashable, so per-parameter state is kept by the parameter's index in the
    flattened list of all groups' params (the order ``step`` takes its grads in, and the keys of
    ``state_dict()["state"]``, as in torch). ``opt.state`` also accepts the array itself as a key.
    The ``params`` lists of ``param_groups`` are therefore fixed once added: ``step`` refuses to run
    if one was edited (add parameters with :meth:`Optimizer.add_param_group`).

Note [One call per group, split by step]
    A group's tensors normally share one step count and go to one call. They can hold different
    counts only after ``load_state_dict`` with a state dict that has no state for some of them;
    such a group is split into one call per distinct step count (and scalar state, such as
    ``mu_product``), in the order the counts first appear, each call with the learning rate of its own
    step. SGD likewise separates momentum buffers that start at this step (momentum just switched
    on) from running ones, since the two are updated differently.

Note [The steady-state step]
    Most steps repeat the last one: the same params, hyper-parameters and state arrays, one step
    count further. Gathering the state lists, binding the call and writing ``step`` into every
    state dict would cost more than the fused update itself for small tensors, so after a step
    that updated a whole group in one call the group keeps a ``_Run``: its state dicts, its
    buffer lists, its call key and its bound call. While the run lives, a step is one run of that
    bound call with the new grads (which it checks in full; of the params and states it checks
    only that each is as it was), and the new step count (and scalar state) is kept in
    the run only; the state dicts receive it when anything can read them (``_flush``):
    ``state_dict()``, a copy of the optimizer, and the first look at a group's state through
    ``opt.state``. Such a look hands out the dicts themselves, which the user may keep and edit at
    any later time, so it also ends the run, and the group takes the general path (reading every
    dict, binding anew, at every step) until ``load_state_dict`` replaces its dicts. A run is also
    ended (after its flush) when the group's hyper-parameters were edited, since they choose the
    buffers and the split.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import numbers
import operator
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from .. import _arrays, _backend, _core
from .._spec import SPECS, Spec, StepPower
from ._checks import (
    as_list,
    check_hyper,
    check_no_shared_memory,
    check_param,
    mutable_parts,
    resolve_lr,
)
from ._state_dict import StateDicts

__all__ = ["Optimizer"]


class _Params(list):
    """A group's ``params``: a list that counts its own edits, so that ``step`` can tell it
    unchanged without comparing every element (Note [The steady-state step])."""

    def __init__(self, items=()):
        super().__init__(items)
        self.edits = 0

    def __reduce_ex__(self, protocol):  # a copy starts with no edits
        return (_Params, (list(self),))


def _counting(name):
    method = getattr(list, name)

    def edit(self, *args, **kwargs):
        self.edits += 1
        return method(self, *args, **kwargs)

    edit.__name__ = name
    return edit


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert",
              "pop", "remove", "clear", "sort", "reverse"):
    setattr(_Params, _name, _counting(_name))
del _name


class _Call:
    """One bound call of a step: its lists, and what ``_prepare`` allocated for it."""

    __slots__ = ("gi", "group", "key", "indices", "lr", "params", "grads", "buffers", "run",
                 "states", "created", "bound")

    def __init__(self, gi: int, group: dict, key: tuple, indices: Any, lr: float, params: list,
                 grads: list) -> None:
        self.gi, self.group, self.key, self.indices, self.lr = gi, group, key, indices, lr
        self.params, self.grads = params, grads
        self.buffers: Any = None
        self.run: Any = None
        self.states: Any = None
        self.bound: Any = None
        self.created: list = []  # (flat index, name or None for a whole new state dict)


class _Run:
    """A group's steady state (Note [The steady-state step])."""

    __slots__ = ("checked", "key", "extra", "states", "buffers", "stale", "bound")

    def __init__(self, checked, key, n_scalars, states, buffers, bound):
        self.checked = checked  # the hyper-parameter snapshot the run was made under
        self.key = key  # the call key of the next step: (step, *scalars, *extra)
        self.extra = key[1 + n_scalars :]  # what else the key holds; fixed while the run lives
        self.states = states  # the group's state dicts, in order
        self.buffers = buffers  # name -> the group's list of that state array
        self.stale = False  # whether the dicts' step and scalars lag behind ``key``
        self.bound = bound  # the group's bound call, its params and states held


class _StateView(Mapping):
    """``opt.state``: the per-parameter state dicts, by flat index or by the param array itself."""

    __slots__ = ("_opt",)

    def __init__(self, opt):
        self._opt = opt

    def _index(self, key):
        if isinstance(key, numbers.Integral):
            return key
        index = self._opt._index.get(id(key))
        if index is None:
            raise KeyError("this array is not a param of the optimizer")
        return index

    def __getitem__(self, key):
        opt = self._opt
        key = self._index(key)
        state = opt._state[key]
        opt._expose(key)  # the dict itself goes out (Note [The steady-state step])
        return state

    def __contains__(self, key):  # hands nothing out
        try:
            return self._index(key) in self._opt._state
        except KeyError:
            return False

    def __iter__(self) -> Iterator:
        return iter(sorted(self._opt._state))

    def __len__(self):
        return len(self._opt._state)

    def __repr__(self):
        return repr(dict(self.items()))


def hyper_value(h: Any) -> str:
    """The expression a generated constructor puts in the defaults for hyper-parameter ``h``: its
    argument, a fixed one's value, or ``initial(<argument>)`` for one set from another argument
    (``h.from_arg``)."""
    if h.fixed:
        return repr(h.default)
    if h.from_arg is not None:
        return f"initial({h.from_arg})"
    return h.name


def initial_value(x: Any) -> Any:
    """The value of a learning rate before the first step: a number (a 0-d tensor's item), or a
    schedule's value at t=0; anything else as it is, for the checks to name."""
    if callable(x) and not hasattr(x, "item"):
        return x(0)
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    return x


def run_input(kernel: Spec, grad_lists: list, factors: list | None = None) -> dict:
    """What every run of a step of several calls takes besides its own grads (LAMB: the norm of
    the grads of all of them; Note [Passes] in ``csrc/spec.h``); ``{}`` for one call, which
    computes it from its own grads, or for an algorithm without a run input. ``factors``: each
    list's grads taken times its factor (GradScaler's unscale; None: 1). The sums of squares are
    ``_arrays.sumsq``'s: fusedopt's reduction for host arrays (each list's sums added in order,
    as one call adds its own), the library's for device arrays."""
    name = kernel.run_input
    if name is None or len(grad_lists) < 2:
        return {}
    total = 0.0
    for grads, f in zip(grad_lists, itertools.repeat(1.0) if factors is None else factors):
        total += _arrays.sumsq(grads) * (f * f)
    return {name: math.sqrt(total)}


def prepare_step_fns(calls: Iterable) -> None:
    """For each ``(bound call, step)`` of a step of several calls, its hyper-parameters given as
    callables of the step called and checked before the first call runs, so that one that fails
    writes nothing (Note [Hyper-parameters of the step] in ``csrc/spec.h``)."""
    for bound, step in calls:
        core = getattr(bound, "core", bound)
        if isinstance(core, _core.Bound):  # an oracle's call evaluates them itself
            core.prepare(step)


# The pairs of low-precision options that exclude each other, and why.
_EXCLUSIVE_OPTIONS = (
    ("kahan_summation", "master_weights",
     "a float32 master loses nothing to rounding: there is nothing to compensate"),
    ("kahan_summation", "stochastic_rounding",
     "a stochastically rounded param has no rounding error to carry"),
)


def check_exclusive(cls: str, options: Mapping, first: str | None = None) -> None:
    """``ValueError`` for a pair of options both on in ``options``: with ``first``, the pairs
    of that option only, which the message names first (the one being set)."""
    for a, b, why in _EXCLUSIVE_OPTIONS:
        if options.get(a) and options.get(b) and first in (None, a, b):
            x, y = (b, a) if first == b else (a, b)
            raise ValueError(f"{cls}: {x} and {y} exclude each other ({why})")


def low_precision_state(params: list, states: list, name: str, is_16_bit: Callable) -> Any:
    """State ``name`` (``master_param``, ``kahan_comp``) of each 16-bit param, None for the
    others (a state dict may bring one to a param of another dtype); None when none has it."""
    out = [s.get(name) if is_16_bit(p) else None for p, s in zip(params, states)]
    return out if any(x is not None for x in out) else None


def new_low_precision_state(p: Any, name: str, slot: int) -> Any:
    """A new ``master_param`` (the values of 16-bit param ``p``, float32) or ``kahan_comp`` (zeros
    of its dtype), at the page offset of state ``slot`` (Note [State at its own 4 KiB offset])."""
    if name == "master_param":
        master = _arrays.state_like(p, 0.0, slot, np.float32)
        master[...] = p  # exact: every 16-bit value is a float32
        return master
    return _arrays.state_like(p, 0.0, slot, p.dtype)  # Note [Kahan summation]: nothing dropped yet


def check_bool(cls: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{cls}: {name} must be a bool, got {type(value).__name__}")
    return value


def check_rounding(cls: str, stochastic: Any, seed: Any) -> tuple[bool, int | None]:
    """``(stochastic_rounding, seed)`` checked; with stochastic rounding, a seed of None is drawn
    from the OS's entropy (every optimizer draws its own; the state dict records it)."""
    if not isinstance(stochastic, bool):
        raise TypeError(f"{cls}: stochastic_rounding must be a bool, got {type(stochastic).__name__}")
    if seed is None:
        if not stochastic:
            return False, None
        seed = secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{cls}: seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"{cls}: seed must be in [0, 2**64), got {seed}")
    return stochastic, seed


_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """splitmix64's finalizer (mix64 in csrc/storage.h)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def call_seed(seed: int, first: int) -> int:
    """The sr_seed of one call of an optimizer's step whose first param has flat index ``first``
    (Note [Stochastic rounding]): a call keys its tensors by their position in it, so each call
    (each group, each split of one) draws from a seed of its own."""
    return _mix64(seed ^ _mix64(first))


def _constructor(cls_name: str, spec: Spec) -> Any:
    """The ``__init__`` of a class of ``spec``: torch's signature (positional hyper-parameters,
    then keyword-only ones), each default the spec's; fixed hyper-parameters go into the defaults
    with their value."""
    positional = [h for h in spec.arguments if not h.kw_only]
    keyword = [h for h in spec.arguments if h.kw_only]
    params = ["self", "params"] + [f"{h.name}={h.default!r}" for h in positional]
    params += ["*"] + [f"{h.name}={h.default!r}" for h in keyword]
    params += ["state_dtype=None", "master_weights=False", "stochastic_rounding=False",
               "seed=None", "kahan_summation=False"]
    values = ", ".join(f"{h.name!r}: {hyper_value(h)}" for h in spec.hypers)
    return make_init(f"fusedopt.optim.{cls_name}", params,
                     [f"{{{values}}}", "state_dtype", "master_weights", "stochastic_rounding",
                      "seed", "kahan_summation"], Optimizer)


def make_init(where: str, args: list, exprs: list, base: type) -> Any:
    """An ``__init__(args...)`` that calls ``base.__init__(self, params, *exprs)``, ``exprs``
    being source expressions over the arguments (and ``initial``, :func:`initial_value`);
    ``where`` names it in tracebacks."""
    source = (f"def __init__({', '.join(args)}):\n"
              f"    Base.__init__(self, params, {', '.join(exprs)})\n")
    scope: dict[str, Any] = {"Base": base, "initial": initial_value, "StepPower": StepPower}
    exec(compile(source, f"<{where}.__init__>", "exec"), scope)  # noqa: S102
    init = scope["__init__"]
    init.__qualname__ = f"{where.rsplit('.', 1)[1]}.__init__"
    return init


class Optimizer(StateDicts):
    """Base class of the optimizers (see :mod:`fusedopt.optim`); not used directly.

    Attributes:
        param_groups: list of dicts, each with ``"params"`` (its list of arrays) and every
            hyper-parameter. Edit the hyper-parameters (``lr`` included, float or schedule) between
            steps as in torch; the next step uses and checks the edited values.
        state: read-only mapping from a param's flat index (or the param array) to its state dict:
            ``"step"`` (completed updates, an int), the algorithm's named arrays, and its scalar
            state (a float: ``"mu_product"``) if it has one. Allocated at the first step that updates the param.
            The dicts it returns are live (edits take effect at the next step); taking one out
            moves its group from the steady-state step to the general one, which reads every
            state dict at every step (Note [The steady-state step]). ``state_dict()`` (copies)
            and ``p in opt.state`` do not.
        defaults: the constructor's hyper-parameters, used for keys a param group leaves out.

    Steps of one optimizer must not overlap: a step called while another thread is inside one
    raises ``RuntimeError``. Different optimizers step in parallel threads freely.
    """

    # What binds the calls (fusedopt._backend: NumPy or CUDA); tests set an oracle on an instance.
    _backend: Any = _backend

    _spec: ClassVar[Spec]  # the class's algorithm (AdamW: "adamw")
    _kernel: ClassVar[Spec]  # the algorithm its calls run and its groups are checked by (AdamW: "adam")
    _state_names: ClassVar[tuple] = ()  # every state array it may hold, in torch's order
    _always: ClassVar[tuple] = ()  # those always allocated
    _scalar_state: ClassVar[dict] = {}  # per-parameter float state besides "step", initial values
    _step_fns: ClassVar[tuple] = ()  # hyper-parameters that may be callables of the step
    # Whether a loaded state entry may lack "step" (then 0): torch.optim.SGD keeps no step count.
    _step_optional: ClassVar[bool] = False
    # Hyper-parameters the peer keeps on its optimizer, not in its groups (lion-pytorch's
    # decoupled_weight_decay): a loaded group may lack them, and then keeps its own value.
    _kept_on_load: ClassVar[tuple] = ()
    # The implementation flags the peer's torch class takes, with its defaults, where torch.optim
    # has no twin (fusedopt.torch accepts them as torch.optim's: foreach, fused, ...).
    _peer_flags: ClassVar[dict] = {}
    # Keys every group has besides the hyper-parameters, with their initial values (Schedule-Free's
    # train_mode), and group keys the peer keeps in place of per-param state: {group key: state
    # name}, written into a state dict's groups and read from a peer's (_state_dict.py).
    _group_defaults: ClassVar[dict] = {}
    _group_state: ClassVar[dict] = {}
    _front_mixins: ClassVar[tuple] = ()  # bases of the class that fusedopt.torch's class shares
    # Every hyper-parameter name of every optimizer class, to recognise a foreign state dict.
    _all_hyper_names: ClassVar[set] = set()

    def __init_subclass__(cls, algorithm: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if algorithm is None:
            return
        spec = SPECS[algorithm]
        kernel = SPECS[spec.kernel]
        cls._spec, cls._kernel = spec, kernel
        # and the float32 master copy of a 16-bit param (Note [Master weights]), and its Kahan
        # compensation (Note [Kahan summation] in csrc/storage.h)
        cls._state_names = (*kernel.state_names, "master_param", "kahan_comp")
        cls._always = tuple(b.state for b in kernel.states if not b.optional)
        cls._scalar_state = dict(kernel.scalars)
        cls._step_fns = tuple(h.name for h in kernel.hypers if h.kind == "step_fn")
        # a callable of the step is code, not state: left out of state dicts (as the peer keeps
        # ADOPT's clip_lambda on its optimizer), and a loaded state dict keeps the optimizer's own
        cls._kept_on_load = tuple(dict.fromkeys((*cls._kept_on_load, *cls._step_fns)))
        cls.__init__ = _constructor(cls.__name__, spec)  # type: ignore[method-assign]
        Optimizer._all_hyper_names.update(h.name for h in kernel.hypers)

    def __init__(self, params: Any, defaults: dict, state_dtype: Any = None,
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 seed: int | None = None, kahan_summation: bool = False) -> None:
        cls = type(self).__name__
        check_hyper(cls, self._kernel, defaults)
        self._options: dict = {}
        # None, "float32" or "bfloat16" (Note [State dtypes])
        self.state_dtype = state_dtype
        self.master_weights = master_weights  # Note [Master weights]
        # Note [Stochastic rounding] (csrc/storage.h): the seed of this optimizer's draws
        self.stochastic_rounding = stochastic_rounding
        self.seed = seed
        self.kahan_summation = kahan_summation  # Note [Kahan summation]
        self.defaults = {**defaults, **self._group_defaults}
        self._bare = _arrays.looks_like_array(params)
        groups = as_list(cls, "params", params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        given_groups = isinstance(groups[0], dict)
        if not given_groups:
            groups = [{"params": groups}]
        self.param_groups: list = []
        self._params: list = []  # flat, in group order
        self._metas: list = []  # the Meta of each param: what it was when added, and where it lives
        self._mixed: list = []  # per group: whether its params live in more than one place
        self._index: dict = {}  # id(param) -> flat index
        self._slices: list = []  # (start, stop) of each group in _params
        self._state: dict = {}
        self._checked: dict = {}  # group index -> (values last checked, their mutable parts)
        self._plists: list = []  # per group: the _Params put in it, unedited while its edits == 0
        self._runs: list = []  # per group: its _Run, or None (Note [The steady-state step])
        self._exposed: list = []  # per group: whether its state dicts were handed out by opt.state
        self._last: list = []  # per group: the bound calls of its last step on the general path
        self._calls: Any = None  # (the runs, their _core.Calls) of the last step of several calls
        self._lock = threading.Lock()
        for i, group in enumerate(groups):
            self._add_group(group, f"param_groups[{i}]" if given_groups else None)

    # ---- the low-precision options: each set checked, and the bound calls made anew --------------

    def _set_option(self, name: str, value: Any) -> None:
        if value is True:
            check_exclusive(type(self).__name__, {**self._options, name: True}, name)
        self._options[name] = value
        if hasattr(self, "_runs"):  # after the constructor: the next step binds anew
            self._forget_runs()

    @property
    def state_dtype(self) -> Any:
        """None, "float32" or "bfloat16" (Note [State dtypes]); a new value applies to state
        allocated from then on."""
        return self._options["state_dtype"]

    @state_dtype.setter
    def state_dtype(self, value: Any) -> None:
        self._set_option("state_dtype", _arrays.state_dtype_name(type(self).__name__, value))

    @property
    def master_weights(self) -> bool:
        """Whether 16-bit params keep a float32 master copy (Note [Master weights])."""
        return self._options["master_weights"]

    @master_weights.setter
    def master_weights(self, value: bool) -> None:
        self._set_option("master_weights", check_bool(type(self).__name__, "master_weights", value))

    @property
    def kahan_summation(self) -> bool:
        """Whether 16-bit params carry a Kahan compensation (Note [Kahan summation])."""
        return self._options["kahan_summation"]

    @kahan_summation.setter
    def kahan_summation(self, value: bool) -> None:
        self._set_option("kahan_summation",
                         check_bool(type(self).__name__, "kahan_summation", value))

    @property
    def stochastic_rounding(self) -> bool:
        """Whether 16-bit stores round stochastically (Note [Stochastic rounding])."""
        return self._options["stochastic_rounding"]

    @stochastic_rounding.setter
    def stochastic_rounding(self, value: bool) -> None:
        on, seed = check_rounding(type(self).__name__, value, self._options.get("seed"))
        self._set_option("stochastic_rounding", on)
        self._options["seed"] = seed

    @property
    def seed(self) -> int | None:
        """The seed of stochastic rounding (drawn from the OS when set to None with it on)."""
        return self._options["seed"]

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._set_option("seed", check_rounding(type(self).__name__,
                                                self._options.get("stochastic_rounding", False),
                                                value)[1])

    # ---- copies ----------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) takes the state with every step count written out,
        and no bound call: those hold the original's arrays."""
        self._flush_all()
        state = dict(self.__dict__)
        state["_runs"] = [None] * len(self._runs)
        state["_last"] = [()] * len(self._last)
        state["_calls"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        """A copy holds new param arrays: index and describe them anew."""
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self._metas = [_arrays.describe(p, "")[1] for p in self._params]

    @property
    def state(self) -> Mapping:
        return _StateView(self)

    # ---- groups ----------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (a dict with ``"params"`` and any hyper-parameters; the others come from
        ``defaults``). Its params take the next flat indices. Nothing changes if it is refused."""
        self._add_group(param_group, f"param_groups[{len(self.param_groups)}]")

    def _add_group(self, param_group: dict, where: str | None) -> None:
        """``where`` names the group in messages; ``None`` when the user passed a plain list."""
        cls = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{cls}: param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{cls}: {where or 'param group'} has no 'params' entry")
        prefix = f"{where}['params']" if where else "params"
        params = as_list(cls, prefix, param_group["params"])
        metas = [check_param(cls, f"{prefix}[{j}]", p) for j, p in enumerate(params)]
        ids = {id(p) for p in params}
        if len(ids) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        if any(i in self._index for i in ids):
            raise ValueError("some parameters appear in more than one parameter group")
        group: dict = {"params": _Params(params)}
        for key, value in self.defaults.items():
            group[key] = param_group.get(key, value)
        for key, value in param_group.items():
            if key not in group:
                group[key] = value
        check_hyper(cls, self._kernel, group, where)
        check_no_shared_memory(cls, self._metas + metas)

        start = len(self._params)
        for j, p in enumerate(params):
            self._index[id(p)] = start + j
        self._params.extend(params)
        self._metas.extend(metas)
        self._mixed.append(len({m.place for m in metas}) > 1)
        self._slices.append((start, len(self._params)))
        self._plists.append(group["params"])
        self._runs.append(None)
        self._exposed.append(False)
        self._last.append(())
        self.param_groups.append(group)

    # ---- the algorithm's part --------------------------------------------------------------------

    def _buffer_names(self, group: dict) -> tuple:
        """The state arrays a step of ``group`` needs (allocated if missing)."""
        return tuple(b.state for b in self._kernel.used_states(group))

    def _new_buffer(self, name: str, p: Any, group: dict) -> Any:
        buf = next(b for b in self._kernel.states if b.state == name)
        slot = self._state_names.index(name)
        dtype = _arrays.state_dtype_for(type(self).__name__, p, self.state_dtype)
        if buf.init == "params":  # a copy of the param (Schedule-Free's z)
            if not isinstance(p, np.ndarray):
                return _arrays.copy(p)  # in its library, on its device
            out = _arrays.state_like(p, 0.0, slot, dtype)
            out[...] = p  # rounded to nearest, where the state is of a narrower dtype
            return out
        fill = group[buf.init] if buf.init else 0.0
        return _arrays.state_like(p, fill, slot, dtype)

    def _call_keys(self, group: dict, states: list) -> list:
        """For each state (``None`` before the first step), what the tensors of one call must
        share: a tuple of the step count, then the per-parameter scalars."""
        fresh = (0, *self._scalar_state.values())
        if not self._scalar_state:
            return [fresh if s is None else (s["step"],) for s in states]
        key = operator.itemgetter("step", *self._scalar_state)
        return [fresh if s is None else key(s) for s in states]

    def _full_key(self, group: dict, states: list, key: tuple) -> tuple | None:
        """``key`` completed with what else a subclass's ``_call_keys`` puts in it (SGD), or
        None where that differs between the states."""
        return key

    def _kernel_step(self, group: dict, key: tuple, step: int) -> int:
        """The step a call with ``key`` passes to its kernel (SGD's fresh buffers: 1)."""
        return step

    # ---- step ------------------------------------------------------------------------------------

    def step(self, grads: Any) -> None:
        """One update of every param, each group by one fused multi-tensor call per place its
        params live in.

        Args:
            grads: the gradients, one array per param in the flattened order of the groups' params
                (a bare array if the optimizer was built on a bare array), each of the shape,
                dtype and memory order of its param. They are only read.

        Everything (grads, the groups' hyper-parameters, the learning rates their schedules give
        at this step) is checked before any state is allocated or any array written; a step that
        is refused changes nothing.
        """
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"{type(self).__name__}.step: this optimizer is being stepped in another thread; "
                "steps of one optimizer must not overlap")
        try:
            self._step(grads)
        finally:
            self._lock.release()

    def _params_with_state(self, gi: int, name: str) -> list:
        """The (params, state ``name``) lists of group ``gi``'s params that have that state, one
        pair per place their arrays live in."""
        start, stop = self._slices[gi]
        places: dict = {}
        for i in range(start, stop):
            state = self._state.get(i)
            if state is not None and name in state:
                pair = places.setdefault(self._metas[i].place, ([], []))
                pair[0].append(self._params[i])
                pair[1].append(state[name])
        return list(places.values())

    def _before_step(self) -> None:
        """What a class checks before each step (Schedule-Free: train mode)."""

    def _step(self, grads: Any) -> None:
        self._before_step()
        grads = self._grads_list(grads)
        plan: list[Any] = []
        for gi, (group, (start, stop)) in enumerate(self._groups_checked()):
            run = self._runs[gi]
            if run is not None:
                if run.checked is self._checked[gi]:
                    lr = resolve_lr(gi, group["lr"], run.key[0])
                    plan.append((gi, group, run.key, range(start, stop), lr, run))
                    continue
                self._end_run(gi)  # the hyper-parameters were edited
            # A param or state changed in place since the last step is named as such, as on the
            # run: the group's calls of that step verify the arrays they held.
            for bound in self._last[gi]:
                getattr(bound, "verify", _nothing)()
            states: Any = list(map(self._state.get, range(start, stop)))
            key = None if self._mixed[gi] else self._uniform_key(group, states)
            split: dict[tuple, range | list[int]]
            if key is not None:
                split = {(key, None): range(start, stop)}
            else:
                split = {}
                places = [self._metas[i].place for i in range(start, stop)]
                for i, k, place in zip(range(start, stop), self._call_keys(group, states), places):
                    split.setdefault((k, place), []).append(i)  # type: ignore[union-attr]
                states = None
            for (k, _), indices in split.items():
                lr = resolve_lr(gi, group["lr"], k[0])
                plan.append((gi, group, k, indices, lr, states))
        calls: list[_Call] = []
        made = 0
        try:
            for gi, group, key, indices, lr, states in plan:
                calls.append(self._prepare(gi, group, key, indices, lr, states, grads))
            if len(calls) > 1:  # one call checks everything before it writes
                self._check_calls(calls)
                if self._step_fns:
                    prepare_step_fns((c.bound, self._kernel_step(c.group, c.key, c.key[0] + 1))
                                     for c in calls)
            run = run_input(self._kernel, [c.grads for c in calls])
            for call in calls:
                scalars = self._run_call(call, run)
                made += 1
                self._finish(call, scalars)
        except BaseException:
            for call in calls[made:]:
                self._undo(call)
            raise
        last: list = [[] for _ in self._last]
        for call in calls:
            if call.run is None and self._runs[call.gi] is None:
                last[call.gi].append(call.bound)
        self._last = [tuple(b) for b in last]

    def _run_call(self, call: _Call, run: dict) -> Any:
        key = call.key
        n = len(self._scalar_state)
        scalars = key[1] if n == 1 else (key[1 : 1 + n] if n else None)
        step = self._kernel_step(call.group, key, key[0] + 1)
        return call.bound.run(call.grads, step=step, lr=call.lr, scalars=scalars, **run)

    def _check_calls(self, calls: list) -> None:
        """Every call of a step of several, checked before the first runs (Note [A bound call]):
        each call's grads, and across the calls their memory (``_core.Calls``)."""
        cores = []
        for call in calls:
            core = getattr(call.bound, "core", call.bound)
            if not isinstance(core, _core.Bound):  # an oracle's call: each checks itself
                for c in calls:
                    c.bound.check(c.grads)
                return
            cores.append(core)
        runs = [c.run for c in calls]
        if self._calls is not None and all(map(operator.is_, runs, self._calls[0])) \
                and None not in runs:
            checker = self._calls[1]
        else:
            checker = _core.Calls(cores)
            self._calls = (runs, checker)
        checker.check([getattr(c.bound, "grads_arg", _same)(c.grads) for c in calls])

    def _prepare(self, gi: int, group: dict, key: tuple, indices: Any, lr: float, states: Any,
                 grads: list) -> _Call:
        """One call of a step, bound (Note [One call per group, split by step]): ``indices`` is a
        range (a whole group) or a list; ``states`` is the group's ``_Run``, or the list of its
        states when every param of the range has its state already, or None. Buffers the call
        needs are allocated here; ``_undo`` removes them again."""
        if isinstance(indices, range):
            if indices.start != 0 or indices.stop != len(self._params):  # else: all of them
                params = self._params[indices.start : indices.stop]
                grads = grads[indices.start : indices.stop]
            else:
                params = self._params
        else:
            params = [self._params[i] for i in indices]
            grads = [grads[i] for i in indices]
        call = _Call(gi, group, key, indices, lr, params, grads)
        if isinstance(states, _Run):  # Note [The steady-state step]
            call.run = states
            call.buffers = states.buffers
            call.bound = states.bound
            return call
        names = self._buffer_names(group)
        extra = self._extra_state()
        if states is not None and extra and any(
                _arrays.is_16_bit(p) and extra not in s for p, s in zip(params, states)):
            states = None  # a master or compensation to make: below
        if states is not None:
            # Every state exists: gather the lists without a Python loop.
            try:
                call.buffers = {name: list(map(operator.itemgetter(name), states)) for name in names}
            except KeyError:  # a buffer an option switched on needs: allocate it below
                pass
            else:
                call.states = states
                call.bound = self._bind(call)
                return call
        needed = set(names)
        states = []
        for i, p in zip(indices, params):
            state = self._state.get(i)
            if state is None:
                state = self._state[i] = {"step": 0, **self._scalar_state}
                call.created.append((i, None))
            if not state.keys() >= needed:
                for name in names:
                    if name not in state:
                        state[name] = self._new_buffer(name, p, group)
                        call.created.append((i, name))
            if extra and _arrays.is_16_bit(p) and extra not in state:
                state[extra] = new_low_precision_state(p, extra, self._state_names.index(extra))
                call.created.append((i, extra))
            states.append(state)
        call.buffers = {name: [state[name] for state in states] for name in names}
        call.states = states
        try:
            call.bound = self._bind(call)
        except BaseException:
            self._undo(call)
            raise
        return call

    def _extra_state(self) -> str | None:
        """The state a 16-bit param has besides the algorithm's: its float32 master (Note
        [Master weights]) or its Kahan compensation (Note [Kahan summation]), or None."""
        return "master_param" if self.master_weights else \
            "kahan_comp" if self.kahan_summation else None

    # Note [Master weights]
    # With master_weights=True, each bfloat16 or float16 param gets a float32 master copy in its
    # state ("master_param", made from the param at its first step). A step updates the master
    # from the 16-bit grad, with the states, and writes the param as the master rounded to
    # nearest, in the same pass (Note [Param copies] in csrc/cpu/driver.h): the model keeps
    # computing in 16 bits while the updates accumulate in float32, so an update smaller than
    # half an ulp of the param is not lost. float32 and float64 params have no master.

    def _bind(self, call: _Call) -> Any:
        """The bound call of ``call``: its params and state lists checked and held (the grads come
        with each run), its hyper-parameters from the group with the call's learning rate."""
        kernel = self._kernel
        group = call.group
        lists = tuple(
            call.params if b.role == "param" else None if b.role == "grad" else
            call.buffers.get(b.state)
            for b in kernel.buffers)
        hyper = tuple(call.lr if name == "lr" else group[name] for name in kernel.call_hypers)
        indices = call.indices
        index = (indices.start or None) if isinstance(indices, range) else indices
        extra: dict = {}
        if self.master_weights and call.states is not None:  # Note [Master weights]
            masters = low_precision_state(call.params, call.states, "master_param",
                                          _arrays.is_16_bit)
            if masters is not None:
                params = [p if m is None else m for p, m in zip(call.params, masters)]
                extra["param_copies"] = [None if m is None else p
                                         for p, m in zip(call.params, masters)]
                lists = tuple(params if b.role == "param" else x
                              for b, x in zip(kernel.buffers, lists))
        if self.kahan_summation and call.states is not None:  # Note [Kahan summation]
            comps = low_precision_state(call.params, call.states, "kahan_comp", _arrays.is_16_bit)
            if comps is not None:
                extra["kahan_comps"] = comps
        # grads of another dtype than their params' (bfloat16 grads of float32 params, and of
        # master weights): the call is bound for the dtypes of this step's grads
        ps: Any = next(x for b, x in zip(kernel.buffers, lists) if b.role == "param")
        if any(isinstance(g, np.ndarray) and isinstance(p, np.ndarray) and g.dtype != p.dtype
               for g, p in zip(call.grads, ps)):
            extra["grad_dtype"] = [g.dtype if isinstance(g, np.ndarray) else p.dtype
                                   for g, p in zip(call.grads, ps)]
        if self.stochastic_rounding:
            first = indices.start if isinstance(indices, range) else indices[0]
            extra["sr_seed"] = call_seed(self.seed or 0, first)  # (a seed is set when on)
        return self._backend.bind(kernel.name, lists, hyper, name=f"{type(self).__name__}.step",
                                  index=index, grads_later=True, **extra)

    def _undo(self, call: _Call) -> None:
        """Remove what ``_prepare`` allocated for a call that was not made."""
        for i, name in reversed(call.created):
            if name is None:
                del self._state[i]
            else:
                del self._state[i][name]
        call.created = []

    def _finish(self, call: _Call, scalars: Any) -> None:
        """Advance the counts of a call that was made."""
        step = call.key[0] + 1
        names = tuple(self._scalar_state)
        values = () if not names else (scalars,) if len(names) == 1 else tuple(scalars)
        run = call.run
        if run is not None:
            run.key = (step, *values, *run.extra)
            run.stale = True
            return
        _set_all(call.states, "step", step)
        for k, v in zip(names, values):
            _set_all(call.states, k, v)
        self._start_run(call)

    def _start_run(self, call: _Call) -> None:
        """After a call that updated group ``gi`` whole: keep its run, unless its state was handed
        out or its params live in several places (Note [The steady-state step])."""
        gi = call.gi
        start, stop = self._slices[gi]
        if self._exposed[gi] or self._mixed[gi] or list(call.indices) != list(range(start, stop)):
            return
        key = self._uniform_key(call.group, call.states)
        if key is not None:
            self._runs[gi] = _Run(self._checked[gi], key, len(self._scalar_state), call.states,
                                  call.buffers, call.bound)

    def _flush(self, gi: int) -> None:
        """Write group ``gi``'s step count and scalars from its run into its state dicts."""
        run = self._runs[gi]
        if run is None or not run.stale:
            return
        _set_all(run.states, "step", run.key[0])
        for j, name in enumerate(self._scalar_state, 1):
            _set_all(run.states, name, run.key[j])
        run.stale = False

    def _flush_all(self) -> None:
        for gi in range(len(self._runs)):
            self._flush(gi)

    def _forget_runs(self) -> None:
        self._runs = [None] * len(self._runs)
        self._exposed = [False] * len(self._exposed)
        self._last = [()] * len(self._last)
        self._calls = None

    def _end_run(self, gi: int) -> None:
        self._flush(gi)
        self._runs[gi] = None

    def _expose(self, index: int) -> None:
        """``opt.state`` is handing out the state dict of flat index ``index``: its group goes back
        to the general path (Note [The steady-state step])."""
        gi = bisect.bisect_right(self._slices, (index, math.inf)) - 1
        self._end_run(gi)
        self._exposed[gi] = True

    def _uniform_key(self, group: dict, states: list) -> tuple | None:
        """The call key (see ``_call_keys``) shared by every param of a group whose states all
        exist, found without a Python loop; None if some state is missing or the keys differ."""
        if not states:
            return None
        try:
            keys = list(map(operator.itemgetter("step", *self._scalar_state), states))
        except TypeError:  # a param without state yet (None)
            return None
        if keys.count(keys[0]) != len(keys):
            return None
        return self._full_key(group, states, keys[0] if self._scalar_state else (keys[0],))

    def _groups_checked(self) -> list:
        cls = type(self).__name__
        if len(self.param_groups) != len(self._slices):
            raise ValueError(
                f"{cls}.step: param_groups has {len(self.param_groups)} groups but "
                f"{len(self._slices)} were added; add groups with add_param_group"
            )
        names = tuple(h.name for h in self._kernel.hypers)
        out = []
        for gi, (group, (start, stop)) in enumerate(zip(self.param_groups, self._slices)):
            params = group.get("params")
            if not (params is self._plists[gi] and params.edits == 0) and (
                not isinstance(params, list)
                or len(params) != stop - start
                or not all(map(operator.is_, params, self._params[start:stop]))
            ):
                raise ValueError(
                    f"{cls}.step: param_groups[{gi}]['params'] changed since the group was added; "
                    "add parameters with add_param_group"
                )
            # Checking costs more than the kernel for small models: recheck only values that
            # changed since the last check (compared by identity, so an edited value always is;
            # a list or array, which can be edited in place, by its contents too).
            try:
                snapshot = tuple(map(group.__getitem__, names))
            except KeyError:
                missing = [k for k in names if k not in group]
                raise ValueError(f"{cls}.step: param_groups[{gi}] lacks {missing[0]!r}") from None
            last = self._checked.get(gi)
            if (last is None or not all(map(operator.is_, snapshot, last[0]))
                    or (last[1] and mutable_parts(snapshot) != last[1])):
                check_hyper(cls, self._kernel, group, f"param_groups[{gi}]")
                self._checked[gi] = (snapshot, mutable_parts(snapshot))
            out.append((group, (start, stop)))
        return out

    def _grads_list(self, grads: Any) -> list | tuple:
        """``grads`` as a list of the right length (a bare array for an optimizer built on one)."""
        cls = type(self).__name__
        n = len(self._params)
        if self._bare and _arrays.looks_like_array(grads):
            grads = [grads]
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"{cls}.step: grads must be a list of arrays (one per param), "
                            f"got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"{cls}.step: got {len(grads)} grads for {n} params")
        return grads

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]!r}")
        lines.append(")")
        return "\n".join(lines)


def _same(x: Any) -> Any:
    return x


def _nothing() -> None:
    pass


def _set_all(dicts: list, key: str, value: Any) -> None:
    """``d[key] = value`` for every dict, looping in C (deque consumes the map)."""
    collections.deque(map(operator.setitem, dicts, itertools.repeat(key), itertools.repeat(value)),
                      maxlen=0)


class StepsPerGroup:
    """A mixin for the classes whose peer counts steps per group (schedulefree's
    ``AdamWScheduleFree``, apex's ``FusedLAMB``): every param of a group steps with the group's
    most advanced count and scalar state, also one that had no grad on some steps or joins late
    (its own count would give it another bias correction, or average weight). A step in which no
    param of a group has a grad does not count here; the peers count it."""

    def _call_keys(self, group: dict, states: list) -> list:
        keys = Optimizer._call_keys(self, group, states)  # type: ignore[arg-type]
        top = max(keys, key=lambda k: k[0])
        return [top] * len(keys)
