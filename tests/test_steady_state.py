"""Note [The steady-state step] (python/fusedopt/optim/optimizer.py): a group that repeats its last
step keeps its state lists and its step count in a ``_Run`` and writes the count into the state
dicts only when something can read them. Every test here runs the same optimizer twice on the same
backend, once free to take that path and once on the general path (``general_path``: its runs
switched off, so that every step reads and writes every state dict), and asks for the same bits:
params, every state entry, step counts and NAdam's ``mu_product``.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from fusedopt.optim import SGD, Adam, NAdam
from hypothesis import given, settings
from hypothesis import strategies as st
from test_optim import CASES, DTYPES, EDIT_AT, STEPS, build, flat, grads_at, make_params


def bits(a):
    return a.tobytes(), a.dtype.str, a.shape


def general_path(opt):
    """Keep ``opt`` off the run for good: the reference every test compares with."""
    opt._start_run = lambda *args: None
    return opt


def state_bits(opt):
    sd = opt.state_dict()["state"]
    return {
        i: {k: bits(v) if isinstance(v, np.ndarray) else (type(v), v) for k, v in s.items()}
        for i, s in sd.items()
    }


def drive(case, dtype, general, steps=STEPS, edits=None, peek_at=()):
    """``case`` for ``steps`` steps (lr of group 0 halved at EDIT_AT, ``edits[k](opt)`` before
    step k); ``general``: on the general path. ``peek_at``: steps before which
    ``state_dict()`` is taken (a flush on the run's path)."""
    groups = make_params(dtype)
    opt = build(case, groups)
    if general:
        general_path(opt)
    params = flat(groups)
    for k in range(steps):
        if k == EDIT_AT:
            opt.param_groups[0]["lr"] *= 0.5
        if edits and k in edits:
            edits[k](opt)
        if k in peek_at:
            opt.state_dict()
        opt.step(grads_at(params, k))
    return params, opt


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_matches_general_path_bitwise(case, dtype):
    fast_params, fast = drive(case, dtype, general=False, peek_at=(3, 17))
    slow_params, slow = drive(case, dtype, general=True)
    # the two runs took the two paths
    assert all(r is not None for r in fast._runs) and all(r is None for r in slow._runs)
    assert [bits(p) for p in fast_params] == [bits(p) for p in slow_params]
    assert state_bits(fast) == state_bits(slow)
    assert all(fast.state[i]["step"] == STEPS for i in range(len(fast_params)))


EDITS = {
    # options that change which buffers a group holds, or how its call is split
    "adam-amsgrad-on": (Adam, dict(lr=0.01), {6: lambda o: o.param_groups[0].update(amsgrad=True)}),
    "sgd-momentum-on": (SGD, dict(lr=0.05), {5: lambda o: o.param_groups[1].update(momentum=0.9)}),
    "sgd-momentum-off-on": (SGD, dict(lr=0.05, momentum=0.9),
                            {4: lambda o: o.param_groups[0].update(momentum=0.0),
                             8: lambda o: o.param_groups[0].update(momentum=0.5)}),
    "nadam-betas": (NAdam, dict(lr=0.01),
                    {7: lambda o: o.param_groups[1].update(betas=(0.8, 0.99), momentum_decay=0.01)}),
    # the same value written again: a new object, so the group is checked and its run restarts
    "adam-same-lr": (Adam, dict(lr=0.01), {3: lambda o: o.param_groups[0].update(lr=0.01 * 1)}),
}


@pytest.mark.parametrize("name", EDITS)
def test_hyper_parameter_edits_end_the_run(name):
    cls, kwargs, edits = EDITS[name]
    case = next(c for c in CASES if c.cls is cls)
    case = type(case)(name, cls, kwargs, {}, case.states)
    got_params, got = drive(case, np.float64, general=False, steps=12, edits=edits)
    want_params, want = drive(case, np.float64, general=True, steps=12, edits=edits)
    assert [bits(p) for p in got_params] == [bits(p) for p in want_params]
    assert state_bits(got) == state_bits(want)


def _adam_and_grads(n=4):
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(3 + i) for i in range(n)]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(8)]
    return params, grads


