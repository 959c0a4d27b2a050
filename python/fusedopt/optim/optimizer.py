"""The small base every optimizer class shares: param groups, named per-parameter state, the step
count, ``lr`` as a float or a schedule, and ``state_dict`` / ``load_state_dict``.

A subclass says only what is particular to its algorithm: its hyper-parameter checks (in torch's
order, with torch's messages), the state arrays a group needs, and the one
:mod:`fusedopt.functional` call that updates a list of tensors. The base turns each param group into
that one call per step.

Note [State is keyed by flat index]
    NumPy arrays are not hashable, so per-parameter state is kept by the parameter's index in the
    flattened list of all groups' params (the order ``step`` takes its grads in, and the keys of
    ``state_dict()["state"]``, as in torch). ``opt.state`` also accepts the array itself as a key.
    The ``params`` lists of ``param_groups`` are therefore fixed once added: ``step`` refuses to run
    if one was edited (add parameters with :meth:`Optimizer.add_param_group`).

Note [One call per group, split by step]
    A group's tensors normally share one step count and go to the functional layer in one call.
    They can hold different counts only after ``load_state_dict`` with a state dict that has no
    state for some of them; such a group is split into one call per distinct step count (and per
    ``mu_product`` for NAdam), in the order the counts first appear, each call with the learning
    rate of its own step. SGD likewise separates momentum buffers that start at this step (momentum
    just switched on) from running ones, since the two are updated differently.

Note [The steady-state step]
    Most steps repeat the last one: the same params, hyper-parameters and state arrays, one step
    count further. Gathering the state lists and writing ``step`` into every state dict cost more
    than the fused call itself for small tensors (about 30 us of Python for 200 params, against
    23 us for the call), so after a step that updated a whole group in one call the group keeps a
    ``_Run``: its state dicts, its buffer lists and its call key. While the run lives, a step is one
    call with those lists, and the new step count (and NAdam's ``mu_product``) is kept in the run
    only; the state dicts receive it when anything can read them (``_flush``): ``state_dict()``,
    and the first look at a group's state through ``opt.state``. Such a look hands out the dicts
    themselves, which the user may keep and edit at any later time, so it also ends the run, and
    the group takes the general path (reading every dict at every step) until
    ``load_state_dict`` replaces its dicts. A run is also ended (after its flush) when the group's
    hyper-parameters were edited, since they choose the buffers and the split. The params are
    compared by identity at every step either way. A run also keeps a ``_core.cpu.Plan`` that its
    NumPy calls go through (Note [The plan of a run], csrc/bindings/buffers.h): the kernel then
    checks the new grads in full but, of the params and state arrays, only that each is the
    array it checked at the last step, unchanged.
"""

from __future__ import annotations

import bisect
import collections
import copy
import inspect
import itertools
import math
import numbers
import operator
import re
from collections.abc import Mapping

import numpy as np

from .. import _arrays, _buffers, _core, functional

__all__ = ["Optimizer"]

_FLOAT_DTYPES = ("float32", "float64")


# ---- hyper-parameter checks: torch.optim's texts -------------------------------------------------


