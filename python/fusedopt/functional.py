"""Stateless fused update steps: one call updates a whole list of tensors in place.

Every function here takes lists of arrays (a bare array counts as a list of one), keyword-only
hyper-parameters named as in ``torch.optim``, and the 1-based ``step`` shared by every tensor of the
call. One call binds and runs (Note [A bound call] in ``csrc/bindings/bound.h``): the arrays are
checked in C++ (dtype, shape, memory order, writeability, alignment, overlap) before anything is
written, the GIL is released, and one OpenMP parallel region updates every element of every
tensor (on a GPU, one launch per few hundred chunks).

The state buffers are the caller's: allocate them once (zeros, except Adagrad's ``state_sums``, which
start at ``initial_accumulator_value``; :func:`fusedopt.state_like` places them well) and pass the
same arrays at every step. The optimizer classes in :mod:`fusedopt.optim` do this for you.

The functions are made from the algorithms' specs (``csrc/algorithms/<name>.h``), so their
arguments, defaults and checks are those of the optimizer classes. Each update rule is written once,
in the docstring of its class (``fusedopt.Adam`` for :func:`adam`); each function has a twin of the
same signature in :mod:`fusedopt.reference` (plain float64 NumPy), which the tests use as the oracle:
swapping one for the other is a one-name change.
"""

from __future__ import annotations

import keyword
from typing import Any, Callable

from . import _backend
from ._spec import SPECS, Spec, StepPower


def _rules() -> dict[str, str]:
    """The class whose docstring holds each function's rule: the optimizer class declared by the
    function's spec, or the class that names the function among its ``_algorithms``."""
    from . import optim

    out = {}
    for name in optim.__all__:
        cls = getattr(optim, name)
        spec = getattr(cls, "_spec", None)
        if spec is not None and spec.name not in out:
            out[spec.name] = name
        for algo in getattr(cls, "_algorithms", ()):
            out[algo] = name
    return out


_as_list = _backend.as_list
_one_call = _backend.call


def _call(spec: str, lists: tuple, hyper: tuple, step: Any, scalars: Any, **run: Any) -> Any:
    """One call of ``spec``: lists in its signature's order, its in-call hyper-parameters, and
    its run input (LAMB's ``grad_norm``) if it has one, its ``param_copies`` or
    ``kahan_comps``, and its ``sr_seed``."""
    for name in ("param_copies", "kahan_comps"):
        if run.get(name) is not None:
            run[name] = _as_list(run[name])
    return _one_call(spec, tuple(map(_as_list, lists)), hyper, step, scalars, **run)


def _signature(spec: Spec) -> str:
    """The Python parameter list of ``spec``'s function: its lists (the optional ones None by
    default), then keyword-only the step, the scalar state and the hyper-parameters."""
    parts = [b.list + ("=None" if b.optional else "") for b in spec.buffers]
    parts.append("*")
    if spec.step:
        parts.append("step")
    parts += [f"{name}=None" for name, _ in spec.scalars]
    for h in spec.hypers:
        if h.in_call:
            parts.append(h.name if h.required else f"{h.name}={h.default!r}")
    if spec.run_input:
        parts.append(f"{spec.run_input}=None")
    if _takes_copies(spec):
        parts += ["param_copies=None", "sr_seed=None", "kahan_comps=None"]
    return ", ".join(parts)


def _takes_copies(spec: Spec) -> bool:
    """Whether ``spec``'s function takes ``param_copies`` (Note [Param copies]): an update of
    params by grads."""
    return any(b.role == "grad" for b in spec.buffers) and any(
        b.role == "param" for b in spec.buffers)


def _docstring(spec: Spec, rules: dict[str, str]) -> str:
    rule = rules.get(spec.name)
    lists = ", ".join(f"``{b.list}``" for b in spec.buffers)
    states = [b for b in spec.buffers if b.role == "state"]
    lines = [
        f"{spec.name}: one fused update of lists of tensors, in place"
        + (f"; the rule is :class:`fusedopt.{rule}`'s." if rule else "."),
        "",
        f"Lists: {lists} (one array per tensor, or a bare array for one). "
        + ("The state lists start at zero unless the rule says otherwise; "
           "optional ones are needed when their option is on." if states else ""),
    ]
    if spec.step:
        lines.append("``step`` is the 1-based step of this update.")
    if spec.run_input:
        lines.append(f"``{spec.run_input}`` is the norm of every grad of the step when it spans "
                     "several calls (None: computed from this call's grads).")
    if _takes_copies(spec):
        lines.append("``param_copies``: None, or one bfloat16 or float16 array (or None) per "
                     "float32 param, written with the param's new value rounded to nearest, in "
                     "the same pass (mixed-precision training's master weights: float32 params, "
                     "16-bit grads and copies).")
        lines.append("``sr_seed``: None (16-bit stores round to nearest), or an int: every "
                     "16-bit store (params, bfloat16 state, copies) rounds stochastically, from "
                     "random bits keyed by (sr_seed, step, tensor, element): unbiased, the same "
                     "for any thread count and SIMD path.")
        lines.append("``kahan_comps``: None, or one array (or None) per bfloat16 or float16 "
                     "param, of its dtype, zero at the first step: the param's Kahan "
                     "compensation, the part of the updates that rounding the param dropped, "
                     "carried into the next step (read and written in the same pass).")
    for name, _ in spec.scalars:
        lines.append(f"``{name}`` is its value before this step (None: computed from ``step`` "
                     "for a run that started at step 1); the call returns its value after it.")
    lines.append(f"Twin: :func:`fusedopt.reference.{spec.name}`.")
    return "\n".join(lines)


