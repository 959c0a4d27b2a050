"""The optimizer classes: parity with fusedopt.reference, bookkeeping, state dicts and validation.

Parity runs the same class twice on the same params and grads: once as shipped (over
its bound calls and the C++ kernels) and once with ``opt._backend = Oracle(fusedopt.reference)``, the
float64 NumPy oracle. Two param groups with different hyper-parameters, one of them on a schedule,
run 24 steps with ``param_groups[0]["lr"]`` halved after step 10; every param and every state entry
is compared at the end.

Tolerances (both sides store in the params' dtype; the kernels fold step scalars and may contract
to FMA, so they differ from the oracle in the last bits of each step):
    fp64: rtol 1e-12, atol 1e-13 * scale
    fp32: rtol 1e-5,  atol 1e-6 * scale
where scale = max(1, max |expected|) over the compared array: an element that is a small sum of
large terms (a momentum buffer crossing zero) carries the absolute rounding of those terms.
Configurations with coupled (L2) weight decay use eps >= 1e-3 for the reason in tests/algos.py
(Note [eps with coupled weight decay]): with a tiny eps the first step is a step function of a
gradient that may cancel to rounding noise in fp32.

A run resumed from ``state_dict()`` must match an unbroken run bit for bit (same backend).
"""

from __future__ import annotations

import copy
import inspect
import pickle
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

import fusedopt
from fusedopt import functional, reference
from fusedopt._spec import StepPower
from fusedopt.optim import (
    ADOPT, LAMB, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, AdamWScheduleFree, NAdam, RAdam,
    RMSprop,
)
from fusedopt.schedules import CosineDecay, ExponentialDecay, StepDecay, WarmupThen

from backends import CallLog, Oracle

TOL = {np.float64: dict(rtol=1e-12, atol=1e-13), np.float32: dict(rtol=1e-5, atol=1e-6)}


def assert_close(got, want, tol, what):
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)
DTYPES = {"fp32": np.float32, "fp64": np.float64}
STEPS = 24
EDIT_AT = 10  # param_groups[0]["lr"] is halved before this 0-based step
# group 0: a vector, an F-ordered matrix and a scalar-like array; group 1: a long vector, a matrix
SHAPES = (((7,), (33, 5), (1,)), ((4097,), (3, 4)))
F_ORDER = {(0, 1)}
SCHEDULE = WarmupThen(4, ExponentialDecay(0.02, decay_rate=0.7, decay_steps=5))


@dataclass(frozen=True)
class Case:
    id: str
    cls: type
    kwargs: dict  # constructor defaults
    group1: dict  # group 1 overrides (group 0 takes the defaults)
    states: tuple  # state names expected in group 0 and group 1
    scalars: tuple = ()
    extra: dict = field(default_factory=dict)


