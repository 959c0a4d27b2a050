"""The one table of algorithms the tests parametrize over.

Each :class:`Algo` says how to call one update rule of :mod:`fusedopt.functional` (and its twin in
:mod:`fusedopt.reference`, which has the same signature): its list arguments in the order the
function takes them, which of them are written, which state lists a configuration needs and what
they start at, and a set of configurations that turns every option on and off. ``ewa`` is one
"algorithm" made of two calls, :func:`~fusedopt.functional.ewa` then
:func:`~fusedopt.functional.ewa_readout`, whose ``outs`` are kept as its state.

The same table drives the parity, determinism, convergence and error tests, so an algorithm or an
option added here is tested everywhere at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fusedopt._spec import SPECS, StepPower

DTYPES = (np.float32, np.float64)
DTYPE_IDS = {np.float32: "fp32", np.float64: "fp64"}
SIZES = (1, 7, 33, 4097, 65539)  # 65539 = one 65536-element kernel chunk plus a 3-element tail
STEPS = 8


@dataclass(frozen=True)
class Config:
    """One set of hyper-parameters. ``start`` is the first step (later than 1 to exercise bias
    corrections and decayed rates far from t=1); ``init`` overrides the initial value of states."""

    id: str
    hp: dict
    start: int = 1
    init: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Algo:
    """How to drive one update rule.

    ``args``: the list arguments in the function's positional order, as ``(name, role)`` with role
    ``"param"`` (written; the one whose dtype and shape the others must match), ``"grad"`` (only
    read) or ``"state"`` (written). ``needs`` maps an optional state list to the predicate on the
    hyper-parameters that says whether the call uses it (``None`` is passed otherwise).
    """

    name: str
    args: tuple
    configs: tuple
    needs: dict = field(default_factory=dict)
    call: Callable | None = None  # custom driver; default: one call of ``getattr(module, name)``
    full: str = "plain"  # the config that uses every state list (for error and determinism tests)

    @property
    def states(self):
        return tuple(n for n, role in self.args if role == "state")

    def config(self, cid):
        return next(c for c in self.configs if c.id == cid)

    def uses(self, state, hp):
        pred = self.needs.get(state)
        return pred is None or pred(hp)

    def new_states(self, params, cfg):
        """Fresh state lists for ``params`` (``cfg.init``, else where the classes start them:
        zeros, or a copy of the param), one per state name used."""
        copied = {b.list for b in SPECS[self.name].states if b.init == "params"} \
            if self.name in SPECS else set()
        return {
            s: [np.array(p, copy=True) if s in copied and s not in cfg.init
                else np.full_like(p, cfg.init.get(s, 0.0)) for p in params]
            for s in self.states
            if self.uses(s, cfg.hp)
        }

    def step(self, module, params, grads, states, step, hp, carry=None, **extra):
        """One update through ``module`` (functional or reference); returns the new carry
        (NAdam's ``mu_product``; ``None`` for the rest). ``extra``: keywords of the functional
        call (``kahan_comps``, ``param_copies``, ``sr_seed``), for the algorithms of one call."""
        if self.call is not None:
            assert not extra, f"{self.name}: its step is two calls"
            return self.call(module, params, grads, states, step, hp, carry)
        fn = getattr(module, self.name)
        pos = []
        for name, role in self.args:
            if role == "param":
                pos.append(params)
            elif role == "grad":
                pos.append(grads)
            else:
                pos.append(states.get(name))
        kwargs = dict(hp)
        names = [n for n, _ in SPECS[self.name].scalars]
        if len(names) == 1:  # NAdam's mu_product
            kwargs[names[0]] = carry
        elif names and carry is not None:  # Schedule-Free's weight_sum and lr_max
            kwargs.update(zip(names, carry))
        return fn(*pos, step=step, **kwargs, **extra)


def _ewa_call(module, params, grads, states, step, hp, carry):
    module.ewa(params, grads, beta=hp["beta"])
    module.ewa_readout(params, states["outs"], beta=hp["beta"], step=step)
    return None


def _cfgs(*items):
    return tuple(c if isinstance(c, Config) else Config(*c) for c in items)


# Learning rates are larger than the defaults so that, over 8 steps, the update is a visible
# fraction of the parameter in fp64 and fp32 comparisons alike; several configs move eps, betas,
# rho or alpha away from the defaults so that a misplaced eps or a swapped constant shows.
#
# Note [eps with coupled weight decay]: configs with L2 decay (g + wd*p) use eps >= 1e-3. With
# the default eps (1e-8, 1e-10) the first step is lr * g / (|g| + eps)-like, a near-step function
# of g at the scale eps; where g + wd*p cancels to ~1e-9 the fp32 kernel knows it only to ~4e-9
# (the rounding of its operands), so any correct fp32 implementation moves that element by a
# different ~lr than the float64 reference does (seen: adagrad-wd, 7.8e-4 on a parameter of 0.9).
# That is the conditioning of the input, not an error of the kernel; the default eps is still
# tested in every config without coupled decay, where g is exact and nothing cancels.
ALGOS = (
    Algo(
        "sgd",
        (("params", "param"), ("grads", "grad"), ("momentum_buffers", "state")),
        _cfgs(
            ("plain", dict(lr=0.1)),
            ("momentum", dict(lr=0.1, momentum=0.9)),
            ("dampening", dict(lr=0.1, momentum=0.9, dampening=0.3)),
            ("nesterov", dict(lr=0.1, momentum=0.9, nesterov=True)),
            ("wd", dict(lr=0.1, weight_decay=0.05)),
            ("momentum-wd", dict(lr=0.1, momentum=0.8, weight_decay=0.05)),
            ("nesterov-wd-maximize", dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True,
                                          maximize=True)),
            ("maximize", dict(lr=0.1, maximize=True)),
            Config("dampening-t1000", dict(lr=0.1, momentum=0.9, dampening=0.5), start=1000),
        ),
        needs={"momentum_buffers": lambda hp: hp.get("momentum", 0.0) != 0},
        full="momentum",
    ),
    Algo(
        "adagrad",
        (("params", "param"), ("grads", "grad"), ("state_sums", "state")),
        _cfgs(
            ("plain", dict(lr=0.1)),
            ("lr_decay", dict(lr=0.1, lr_decay=0.05)),
            Config("lr_decay-t1000", dict(lr=0.5, lr_decay=0.01), start=1000),
            ("wd", dict(lr=0.1, weight_decay=0.05, eps=1e-3)),
            Config("initacc", dict(lr=0.1), init={"state_sums": 0.1}),
            ("eps", dict(lr=0.1, eps=0.1)),
            Config("wd-maximize-initacc", dict(lr=0.1, weight_decay=0.1, maximize=True),
                   init={"state_sums": 0.5}),
            ("maximize", dict(lr=0.1, maximize=True)),
        ),
    ),
    Algo(
        "adadelta",
        (("params", "param"), ("grads", "grad"), ("square_avgs", "state"), ("acc_deltas", "state")),
        _cfgs(
            ("plain", dict()),
            ("lr-rho", dict(lr=0.5, rho=0.8)),
            ("eps", dict(lr=1.0, eps=1e-2)),
            ("wd", dict(lr=1.0, weight_decay=0.1, eps=1e-3)),
            ("maximize", dict(lr=1.0, maximize=True, eps=1e-3)),
        ),
    ),
    Algo(
        "rmsprop",
        (("params", "param"), ("grads", "grad"), ("square_avgs", "state"),
         ("momentum_buffers", "state"), ("grad_avgs", "state")),
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("centered", dict(lr=0.01, centered=True)),
            ("momentum", dict(lr=0.01, momentum=0.9)),
            ("centered-momentum", dict(lr=0.01, momentum=0.9, centered=True)),
            ("wd", dict(lr=0.01, weight_decay=0.1, eps=1e-3)),
            ("alpha-eps", dict(lr=0.01, alpha=0.9, eps=0.1)),
            ("centered-momentum-wd-maximize", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True,
                                                   weight_decay=0.1, eps=1e-3, maximize=True)),
            ("maximize", dict(lr=0.01, maximize=True)),
        ),
        needs={
            "momentum_buffers": lambda hp: hp.get("momentum", 0.0) > 0,
            "grad_avgs": lambda hp: hp.get("centered", False),
        },
        full="centered-momentum",
    ),
    Algo(
        "adam",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_avg_sqs", "state"),
         ("max_exp_avg_sqs", "state")),
        _cfgs(
            ("plain", dict(lr=0.01)),
            # beta2 = 0.6 makes v fall often, so the AMSGrad max is really taken
            ("amsgrad", dict(lr=0.01, betas=(0.9, 0.6), amsgrad=True)),
            ("amsgrad-default-betas", dict(lr=0.01, amsgrad=True)),
            ("wd", dict(lr=0.01, weight_decay=0.1, eps=1e-3)),
            ("decoupled", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
            ("betas-eps", dict(lr=0.01, betas=(0.8, 0.99), eps=0.1)),
            ("maximize", dict(lr=0.01, maximize=True)),
            ("amsgrad-decoupled-maximize", dict(lr=0.01, betas=(0.9, 0.6), weight_decay=0.1,
                                                amsgrad=True, decoupled_weight_decay=True,
                                                maximize=True)),
            Config("t1000", dict(lr=0.01, weight_decay=0.1, eps=1e-3), start=1000),
        ),
        needs={"max_exp_avg_sqs": lambda hp: hp.get("amsgrad", False)},
        full="amsgrad",
    ),
    Algo(
        "adamw",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_avg_sqs", "state"),
         ("max_exp_avg_sqs", "state")),
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("wd", dict(lr=0.01, weight_decay=0.5)),
            ("wd0", dict(lr=0.01, weight_decay=0.0)),
            ("amsgrad", dict(lr=0.01, betas=(0.9, 0.6), weight_decay=0.1, amsgrad=True)),
            ("maximize", dict(lr=0.01, weight_decay=0.1, maximize=True)),
        ),
        needs={"max_exp_avg_sqs": lambda hp: hp.get("amsgrad", False)},
        full="amsgrad",
    ),
    Algo(
        "nadam",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_avg_sqs", "state")),
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("wd", dict(lr=0.01, weight_decay=0.1, eps=1e-3)),
            ("decoupled", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
            ("maximize", dict(lr=0.01, maximize=True)),
            ("momentum_decay-betas-eps", dict(lr=0.01, momentum_decay=0.05, betas=(0.8, 0.99),
                                              eps=0.1)),
            ("decoupled-maximize", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                                        maximize=True)),
            Config("t1000", dict(lr=0.01, weight_decay=0.1, eps=1e-3), start=1000),
        ),
    ),
    Algo(
        "adamax",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_infs", "state")),
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("wd", dict(lr=0.01, weight_decay=0.1, eps=1e-3)),
            ("betas-eps", dict(lr=0.01, betas=(0.8, 0.9), eps=0.5)),
            ("maximize", dict(lr=0.01, maximize=True)),
            Config("t1000", dict(lr=0.01), start=1000),
        ),
    ),
    Algo(
        "radam",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_avg_sqs", "state")),
        # STEPS = 8 from t=1: steps 1-5 are momentum steps, 6-8 rectified (rho_t > 5)
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("wd", dict(lr=0.01, weight_decay=0.1, eps=1e-3)),
            ("decoupled", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
            ("maximize", dict(lr=0.01, maximize=True)),
            ("betas-eps", dict(lr=0.01, betas=(0.8, 0.99), eps=0.1)),
            # beta2 <= 2/3: rho_inf <= 5, no step is rectified
            ("never-rectified", dict(lr=0.01, betas=(0.9, 0.6))),
            ("decoupled-maximize", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                                        maximize=True)),
            Config("t1000", dict(lr=0.01, weight_decay=0.1, eps=1e-3), start=1000),
        ),
    ),
    Algo(
        "lion",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state")),
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("betas", dict(lr=0.01, betas=(0.5, 0.9))),
            ("betas-closed", dict(lr=0.01, betas=(1.0, 0.0))),  # [0, 1]: both ends allowed
            ("wd", dict(lr=0.01, weight_decay=0.5)),
            ("decoupled", dict(lr=0.01, weight_decay=0.5, decoupled_weight_decay=True,
                               init_lr=0.02)),
            ("decoupled-own-lr", dict(lr=0.01, weight_decay=0.5, decoupled_weight_decay=True)),
            Config("momentum", dict(lr=0.01, betas=(0.95, 0.98)), init={"exp_avgs": 0.3}),
        ),
    ),
    Algo(
        "adopt",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_avg_sqs", "state")),
        # from t=1: step 1 only sets v, steps 2-8 update with clip (t-1)**0.25
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("no-clip", dict(lr=0.01, clip_lambda=None)),
            ("clip-number", dict(lr=0.01, clip_lambda=0.5)),
            ("clip-callable", dict(lr=0.01, clip_lambda=StepPower(1.0))),
            ("wd", dict(lr=0.01, weight_decay=0.1)),
            ("decouple", dict(lr=0.01, weight_decay=0.1, decouple=True)),
            ("maximize", dict(lr=0.01, maximize=True, weight_decay=0.1)),
            ("betas-eps", dict(lr=0.01, betas=(0.8, 0.99), eps=0.1)),
            # 1 - beta1 >= 0.5: torch.lerp's other form, which gives m = u exactly at beta1 = 0
            ("beta1-0", dict(lr=0.01, betas=(0.0, 0.99))),
            ("beta1-0.3", dict(lr=0.01, betas=(0.3, 0.99))),
            Config("t1000", dict(lr=0.01, weight_decay=0.1, eps=1e-3), start=1000,
                   init={"exp_avg_sqs": 0.25}),
        ),
    ),
    Algo(
        "adamw_schedulefree",
        (("params", "param"), ("grads", "grad"), ("zs", "state"), ("exp_avg_sqs", "state")),
        # z starts anywhere here (the classes start it at the params); from t=1 the first step
        # has c = 1 (torch.lerp's second form), later ones c = 1/t < 0.5
        _cfgs(
            Config("plain", dict(lr=0.01), init={"zs": 0.5}),
            Config("wd", dict(lr=0.01, weight_decay=0.1), init={"zs": -0.25}),
            Config("warmup", dict(lr=0.01, warmup_steps=5, betas=(0.8, 0.99), eps=1e-3),
                   init={"zs": 0.5}),
            Config("r-power", dict(lr=0.01, r=1.0, weight_lr_power=1.0), init={"zs": 0.5}),
            Config("beta1-0", dict(lr=0.01, betas=(0.0, 0.999)), init={"zs": 0.5}),
            Config("t1000", dict(lr=0.01, warmup_steps=3, weight_decay=0.1), start=1000,
                   init={"zs": 0.5, "exp_avg_sqs": 0.25}),
        ),
    ),
    Algo(
        "lamb",
        (("params", "param"), ("grads", "grad"), ("exp_avgs", "state"), ("exp_avg_sqs", "state")),
        # Note [LAMB's passes]: with wd = 0 and not use_nvlamb there is no trust ratio (two
        # passes); the grads' norm is far above max_grad_norm = 1 here, so "plain" clips
        _cfgs(
            ("plain", dict(lr=0.01)),
            ("wd0", dict(lr=0.01, weight_decay=0.0)),
            ("nvlamb", dict(lr=0.01, weight_decay=0.0, use_nvlamb=True)),
            ("l2", dict(lr=0.01, weight_decay=0.1, adam_w_mode=False, eps=1e-3)),
            ("no-clip", dict(lr=0.01, max_grad_norm=float("inf"))),
            ("wd0-no-clip", dict(lr=0.01, weight_decay=0.0, max_grad_norm=float("inf"))),
            ("max_grad_norm-0", dict(lr=0.01, max_grad_norm=0.0)),  # zeroes every grad
            ("no-averaging-no-bc", dict(lr=0.01, grad_averaging=False, bias_correction=False)),
            ("betas-eps", dict(lr=0.01, betas=(0.8, 0.99), eps=0.1, weight_decay=0.5)),
            Config("t1000", dict(lr=0.01, weight_decay=0.1, max_grad_norm=5.0), start=1000,
                   init={"exp_avg_sqs": 0.25}),
        ),
    ),
    Algo(
        "ewa",
        (("averages", "param"), ("values", "grad"), ("outs", "state")),
        _cfgs(
            ("beta0.9", dict(beta=0.9)),
            ("beta0.999", dict(beta=0.999)),
            Config("beta0.99-t1000", dict(beta=0.99), start=1000),
        ),
        call=_ewa_call,
        full="beta0.9",
    ),
)

ALGO_BY_NAME = {a.name: a for a in ALGOS}

# (algo, config) for every configuration, with readable ids: "adam-amsgrad".
ALGO_CONFIGS = [(a, c) for a in ALGOS for c in a.configs]
ALGO_CONFIG_IDS = [f"{a.name}-{c.id}" for a, c in ALGO_CONFIGS]


@dataclass(frozen=True)
class Signature:
    """One public function as the error tests see it.

    ``lists``: the list arguments in the Python positional order, as ``(name, role)``.
    ``kernel_order``: the same names in the order the C++ checks them; the first is the one every
    other list is compared against (length, dtype, shape, memory order) and is written, the second
    is only read, the rest are written.
    """

    fn: str  # the name in fusedopt.functional
    err: str  # regex for the function name that starts every message
    lists: tuple
    kernel_order: tuple
    hp: dict  # keyword arguments of a valid call (without step)
    has_step: bool = True
    optional: tuple = ()  # lists that may be None when the hyper-parameters do not use them

    def call(self, module, bufs, step=1, **override):
        fn = getattr(module, self.fn)
        kwargs = dict(self.hp, **override)
        if self.has_step:
            kwargs.setdefault("step", step)
        return fn(*[bufs[n] for n, _ in self.lists], **kwargs)


def _signature(algo):
    cfg = algo.config(algo.full)
    lists = tuple((n, r) for n, r in algo.args if r != "state" or algo.uses(n, cfg.hp))
    names = tuple(n for n, _ in lists)
    err = algo.name  # adamw re-words the messages of the adam kernel it calls
    return Signature(algo.name, err, lists, names, dict(cfg.hp), optional=tuple(algo.needs))


SIGNATURES = tuple(_signature(a) for a in ALGOS if a.name != "ewa") + (
    Signature("ewa", "ewa", (("averages", "param"), ("values", "grad")),
              ("averages", "values"), dict(beta=0.9), has_step=False),
    # ewa_readout reads averages and writes outs; the kernel takes outs as its first list.
    Signature("ewa_readout", "ewa_readout", (("averages", "grad"), ("outs", "param")),
              ("outs", "averages"), dict(beta=0.9)),
)

