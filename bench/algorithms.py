"""The algorithms the benchmark times, and how each implementation takes one step.

One :class:`BenchAlgo` per benchmarked configuration. Every implementation of one algorithm works
on the **same arrays** (fusedopt directly, NumPy in place, torch through ``torch.from_numpy``), so
they all move the same bytes through the same pages; state buffers are named as in ``torch.optim``
(and in fusedopt's functional API), which is what lets torch's optimizer state be pointed at them.

``hp`` uses torch's hyper-parameter names; fusedopt takes the same names. The values are the usual
defaults, chosen so that thousands of steps on the benchmark's positive gradients stay finite.

Bytes: an algorithm with ``K`` buffers (param, grad and ``K - 2`` states) must read all ``K`` and
write ``K - 1`` (the gradient is only read), so it moves at least ``4 * (2K - 1)`` bytes per fp32
element: Adam 28, SGD with momentum 20, plain SGD and EWA 12.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import math
import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fusedopt.functional as F


@dataclass(frozen=True)
class BenchAlgo:
    """One benchmarked configuration.

    ``states``: the state buffers, in the order fusedopt's ceiling helper takes them, named as in
    ``torch.optim``. ``fusedopt`` and ``numpy`` are ``fn(params, grads, states, step, carry) ->
    carry`` (``states`` maps a name to its list of arrays; ``carry`` is NAdam's ``mu_product``).
    ``torch_cls`` is the ``torch.optim`` class name (``None``: no torch optimizer; ``torch_loop``
    and ``torch_foreach`` then give the torch peers, ``fn(params, grads, states)`` over torch
    views of the group's buffers).
    """

    name: str
    hp: dict
    states: tuple
    fusedopt: Callable
    numpy: Callable
    torch_cls: str | None = None
    torch_loop: Callable | None = None
    torch_foreach: Callable | None = None
    note: str = ""
    init: dict = field(default_factory=dict)
    fusedopt_cls: str | None = None  # the fusedopt.optim class, when torch.optim has none
    # The ceiling's passes, each (buffers read, buffers written) (None: one pass reading every
    # buffer and writing all but the grads): an algorithm of several passes (LAMB) moves the
    # bytes of each of its passes, a read-only reduction among them.
    ceiling_passes: tuple | None = None
    other_rule: tuple = ()  # peers that do the same work by another rule: their agreement is
    # recorded, not expected

    @property
    def class_name(self):
        """The fusedopt.optim class that runs this configuration (None: EWA's, EMA)."""
        return self.torch_cls or self.fusedopt_cls

    @property
    def nbuf(self):
        return 2 + len(self.states)

    @property
    def passes(self):
        """The ceiling's passes, as (buffers read, buffers written)."""
        return self.ceiling_passes or ((self.nbuf, self.nbuf - 1),)

    @property
    def bytes_per_elem(self):
        """Minimum fp32 bytes per element: what each pass reads and writes."""
        return sum(4 * (k + w) for k, w in self.passes)


# --------------------------------------------------------------------------------------------
# NumPy peers: the way one writes an in-place update with ufuncs and ``out=``, one tensor at a
# time, with a scratch array where the expression needs one. They follow torch.optim's formulas.


def _np_sgd(hp):
    lr, mu = hp["lr"], hp.get("momentum", 0.0)
    damp, nesterov = hp.get("dampening", 0.0), hp.get("nesterov", False)

    def step_fn(params, grads, states, step, carry):
        bufs = states.get("momentum_buffer")
        for i, (p, g) in enumerate(zip(params, grads)):
            if mu == 0:
                tmp = np.multiply(g, lr)
                np.subtract(p, tmp, out=p)
                continue
            b = bufs[i]
            if step == 1:
                np.copyto(b, g)
            else:
                np.multiply(b, mu, out=b)
                tmp = np.multiply(g, 1.0 - damp)
                np.add(b, tmp, out=b)
            if nesterov:
                d = np.multiply(b, mu)
                np.add(d, g, out=d)
            else:
                d = b
            tmp = np.multiply(d, lr)
            np.subtract(p, tmp, out=p)
        return carry

    return step_fn


def _np_adagrad(hp):
    lr, lr_decay, eps = hp["lr"], hp.get("lr_decay", 0.0), hp["eps"]

    def step_fn(params, grads, states, step, carry):
        clr = lr / (1 + (step - 1) * lr_decay)
        for p, g, s in zip(params, grads, states["sum"]):
            tmp = np.multiply(g, g)
            np.add(s, tmp, out=s)
            np.sqrt(s, out=tmp)
            np.add(tmp, eps, out=tmp)
            np.divide(g, tmp, out=tmp)
            np.multiply(tmp, clr, out=tmp)
            np.subtract(p, tmp, out=p)
        return carry

    return step_fn


def _np_adadelta(hp):
    lr, rho, eps = hp["lr"], hp["rho"], hp["eps"]

    def step_fn(params, grads, states, step, carry):
        for p, g, v, u in zip(params, grads, states["square_avg"], states["acc_delta"]):
            tmp = np.multiply(g, g)
            np.multiply(tmp, 1.0 - rho, out=tmp)
            np.multiply(v, rho, out=v)
            np.add(v, tmp, out=v)
            std = np.add(v, eps)
            np.sqrt(std, out=std)
            delta = np.add(u, eps)
            np.sqrt(delta, out=delta)
            np.divide(delta, std, out=delta)
            np.multiply(delta, g, out=delta)
            np.multiply(delta, delta, out=tmp)
            np.multiply(tmp, 1.0 - rho, out=tmp)
            np.multiply(u, rho, out=u)
            np.add(u, tmp, out=u)
            np.multiply(delta, lr, out=delta)
            np.subtract(p, delta, out=p)
        return carry

    return step_fn


def _np_rmsprop(hp):
    lr, alpha, eps = hp["lr"], hp["alpha"], hp["eps"]
    mu, centered = hp.get("momentum", 0.0), hp.get("centered", False)

    def step_fn(params, grads, states, step, carry):
        for i, (p, g) in enumerate(zip(params, grads)):
            v = states["square_avg"][i]
            tmp = np.multiply(g, g)
            np.multiply(tmp, 1.0 - alpha, out=tmp)
            np.multiply(v, alpha, out=v)
            np.add(v, tmp, out=v)
            if centered:
                ga = states["grad_avg"][i]
                np.multiply(ga, alpha, out=ga)
                np.multiply(g, 1.0 - alpha, out=tmp)
                np.add(ga, tmp, out=ga)
                np.multiply(ga, ga, out=tmp)
                np.subtract(v, tmp, out=tmp)
                np.sqrt(tmp, out=tmp)
            else:
                np.sqrt(v, out=tmp)
            np.add(tmp, eps, out=tmp)
            if mu > 0:
                b = states["momentum_buffer"][i]
                np.divide(g, tmp, out=tmp)
                np.multiply(b, mu, out=b)
                np.add(b, tmp, out=b)
                np.multiply(b, lr, out=tmp)
            else:
                np.divide(g, tmp, out=tmp)
                np.multiply(tmp, lr, out=tmp)
            np.subtract(p, tmp, out=p)
        return carry

    return step_fn


def _np_adam(hp):
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp.get("weight_decay", 0.0)
    amsgrad, decoupled = hp.get("amsgrad", False), hp.get("decoupled", False)

    def step_fn(params, grads, states, step, carry):
        step_size = lr / (1 - b1**step)
        bc2_sqrt = math.sqrt(1 - b2**step)
        for i, (p, g) in enumerate(zip(params, grads)):
            m, v = states["exp_avg"][i], states["exp_avg_sq"][i]
            if wd != 0 and decoupled:
                np.multiply(p, 1 - lr * wd, out=p)
            elif wd != 0:
                g = np.add(g, np.multiply(p, wd))
            tmp = np.multiply(g, 1 - b1)
            np.multiply(m, b1, out=m)
            np.add(m, tmp, out=m)
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, 1 - b2, out=tmp)
            np.multiply(v, b2, out=v)
            np.add(v, tmp, out=v)
            if amsgrad:
                vmax = states["max_exp_avg_sq"][i]
                np.maximum(vmax, v, out=vmax)
                np.sqrt(vmax, out=tmp)
            else:
                np.sqrt(v, out=tmp)
            np.divide(tmp, bc2_sqrt, out=tmp)
            np.add(tmp, eps, out=tmp)
            np.divide(m, tmp, out=tmp)
            np.multiply(tmp, step_size, out=tmp)
            np.subtract(p, tmp, out=p)
        return carry

    return step_fn


def _nadam_mu(b1, psi, t):
    return b1 * (1.0 - 0.5 * 0.96 ** (t * psi))


def _np_nadam(hp):
    lr, (b1, b2), eps, psi = hp["lr"], hp["betas"], hp["eps"], hp["momentum_decay"]

    def step_fn(params, grads, states, step, carry):
        mu_prev = 1.0 if carry is None else carry
        mu, mu_next = _nadam_mu(b1, psi, step), _nadam_mu(b1, psi, step + 1)
        mu_product = mu_prev * mu
        bc2 = 1 - b2**step
        c_grad = lr * (1 - mu) / (1 - mu_product)
        c_avg = lr * mu_next / (1 - mu_product * mu_next)
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            tmp = np.multiply(g, 1 - b1)
            np.multiply(m, b1, out=m)
            np.add(m, tmp, out=m)
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, 1 - b2, out=tmp)
            np.multiply(v, b2, out=v)
            np.add(v, tmp, out=v)
            denom = np.divide(v, bc2)
            np.sqrt(denom, out=denom)
            np.add(denom, eps, out=denom)
            np.divide(g, denom, out=tmp)
            np.multiply(tmp, c_grad, out=tmp)
            np.subtract(p, tmp, out=p)
            np.divide(m, denom, out=tmp)
            np.multiply(tmp, c_avg, out=tmp)
            np.subtract(p, tmp, out=p)
        return mu_product

    return step_fn


def _np_adamax(hp):
    lr, (b1, b2), eps = hp["lr"], hp["betas"], hp["eps"]

    def step_fn(params, grads, states, step, carry):
        clr = lr / (1 - b1**step)
        for p, g, m, u in zip(params, grads, states["exp_avg"], states["exp_inf"]):
            tmp = np.multiply(g, 1 - b1)
            np.multiply(m, b1, out=m)
            np.add(m, tmp, out=m)
            np.abs(g, out=tmp)
            np.add(tmp, eps, out=tmp)
            np.multiply(u, b2, out=u)
            np.maximum(u, tmp, out=u)
            np.divide(m, u, out=tmp)
            np.multiply(tmp, clr, out=tmp)
            np.subtract(p, tmp, out=p)
        return carry

    return step_fn


def _np_radam(hp):
    lr, (b1, b2), eps = hp["lr"], hp["betas"], hp["eps"]
    rho_inf = 2 / (1 - b2) - 1

    def step_fn(params, grads, states, step, carry):
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        rho = rho_inf - 2 * step * b2**step / bc2
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            tmp = np.multiply(g, 1 - b1)
            np.multiply(m, b1, out=m)
            np.add(m, tmp, out=m)
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, 1 - b2, out=tmp)
            np.multiply(v, b2, out=v)
            np.add(v, tmp, out=v)
            if rho > 5:
                r = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
                np.sqrt(v, out=tmp)
                np.add(tmp, eps, out=tmp)
                np.divide(m, tmp, out=tmp)
                np.multiply(tmp, lr * r * bc2**0.5 / bc1, out=tmp)
            else:
                np.multiply(m, lr / bc1, out=tmp)
            np.subtract(p, tmp, out=p)
        return carry

    return step_fn


