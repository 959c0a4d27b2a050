"""The algorithms' specs, as the compiled module declares them (``csrc/algorithms/<algo>.h``).

Everything a front end needs to know of an algorithm comes from here: its buffer lists and state
names, its hyper-parameters with their defaults, and its scalar state. :mod:`fusedopt.functional`
and the optimizer classes are generated from these, so no algorithm's names or defaults are written
twice in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _core

__all__ = ["Buffer", "Hyper", "Spec", "SPECS", "StepPower"]


@dataclass(frozen=True)
class Buffer:
    """One buffer list of a call."""

    list: str  # the argument: "exp_avgs"
    state: str | None  # the optimizer-state name: "exp_avg" (None for params and grads)
    role: str  # "param", "input", "grad" or "state"
    hyper: str | None  # the hyper-parameter that switches it on (None: always used)
    when: str  # "always", "flag", "nonzero", "positive"
    init: str | None  # the hyper-parameter a new state buffer starts at (None: 0)

    @property
    def optional(self) -> bool:
        return self.when != "always"

    def used(self, hyper: dict[str, Any]) -> bool:
        """Whether a call with these hyper-parameters uses the list."""
        if self.hyper is None:
            return True
        x = hyper[self.hyper]
        return bool(x > 0) if self.when == "positive" else bool(x)


@dataclass(frozen=True)
class Hyper:
    """One hyper-parameter."""

    name: str
    kind: str  # "lr", "real", "flag", "pair", "step_fn"
    default: Any
    range: tuple | None  # (lo, hi, lo_open, hi_open), or None: any real
    invalid: str | None  # torch's text for a value out of range
    order: int  # torch's order of checks
    kw_only: bool  # keyword-only in the optimizer classes' constructors
    in_call: bool  # taken by a call (else only the classes use it)
    fixed: bool  # set by the variant itself (AdamW's decoupled_weight_decay)
    required: bool  # no default
    from_arg: str | None  # not a constructor argument: set to that argument's value (init_lr)


class StepPower:
    """The callable ``n -> n ** power`` of the number of completed steps ``n``: the default of a
    hyper-parameter that is a function of the step (ADOPT's ``clip_lambda``, the reference's
    ``lambda step: step**0.25``), as an object that compares, copies and pickles (a lambda in a
    param group would stop ``pickle`` and ``torch.save`` of the optimizer)."""

    __slots__ = ("power",)

    def __init__(self, power: float) -> None:
        self.power = float(power)

    def __call__(self, step: float) -> float:
        return float(step) ** self.power

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepPower) and other.power == self.power

    def __hash__(self) -> int:
        return hash(("StepPower", self.power))

    def __reduce__(self) -> tuple:
        return (StepPower, (self.power,))

    def __repr__(self) -> str:
        return f"StepPower({self.power!r})"


@dataclass(frozen=True)
class Spec:
    """An algorithm as the compiled module declares it."""

    name: str
    kernel: str  # the spec whose kernel runs (AdamW: "adam")
    buffers: tuple[Buffer, ...]  # the public signature's order
    hypers: tuple[Hyper, ...]  # the public signature's order
    scalars: tuple[tuple[str, float], ...]  # scalar state and its value before the first step
    step: bool
    reduce: int
    passes: int = 1  # Note [Passes] in csrc/spec.h
    run_input: str | None = None  # what a run takes besides grads (LAMB's "grad_norm")

    @property
    def lists(self) -> tuple[str, ...]:
        return tuple(b.list for b in self.buffers)

    @property
    def states(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.role == "state")

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(b.state for b in self.states if b.state)

    @property
    def call_hypers(self) -> tuple[str, ...]:
        """The hyper-parameters a call takes, in order."""
        return tuple(h.name for h in self.hypers if h.in_call)

    @property
    def arguments(self) -> tuple[Hyper, ...]:
        """The hyper-parameters the optimizer classes' constructors take, in order."""
        return tuple(h for h in self.hypers if not h.fixed and h.from_arg is None)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every hyper-parameter but the required ones, with its default (fixed ones included)."""
        return {h.name: h.default for h in self.hypers if not h.required}

    def used_states(self, hyper: dict[str, Any]) -> tuple[Buffer, ...]:
        return tuple(b for b in self.states if b.used(hyper))


def _load() -> dict[str, Spec]:
    out = {}
    for d in _core.specs():
        out[d["name"]] = Spec(
            name=d["name"],
            kernel=d["kernel"],
            buffers=tuple(Buffer(**b) for b in d["buffers"]),
            hypers=tuple(
                Hyper(**{**h, "default": StepPower(h["default"])}) if h["kind"] == "step_fn"
                else Hyper(**h) for h in d["hypers"]),
            scalars=tuple(tuple(s) for s in d["scalars"]),
            step=d["step"],
            reduce=d["reduce"],
            passes=d["passes"],
            run_input=d["run_input"],
        )
    return out


SPECS: dict[str, Spec] = _load()