def _stepped(cls, general):
    """``cls`` over ``_adam_and_grads()``, two steps made (on the general path if ``general``)."""
    params, grads = _adam_and_grads()
    opt = cls(params, lr=0.1)
    if general:
        general_path(opt)
    opt.step(grads[0])
    opt.step(grads[1])
    return params, grads, opt


def test_a_state_dict_kept_by_the_user_stays_current_and_its_edits_count():
    """A dict handed out by opt.state keeps receiving the step count, and the user's edits of it
    (a new step count, a replaced buffer) take effect at the next step, as on the general path."""
    results = []
    for general in (False, True):
        params, grads, opt = _stepped(NAdam, general)
        held = opt.state[2]
        for k in range(2, 5):
            opt.step(grads[k])
            assert held["step"] == k + 1 and held is opt.state[2]
            assert held["mu_product"] == opt.state[0]["mu_product"]
        held["step"] = 1  # param 2 restarts its bias correction: the group splits in two calls
        replaced = np.full_like(held["exp_avg"], 0.25)
        held["exp_avg"] = replaced
        opt.step(grads[5])
        opt.step(grads[6])
        assert held["step"] == 3 and opt.state[0]["step"] == 7 and held["exp_avg"] is replaced
        results.append(([bits(p) for p in params], state_bits(opt)))
    assert results[0] == results[1]


def test_steps_of_one_group_do_not_wait_for_a_look_at_another():
    """opt.state of group 1 leaves group 0 on its run."""
    params, grads = _adam_and_grads()
    opt = Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], lr=0.1)
    opt.step(grads[0])
    opt.state[3]["step"]
    opt.step(grads[1])
    assert opt._runs[0] is not None and opt._runs[1] is None
    assert [opt.state[i]["step"] for i in range(4)] == [2, 2, 2, 2]


def test_asking_what_has_state_leaves_the_run():
    params, grads = _adam_and_grads()
    opt = Adam(params, lr=0.1)
    assert 0 not in opt.state and params[0] not in opt.state and len(opt.state) == 0
    opt.step(grads[0])
    assert 0 in opt.state and params[3] in opt.state and np.zeros(3) not in opt.state
    assert 4 not in opt.state and "x" not in opt.state and list(opt.state) == [0, 1, 2, 3]
    assert opt._runs[0] is not None
    opt.state.get(1)
    assert opt._runs[0] is None


@pytest.mark.parametrize(
    "edit",
    [
        lambda ps: ps.__setitem__(1, np.zeros(4)),
        lambda ps: ps.__setitem__(slice(0, 1), [np.zeros(3)]),
        lambda ps: ps.append(np.zeros(2)),
        lambda ps: ps.extend([np.zeros(2)]),
        lambda ps: ps.insert(0, np.zeros(2)),
        lambda ps: ps.pop(),
        lambda ps: ps.remove(ps[0]),
        lambda ps: ps.__delitem__(0),
        lambda ps: ps.clear(),
        lambda ps: ps.reverse(),
        lambda ps: ps.sort(key=len, reverse=True),
        lambda ps: ps.__iadd__([np.zeros(2)]),
        lambda ps: ps.__imul__(2),
    ],
    ids=["setitem", "setslice", "append", "extend", "insert", "pop", "remove", "delitem", "clear",
         "reverse", "sort", "iadd", "imul"],
)
def test_edited_params_list_is_refused_on_the_run(edit):
    params, grads = _adam_and_grads()
    opt = Adam(params, lr=0.1)
    opt.step(grads[0])
    opt.step(grads[1])
    assert opt._runs[0] is not None
    before = [bits(p) for p in params]
    edit(opt.param_groups[0]["params"])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\] changed since the group"):
        opt.step(grads[2])
    assert [bits(p) for p in params] == before
    assert all(opt.state[i]["step"] == 2 for i in range(4))


def _reverse_shape(p):
    p.shape = p.shape[::-1]


def _flip_dtype(p):
    p.dtype = np.int64 if p.dtype == np.float64 else np.float64