def _np_ewa(hp):
    beta = hp["beta"]

    def step_fn(avgs, values, states, step, carry):
        for a, x in zip(avgs, values):
            tmp = np.multiply(x, 1 - beta)
            np.multiply(a, beta, out=a)
            np.add(a, tmp, out=a)
        return carry

    return step_fn


# --------------------------------------------------------------------------------------------
# fusedopt: one functional call per step over the whole list.


def _fo(fn, state_order):
    """A step through ``fn(params, grads, *state lists in state_order, step=..., **hp)``."""

    def make(hp):
        kw = dict(hp)

        def step_fn(params, grads, states, step, carry):
            fn(params, grads, *(states[s] for s in state_order), step=step, **kw)
            return carry

        return step_fn

    return make


def _fo_sgd(hp):
    kw = dict(hp)

    def step_fn(params, grads, states, step, carry):
        F.sgd(params, grads, states.get("momentum_buffer"), step=step, **kw)
        return carry

    return step_fn


def _fo_rmsprop(hp):
    kw = dict(hp)

    def step_fn(params, grads, states, step, carry):
        F.rmsprop(
            params, grads, states["square_avg"], states.get("momentum_buffer"),
            states.get("grad_avg"), step=step, **kw,
        )
        return carry

    return step_fn


def _fo_adam(hp):
    kw = {k: v for k, v in hp.items() if k != "decoupled"}
    fn = F.adamw if hp.get("decoupled") else F.adam

    def step_fn(params, grads, states, step, carry):
        fn(
            params, grads, states["exp_avg"], states["exp_avg_sq"], states.get("max_exp_avg_sq"),
            step=step, **kw,
        )
        return carry

    return step_fn


