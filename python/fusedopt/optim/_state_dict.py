"""``state_dict`` and ``load_state_dict`` of the optimizer classes: torch's layout, every array
copied, saved params matched to the optimizer's by position within each group, and a state dict
of ``torch.optim`` (0-d tensors for ``step`` and ``mu_product``, extra group keys) accepted."""

from __future__ import annotations

import copy

import numpy as np
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from .. import _arrays
from ._checks import as_float, as_scalar, as_step, check_hyper, load_array

__all__ = ["StateDicts", "check_entry_names", "check_group_names", "group_state_values",
           "with_group_state"]


def check_group_names(fail: str, cls: str, where: str, saved: Mapping, wanted: Any,
                      all_hyper_names: set, allowed: Any = None) -> None:
    """A saved param group has every hyper-parameter in ``wanted`` and none that only another
    algorithm uses (one of ``all_hyper_names`` not in ``allowed``, by default ``wanted``: a state
    dict of another optimizer), else ``ValueError`` naming the key."""
    missing = [k for k in wanted if k not in saved]
    if missing:
        raise ValueError(f"{fail}: {where} lacks {missing[0]!r}; "
                         f"was the state dict saved by another optimizer than {cls}?")
    allowed = wanted if allowed is None else allowed
    foreign = [k for k in saved if k in all_hyper_names and k not in allowed]
    if foreign:
        raise ValueError(f"{fail}: {where} has {foreign[0]!r}, which {cls} does not use; "
                         "was the state dict saved by another optimizer?")


def check_entry_names(fail: str, cls: str, where: str, names: Any, known: Any,
                      required: tuple) -> None:
    """A saved state entry's ``names`` are all ``known`` and include every ``required`` one,
    else ``ValueError`` naming the entry."""
    for name in names:
        if name not in known:
            raise ValueError(f"{fail}: {where} has an entry {name!r}, which {cls} does not keep; "
                             "was the state dict saved by another optimizer?")
    for name in required:
        if name not in names:
            raise ValueError(f"{fail}: {where} lacks {name!r}")