@pytest.mark.parametrize(
    "change,undo,message",
    [
        (lambda p: p.setflags(write=False), lambda p: p.setflags(write=True),
         "Adam.step: params[1] is read-only"),
        (_reverse_shape, _reverse_shape,
         "Adam.step: params[1] was changed in place: shape (2, 3) -> (3, 2)"),
        (_flip_dtype, _flip_dtype, "Adam.step: params[1] was changed in place: dtype float64 -> int64"),
    ],
    ids=["read-only", "shape", "dtype"],
)
@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
def test_param_changed_in_place_on_the_run(change, undo, message, two_groups):
    """Note [A bound call]: a run's bound call checks that the arrays it holds are unchanged; a
    param changed in place between steps is refused by name, as on the general path (whose calls
    of the last step verify the same), changing nothing, and once changed back the run goes on as
    the general path."""
    outcomes = []
    for general in (False, True):
        rng = np.random.default_rng(7)
        params = [rng.standard_normal(s) for s in [(4,), (2, 3), (5,)]]
        grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]
        opt = Adam([{"params": params[:2]}, {"params": params[2:]}] if two_groups else params,
                   lr=0.1)
        if general:
            general_path(opt)
        for k in range(3):
            opt.step(grads[k])
        assert (opt._runs[0] is None) == general
        before = [bits(p) for p in params]
        change(params[1])
        with pytest.raises((TypeError, ValueError)) as info:
            opt.step(grads[3])
        assert message in str(info.value)
        undo(params[1])
        assert [bits(p) for p in params] == before
        for k in range(3, 6):
            opt.step(grads[k])
        outcomes.append((type(info.value), str(info.value), [bits(p) for p in params],
                         state_bits(opt)))
    assert outcomes[0] == outcomes[1]


def test_grads_through_the_run_are_checked_as_on_the_general_path():
    """The grads are new at every step: each is checked against its param and against every
    array the call writes, on the run as on the general path."""
    bad = [
        lambda ps, gs: gs.__setitem__(1, gs[1].astype(np.float32)),
        lambda ps, gs: gs.__setitem__(2, gs[2][:-1]),
        lambda ps, gs: gs.__setitem__(0, ps[0]),
        lambda ps, gs: gs.__setitem__(3, np.repeat(gs[3], 2)[::2]),  # not contiguous
    ]
    for make in bad:
        outcomes = []
        for general in (False, True):
            params, grads, opt = _stepped(Adam, general)
            before = [bits(p) for p in params]
            g = [x.copy() for x in grads[2]]
            make(params, g)
            with pytest.raises((TypeError, ValueError)) as info:
                opt.step(g)
            assert [bits(p) for p in params] == before
            opt.step(grads[3])
            outcomes.append((type(info.value), str(info.value), [bits(p) for p in params]))
        assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    "edit",
    [
        lambda g: g["params"].__setitem__(0, g["params"][0]),
        lambda g: (g["params"].reverse(), g["params"].reverse()),
        lambda g: g.update(params=list(g["params"])),
    ],
    ids=["same-item", "reversed-twice", "new-list"],
)
def test_params_list_edited_back_still_steps(edit):
    """An edit that leaves the same arrays in the same order is not a change: the step runs (the
    list is compared element by element from then on)."""
    results = []
    for do_edit in (True, False):
        params, grads = _adam_and_grads()
        opt = Adam(params, lr=0.1)
        opt.step(grads[0])
        if do_edit:
            edit(opt.param_groups[0])
        opt.step(grads[1])
        opt.step(grads[2])
        results.append(([bits(p) for p in params], state_bits(opt)))
    assert results[0] == results[1]


def started(case_id, dtype, steps):
    """test_optim's case ``case_id`` after ``steps`` steps of its grads: (params, optimizer)."""
    case = next(c for c in CASES if c.id == case_id)
    groups = make_params(dtype)
    opt = build(case, groups)
    params = flat(groups)
    for k in range(steps):
        opt.step(grads_at(params, k))
    return case, params, opt