CASES = (
    Case("sgd-momentum", SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01),
         dict(lr=SCHEDULE, momentum=0.5, dampening=0.2), (("momentum_buffer",), ("momentum_buffer",))),
    Case("sgd-nesterov", SGD, dict(lr=0.03, momentum=0.8, nesterov=True),
         dict(lr=SCHEDULE, momentum=0.0, nesterov=False, maximize=True), (("momentum_buffer",), ())),
    Case("adagrad", Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
         dict(lr=SCHEDULE, weight_decay=0.05, eps=1e-3, maximize=True), (("sum",), ("sum",))),
    Case("adadelta", Adadelta, dict(lr=1.0, rho=0.95),
         dict(lr=CosineDecay(2.0, decay_steps=30), rho=0.8, weight_decay=0.1, eps=1e-4),
         (("square_avg", "acc_delta"), ("square_avg", "acc_delta"))),
    Case("rmsprop-centered-momentum", RMSprop, dict(lr=0.01, momentum=0.9, centered=True),
         dict(lr=SCHEDULE, alpha=0.9, momentum=0.0, centered=False, weight_decay=0.1, eps=1e-3),
         (("square_avg", "momentum_buffer", "grad_avg"), ("square_avg",))),
    Case("rmsprop-maximize", RMSprop, dict(lr=0.01, maximize=True),
         dict(lr=SCHEDULE, momentum=0.5, centered=True, alpha=0.95),
         (("square_avg",), ("square_avg", "momentum_buffer", "grad_avg"))),
    Case("adam", Adam, dict(lr=0.01, weight_decay=0.01, eps=1e-3),
         dict(lr=SCHEDULE, amsgrad=True, betas=(0.8, 0.99), maximize=True, weight_decay=0.0, eps=1e-8),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))),
    Case("adam-decoupled", Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
         dict(lr=SCHEDULE, amsgrad=True), (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))),
    Case("adamw", AdamW, dict(lr=0.01),
         dict(lr=SCHEDULE, weight_decay=0.1, amsgrad=True, betas=(0.85, 0.995)),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))),
    Case("nadam", NAdam, dict(lr=0.01),
         dict(lr=SCHEDULE, momentum_decay=8e-3, weight_decay=0.05, decoupled_weight_decay=True),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq")), scalars=("mu_product",)),
    Case("nadam-l2", NAdam, dict(lr=0.01, weight_decay=0.01, eps=1e-3),
         dict(lr=StepDecay(0.05, step_size=6, gamma=0.5), betas=(0.8, 0.99), maximize=True),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq")), scalars=("mu_product",)),
    Case("adamax", Adamax, dict(lr=0.01),
         dict(lr=SCHEDULE, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-3, maximize=True),
         (("exp_avg", "exp_inf"), ("exp_avg", "exp_inf"))),
    Case("radam", RAdam, dict(lr=0.01),
         dict(lr=SCHEDULE, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-3, maximize=True),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"))),
    Case("radam-decoupled", RAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
         dict(lr=SCHEDULE, betas=(0.9, 0.6)), (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"))),
    Case("adamw_schedulefree", AdamWScheduleFree, dict(lr=0.01),
         dict(lr=SCHEDULE, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=5, r=0.5),
         (("z", "exp_avg_sq"), ("z", "exp_avg_sq")), scalars=("weight_sum", "lr_max")),
    Case("adopt", ADOPT, dict(lr=0.01),
         dict(lr=SCHEDULE, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-3, maximize=True,
              clip_lambda=None),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"))),
    Case("adopt-decouple", ADOPT,
         dict(lr=0.01, weight_decay=0.1, decouple=True, clip_lambda=StepPower(0.5)),
         dict(lr=SCHEDULE, betas=(0.3, 0.9), clip_lambda=0.5),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"))),
    # two groups: the grads' norm is taken over both (Note [Passes]); group 1 has no trust ratio
    Case("lamb", LAMB, dict(lr=0.01),
         dict(lr=SCHEDULE, betas=(0.8, 0.99), weight_decay=0.0),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"))),
    Case("lamb-l2", LAMB,
         dict(lr=0.01, adam_w_mode=False, weight_decay=0.1, eps=1e-3, max_grad_norm=5.0),
         dict(lr=SCHEDULE, weight_decay=0.0, use_nvlamb=True, grad_averaging=False,
              bias_correction=False),
         (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"))),
)
CLASSES = (SGD, Adagrad, Adadelta, RMSprop, Adam, AdamW, NAdam, Adamax, RAdam)


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    groups = []
    for gi, shapes in enumerate(SHAPES):
        group = []
        for j, shape in enumerate(shapes):
            p = np.empty(shape, dtype=dtype, order="F" if (gi, j) in F_ORDER else "C")
            p[...] = rng.standard_normal(shape)
            group.append(p)
        groups.append(group)
    return groups


def grads_at(params, k, seed=1):
    """The grads of step k (0-based): the same for every run, laid out like their params."""
    rng = np.random.default_rng([seed, k])
    out = []
    for p in params:
        g = np.empty_like(p)
        g[...] = rng.standard_normal(p.shape)
        out.append(g)
    return out


def build(case, groups, backend=None):
    opt = case.cls([{"params": groups[0]}, {"params": groups[1], **case.group1}], **case.kwargs)
    if backend is not None:
        opt._backend = backend
    if hasattr(opt, "train"):  # Schedule-Free steps in train mode only
        opt.train()
    return opt


def flat(groups):
    return [p for g in groups for p in g]


def run(case, dtype, backend, steps=STEPS, start=0, groups=None, opt=None):
    groups = groups if groups is not None else make_params(dtype)
    opt = opt if opt is not None else build(case, groups, backend)
    params = flat(groups)
    for k in range(start, steps):
        if k == EDIT_AT:
            opt.param_groups[0]["lr"] *= 0.5
        opt.step(grads_at(params, k))
    return params, opt


def assert_state_close(got, want, tol):
    assert list(got) == list(want)
    for i in want:
        assert list(got[i]) == list(want[i]), i
        for name, w in want[i].items():
            g = got[i][name]
            if isinstance(w, np.ndarray):
                assert g.dtype == w.dtype and g.shape == w.shape
                assert_close(g, w, tol, f"state[{i}][{name!r}]")
            elif name == "step":
                assert g == w and type(g) is int
            else:
                assert g == pytest.approx(w, rel=1e-14), (i, name)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_reference(case, dtype):
    got_params, got = run(case, dtype, None)
    want_params, want = run(case, dtype, Oracle(reference))
    tol = TOL[dtype]
    for i, (g, w) in enumerate(zip(got_params, want_params)):
        assert_close(g, w, tol, f"params[{i}]")
    assert_state_close(got.state, want.state, tol)
    # the state names are torch's, allocated per the group's options, laid out like the param
    for i, p in enumerate(got_params):
        state = got.state[i]
        names = case.states[0 if i < len(SHAPES[0]) else 1]
        assert tuple(state) == ("step", *case.scalars, *names)
        assert state["step"] == STEPS
        for name in names:
            a = state[name]
            assert (a.flags.c_contiguous, a.flags.f_contiguous) == (p.flags.c_contiguous, p.flags.f_contiguous)
    assert got.param_groups[0]["lr"] == case.kwargs["lr"] * 0.5


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_call_per_group(case):
    log = CallLog()
    groups = make_params(np.float64)
    _, opt = run(case, np.float64, log, steps=3, groups=groups)
    # 3 steps x 2 groups, each call carrying the whole group
    assert [n for _, n, _, _ in log.calls] == [3, 2] * 3
    assert [s for _, _, s, _ in log.calls] == [1, 1, 2, 2, 3, 3]
    # the schedule of group 1 is evaluated at the number of completed steps
    assert [lr for _, _, _, lr in log.calls[1::2]] == [case.group1["lr"](t) for t in range(3)]


def test_schedule_sees_completed_steps():
    w = np.zeros(3)
    schedule = StepDecay(1.0, step_size=2, gamma=0.5)
    opt = SGD([w], lr=schedule)
    g = np.ones(3)
    seen = []
    for _ in range(5):
        before = w.copy()
        opt.step([g])
        seen.append(float((before - w)[0]))
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_lr_edit_and_schedule_swap_mid_run():
    w = np.zeros(2)
    opt = SGD([w], lr=0.5)
    g = np.ones(2)
    opt.step([g])
    opt.param_groups[0]["lr"] = 0.25
    opt.step([g])
    opt.param_groups[0]["lr"] = ExponentialDecay(1.0, 0.5, 1)  # t = 2 completed steps
    opt.step([g])
    np.testing.assert_array_equal(w, -(0.5 + 0.25 + 0.25) * g)


def test_split_calls_after_partial_state():
    """A group whose params hold different step counts goes out as one call per count, each with
    the learning rate of its own step; the result matches the reference with the same split."""
    dtype = np.float64
    case = next(c for c in CASES if c.id == "nadam")
    results = []
    for module in (CallLog(), CallLog(Oracle(reference))):
        groups = make_params(dtype)
        _, opt = run(case, dtype, module, steps=3, groups=groups)
        sd = opt.state_dict()
        del sd["state"][1], sd["state"][4]
        fresh = build(case, groups, module)
        fresh.load_state_dict(sd)
        module.calls.clear()
        run(case, dtype, module, steps=5, start=3, groups=groups, opt=fresh)
        results.append((flat(groups), fresh, list(module.calls)))
    (got_params, got, calls), (want_params, want, _) = results
    # per step: group 0 splits into steps {4: [0, 2], 1: [1]}, group 1 into {4: [3], 1: [4]}
    assert [(n, s) for _, n, s, _ in calls[:4]] == [(2, 4), (1, 1), (1, 4), (1, 1)]
    assert [lr for *_, lr in calls[2:4]] == [SCHEDULE(3), SCHEDULE(0)]
    assert got.state[1]["step"] == 2 and got.state[0]["step"] == 5
    for i, (g, w) in enumerate(zip(got_params, want_params)):
        assert_close(g, w, TOL[dtype], f"params[{i}]")
    assert_state_close(got.state, want.state, TOL[dtype])


def test_add_param_group_mid_run():
    a, b = np.ones(4), np.ones(3)
    opt = Adam([a], lr=0.1)
    log = CallLog()
    opt._backend = log
    opt.step([np.ones(4)])
    opt.add_param_group({"params": [b], "lr": 0.2, "amsgrad": True})
    opt.step([np.ones(4), np.ones(3)])
    assert [(n, s, lr) for _, n, s, lr in log.calls] == [(1, 1, 0.1), (1, 2, 0.1), (1, 1, 0.2)]
    assert tuple(opt.state[b]) == ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    assert opt.state_dict()["param_groups"][1]["params"] == [1]


def test_sgd_momentum_switched_on_mid_run_starts_from_the_gradient():
    """torch starts a new momentum buffer at the gradient, undamped, whenever it is created."""
    w = np.zeros(3)
    opt = SGD([w], lr=0.1, dampening=0.5)
    opt.step([np.ones(3)])
    assert "momentum_buffer" not in opt.state[0]
    opt.param_groups[0]["momentum"] = 0.9
    g = np.array([1.0, 2.0, 3.0])
    opt.step([g])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], g)
    opt.step([g])
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], 0.9 * g + 0.5 * g, rtol=1e-15)


def test_amsgrad_switched_on_mid_run_allocates_its_buffer():
    w = np.ones(5)
    opt = Adam([w], lr=0.1)
    opt.step([np.ones(5)])
    opt.param_groups[0]["amsgrad"] = True
    opt.step([np.ones(5)])
    assert opt.state[0]["max_exp_avg_sq"].shape == (5,)
    assert opt.state[0]["step"] == 2


def test_bare_array_and_state_by_param():
    w = np.ones((2, 3), order="F")
    opt = Adam(w, lr=0.1)
    opt.step(np.full((2, 3), 2.0, order="F"))
    np.testing.assert_allclose(w, 0.9)
    assert opt.state[w] is opt.state[0]
    assert opt.state[0]["exp_avg"].flags.f_contiguous
    assert list(opt.state) == [0] and len(opt.state) == 1 and w in opt.state
    with pytest.raises(KeyError):
        opt.state[np.ones((2, 3))]
    opt.step([np.ones((2, 3), order="F")])  # a list of one works too


def test_dtypes_mixed_in_one_group():
    a32, a64 = np.ones(5, np.float32), np.ones(6, np.float64)
    log = CallLog()
    opt = Adam([a32, a64], lr=0.1)
    opt._backend = log
    opt.step([np.ones(5, np.float32), np.ones(6)])
    assert len(log.calls) == 1
    assert opt.state[0]["exp_avg"].dtype == np.float32 and opt.state[1]["exp_avg"].dtype == np.float64


def test_repr_lists_groups():
    opt = Adam([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": 0.5}])
    text = repr(opt)
    assert text.startswith("Adam (\nParameter Group 0\n") and "Parameter Group 1" in text
    assert "    lr: 0.5" in text


def test_params_are_updated_in_place_never_copied():
    w = np.ones(4)
    view = w[:]
    opt = SGD([w], lr=1.0)
    opt.step([np.ones(4)])
    assert opt.param_groups[0]["params"][0] is w
    np.testing.assert_array_equal(view, 0.0)


def page_offset(a):
    return a.ctypes.data % 4096


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_large_state_gets_its_own_page_offsets(order, dtype):
    # Note [State at its own 4 KiB offset]: a large param's state buffers start at page offsets
    # of their own, keep the param's layout, and the update is the one plain allocations give.
    rng = np.random.default_rng(5)
    w0 = np.asarray(rng.standard_normal((96, 200)), dtype=dtype, order=order)  # >= 75 KiB
    grads = [np.asarray(rng.standard_normal(w0.shape), dtype=dtype, order=order) for _ in range(3)]
    w = w0.copy(order=order)
    opt = RMSprop([w], lr=1e-2, momentum=0.9, centered=True)
    for g in grads:
        opt.step([g])
    state = opt.state[w]
    bufs = [state[k] for k in ("square_avg", "momentum_buffer", "grad_avg")]
    offsets = {page_offset(w), *(page_offset(b) for b in bufs)}
    assert len(offsets) == 4, offsets
    for b in bufs:
        assert b.shape == w.shape and b.dtype == w.dtype
        assert b.flags.c_contiguous == (order == "C") and b.flags.f_contiguous == (order == "F")
        assert b.ctypes.data % b.dtype.alignment == 0
    # The same steps on buffers from np.zeros_like: bitwise the same result.
    w2 = w0.copy(order=order)
    sq, mom, gavg = (np.zeros_like(w2) for _ in range(3))
    for t, g in enumerate(grads, 1):
        functional.rmsprop([w2], [g], [sq], [mom], [gavg], step=t, lr=1e-2, momentum=0.9,
                           centered=True)
    assert bits(w) == bits(w2)
    assert bits(state["square_avg"]) == bits(sq) and bits(state["grad_avg"]) == bits(gavg)
    # A reload allocates the same way.
    opt2 = RMSprop([w2], lr=1e-2, momentum=0.9, centered=True)
    opt2.load_state_dict(opt.state_dict())
    s2 = opt2.state[w2]
    assert len({page_offset(w2), *(page_offset(s2[k]) for k in s2 if k != "step")}) == 4
    assert bits(s2["momentum_buffer"]) == bits(state["momentum_buffer"])


def test_state_like_other_array_libraries():
    with pytest.raises(TypeError, match="cannot allocate optimizer state like a list"):
        fusedopt.state_like([1.0, 2.0])
    torch = pytest.importorskip("torch")  # optional: torch tensors keep their layout too
    x = torch.zeros(3, 5, dtype=torch.float64).t()
    s = fusedopt.state_like(x, 0.5, slot=1)
    assert s.stride() == x.stride() and s.dtype == x.dtype and bool((s == 0.5).all())


def test_small_state_is_a_plain_allocation():
    w = np.zeros(100, np.float32)
    opt = Adam([w])
    opt.step([np.ones(100, np.float32)])
    assert all(opt.state[w][k].base is None for k in ("exp_avg", "exp_avg_sq"))


# ---- state dict ----------------------------------------------------------------------------------


def bits(a):
    return (a.dtype, a.shape, a.flags.f_contiguous and not a.flags.c_contiguous, a.tobytes(order="A"))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resume_is_bitwise_identical(case, dtype):
    unbroken_params, unbroken = run(case, dtype, None)

    stop = EDIT_AT + 3  # after the lr edit, mid-schedule
    groups = make_params(dtype)
    _, first = run(case, dtype, None, steps=stop, groups=groups)
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    resumed_groups = [[p.copy(order="K") for p in g] for g in groups]
    del first, groups
    resumed = build(case, resumed_groups)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == case.kwargs["lr"] * 0.5
    params, _ = run(case, dtype, None, start=stop, groups=resumed_groups, opt=resumed)

    for g, w in zip(params, unbroken_params):
        assert bits(g) == bits(w)
    assert list(resumed.state) == list(unbroken.state)
    for i in unbroken.state:
        a, b = resumed.state[i], unbroken.state[i]
        assert list(a) == list(b)
        for name in b:
            if isinstance(b[name], np.ndarray):
                assert bits(a[name]) == bits(b[name]), (i, name)
            else:
                assert a[name] == b[name] and type(a[name]) is type(b[name])


def test_state_dict_layout_and_copies():
    groups = make_params(np.float32)
    case = next(c for c in CASES if c.id == "adam")
    _, opt = run(case, np.float32, None, steps=2, groups=groups)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == [0, 1, 2, 3, 4]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1, 2], [3, 4]]
    assert list(sd["param_groups"][0])[-1] == "params"
    assert sd["param_groups"][1]["amsgrad"] is True and sd["param_groups"][1]["lr"] == SCHEDULE
    assert sd["state"][1]["exp_avg"].flags.f_contiguous
    sd["state"][0]["exp_avg"][...] = 123.0
    sd["param_groups"][0]["lr"] = 99.0
    assert not np.any(opt.state[0]["exp_avg"] == 123.0)
    assert opt.param_groups[0]["lr"] == 0.01
    # loading copies too
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    sd["state"][0]["exp_avg"][...] = 7.0
    assert not np.any(opt.state[0]["exp_avg"] == 7.0)


def test_load_keeps_group_dicts_and_accepts_torch_style_steps():
    w = np.ones(3, np.float32)
    opt = Adam([w], lr=0.1)
    group = opt.param_groups[0]
    opt.load_state_dict({
        "state": {17: {"step": np.array(5.0, np.float32), "exp_avg": np.zeros(3, np.float32),
                      "exp_avg_sq": np.zeros(3, np.float32)}},
        "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "lr": 0.3, "params": [17]}],
    })
    assert opt.param_groups[0] is group and group["lr"] == 0.3 and group["params"][0] is w
    assert opt.state[0]["step"] == 5 and type(opt.state[0]["step"]) is int


def _adam_sd():
    groups = make_params(np.float64)
    case = next(c for c in CASES if c.id == "adam")
    _, opt = run(case, np.float64, None, steps=2, groups=groups)
    return opt


def _sgd_sd(opt):
    """An SGD run over params of the same shapes: same groups, another algorithm."""
    groups = make_params(np.float64)
    sgd = SGD([{"params": groups[0]}, {"params": groups[1]}], lr=0.1, momentum=0.9)
    run_params = flat(groups)
    sgd.step(grads_at(run_params, 0))
    return sgd.state_dict()


def _nadam_sd(opt):
    o = NAdam([np.ones(2)])
    o.step([np.ones(2)])
    sd = o.state_dict()
    del sd["state"][0]["mu_product"]
    return sd


def _edit(fn):
    def make(opt):
        sd = opt.state_dict()
        fn(sd)
        return sd

    return make


BAD_STATE_DICTS = [
    ("not-a-dict", lambda opt: [1, 2], ValueError, "expected a dict with 'state' and 'param_groups'"),
    ("group-count", _edit(lambda sd: sd["param_groups"].pop()), ValueError,
     "the state dict has 1 param groups, this optimizer has 2"),
    ("group-size", _edit(lambda sd: sd["param_groups"][1]["params"].pop()), ValueError,
     "param_groups[1] has 1 params, this optimizer's group has 2"),
    ("shape", _edit(lambda sd: sd["state"][3].update(exp_avg=np.zeros(4096))), ValueError,
     "state[3]['exp_avg'] has shape (4096,), expected (4097,) (the shape of params[3])"),
    ("dtype", _edit(lambda sd: sd["state"][2].update(exp_avg_sq=np.zeros(1, np.float32))), ValueError,
     "state[2]['exp_avg_sq'] has dtype float32, expected float64 (the dtype of params[2])"),
    ("not-an-array", _edit(lambda sd: sd["state"][2].update(exp_avg_sq=[0.0])), TypeError,
     "state[2]['exp_avg_sq'] is a list, expected a numpy.ndarray"),
    ("other-algorithm", _sgd_sd, ValueError,
     "param_groups[0] lacks 'betas'; was the state dict saved by another optimizer than Adam?"),
    ("foreign-hyper-parameter", _edit(lambda sd: sd["param_groups"][0].update(rho=0.9)), ValueError,
     "param_groups[0] has 'rho', which Adam does not use; was the state dict saved by another optimizer?"),
    ("foreign-state", _edit(lambda sd: sd["state"][0].update(exp_inf=np.zeros(7))), ValueError,
     "state[0] has an entry 'exp_inf', which Adam does not keep; was the state dict saved by another optimizer?"),
    ("missing-buffer", _edit(lambda sd: sd["state"][0].pop("exp_avg")), ValueError, "state[0] lacks 'exp_avg'"),
    ("missing-step", _edit(lambda sd: sd["state"][0].pop("step")), ValueError, "state[0] lacks 'step'"),
    ("negative-step", _edit(lambda sd: sd["state"][0].update(step=-1)), ValueError,
     "state[0]['step'] is -1, expected an int >= 0"),
    ("fractional-step", _edit(lambda sd: sd["state"][0].update(step=1.5)), ValueError,
     "state[0]['step'] is 1.5, expected an int >= 0"),
    ("unknown-param-id", _edit(lambda sd: sd["state"].update({9: sd["state"][0]})), ValueError,
     "state[9] belongs to no parameter listed in param_groups"),
    ("invalid-hyper-parameter", _edit(lambda sd: sd["param_groups"][1].update(lr=-1.0)), ValueError,
     "param_groups[1]: Invalid learning rate: -1.0"),
    ("invalid-betas", _edit(lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.0))), ValueError,
     "param_groups[0]: Invalid beta parameter at index 1: 1.0"),
]


@pytest.mark.parametrize("name,make,exc,message", BAD_STATE_DICTS, ids=[b[0] for b in BAD_STATE_DICTS])
def test_bad_state_dict_changes_nothing(name, make, exc, message):
    opt = _adam_sd()
    before = opt.state_dict()
    bad = make(opt)
    with pytest.raises(exc) as info:
        opt.load_state_dict(bad)
    assert str(info.value).startswith("Adam.load_state_dict: ")
    assert message in str(info.value)
    after = opt.state_dict()
    assert [{k: v for k, v in g.items()} for g in after["param_groups"]] == before["param_groups"]
    for i in before["state"]:
        for k, v in before["state"][i].items():
            assert bits(after["state"][i][k]) == bits(v) if isinstance(v, np.ndarray) else after["state"][i][k] == v


def test_nadam_state_needs_mu_product():
    opt = NAdam([np.ones(2)])
    with pytest.raises(ValueError, match=r"NAdam.load_state_dict: state\[0\] lacks 'mu_product'"):
        opt.load_state_dict(_nadam_sd(opt))


def test_adam_and_adamw_state_dicts_interchange():
    a = AdamW([np.ones(2)], lr=0.1)
    a.step([np.ones(2)])
    b = Adam([np.ones(2)])
    b.load_state_dict(a.state_dict())
    assert b.param_groups[0]["decoupled_weight_decay"] is True and b.param_groups[0]["weight_decay"] == 1e-2


# ---- constructor signatures and validation ---------------------------------------------------------

# torch.optim 2.x's arguments that change the math, with their defaults (positional-or-keyword up to
# the *, keyword-only after). The implementation switches (foreach, fused, capturable,
# differentiable) are not taken: there is one implementation.
SIGNATURES = {
    SGD: ("lr=0.001 momentum=0.0 dampening=0.0 weight_decay=0.0 nesterov=False | maximize=False"),
    Adagrad: ("lr=0.01 lr_decay=0.0 weight_decay=0.0 initial_accumulator_value=0.0 eps=1e-10 | maximize=False"),
    Adadelta: ("lr=1.0 rho=0.9 eps=1e-06 weight_decay=0.0 | maximize=False"),
    RMSprop: ("lr=0.01 alpha=0.99 eps=1e-08 weight_decay=0.0 momentum=0.0 centered=False | maximize=False"),
    Adam: ("lr=0.001 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.0 amsgrad=False "
           "| maximize=False decoupled_weight_decay=False"),
    AdamW: ("lr=0.001 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.01 amsgrad=False | maximize=False"),
    NAdam: ("lr=0.002 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.0 momentum_decay=0.004 "
            "decoupled_weight_decay=False | maximize=False"),
    Adamax: ("lr=0.002 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.0 | maximize=False"),
    RAdam: ("lr=0.001 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.0 decoupled_weight_decay=False "
            "| maximize=False"),
}


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_signature_is_torchs(cls):
    positional, keyword = [], []
    for p in list(inspect.signature(cls).parameters.values())[1:]:
        (keyword if p.kind is p.KEYWORD_ONLY else positional).append(f"{p.name}={p.default!r}")
    # torch's signature, and fusedopt's low-precision options last (Note [State dtypes],
    # [Master weights], [Stochastic rounding], [Kahan summation])
    ours = ["state_dtype=None", "master_weights=False", "stochastic_rounding=False", "seed=None",
            "kahan_summation=False"]
    assert keyword[-5:] == ours
    assert " ".join(positional) + " | " + " ".join(keyword[:-5]) == SIGNATURES[cls]
    assert getattr(fusedopt, cls.__name__) is cls


# (class, kwargs, exception, message): torch.optim's own texts for the hyper-parameters
HYPER_ERRORS = [
    (SGD, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (SGD, dict(momentum=-0.5), ValueError, "Invalid momentum value: -0.5"),
    (SGD, dict(weight_decay=-1e-4), ValueError, "Invalid weight_decay value: -0.0001"),
    (SGD, dict(nesterov=True), ValueError, "Nesterov momentum requires a momentum and zero dampening"),
    (SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError,
     "Nesterov momentum requires a momentum and zero dampening"),
    (SGD, dict(lr="0.1"), TypeError, "SGD: lr must be a real number, got str"),
    (Adagrad, dict(lr=-0.01), ValueError, "Invalid learning rate: -0.01"),
    (Adagrad, dict(lr_decay=-1), ValueError, "Invalid lr_decay value: -1"),
    (Adagrad, dict(weight_decay=-1), ValueError, "Invalid weight_decay value: -1"),
    (Adagrad, dict(initial_accumulator_value=-0.1), ValueError, "Invalid initial_accumulator_value value: -0.1"),
    (Adagrad, dict(eps=-1e-10), ValueError, "Invalid epsilon value: -1e-10"),
    (Adadelta, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (Adadelta, dict(rho=1.1), ValueError, "Invalid rho value: 1.1"),
    (Adadelta, dict(rho=-0.1), ValueError, "Invalid rho value: -0.1"),
    (Adadelta, dict(eps=-1e-6), ValueError, "Invalid epsilon value: -1e-06"),
    (Adadelta, dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value: -0.1"),
    (RMSprop, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (RMSprop, dict(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
    (RMSprop, dict(momentum=-1.0), ValueError, "Invalid momentum value: -1.0"),
    (RMSprop, dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
    (RMSprop, dict(alpha=-1.0), ValueError, "Invalid alpha value: -1.0"),
    (Adam, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (Adam, dict(lr=float("nan")), ValueError, "Invalid learning rate: nan"),
    (Adam, dict(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
    (Adam, dict(betas=(1.0, 0.999)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (Adam, dict(betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1: -0.1"),
    (Adam, dict(betas=(0.9,)), ValueError, "Adam: betas must be a pair (beta1, beta2), got (0.9,)"),
    (Adam, dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
    (AdamW, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (AdamW, dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
    (AdamW, dict(weight_decay=-1e-2), ValueError, "Invalid weight_decay value: -0.01"),
    (NAdam, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (NAdam, dict(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
    (NAdam, dict(betas=(1.0, 0.0)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (NAdam, dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
    (NAdam, dict(momentum_decay=-0.2), ValueError, "Invalid momentum_decay value: -0.2"),
    (Adamax, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (Adamax, dict(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
    (Adamax, dict(betas=(0.9, 1.5)), ValueError, "Invalid beta parameter at index 1: 1.5"),
    (Adamax, dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
    (RAdam, dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
    (RAdam, dict(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
    (RAdam, dict(betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (RAdam, dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
    (RAdam, dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
]


def _hyper_id(row):
    cls, kwargs, _, _ = row
    return f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("cls,kwargs,exc,message", HYPER_ERRORS, ids=[_hyper_id(r) for r in HYPER_ERRORS])
def test_hyper_parameter_errors(cls, kwargs, exc, message):
    w = np.ones(3)
    with pytest.raises(exc) as info:
        cls([w], **kwargs)
    assert type(info.value) is exc and str(info.value) == message
    # the same value in a param group fails the same way, naming the group
    with pytest.raises(exc) as info:
        cls([{"params": [np.ones(2)]}, {"params": [w], **kwargs}])
    if exc is ValueError:
        assert str(info.value) == f"{message} (in param_groups[1])"
    np.testing.assert_array_equal(w, 1.0)


def _params_errors():
    ro = np.ones(3)
    ro.flags.writeable = False
    base = np.ones(10)
    return [
        ("not-an-array", [np.ones(2), [1.0, 2.0]], {}, TypeError,
         "Adam: params[1] is a list, expected a numpy.ndarray"),
        ("int-dtype", [np.ones(2), np.ones(2, np.int64)], {}, TypeError,
         "Adam: params[1] has dtype int64, expected float32, float64, bfloat16 or float16"),
        ("uint16", [np.ones(2, np.uint16)], {}, TypeError,
         "Adam: params[0] has dtype uint16, expected float32, float64, bfloat16 or float16"),
        ("group-index", [{"params": [np.ones(2)]}, {"params": [np.ones(2), "w"]}], {}, TypeError,
         "Adam: param_groups[1]['params'][1] is a str, expected a numpy.ndarray"),
        ("empty", [], {}, ValueError, "optimizer got an empty parameter list"),
        ("read-only", [ro], {}, ValueError, "Adam: params[0] is read-only"),
        ("not-contiguous", [np.ones((4, 4))[:, ::2]], {}, ValueError,
         "Adam: params[0] is not contiguous (params are updated in place, never through a copy; "
         "pass a contiguous array)"),
        ("duplicate-across-groups", [{"params": [base]}, {"params": [base]}], {}, ValueError,
         "some parameters appear in more than one parameter group"),
        ("duplicate-in-group", [base, base], {}, ValueError,
         "optimizer contains a parameter group with duplicate parameters"),
        ("shared-memory", [base[:6], base[4:]], {}, ValueError,
         "Adam: params[0] and params[1] share memory (each would be updated once per step through the other)"),
        ("set", {np.float64(1.0)}, {}, TypeError, "Adam: params is a set; optimizer parameters need to be organized"),
        ("scalar", 3.0, {}, TypeError,
         "Adam: params must be a numpy array, a list of arrays or a list of param-group dicts, got float"),
        ("dict", {"params": [np.ones(2)]}, {}, TypeError,
         "Adam: params must be a numpy array, a list of arrays or a list of param-group dicts, got dict"),
        ("group-without-params", [{"lr": 0.1}], {}, ValueError, "Adam: param_groups[0] has no 'params' entry"),
        ("group-not-dict", [{"params": [np.ones(2)]}, [np.ones(2)]], {}, TypeError,
         "Adam: param_group must be a dict, but got list"),
    ]


@pytest.mark.parametrize("name,params,kwargs,exc,message", _params_errors(), ids=[r[0] for r in _params_errors()])
def test_params_errors(name, params, kwargs, exc, message):
    with pytest.raises(exc) as info:
        Adam(params, **kwargs)
    assert type(info.value) is exc and str(info.value).startswith(message)


def test_params_from_a_generator():
    arrays = [np.ones(2), np.ones(3)]
    opt = SGD((a for a in arrays), lr=1.0)
    opt.step([np.ones(2), np.ones(3)])
    assert all(np.all(a == 0.0) for a in arrays)


def test_add_param_group_refused_changes_nothing():
    a = np.ones(2)
    opt = Adam([a])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [np.ones(3), a]})
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1 \(in param_groups\[1\]\)"):
        opt.add_param_group({"params": [np.ones(3)], "lr": -1})
    assert len(opt.param_groups) == 1
    opt.step([np.ones(2)])


# ---- step errors: nothing allocated or written ---------------------------------------------------


def _step_errors():
    f32 = np.ones(3, np.float32)
    return [
        ("too-few", lambda p: p[:-1], ValueError, "Adam.step: got 4 grads for 5 params"),
        ("not-a-list", lambda p: p[0], TypeError,
         "Adam.step: grads must be a list of arrays (one per param), got ndarray"),
        ("not-an-array", lambda p: p[:4] + [[1.0]], TypeError,
         "Adam.step: grads[4] is a list, expected a numpy.ndarray"),
        ("shape", lambda p: p[:3] + [np.ones(4096), p[4]], ValueError,
         "Adam.step: grads[3] has shape (4096,), expected (4097,) (the shape of params[3])"),
        ("dtype", lambda p: [f32 if i == 0 else g for i, g in enumerate(p)], TypeError,
         "Adam.step: grads[0] has dtype"),
        ("memory-order", lambda p: [np.ascontiguousarray(g) if i == 1 else g for i, g in enumerate(p)], ValueError,
         "Adam.step: grads[1] has a different memory order (C) than params[1] (F)"),
    ]


@pytest.mark.parametrize("name,make,exc,message", _step_errors(), ids=[r[0] for r in _step_errors()])
@pytest.mark.parametrize("after", [0, 2], ids=["first-step", "later-step"])
def test_step_errors_change_nothing(name, make, exc, message, after):
    case = next(c for c in CASES if c.id == "adam")
    groups = make_params(np.float64)
    params, opt = run(case, np.float64, None, steps=after, groups=groups)
    before = [bits(p) for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    with pytest.raises(exc) as info:
        opt.step(make(grads_at(params, 0)))
    assert str(info.value).startswith(message)
    assert [bits(p) for p in params] == before
    assert list(opt.state) == list(state_before["state"])
    for i, s in state_before["state"].items():
        assert all(bits(opt.state[i][k]) == bits(v) for k, v in s.items() if isinstance(v, np.ndarray))


def _read_only(a):
    a.flags.writeable = False
    return a


def _later_call_refusals():
    """Refusals that only the kernel's own check makes, in group 1 (params[3] and params[4]):
    the call of group 0 comes first and must not be made; and one in group 0, whose call checks
    itself."""
    return [
        ("group0-grad-is-its-param", lambda ps, gs: [ps[0]] + gs[1:], "Adam.step: grads[0] overlaps params[0]"),
        ("grad-is-its-param", lambda ps, gs: gs[:3] + [ps[3], gs[4]], "Adam.step: grads[3] overlaps params[3]"),
        ("grad-views-a-param", lambda ps, gs: gs[:4] + [ps[4].view()], "Adam.step: grads[4] overlaps params[4]"),
        ("param-made-read-only", lambda ps, gs: (_read_only(ps[4]), gs)[1], "Adam.step: params[4] is read-only"),
    ]


def state_snapshot(opt):
    return {i: {k: bits(v) if isinstance(v, np.ndarray) else v for k, v in s.items()}
            for i, s in opt.state_dict()["state"].items()}


@pytest.mark.parametrize("name,make,message", _later_call_refusals(), ids=[r[0] for r in _later_call_refusals()])
@pytest.mark.parametrize("after", [0, 2], ids=["first-step", "later-step"])
def test_refusal_by_a_later_call_changes_nothing(name, make, message, after):
    """Note [Every call checked before the first]: a step of two groups checks both calls before
    it makes either; the message names the step's own indices."""
    case = next(c for c in CASES if c.id == "adam")
    groups = make_params(np.float64)
    params, opt = run(case, np.float64, None, steps=after, groups=groups)
    before = [bits(p) for p in params]
    state_before = state_snapshot(opt)
    try:
        with pytest.raises(ValueError) as info:
            opt.step(make(params, grads_at(params, after)))
    finally:
        params[4].flags.writeable = True
    assert str(info.value) == message
    assert [bits(p) for p in params] == before
    assert state_snapshot(opt) == state_before


def test_grads_may_share_memory_in_a_step_of_several_calls():
    """Grads are only read, so one array may be the grad of several params, in one call or in
    several; the check before the first call (kernel order: params, grads, states) allows it."""
    results = []
    for share in (True, False):
        params = [np.linspace(-1, 1, 6) + k for k in range(4)]
        opt = Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=0.01)
        g = np.linspace(0.5, 2.0, 6)
        for _ in range(3):
            opt.step([g] * 4 if share else [g.copy() for _ in range(4)])
        results.append([bits(p) for p in params])
    assert results[0] == results[1]


def test_each_call_is_bound_once_and_a_steady_step_binds_nothing():
    """Note [A bound call]: the first step binds one call per group; the steps after run the same
    bound calls with new grads. A step of several calls checks them all (Calls) before the first
    runs; every call runs once per step."""
    params = [np.linspace(-1, 1, 4 + k) for k in range(5)]
    grads = [np.full_like(p, 0.5) for p in params]
    one = Adam([p.copy() for p in params], lr=0.1)
    one._backend = log1 = CallLog()
    two = Adam([{"params": [p.copy() for p in params[:2]]},
                {"params": [p.copy() for p in params[2:]], "lr": 0.1}], lr=0.1)
    two._backend = log2 = CallLog()
    for _ in range(3):
        one.step(grads)
        two.step(grads)
    assert log1.binds == ["adam"] and [(n, s) for _, n, s, _ in log1.calls] == [(5, 1), (5, 2), (5, 3)]
    assert log2.binds == ["adam", "adam"]
    assert [(n, s) for _, n, s, _ in log2.calls] == [(2, 1), (3, 1), (2, 2), (3, 2), (2, 3), (3, 3)]
    flat_params = two.param_groups[0]["params"] + two.param_groups[1]["params"]
    for got, want in zip(flat_params, one.param_groups[0]["params"]):
        np.testing.assert_array_equal(got, want)


def test_bound_call_checks_writes_nothing_and_holds_its_arrays():
    """``_core.cpu.bind``: the params and states checked and held (a tuple per list), nothing
    written; check(grads) writes nothing; run(grads, ...) updates as functional does."""
    def lists(seed):
        rng = np.random.default_rng(seed)
        return [[rng.standard_normal(7) for _ in range(3)] for _ in range(4)]

    hyper = (0.01, (0.9, 0.999), 1e-8, 0.1, 4e-3, False, False)
    want = lists(0)
    want_mu = functional.nadam(*want, step=3, mu_product=0.8, lr=0.01, weight_decay=0.1)
    got = lists(0)
    before = [[bits(a) for a in col] for col in got]
    refs = lambda: [[sys.getrefcount(a) for a in col] for col in got]  # noqa: E731
    counts = refs()
    p, g, m, v = got
    bound = fusedopt._core.cpu.bind("nadam", (p, None, m, v), hyper, grads_later=True)
    assert [[c - 1 for c in col] for i, col in enumerate(refs()) if i != 1] == \
        [col for i, col in enumerate(counts) if i != 1]
    bound.check(g)
    assert [[bits(a) for a in col] for col in got] == before
    assert bound.run(g, step=3, scalars=0.8) == want_mu
    for col_got, col_want in zip(got, want):
        for a, b in zip(col_got, col_want):
            np.testing.assert_array_equal(a, b)
    del bound, a, b
    assert refs() == counts
    # A refusal comes at once, before anything is kept.
    bad = lists(1)
    bad[2][1] = bad[0][1]
    with pytest.raises(ValueError, match=r"^nadam: exp_avgs\[1\] overlaps params\[1\]$"):
        fusedopt._core.cpu.bind("nadam", (bad[0], None, bad[2], bad[3]), hyper, grads_later=True)


def test_a_bound_call_runs_in_one_thread_at_a_time():
    n = 1 << 22
    p, g, m, v = ([np.ones(n)], [np.full(n, 0.5)], [np.zeros(n)], [np.zeros(n)])
    bound = fusedopt._core.cpu.bind("adam", (p, None, m, v, None),
                                    (0.1, (0.9, 0.999), 1e-8, 0.0, False, False, False),
                                    grads_later=True)
    errors, started = [], threading.Event()

    def long_runs():
        started.set()
        for t in range(1, 40):
            bound.run(g, step=t)

    th = threading.Thread(target=long_runs)
    th.start()
    started.wait()
    for _ in range(2000):
        try:
            bound.run(g, step=1)
        except ValueError as e:
            errors.append(str(e))
            break
    th.join()
    assert errors == ["adam: this call is running in another thread; a bound call runs in one "
                      "thread at a time"]


def test_refusal_by_the_second_call_of_a_split_group_changes_nothing():
    """A group split by step count (a param without state after load_state_dict) is two calls;
    the second one's refusal is found before the first is made, and named by flat index."""
    params = [np.linspace(-1, 1, 5 + i) for i in range(3)]
    opt = Adam(params, lr=0.1)
    for k in range(2):
        opt.step(grads_at(params, k))
    saved = opt.state_dict()
    del saved["state"][0]
    opt.load_state_dict(saved)
    before = [bits(p) for p in params]
    state_before = state_snapshot(opt)
    grads = grads_at(params, 2)
    with pytest.raises(ValueError) as info:
        opt.step(grads[:2] + [params[2]])
    assert str(info.value) == "Adam.step: grads[2] overlaps params[2]"
    assert [bits(p) for p in params] == before
    assert state_snapshot(opt) == state_before  # param 0's new state was taken back
    opt.step(grads)
    assert [opt.state[i]["step"] for i in range(3)] == [1, 3, 3]


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda opt: opt.param_groups[1].update(lr=-0.1), "Invalid learning rate: -0.1 (in param_groups[1])"),
        (lambda opt: opt.param_groups[1].update(betas=(0.9, 1.0)),
         "Invalid beta parameter at index 1: 1.0 (in param_groups[1])"),
        (lambda opt: opt.param_groups[1].update(lr=lambda t: -1.0),
         "Invalid learning rate: -1.0 (from the schedule of param_groups[1] at t=2)"),
        (lambda opt: opt.param_groups[1]["params"].append(np.ones(2)),
         "Adam.step: param_groups[1]['params'] changed since the group was added; add parameters with add_param_group"),
        (lambda opt: opt.param_groups.append({"params": [np.ones(2)]}),
         "Adam.step: param_groups has 3 groups but 2 were added; add groups with add_param_group"),
    ],
    ids=["negative-lr", "bad-beta", "schedule-negative", "params-edited", "group-appended"],
)
def test_bad_group_edit_fails_before_any_write(edit, message):
    case = next(c for c in CASES if c.id == "adam")
    groups = make_params(np.float64)
    params, opt = run(case, np.float64, None, steps=2, groups=groups)
    before = [bits(p) for p in params]
    edit(opt)
    with pytest.raises(ValueError) as info:
        opt.step(grads_at(params, 2))
    assert str(info.value) == message
    assert [bits(p) for p in params] == before
    assert all(opt.state[i]["step"] == 2 for i in range(5))


def test_every_update_algorithm_has_its_class_exported_in_registry_order():
    """optim/__init__.py finds the classes by importing the package's modules: each update spec of
    the registry but the weight average's (EMA), clipping's scaling pass and lerp must come out as
    exactly one class, in order."""
    from fusedopt._spec import SPECS

    # Adafactor's class is its own (optim/adafactor.py: its state is not of its params' shapes)
    classes = [getattr(fusedopt.optim, n) for n in fusedopt.optim.__all__
               if n not in ("Optimizer", "EMA", "Adafactor")]
    assert fusedopt.Adafactor is fusedopt.optim.Adafactor
    declared = [cls._spec.name for cls in classes]
    # not optimizers: the weight average's passes, clipping's scaling pass (fusedopt.clip) and
    # Schedule-Free's train/eval pass (lerp)
    want = [n for n, s in SPECS.items()
            if s.reduce == 0 and not n.startswith("ewa") and n not in ("scale", "lerp")]
    assert declared == want
    assert all(getattr(fusedopt, cls.__name__) is cls for cls in classes)