def saved_seed(fail: str, state_dict: Any) -> int | None:
    """The seed of stochastic rounding a state dict records (Note [Stochastic rounding]), checked;
    None where it has none."""
    rounding = state_dict.get("stochastic_rounding") if isinstance(state_dict, Mapping) else None
    if rounding is None:
        return None
    if not isinstance(rounding, Mapping) or "seed" not in rounding:
        raise ValueError(f"{fail}: stochastic_rounding must be a dict with a 'seed'")
    seed = rounding["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
        raise ValueError(f"{fail}: stochastic_rounding['seed'] must be an int in [0, 2**64), "
                         f"got {seed!r}")
    return seed


def group_state_values(kept: Mapping, entries: Iterable, initial: Mapping) -> dict:
    """The group keys a peer keeps in place of per-param state (``kept``: {group key: state
    name}, Schedule-Free's ``k``), from the first of a group's state ``entries`` that has state
    (None or empty: a param without), else from ``initial``: a step count as an int, scalar state
    as a float."""
    first = next((e for e in entries if e), None) or initial
    return {k: (int if name == "step" else float)(as_scalar(first[name]))
            for k, name in kept.items()}


def with_group_state(state_dict: Any, kept: Mapping,
                     make: Callable[[str, Any], Any] = lambda name, value: value) -> Any:
    """A peer's state dict as these classes keep it: each non-empty state entry completed with
    what its group carries in place of per-param state (``kept``; ``make(name, value)`` the value
    as the front end stores it), and those keys left out of the groups. A new dict; anything
    malformed is returned as it is, for the loader's checks to name."""
    if not kept or not isinstance(state_dict, Mapping) \
            or not isinstance(state_dict.get("param_groups"), (list, tuple)) \
            or not isinstance(state_dict.get("state"), Mapping):
        return state_dict
    states = dict(state_dict["state"])
    groups = []
    for group in state_dict["param_groups"]:
        if not isinstance(group, Mapping):
            groups.append(group)
            continue
        given = {name: group[k] for k, name in kept.items() if k in group}
        for pid in group.get("params", ()):
            entry = states.get(pid)
            if isinstance(entry, Mapping) and entry:
                states[pid] = {**{n: make(n, v) for n, v in given.items() if n not in entry},
                               **entry}
        groups.append({k: v for k, v in group.items() if k not in kept})
    return {**state_dict, "state": states, "param_groups": groups}


class StateDicts:
    """The state-dict half of :class:`fusedopt.optim.Optimizer`."""

    # set by the Optimizer
    param_groups: list
    defaults: dict
    _state: dict
    _params: list
    _metas: list
    _slices: list
    seed: int | None  # of stochastic rounding (the class's property)
    _kernel: ClassVar[Any]
    _state_names: ClassVar[tuple]
    _always: ClassVar[tuple]
    _scalar_state: ClassVar[dict]
    _step_optional: ClassVar[bool]
    _kept_on_load: ClassVar[tuple]
    _all_hyper_names: ClassVar[set]
    _group_state: ClassVar[dict]
    _step_fns: ClassVar[tuple]

    def _flush_all(self) -> None:
        raise NotImplementedError

    def _forget_runs(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The optimizer's state in torch's layout, every array copied:
        ``{"state": {index: {"step": int, <name>: array, ...}}, "param_groups": [{..., "params":
        [indices]}]}``. Group values (schedules included) are deep-copied; a hyper-parameter
        that is a callable of the step (ADOPT's ``clip_lambda``) is left out, as its peer keeps
        it on the optimizer, and a loaded state dict keeps the optimizer's own."""
        self._flush_all()
        state = {
            i: {k: v if isinstance(v, (int, float)) else _arrays.copy(v) for k, v in s.items()}
            for i, s in sorted(self._state.items())
        }
        groups = []
        for group, (start, stop) in zip(self.param_groups, self._slices):
            packed = {k: copy.deepcopy(v) for k, v in group.items()
                      if k != "params" and k not in self._step_fns}
            packed["params"] = list(range(start, stop))
            if self._group_state:
                packed.update(group_state_values(
                    self._group_state, map(self._state.get, range(start, stop)),
                    {"step": 0, **self._scalar_state}))
            groups.append(packed)
        out = {"state": state, "param_groups": groups}
        if getattr(self, "stochastic_rounding", False):  # Note [Stochastic rounding]
            out["stochastic_rounding"] = {"seed": self.seed}
        return out

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Replace the state and the groups' hyper-parameters by those of ``state_dict`` (as saved
        by :meth:`state_dict`), copying every array into a new one laid out like its param.

        Saved params are matched to this optimizer's by position within each group, as torch does.
        Raises ``ValueError`` naming the entry when the group count, a group's size, a
        hyper-parameter, a state name (from another algorithm), a shape or a dtype does not match;
        nothing changes then. A resumed run continues bit for bit like an unbroken one.
        """
        cls = type(self).__name__
        fail = f"{cls}.load_state_dict"
        state_dict = with_group_state(state_dict, self._group_state)
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
            wanted = [k for k in self.defaults if k not in self._kept_on_load]
            check_group_names(fail, cls, where, saved, wanted, self._all_hyper_names,
                              self.defaults)
            new = {"params": group["params"]}
            new.update((k, copy.deepcopy(v)) for k, v in saved.items() if k != "params")
            new.update((k, group[k]) for k in self._kept_on_load if k not in new)
            try:
                check_hyper(cls, self._kernel, new)
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
        seed = saved_seed(fail, state_dict)

        self._state = dict(sorted(new_state.items()))
        if seed is not None:
            self.seed = seed
        self._forget_runs()  # new dicts, none handed out yet
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)

    def _load_entry(self, fail: str, where: str, entry: Any, i: int) -> dict:
        cls = type(self).__name__
        if not isinstance(entry, Mapping):
            raise ValueError(f"{fail}: {where} is a {type(entry).__name__}, expected a dict")
        p = self._params[i]
        out: dict[str, Any] = {}
        for name, value in entry.items():
            if name == "step":
                out["step"] = as_step(fail, where, value)
            elif name in self._scalar_state:
                out[name] = as_float(fail, f"{where}[{name!r}]", value)
            elif name in self._state_names:
                if value is None:  # torch keeps momentum_buffer=None when momentum == 0
                    continue
                want = np.dtype(np.float32) if name == "master_param" else \
                    np.dtype(p.dtype) if name == "kahan_comp" else \
                    _arrays.state_dtype_for(cls, p, getattr(self, "state_dtype", None))
                out[name] = load_array(fail, f"{where}[{name!r}]", value, p, self._metas[i], i,
                                       self._state_names.index(name), want)
            else:
                check_entry_names(fail, cls, where, (name,), (), ())
        if "step" not in out and self._step_optional:
            out["step"] = 0
        check_entry_names(fail, cls, where, out, out, ("step", *self._scalar_state, *self._always))
        order = ("step", *self._scalar_state, *self._state_names)
        return {k: out[k] for k in order if k in out}