def _fo_nadam(hp):
    kw = dict(hp)

    def step_fn(params, grads, states, step, carry):
        return F.nadam(params, grads, states["exp_avg"], states["exp_avg_sq"], step=step,
                       mu_product=carry, **kw)

    return step_fn


def _fo_ewa(hp):
    beta = hp["beta"]

    def step_fn(avgs, values, states, step, carry):
        F.ewa(avgs, values, beta=beta)
        return carry

    return step_fn


# --------------------------------------------------------------------------------------------
# Hand-written torch peers for EWA (torch.optim has no optimizer for it): the per-tensor
# ``lerp_`` and the ``_foreach_lerp_`` that torch.optim.swa_utils' EMA helpers use.


def _torch_ewa_loop(hp):
    w = 1 - hp["beta"]

    def step_fn(avgs, values, states):
        for a, x in zip(avgs, values):
            a.lerp_(x, w)

    return step_fn


def _torch_ewa_foreach(hp):
    w = 1 - hp["beta"]

    def step_fn(avgs, values, states):
        import torch

        torch._foreach_lerp_(avgs, values, w)

    return step_fn


def _np_lion(hp):
    lr, (b1, b2), wd = hp["lr"], hp["betas"], hp.get("weight_decay", 0.0)

    def step_fn(params, grads, states, step, carry):
        for p, g, m in zip(params, grads, states["exp_avg"]):
            if wd:
                np.multiply(p, 1 - lr * wd, out=p)
            c = np.multiply(m, b1)
            tmp = np.multiply(g, 1 - b1)
            np.add(c, tmp, out=c)
            np.sign(c, out=c)
            np.multiply(c, lr, out=c)
            np.subtract(p, c, out=p)
            np.multiply(m, b2, out=m)
            np.multiply(g, 1 - b2, out=tmp)
            np.add(m, tmp, out=m)
        return carry

    return step_fn