def _real(cls, key, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{cls}: {key} must be a real number, got {type(value).__name__}")


def check_lr(cls, key, value):
    """A float >= 0 or a schedule (any callable ``t -> float``)."""
    if callable(value):
        return
    _real(cls, key, value)
    if not 0.0 <= value:
        raise ValueError(f"Invalid learning rate: {value}")


def check_nonnegative(label):
    """``value >= 0``, failing with torch's ``Invalid <label> value: <value>``."""

    def check(cls, key, value):
        _real(cls, key, value)
        if not 0.0 <= value:
            raise ValueError(f"Invalid {label} value: {value}")

    return check


def check_unit_interval(label):
    """``0 <= value <= 1`` (Adadelta's ``rho``)."""

    def check(cls, key, value):
        _real(cls, key, value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Invalid {label} value: {value}")

    return check


def check_real(cls, key, value):
    _real(cls, key, value)


def check_betas(cls, key, value):
    """A pair, each in ``[0, 1)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid betas value: {value!r} (expected a pair (beta1, beta2))")
    for i, beta in enumerate(value):
        _real(cls, f"betas[{i}]", beta)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


# ---- params --------------------------------------------------------------------------------------


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
    """One fused call of a step: its lists, and what ``_prepare`` allocated for it."""

    __slots__ = ("gi", "group", "key", "indices", "lr", "params", "grads", "buffers", "run",
                 "states", "created")

    def __init__(self, gi, group, key, indices, lr, params, grads):
        self.gi, self.group, self.key, self.indices, self.lr = gi, group, key, indices, lr
        self.params, self.grads = params, grads
        self.buffers = self.run = self.states = None
        self.created = []  # (flat index, name or None for a whole new state dict)


_ITEM = re.compile(r"\b([a-z_]+)\[(\d+)\]")


def _flat_indices(message, indices):
    """A kernel's message about a call over ``indices`` (its ``grads[j]`` is the step's
    ``grads[indices[j]]``), with the step's indices."""
    if indices == range(len(indices)):
        return message
    return _ITEM.sub(lambda m: f"{m.group(1)}[{indices[int(m.group(2))]}]", message)


class _Run:
    """A group's steady state (Note [The steady-state step])."""

    __slots__ = ("checked", "key", "extra", "states", "buffers", "stale", "plan")

    def __init__(self, checked, key, n_scalars, states, buffers):
        self.checked = checked  # the hyper-parameter snapshot the run was made under
        self.key = key  # the call key of the next step: (step, *scalars, *extra)
        self.extra = key[1 + n_scalars :]  # what else the key holds; fixed while the run lives
        self.states = states  # the group's state dicts, in order
        self.buffers = buffers  # name -> the group's list of that state array
        self.stale = False  # whether the dicts' step and scalars lag behind ``key``
        # What the kernel checked at the run's last NumPy call (Note [The plan of a run],
        # csrc/bindings/buffers.h): the next call with new grads skips the other arrays' checks.
        self.plan = _core.cpu.Plan()

    def __getstate__(self):  # a copy gets a new plan: this one holds the original's arrays
        return {k: getattr(self, k) for k in self.__slots__ if k != "plan"}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)
        self.plan = _core.cpu.Plan()


def _check_param(cls, where, p):
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
    if m.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{cls}: {where} has dtype {m.dtype}, expected float32 or float64")
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


def _as_list(cls, where, params, *, groups=True):
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

    def __iter__(self):
        return iter(sorted(self._opt._state))

    def __len__(self):
        return len(self._opt._state)

    def __repr__(self):
        return repr(dict(self.items()))