def _make(spec: Spec, rules: dict[str, str]) -> Callable[..., Any]:
    names = [b.list for b in spec.buffers] + [h.name for h in spec.hypers if h.in_call]
    names += [n for n, _ in spec.scalars] + ["step"]
    assert all(n.isidentifier() and not keyword.iskeyword(n) for n in names), names
    lists = ", ".join(b.list for b in spec.buffers) + ","
    hyper = ", ".join(h.name for h in spec.hypers if h.in_call) + ("," if spec.call_hypers else "")
    scalars = spec.scalars[0][0] if len(spec.scalars) == 1 else (
        "(" + ", ".join(n for n, _ in spec.scalars) + ")" if spec.scalars else "None")
    run = f", {spec.run_input}={spec.run_input}" if spec.run_input else ""
    if _takes_copies(spec):
        run += ", param_copies=param_copies, sr_seed=sr_seed, kahan_comps=kahan_comps"
    source = (
        f"def {spec.name}({_signature(spec)}):\n"
        f"    return _call({spec.name!r}, ({lists}), ({hyper}), "
        f"{'step' if spec.step else 'None'}, {scalars}{run})\n"
    )
    scope: dict[str, Any] = {"_call": _call, "StepPower": StepPower}
    exec(compile(source, f"<fusedopt.functional.{spec.name}>", "exec"), scope)  # noqa: S102
    fn = scope[spec.name]
    fn.__module__ = __name__
    fn.__qualname__ = spec.name
    fn.__doc__ = _docstring(spec, rules)
    return fn


# Every update of the registry (a reduction is not an update: it has its own front end).
__all__ = [name for name, spec in SPECS.items() if spec.reduce == 0]
_RULES = _rules()
globals().update({name: _make(SPECS[name], _RULES) for name in __all__})


def adafactor(params: Any, grads: Any, row_vars: Any, col_vars: Any, variances: Any, *,
              steps: Any, lr: float = 1e-2, beta2_decay: float = -0.8,
              eps: tuple = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0,
              maximize: bool = False, sr_seed: int | None = None, param_copies: Any = None,
              kahan_comps: Any = None) -> None:
    """adafactor: one fused update of lists of tensors, in place; the rule is
    :class:`fusedopt.Adafactor`'s.

    Lists: ``params``, ``grads`` (NumPy arrays; a bare array for one), and per param its state:
    for a param of 2 or more dims ``row_vars[i]`` (shape ``[..., R, 1]``) and ``col_vars[i]``
    (``[..., 1, C]``) with ``variances[i]`` None, else ``variances[i]`` (its shape) with the
    factors None; all start at zero. ``steps`` is each param's 1-based step of this update (an
    int for all). 16-bit params (their states float32) are stored rounded to nearest, or with
    stochastic rounding keyed by ``sr_seed`` (an int; None: to nearest), or with their Kahan
    compensations ``kahan_comps[i]`` (of their dtype). A float32 param may take bfloat16 or
    float16 grads and a copy ``param_copies[i]`` of that dtype, written with it (master
    weights: the master is the param). Either list may hold None entries. Adafactor is not made
    from a spec (its state is not of its params' shapes): its hyper-parameters are torch's,
    checked here with torch's messages.
    Twin: :func:`fusedopt.reference.adafactor`."""
    from .optim import adafactor as _adafactor

    if callable(lr):
        raise TypeError("adafactor: lr must be a float (a schedule is for the optimizer classes)")
    params = _as_list(params)
    n = len(params) if isinstance(params, (list, tuple)) else 0  # else refused by the call
    steps = [steps] * n if isinstance(steps, int) and not isinstance(steps, bool) else steps
    _adafactor.check_hyper("adafactor", {"lr": lr, "beta2_decay": beta2_decay, "eps": eps,
                                         "d": d, "weight_decay": weight_decay,
                                         "maximize": maximize})
    one = [None] * n
    _adafactor.call(params, _as_list(grads), one if row_vars is None else _as_list(row_vars),
                    one if col_vars is None else _as_list(col_vars),
                    one if variances is None else _as_list(variances), steps, lr=lr,
                    beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                    maximize=maximize, sr_seed=sr_seed,
                    param_copies=None if param_copies is None else _as_list(param_copies),
                    kahan_comps=None if kahan_comps is None else _as_list(kahan_comps))


__all__ += ["adafactor"]