def timm_lamb():
    """timm's ``Lamb`` class (apex FusedLAMB's rule on the CPU), or None without timm. Its
    package imports torchvision, which its ``optim/lamb.py`` (torch only) does not need: that
    file is run from the installed distribution, with its one relative import (a type alias)
    given."""
    try:
        dist = importlib.metadata.distribution("timm")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = dist.locate_file("timm/optim/lamb.py")
    source = path.read_text().replace("from ._types import ParamsT", "ParamsT = object")
    module = types.ModuleType("timm_optim_lamb")
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102
    return module.Lamb


def _torch_peer(module, cls_name, hp, foreach=None, writes_grads=False, step_state=False):
    """A peer's torch optimizer class (``module.cls_name``, when that package is installed;
    ``cls_name`` may be a function that returns the class) as a
    torch_loop / torch_foreach step (``foreach`` passed unless None: lion-pytorch takes none),
    made at the first call with the group's buffers as its state (so every implementation works
    on the same memory). ``writes_grads``: the peer overwrites
    ``p.grad`` (schedulefree writes its normalized grad there); the harness then hands it a private
    copy, refreshed outside the timing. ``step_state``: its state has a ``step`` tensor too
    (torch-adopt's, counting from 0)."""
    if importlib.util.find_spec(module) is None or importlib.util.find_spec("torch") is None:
        return None
    made = {}

    def step_fn(params, grads, states):
        if id(params) not in made:
            cls = cls_name() if callable(cls_name) else getattr(importlib.import_module(module),
                                                                cls_name)
            import torch

            opt = cls(params, **hp, **({} if foreach is None else {"foreach": foreach}))
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = g
                if step_state:
                    opt.state[p]["step"] = torch.tensor(0.0)
                for name, bufs in states.items():
                    opt.state[p][name] = bufs[i]
            if "train_mode" in opt.param_groups[0]:  # schedulefree: y = x = z at the start
                for group in opt.param_groups:
                    group["train_mode"] = True
            made[id(params)] = opt
        made[id(params)].step()

    step_fn.writes_grads = writes_grads
    return step_fn