class Optimizer:
    """Base class of the optimizers (see :mod:`fusedopt.optim`); not used directly.

    Attributes:
        param_groups: list of dicts, each with ``"params"`` (its list of arrays) and every
            hyper-parameter. Edit the hyper-parameters (``lr`` included, float or schedule) between
            steps as in torch; the next step uses and checks the edited values.
        state: read-only mapping from a param's flat index (or the param array) to its state dict:
            ``"step"`` (completed updates, an int), the algorithm's named arrays, and for NAdam
            ``"mu_product"`` (a float). Allocated at the first step that updates the param.
            The dicts it returns are live (edits take effect at the next step); taking one out
            moves its group from the steady-state step to the general one, which reads every
            state dict at every step (Note [The steady-state step]). ``state_dict()`` (copies)
            and ``p in opt.state`` do not.
        defaults: the constructor's hyper-parameters, used for keys a param group leaves out.
    """

    # The update functions the class calls; tests set it to fusedopt.reference on an instance to
    # run the same bookkeeping over the oracle.
    _functional = functional

    # (key, check) in torch's order: the first failing check is the error raised.
    _hyper_checks: tuple = ()
    # Every state array the algorithm may hold, in torch's order; those always allocated.
    _state_names: tuple = ()
    _always: tuple = ()
    # Per-parameter float state besides "step", with its value before the first step.
    _scalar_state: dict = {}
    # Whether a loaded state entry may lack "step" (then 0): torch.optim.SGD keeps no step count.
    _step_optional = False

    # Every hyper-parameter name of every optimizer class, to recognise a foreign state dict.
    _all_hyper_names: set = set()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        sig = inspect.signature(cls.__init__)
        Optimizer._all_hyper_names.update(k for k in sig.parameters if k not in ("self", "params"))

    def __init__(self, params, defaults):
        cls = type(self).__name__
        self._check_hyper(defaults)
        self.defaults = dict(defaults)
        self._bare = _arrays.looks_like_array(params)
        groups = _as_list(cls, "params", params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        given_groups = isinstance(groups[0], dict)
        if not given_groups:
            groups = [{"params": groups}]
        self.param_groups = []
        self._params = []  # flat, in group order
        self._metas = []  # the Meta of each param: what its grad must match, and where it lives
        self._layouts = []  # (shape, numpy dtype, C order) of a NumPy param, None for a device one
        self._mixed = []  # per group: whether its params live in more than one place
        self._index = {}  # id(param) -> flat index
        self._slices = []  # (start, stop) of each group in _params
        self._state = {}
        self._checked = {}  # group index -> the hyper-parameter values last checked
        self._plists = []  # per group: the _Params put in it, unedited while its edits == 0
        self._runs = []  # per group: its _Run, or None (Note [The steady-state step])
        self._exposed = []  # per group: whether its state dicts were handed out by opt.state
        for i, group in enumerate(groups):
            self._add_group(group, f"param_groups[{i}]" if given_groups else None)

    def __setstate__(self, state):
        """A copy (``copy.deepcopy``, pickle) holds new param arrays: index them anew."""
        self.__dict__.update(state)
        self._index = {id(p): i for i, p in enumerate(self._params)}

    @property
    def state(self):
        return _StateView(self)

    # ---- groups ----------------------------------------------------------------------------------

    def add_param_group(self, param_group):
        """Add a group (a dict with ``"params"`` and any hyper-parameters; the others come from
        ``defaults``). Its params take the next flat indices. Nothing changes if it is refused."""
        self._add_group(param_group, f"param_groups[{len(self.param_groups)}]")

    def _add_group(self, param_group, where):
        """``where`` names the group in messages; ``None`` when the user passed a plain list."""
        cls = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{cls}: param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{cls}: {where or 'param group'} has no 'params' entry")
        prefix = f"{where}['params']" if where else "params"
        params = _as_list(cls, prefix, param_group["params"])
        metas = [_check_param(cls, f"{prefix}[{j}]", p) for j, p in enumerate(params)]
        ids = {id(p) for p in params}
        if len(ids) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        if any(i in self._index for i in ids):
            raise ValueError("some parameters appear in more than one parameter group")
        group = {"params": _Params(params)}
        for key, value in self.defaults.items():
            group[key] = param_group.get(key, value)
        for key, value in param_group.items():
            if key not in group:
                group[key] = value
        self._check_hyper(group, where)
        self._check_no_shared_memory(metas)

        start = len(self._params)
        for j, p in enumerate(params):
            self._index[id(p)] = start + j
        self._params.extend(params)
        self._metas.extend(metas)
        self._layouts.extend(
            (m.shape, np.dtype(m.dtype), m.order == "C") if m.place == _arrays.CPU else None
            for m in metas
        )
        self._mixed.append(len({m.place for m in metas}) > 1)
        self._slices.append((start, len(self._params)))
        self._plists.append(group["params"])
        self._runs.append(None)
        self._exposed.append(False)
        self.param_groups.append(group)

    def _check_no_shared_memory(self, new_metas):
        """Two params sharing memory would be updated twice per step: refuse (views included).
        Host and device addresses never coincide (CUDA's unified virtual addressing)."""
        spans = [(*m.span, i) for i, m in enumerate(self._metas + new_metas) if m.span[1]]
        spans.sort()
        reach = None
        for lo, hi, i in spans:
            if reach is not None and lo < reach[0]:
                a, b = sorted((reach[1], i))
                raise ValueError(
                    f"{type(self).__name__}: params[{a}] and params[{b}] share memory "
                    "(each would be updated once per step through the other)"
                )
            if reach is None or hi > reach[0]:
                reach = (hi, i)

    def _check_hyper(self, h, where=None):
        cls = type(self).__name__
        try:
            for key, check in self._hyper_checks:
                check(cls, key, h[key])
            self._check_combination(h)
        except ValueError as e:
            if where is None:
                raise
            raise ValueError(f"{e} (in {where})") from None

    def _check_combination(self, h):
        """Checks across hyper-parameters (SGD's Nesterov rule)."""

    # ---- the algorithm's part --------------------------------------------------------------------

    def _buffer_names(self, group):
        """The state arrays a step of ``group`` needs (allocated if missing)."""
        return self._always

    def _new_buffer(self, name, p, group):
        return _arrays.state_like(p, 0.0, self._state_names.index(name))

    def _call_keys(self, group, states):
        """For each state (``None`` before the first step), what the tensors of one call must
        share: a tuple of the step count, then the per-parameter scalars."""
        fresh = (0, *self._scalar_state.values())
        if not self._scalar_state:
            return [fresh if s is None else (s["step"],) for s in states]
        key = operator.itemgetter("step", *self._scalar_state)
        return [fresh if s is None else key(s) for s in states]

    def _update(self, fn, group, params, grads, buffers, *, step, lr, key):
        """One call of ``fn.<algo>``; returns the new per-parameter scalars (dict) or None."""
        raise NotImplementedError

    # ---- step ------------------------------------------------------------------------------------

    def step(self, grads):
        """One update of every param, each group by one fused multi-tensor call.

        Args:
            grads: the gradients, one array per param in the flattened order of the groups' params
                (a bare array if the optimizer was built on a bare array), each of the shape,
                dtype and memory order of its param. They are only read.

        Everything (grads, the groups' hyper-parameters, the learning rates their schedules give
        at this step) is checked before any state is allocated or any array written.
        """
        cls = type(self).__name__
        grads = self._grads_list(grads)
        plan = []
        for gi, (group, (start, stop)) in enumerate(self._groups_checked()):
            run = self._runs[gi]
            if run is not None:
                if run.checked is self._checked[gi]:
                    lr = self._resolve_lr(cls, gi, group["lr"], run.key[0])
                    plan.append((gi, group, run.key, range(start, stop), lr, run))
                    continue
                self._end_run(gi)  # the hyper-parameters were edited
            states = list(map(self._state.get, range(start, stop)))
            key = None if self._mixed[gi] else self._uniform_key(group, states)
            if key is not None:
                calls = {(key, None): range(start, stop)}
            else:
                calls = {}
                places = [self._metas[i].place for i in range(start, stop)]
                for i, k, place in zip(range(start, stop), self._call_keys(group, states), places):
                    calls.setdefault((k, place), []).append(i)
                states = None
            for (k, _), indices in calls.items():
                lr = self._resolve_lr(cls, gi, group["lr"], k[0])
                plan.append((gi, group, k, indices, lr, states))
        # Note [Every call checked before the first]: a call checks all its arrays in C++ before
        # it writes anything, so a step of one call needs no other check (the per-grad checks only
        # word the error in the optimizer's terms). A step of several calls (several groups, or a
        # group split by step count or device) prepares every call first (``_buffers.staging``:
        # each is checked as its kernel checks it and kept, not made), then runs them, so that no
        # call writes if a later one would refuse its arrays, and a NumPy call is checked once.
        fn = self._functional
        calls = []
        made = 0  # calls made
        current = 0  # the call being checked or made
        try:
            for entry in plan:
                calls.append(self._prepare(*entry, grads))
            if len(calls) == 1:
                call = calls[0]
                if call.run is None:
                    scalars = self._make(fn, call)
                else:
                    with _buffers.staging(None, call.run.plan):
                        scalars = self._make(fn, call)
                self._finish(call, scalars)
                return
            pending = []
            ready = []  # per call: its scalars, and how many of ``pending`` are its own
            for current, call in enumerate(calls):
                before = len(pending)
                with _buffers.staging(pending, call.run and call.run.plan):
                    scalars = self._make(fn, call)
                ready.append((scalars, len(pending) - before))
            k = 0
            for current, (call, (scalars, n)) in enumerate(zip(calls, ready)):
                for run in pending[k : k + n]:
                    run()
                k += n
                made += 1
                self._finish(call, scalars)
        except BaseException as e:
            for call in calls[made:]:
                self._undo(call)
            if not isinstance(e, (TypeError, ValueError)):
                raise
            self._check_grads(grads)  # raises the optimizer's own message for a bad grad
            if current < len(calls):
                raise type(e)(_flat_indices(str(e), calls[current].indices)) from None
            raise

    def _flush(self, gi):
        """Write group ``gi``'s step count and scalars from its run into its state dicts."""
        run = self._runs[gi]
        if run is None or not run.stale:
            return
        _set_all(run.states, "step", run.key[0])
        for j, name in enumerate(self._scalar_state, 1):
            _set_all(run.states, name, run.key[j])
        run.stale = False

    def _end_run(self, gi):
        self._flush(gi)
        self._runs[gi] = None

    def _expose(self, index):
        """``opt.state`` is handing out the state dict of flat index ``index``: its group goes back
        to the general path (Note [The steady-state step])."""
        gi = bisect.bisect_right(self._slices, (index, math.inf)) - 1
        self._end_run(gi)
        self._exposed[gi] = True

    def _uniform_key(self, group, states):
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

    def _full_key(self, group, states, key):
        """``key`` completed with what else a subclass's ``_call_keys`` puts in it (SGD), or
        None where that differs between the states."""
        return key

    def _groups_checked(self):
        cls = type(self).__name__
        if len(self.param_groups) != len(self._slices):
            raise ValueError(
                f"{cls}.step: param_groups has {len(self.param_groups)} groups but "
                f"{len(self._slices)} were added; add groups with add_param_group"
            )
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
            # changed since the last check (compared by identity, so an edited value always is).
            try:
                snapshot = tuple(map(group.__getitem__, self.defaults))
            except KeyError:
                missing = [k for k in self.defaults if k not in group]
                raise ValueError(f"{cls}.step: param_groups[{gi}] lacks {missing[0]!r}") from None
            last = self._checked.get(gi)
            if last is None or not all(map(operator.is_, snapshot, last)):
                self._check_hyper(group, f"param_groups[{gi}]")
                self._checked[gi] = snapshot
            out.append((group, (start, stop)))
        return out

    def _grads_list(self, grads):
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

    def _check_grads(self, grads):
        """Each grad against its param (type, place, dtype, shape, memory order), with messages
        naming its flat index. NumPy grads of NumPy params take a fast path, PyTorch grads of
        PyTorch params another (``torch_lists_match``); anything they refuse is looked at by
        ``_check_grad``, which words the error."""
        ndarray = np.ndarray
        device = []  # indices of device params
        for i, (g, layout) in enumerate(zip(grads, self._layouts)):
            if layout is None:
                device.append(i)
                continue
            if not isinstance(g, ndarray):
                self._check_grad(i, g)
                continue
            shape, dtype, c_order = layout
            flags = g.flags
            if (g.dtype != dtype or g.shape != shape or not flags.aligned
                    or not (flags.c_contiguous if c_order else flags.f_contiguous)):
                self._check_grad(i, g)
        if device and not _buffers.torch_lists_match(
            [grads[i] for i in device], [self._params[i] for i in device]
        ):
            for i in device:
                self._check_grad(i, grads[i])
        return grads

    def _check_grad(self, i, g):
        """Raises the message for the first way grad ``i`` does not match its param, if any."""
        cls = type(self).__name__
        m = self._metas[i]
        gm, wrong = _arrays.mismatch(g, m, f"{cls}.step: grads[{i}]")
        if wrong == "type":
            what = (
                "a numpy.ndarray" if m.place == _arrays.CPU
                else f"a CUDA array on {_arrays.place_name(m.place)} (the device of params[{i}])"
            )
            raise TypeError(f"{cls}.step: grads[{i}] is a {type(g).__name__}, expected {what}")
        if wrong == "place":
            raise TypeError(
                f"{cls}.step: grads[{i}] is {_arrays.kind(g)}, but params[{i}] is "
                f"{_arrays.kind(self._params[i])}; a grad must be where its param is"
            )
        if wrong == "dtype":
            raise TypeError(
                f"{cls}.step: grads[{i}] has dtype {gm.dtype}, expected {m.dtype} (the dtype of params[{i}])"
            )
        if wrong == "shape":
            raise ValueError(
                f"{cls}.step: grads[{i}] has shape {gm.shape}, expected {m.shape} (the shape of params[{i}])"
            )
        if wrong == "aligned":
            raise ValueError(f"{cls}.step: grads[{i}] is not aligned")
        if wrong == "order":
            raise ValueError(
                f"{cls}.step: grads[{i}] is not contiguous in the memory order of params[{i}] ({m.order})"
            )

    @staticmethod
    def _resolve_lr(cls, gi, lr, t):
        """The group's ``lr`` at ``t`` completed steps: the float itself, or ``schedule(t)``."""
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

    def _prepare(self, gi, group, key, indices, lr, states, grads):
        """One call of a step, ready to make (Note [One call per group, split by step]):
        ``indices`` is a range (a whole group) or a list; ``states`` is the group's ``_Run``, or
        the list of its states when every param of the range has its state already, or None.
        Buffers the call needs are allocated here; ``_undo`` removes them again."""
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
            return call
        names = self._buffer_names(group)
        if states is not None:
            # Every state exists: gather the lists without a Python loop.
            try:
                call.buffers = {name: list(map(operator.itemgetter(name), states)) for name in names}
            except KeyError:  # a buffer an option switched on needs: allocate it below
                pass
            else:
                call.states = states
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
            states.append(state)
        call.buffers = {name: [state[name] for state in states] for name in names}
        call.states = states
        return call

    def _make(self, fn, call):
        """``fn.<algo>`` over the call's lists; the new per-parameter scalars (dict) or None."""
        return self._update(fn, call.group, call.params, call.grads, call.buffers,
                            step=call.key[0] + 1, lr=call.lr, key=call.key)

    def _undo(self, call):
        """Remove what ``_prepare`` allocated for a call that was not made."""
        for i, name in reversed(call.created):
            if name is None:
                del self._state[i]
            else:
                del self._state[i][name]
        call.created = []

    def _finish(self, call, scalars):
        """Advance the counts of a call that was made."""
        step = call.key[0] + 1
        run = call.run
        if run is not None:
            run.key = (step, *(scalars[k] for k in self._scalar_state), *run.extra)
            run.stale = True
            return
        _set_all(call.states, "step", step)
        for k, v in (scalars or {}).items():
            _set_all(call.states, k, v)
        self._start_run(call.gi, call.group, call.indices, call.states, call.buffers)

    def _start_run(self, gi, group, indices, states, buffers):
        """After a call that updated group ``gi`` whole: keep its run, unless its state was handed
        out or its params live in several places (Note [The steady-state step])."""
        start, stop = self._slices[gi]
        if self._exposed[gi] or self._mixed[gi] or list(indices) != list(range(start, stop)):
            return
        key = self._uniform_key(group, states)
        if key is not None:
            self._runs[gi] = _Run(self._checked[gi], key, len(self._scalar_state), states, buffers)

    # ---- state dict ------------------------------------------------------------------------------

    def state_dict(self):
        """The optimizer's state in torch's layout, every array copied:
        ``{"state": {index: {"step": int, <name>: array, ...}}, "param_groups": [{..., "params":
        [indices]}]}``. Group values (schedules included) are deep-copied."""
        for gi in range(len(self._runs)):
            self._flush(gi)
        state = {
            i: {k: v if isinstance(v, (int, float)) else _arrays.copy(v) for k, v in s.items()}
            for i, s in sorted(self._state.items())
        }
        groups = []
        for group, (start, stop) in zip(self.param_groups, self._slices):
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, stop))
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Replace the state and the groups' hyper-parameters by those of ``state_dict`` (as saved
        by :meth:`state_dict`), copying every array into a new one laid out like its param.

        Saved params are matched to this optimizer's by position within each group, as torch does.
        Raises ``ValueError`` naming the entry when the group count, a group's size, a
        hyper-parameter, a state name (from another algorithm), a shape or a dtype does not match;
        nothing changes then. A resumed run continues bit for bit like an unbroken one.
        """
        cls = type(self).__name__
        fail = f"{cls}.load_state_dict"
        if not (isinstance(state_dict, Mapping) and {"state", "param_groups"} <= state_dict.keys()):
            raise ValueError(f"{fail}: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            n = len(saved_groups) if isinstance(saved_groups, (list, tuple)) else "no list of"
            raise ValueError(
                f"{fail}: the state dict has {n} param groups, this optimizer has {len(self.param_groups)}"
            )
        new_groups = []
        id_map = {}  # saved param id -> flat index
        for gi, (saved, group, (start, stop)) in enumerate(
            zip(saved_groups, self.param_groups, self._slices)
        ):
            where = f"param_groups[{gi}]"
            if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"{fail}: {where} is not a dict with a 'params' list")
            if len(saved["params"]) != stop - start:
                raise ValueError(
                    f"{fail}: {where} has {len(saved['params'])} params, "
                    f"this optimizer's group has {stop - start}"
                )
            missing = [k for k in self.defaults if k not in saved]
            if missing:
                raise ValueError(
                    f"{fail}: {where} lacks {missing[0]!r}; "
                    f"was the state dict saved by another optimizer than {cls}?"
                )
            foreign = [k for k in saved if k in self._all_hyper_names and k not in self.defaults]
            if foreign:
                raise ValueError(
                    f"{fail}: {where} has {foreign[0]!r}, which {cls} does not use; "
                    "was the state dict saved by another optimizer?"
                )
            new = {"params": group["params"]}
            new.update((k, copy.deepcopy(v)) for k, v in saved.items() if k != "params")
            try:
                self._check_hyper(new)
            except ValueError as e:
                raise ValueError(f"{fail}: {where}: {e}") from None
            for sid, i in zip(saved["params"], range(start, stop)):
                if sid in id_map:
                    raise ValueError(f"{fail}: parameter id {sid!r} appears twice in param_groups")
                id_map[sid] = i
            new_groups.append(new)

        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise ValueError(f"{fail}: 'state' is a {type(saved_state).__name__}, expected a dict")
        new_state = {}
        for sid, entry in saved_state.items():
            if sid not in id_map:
                raise ValueError(f"{fail}: state[{sid!r}] belongs to no parameter listed in param_groups")
            i = id_map[sid]
            new_state[i] = self._load_entry(fail, f"state[{sid!r}]", entry, i)

        self._state = dict(sorted(new_state.items()))
        self._runs = [None] * len(self._runs)  # new dicts, none handed out yet
        self._exposed = [False] * len(self._exposed)
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)

    def _load_entry(self, fail, where, entry, i):
        cls = type(self).__name__
        if not isinstance(entry, Mapping):
            raise ValueError(f"{fail}: {where} is a {type(entry).__name__}, expected a dict")
        p = self._params[i]
        out = {}
        for name, value in entry.items():
            if name == "step":
                out["step"] = _as_step(fail, where, value)
            elif name in self._scalar_state:
                out[name] = _as_float(fail, f"{where}[{name!r}]", value)
            elif name in self._state_names:
                if value is None:  # torch keeps momentum_buffer=None when momentum == 0
                    continue
                out[name] = _load_array(fail, f"{where}[{name!r}]", value, p, self._metas[i], i,
                                        self._state_names.index(name))
            else:
                raise ValueError(
                    f"{fail}: {where} has an entry {name!r}, which {cls} does not keep; "
                    "was the state dict saved by another optimizer?"
                )
        if "step" not in out and self._step_optional:
            out["step"] = 0
        for name in ("step", *self._scalar_state, *self._always):
            if name not in out:
                raise ValueError(f"{fail}: {where} lacks {name!r}")
        order = ("step", *self._scalar_state, *self._state_names)
        return {k: out[k] for k in order if k in out}

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]!r}")
        lines.append(")")
        return "\n".join(lines)


def _set_all(dicts, key, value):
    """``d[key] = value`` for every dict, looping in C (deque consumes the map)."""
    collections.deque(map(operator.setitem, dicts, itertools.repeat(key), itertools.repeat(value)),
                      maxlen=0)


def _as_step(fail, where, value):
    """A saved step count: an int >= 0; a float or 0-d array holding one (torch keeps a float
    tensor) is taken as that int."""
    value = _as_scalar(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value != int(value)
        or value < 0
    ):
        raise ValueError(f"{fail}: {where}['step'] is {value!r}, expected an int >= 0")
    return int(value)


def _as_float(fail, where, value):
    value = _as_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{fail}: {where} is {value!r}, expected a float")
    return float(value)


def _as_scalar(value):
    """A 0-d array of any library (torch keeps ``step`` as a tensor) as its Python number."""
    if not isinstance(value, numbers.Number) and getattr(value, "shape", None) == () \
            and hasattr(value, "item"):
        return value.item()
    return value


def _load_array(fail, where, value, p, m, i, slot):
    """A new state buffer for param ``p`` (Meta ``m``, flat index ``i``) holding the saved
    ``value``: an array of NumPy, CuPy or PyTorch on any device, moved to ``p``'s."""
    sd = _arrays.shape_dtype(value)
    if sd is None:
        raise TypeError(
            f"{fail}: {where} is a {type(value).__name__}, expected a numpy.ndarray "
            "(or a CuPy or PyTorch array)"
        )
    shape, dtype = sd
    if shape != m.shape:
        raise ValueError(
            f"{fail}: {where} has shape {shape}, expected {m.shape} (the shape of params[{i}])"
        )
    if dtype != m.dtype:
        raise ValueError(
            f"{fail}: {where} has dtype {dtype}, expected {m.dtype} (the dtype of params[{i}])"
        )
    return _arrays.load_like(p, value, slot)