def test_load_state_dict_mid_run_continues_like_an_unbroken_run():
    case, params, opt = started("nadam", np.float64, 5)
    saved = opt.state_dict()
    saved_params = [p.copy() for p in params]
    for k in range(5, 9):  # steps that the load throws away
        opt.step(grads_at(params, 100 + k))
    for p, s in zip(params, saved_params):
        p[...] = s
    opt.load_state_dict(saved)
    for k in range(5, 12):
        if k == EDIT_AT:
            opt.param_groups[0]["lr"] *= 0.5
        opt.step(grads_at(params, k))

    want_params, want = drive(case, np.float64, general=True, steps=12)
    assert [bits(p) for p in params] == [bits(p) for p in want_params]
    assert state_bits(opt) == state_bits(want)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_of_an_optimizer_mid_run(how):
    """A copy continues like the original, touches none of its arrays, and finds its own params
    in ``opt.state``."""
    _, params, opt = started("adam", np.float32, 4)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    twin_params = flat([g["params"] for g in twin.param_groups])
    assert all(a is not b for a, b in zip(params, twin_params))
    for k in range(4, 9):
        opt.step(grads_at(params, k))
        twin.step(grads_at(twin_params, k))
    assert [bits(p) for p in params] == [bits(p) for p in twin_params]
    assert state_bits(opt) == state_bits(twin)
    assert twin.state[twin_params[3]]["step"] == 9
    with pytest.raises(KeyError):
        twin.state[params[3]]


# ---- random interleavings ------------------------------------------------------------------------

OPS = ("step", "step", "step", "look", "state_dict", "reload", "lr", "same-value", "params-noop",
       "load-older", "edit-held")


def _apply(op, opt, params, k, rng_choice, saved, held):
    """One operation on an optimizer (``rng_choice``: a number in [0, 1) picking a param or a
    group); returns the next grad index. ``held``: state dicts the "user" kept from a look."""
    n = len(params)
    if op == "step":
        opt.step(grads_at(params, k))
        return k + 1
    if op == "look":
        state = opt.state.get(int(rng_choice * n))
        if state is not None:
            held.append(state)
    elif op == "edit-held" and held:  # a dict kept from an earlier look, edited now
        state = held[int(rng_choice * len(held))]
        state["step"] = max(state["step"] - 1, 0)
    elif op == "state_dict":
        opt.state_dict()
    elif op == "reload":
        opt.load_state_dict(opt.state_dict())
    elif op == "lr":
        g = opt.param_groups[int(rng_choice * len(opt.param_groups))]
        if not callable(g["lr"]):
            g["lr"] *= 0.5
    elif op == "same-value":  # an equal value, a new object: the group is checked again
        g = opt.param_groups[int(rng_choice * len(opt.param_groups))]
        g["weight_decay"] = g["weight_decay"] * 1.0
    elif op == "params-noop":
        ps = opt.param_groups[int(rng_choice * len(opt.param_groups))]["params"]
        ps[0] = ps[0]
    elif op == "load-older" and saved:
        opt.load_state_dict(saved[0])
    return k


@settings(max_examples=60, deadline=None)
@given(
    case_index=st.integers(0, len(CASES) - 1),
    ops=st.lists(st.tuples(st.sampled_from(OPS), st.floats(0, 1, exclude_max=True)),
                 min_size=1, max_size=30),
)
def test_random_interleavings_match_the_general_path(case_index, ops):
    """Any sequence of steps, looks at the state, state dicts, reloads (of the current state or
    of an older one), edits of the groups and of state dicts the user kept gives the bits of the
    general path."""
    case = CASES[case_index]
    runs = []
    for general in (False, True):
        groups = make_params(np.float64)
        opt = build(case, groups)
        if general:
            general_path(opt)
        params = flat(groups)
        k = 0
        saved, held = [], []
        for op, choice in ops:
            if op == "load-older" and not saved:
                saved.append(opt.state_dict())
            k = _apply(op, opt, params, k, choice, saved, held)
        runs.append(([bits(p) for p in params], state_bits(opt)))
    assert runs[0] == runs[1]