def _np_adopt(hp):
    lr, (b1, b2), eps = hp["lr"], hp["betas"], hp["eps"]

    def step_fn(params, grads, states, step, carry):
        clip = (step - 1) ** 0.25
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            tmp = np.multiply(g, g)
            if step == 1:
                np.add(v, tmp, out=v)
                continue
            u = np.sqrt(v)
            np.maximum(u, eps, out=u)
            np.divide(g, u, out=u)
            np.clip(u, -clip, clip, out=u)
            np.subtract(u, m, out=u)
            np.multiply(u, 1 - b1, out=u)
            np.add(m, u, out=m)
            np.multiply(m, lr, out=u)
            np.subtract(p, u, out=p)
            np.multiply(tmp, 1 - b2, out=tmp)
            np.multiply(v, b2, out=v)
            np.add(v, tmp, out=v)
        return carry

    return step_fn


def _np_schedulefree(hp):
    lr, (b1, b2), eps = hp["lr"], hp["betas"], hp["eps"]

    def step_fn(params, grads, states, step, carry):
        weight_sum, lr_max = carry or (0.0, -1.0)
        lr_max = max(lr, lr_max)
        weight = lr_max**2.0
        weight_sum += weight
        c = weight / weight_sum
        bc2 = 1 - b2**step
        for y, g, z, v in zip(params, grads, states["z"], states["exp_avg_sq"]):
            u = np.multiply(g, g)
            np.multiply(u, 1 - b2, out=u)
            np.multiply(v, b2, out=v)
            np.add(v, u, out=v)
            np.divide(v, bc2, out=u)
            np.sqrt(u, out=u)
            np.add(u, eps, out=u)
            np.divide(g, u, out=u)
            tmp = np.subtract(z, y)
            np.multiply(tmp, c, out=tmp)
            np.add(y, tmp, out=y)
            np.multiply(u, lr * (b1 * (1 - c) - 1), out=tmp)
            np.add(y, tmp, out=y)
            np.multiply(u, lr, out=u)
            np.subtract(z, u, out=z)
        return weight_sum, lr_max

    return step_fn


def _fo_schedulefree(hp):
    kw = dict(hp)

    def step_fn(params, grads, states, step, carry):
        weight_sum, lr_max = carry or (None, None)
        return F.adamw_schedulefree(params, grads, states["z"], states["exp_avg_sq"], step=step,
                                    weight_sum=weight_sum, lr_max=lr_max, **kw)

    return step_fn


