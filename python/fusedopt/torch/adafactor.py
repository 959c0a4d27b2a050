"""``fusedopt.torch.Adafactor``: ``torch.optim.Adafactor`` run by fusedopt's fused CPU kernel.

Adafactor is not made from a spec (:mod:`fusedopt.optim.adafactor` says why), so its torch class is
this one: torch's base class keeps the param groups, hooks and state dicts; the step hands the
params, grads and states, as NumPy views of the same memory, to the call the NumPy class makes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..optim import adafactor as _adafactor

__all__ = ["Adafactor"]

_DTYPES = (torch.float32, torch.float64)


def _view(t: torch.Tensor) -> Any:
    return t.detach().numpy()


def _number(lr: Any) -> Any:
    """A 1-element tensor lr as its float (torch takes one); anything else as it is."""
    return float(lr.item()) if isinstance(lr, torch.Tensor) else lr


class Adafactor(torch.optim.Optimizer):
    __doc__ = (
        "``torch.optim.Adafactor`` (the same arguments, defaults, state names and state dicts),\n"
        "each group's step one fused call over its CPU tensors (float32 or float64, contiguous).\n"
        "``step`` keeps torch's float32 step tensor per param. There is no CUDA kernel yet: a\n"
        "CUDA param is refused.\n\nThe rule, from :class:`fusedopt.Adafactor`:\n\n"
        + (_adafactor.Adafactor.__doc__ or "")
    )

    def __init__(self, params: Any, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d,
                    "weight_decay": weight_decay, "foreach": foreach, "maximize": maximize}
        _adafactor.check_hyper("Adafactor", {**defaults, "lr": _number(lr)})
        # id(param) -> its tensors and their NumPy views, for the params of the last step, kept
        # while its state holds the same tensors (_arrays)
        self._views: dict[int, tuple] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then refused if the group holds a param twice (torch only warns: the fused
        call would update it twice) or its hyper-parameters are out of range."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            if len(set(map(id, group["params"]))) != len(group["params"]):
                raise ValueError("optimizer contains a parameter group with duplicate parameters")
            _adafactor.check_hyper("Adafactor", {**group, "lr": _number(group["lr"])})
        except BaseException:
            self.param_groups.pop()
            raise

    def _gather(self, gi: int, group: dict) -> tuple:
        params, grads, states = [], [], []
        for k, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            where = f"Adafactor.step: param_groups[{gi}]['params'][{k}]"
            if p.device.type != "cpu":
                raise TypeError(f"{where} is on {p.device}; Adafactor has no CUDA kernel yet "
                                "(CPU tensors only)")
            if p.dtype not in _DTYPES:
                raise TypeError(f"{where} has dtype {p.dtype}, expected float32 or float64")
            if torch.is_complex(p):
                raise RuntimeError("Adafactor does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients")
            for what, t in (("", p), (".grad", p.grad)):
                if not t.is_contiguous():
                    raise ValueError(f"{where}{what} is not contiguous (fusedopt updates in "
                                     "place and never copies)")
            state = self.state[p]
            if len(state) == 0:  # torch's _init_group, kept apart until the step is made
                fresh = {"step": torch.tensor(0.0, dtype=torch.float32)}
                if p.grad.dim() > 1:
                    fresh["row_var"] = p.grad.new_zeros((*p.grad.shape[:-1], 1))
                    fresh["col_var"] = p.grad.new_zeros(
                        (*p.grad.shape[:-2], 1, p.grad.shape[-1]))
                else:
                    fresh["variance"] = torch.zeros_like(p.grad,
                                                         memory_format=torch.preserve_format)
                state = fresh
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return params, grads, states

    def _arrays(self, params: list, states: list, old: dict) -> tuple:
        """NumPy views of the params and of their states' row_var, col_var and variance (None
        where a param has not that state), and the 1-based steps of this update. A param's views
        are taken from the last step's (``old``) while its state holds the same tensors."""
        out: tuple = ([], [], [], [])
        for p, s in zip(params, states):
            tensors = (p, s.get("row_var"), s.get("col_var"), s.get("variance"))
            hit = old.get(id(p))
            if hit is None or any(a is not b for a, b in zip(hit[0], tensors)):
                hit = (tensors, tuple(None if t is None else _view(t) for t in tensors))
            self._views[id(p)] = hit
            for k in range(4):
                out[k].append(hit[1][k])
        steps = [int(x) + 1 for x in torch.stack([s["step"] for s in states]).tolist()]
        return (*out, steps)

    def _call(self, group: dict, views: Any, grads: list, steps: list, check_only: bool) -> None:
        _adafactor.call(views[0], grads, views[1], views[2], views[3], steps,
                        lr=float(_number(group["lr"])), beta2_decay=group["beta2_decay"],
                        eps=group["eps"], d=group["d"], weight_decay=group["weight_decay"],
                        maximize=group["maximize"], name="Adafactor.step", check_only=check_only)

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
        old, self._views = self._views, {}
        for gi, group in enumerate(self.param_groups):
            params, grads, states = self._gather(gi, group)
            if params:
                _adafactor.check_hyper("Adafactor.step", {**group, "lr": _number(group["lr"])})
                calls.append((group, params, [g.numpy() for g in grads], states,
                              self._arrays(params, states, old)))
        if len(calls) > 1:  # all of them checked together (overlap across groups) first
            views: list = [sum((c[4][k] for c in calls), []) for k in range(4)]
            self._call(calls[0][0], views, sum((c[2] for c in calls), []),
                       sum((c[4][4] for c in calls), []), check_only=True)
        for group, params, grads, states, arrays in calls:
            self._call(group, arrays[:4], grads, arrays[4], check_only=False)
            torch._foreach_add_([s["step"] for s in states], 1.0)
            for p, s in zip(params, states):
                self.state[p] = s
        return loss