def _np_lamb(hp):
    lr, (b1, b2), eps = hp["lr"], hp["betas"], hp["eps"]
    wd, max_norm = hp["weight_decay"], hp["max_grad_norm"]

    def step_fn(params, grads, states, step, carry):
        norm = float(np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads)))
        clip = norm / max_norm if norm > max_norm else 1.0
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        for p, g, m, v in zip(params, grads, states["exp_avg"], states["exp_avg_sq"]):
            gc = np.divide(g, clip)
            np.multiply(m, b1, out=m)
            np.multiply(gc, 1 - b1, out=gc)
            np.add(m, gc, out=m)
            np.divide(g, clip, out=gc)
            np.multiply(gc, gc, out=gc)
            np.multiply(gc, 1 - b2, out=gc)
            np.multiply(v, b2, out=v)
            np.add(v, gc, out=v)
            u = np.divide(v, bc2)
            np.sqrt(u, out=u)
            np.add(u, eps, out=u)
            np.divide(m, u, out=u)
            np.divide(u, bc1, out=u)
            np.multiply(p, wd, out=gc)
            np.add(u, gc, out=u)
            p_norm, u_norm = np.linalg.norm(p), np.linalg.norm(u)
            ratio = lr * p_norm / u_norm if p_norm and u_norm else lr
            np.multiply(u, ratio, out=u)
            np.subtract(p, u, out=p)
        return carry

    return step_fn


def _algo(name, hp, states, fo, npy, torch_cls=None, **kw):
    return BenchAlgo(
        name=name, hp=hp, states=tuple(states), fusedopt=fo(hp), numpy=npy(hp),
        torch_cls=torch_cls, **kw,
    )


_ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
_ADOPT = {"lr": 1e-3, "betas": (0.9, 0.9999), "eps": 1e-6}
_SF = {"lr": 0.0025, "betas": (0.9, 0.999), "eps": 1e-8}
_LAMB = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01,
         "max_grad_norm": 1.0}
# pytorch_optimizer's Lamb doing the same work: the decay, clipping by the global norm (pre_norm),
# a trust ratio per tensor (it clamps ||p|| at 10 and has no bias correction)
_PO_LAMB = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01,
            "pre_norm": True}


ALGOS = {
    a.name: a
    for a in [
        _algo("sgd", {"lr": 1e-3}, [], _fo_sgd, _np_sgd, "SGD"),
        _algo("sgd-momentum", {"lr": 1e-3, "momentum": 0.9}, ["momentum_buffer"], _fo_sgd,
              _np_sgd, "SGD"),
        _algo("sgd-nesterov", {"lr": 1e-3, "momentum": 0.9, "nesterov": True},
              ["momentum_buffer"], _fo_sgd, _np_sgd, "SGD"),
        _algo("adagrad", {"lr": 1e-2, "lr_decay": 0.0, "eps": 1e-10}, ["sum"],
              _fo(F.adagrad, ["sum"]), _np_adagrad, "Adagrad"),
        _algo("adadelta", {"lr": 1.0, "rho": 0.9, "eps": 1e-6}, ["square_avg", "acc_delta"],
              _fo(F.adadelta, ["square_avg", "acc_delta"]), _np_adadelta, "Adadelta"),
        _algo("rmsprop", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}, ["square_avg"],
              _fo_rmsprop, _np_rmsprop, "RMSprop"),
        _algo("rmsprop-centered", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "centered": True},
              ["square_avg", "grad_avg"], _fo_rmsprop, _np_rmsprop, "RMSprop"),
        _algo("rmsprop-momentum", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "momentum": 0.9},
              ["square_avg", "momentum_buffer"], _fo_rmsprop, _np_rmsprop, "RMSprop"),
        _algo("adam", dict(_ADAM), ["exp_avg", "exp_avg_sq"], _fo_adam, _np_adam, "Adam"),
        _algo("adam-amsgrad", {**_ADAM, "amsgrad": True},
              ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], _fo_adam, _np_adam, "Adam"),
        _algo("adamw", {**_ADAM, "weight_decay": 1e-2, "decoupled": True},
              ["exp_avg", "exp_avg_sq"], _fo_adam, _np_adam, "AdamW"),
        _algo("nadam", {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                        "momentum_decay": 4e-3}, ["exp_avg", "exp_avg_sq"], _fo_nadam,
              _np_nadam, "NAdam"),
        _algo("adamax", {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8},
              ["exp_avg", "exp_inf"], _fo(F.adamax, ["exp_avg", "exp_inf"]), _np_adamax,
              "Adamax"),
        _algo("radam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
              ["exp_avg", "exp_avg_sq"], _fo(F.radam, ["exp_avg", "exp_avg_sq"]), _np_radam,
              "RAdam"),
        _algo("lion", {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}, ["exp_avg"],
              _fo(F.lion, ["exp_avg"]), _np_lion, None, fusedopt_cls="Lion",
              torch_loop=_torch_peer("lion_pytorch", "Lion",
                                     {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}),
              note="torch peer: lion-pytorch's Lion (a for-loop); torch.optim has no Lion"),
        _algo("adopt", _ADOPT, ["exp_avg", "exp_avg_sq"],
              _fo(F.adopt, ["exp_avg", "exp_avg_sq"]), _np_adopt, None, fusedopt_cls="ADOPT",
              torch_loop=_torch_peer("adopt", "ADOPT", _ADOPT, False, step_state=True),
              torch_foreach=_torch_peer("adopt", "ADOPT", _ADOPT, True, step_state=True),
              note="torch peers: the authors' torch-adopt ADOPT, foreach=False and True"),
        _algo("adamw_schedulefree", _SF, ["z", "exp_avg_sq"], _fo_schedulefree,
              _np_schedulefree, None, fusedopt_cls="AdamWScheduleFree", init={"z": "params"},
              torch_loop=_torch_peer("schedulefree", "AdamWScheduleFree", _SF, False, True),
              torch_foreach=_torch_peer("schedulefree", "AdamWScheduleFree", _SF, True, True),
              note="torch peers: the schedulefree package's AdamWScheduleFree, foreach=False "
                   "and True (it writes its normalized grad into p.grad: it gets a private copy "
                   "of the grads, refreshed outside the timing)"),
        _algo("lamb", _LAMB, ["exp_avg", "exp_avg_sq"],
              _fo(F.lamb, ["exp_avg", "exp_avg_sq"]), _np_lamb, None, fusedopt_cls="LAMB",
              ceiling_passes=((2, 0), (4, 2), (3, 1)),
              torch_loop=_torch_peer("timm", timm_lamb, _LAMB, writes_grads=True),
              torch_foreach=_torch_peer("pytorch_optimizer", "Lamb", _PO_LAMB, True),
              other_rule=("torch-foreach",),
              note="3 passes, 48 B per fp32 element (Note [LAMB's passes]); ceiling: three "
                   "passes of the same reads and writes (read p, g; read 4 buffers writing 2; "
                   "read 3 writing 1). torch peers: "
                   "timm's Lamb (apex FusedLAMB's rule, a for-loop; it divides p.grad in place: "
                   "it gets a private copy of the grads, refreshed outside the timing) and "
                   "pytorch_optimizer's Lamb, foreach=True, the same work by another rule (no "
                   "bias correction, ||p|| clamped at 10: its agreement is not a check); apex's "
                   "FusedLAMB needs CUDA"),
        _algo("ewa", {"beta": 0.999}, [], _fo_ewa, _np_ewa, None,
              torch_loop=_torch_ewa_loop({"beta": 0.999}),
              torch_foreach=_torch_ewa_foreach({"beta": 0.999}),
              note="params are the averages, grads the values averaged; torch peers are "
                   "Tensor.lerp_ and torch._foreach_lerp_ (as torch.optim.swa_utils' EMA)"),
    ]
}


def torch_kwargs(algo):
    """Keyword arguments of ``torch.optim.<algo.torch_cls>`` for ``algo.hp`` (AdamW is its own
    class there, so it takes no ``decoupled`` flag)."""
    return {k: v for k, v in algo.hp.items() if k != "decoupled"}
