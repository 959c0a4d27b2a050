"""Bad inputs are refused with the documented exception and message, before anything is written.

Every case builds a valid call (lists of ``n`` arrays, the last two of shape (4, 3)), spoils the
LAST entry of one list (so that a kernel updating tensor by tensor while checking would already
have written the others), and asserts the exception type, the message, and that every buffer of
the call — params, grads, states, and the spoiled one — is bitwise unchanged afterwards.
The cases are generated from the signature table in ``algos.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from fusedopt import functional, reference
from fusedopt._spec import SPECS

from algos import ALGO_BY_NAME, ALGO_CONFIG_IDS, ALGO_CONFIGS, ALGOS, DTYPE_IDS, DTYPES, SIGNATURES
from test_parity import TOL

LENGTHS = (4, 300)  # a short call and a long one; the bad entry is always the last


def make_bufs(sig, n, dtype=np.float32, seed=0):
    """A valid call: ``n`` arrays per list, 1-D of 1/7/33 elements, then two (4, 3) arrays."""
    rng = np.random.default_rng(seed)
    shapes = [((1, 7, 33)[k % 3],) for k in range(n - 2)] + [(4, 3), (4, 3)]
    bufs = {}
    for name, role in sig.lists:
        if role == "state" or name == "outs":
            bufs[name] = [np.zeros(s, dtype) for s in shapes]
        else:
            bufs[name] = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return bufs


def snapshot(bufs):
    """Everything needed to prove later that nothing was written: type, dtype and bytes."""
    snap = {}
    for name, lst in bufs.items():
        if isinstance(lst, (list, tuple)):
            snap[name] = [
                (type(a), a.dtype, a.shape, a.tobytes()) if isinstance(a, np.ndarray) else repr(a)
                for a in lst
            ]
        else:
            snap[name] = repr(lst)
    return snap


def assert_untouched(bufs, snap):
    assert snapshot(bufs) == snap, "a buffer was modified by a call that raised"


def unaligned(a):
    """A writeable copy of ``a`` whose data pointer is misaligned for its dtype."""
    off = 1 if a.dtype.itemsize == 4 else 4
    raw = bytearray(a.nbytes + off)
    out = np.frombuffer(raw, dtype=a.dtype, offset=off, count=a.size).reshape(a.shape)
    out[...] = a
    assert out.flags.writeable and not out.flags.aligned
    return out


def strided(a):
    """A non-contiguous view with ``a``'s values and shape."""
    base = np.empty((2 * a.shape[0],) + a.shape[1:], a.dtype)
    view = base[::2]
    view[...] = a
    return view


def fill(text, n):
    """Put the list length into a message template: ``{n}`` entries, the bad one ``{i}``."""
    return text.format(n=n, i=n - 1, i1=n - 2, n1=n - 1, np1=n + 1)


def msg(sig, text):
    """``n -> regex`` for the message ``"{fn}: {text}"`` (``text`` a template for :func:`fill`)."""
    return lambda n: "^" + sig.err + ": " + re.escape(fill(text, n))


def overlap_msg(sig, a, b):
    """``n -> regex`` for "a overlaps b" in either order (the kernel names the higher address
    first)."""
    def match(n):
        x, y = re.escape(fill(a, n)), re.escape(fill(b, n))
        return f"^{sig.err}: ({x} overlaps {y}|{y} overlaps {x})"
    return match


class Case:
    """A spoiled call: ``spoil(bufs, n)`` edits ``bufs`` in place and returns keyword overrides."""

    def __init__(self, id, spoil, exc, match, dtype=np.float32):
        self.id, self.spoil, self.exc, self.match, self.dtype = id, spoil, exc, match, dtype


def cases_for(sig):
    ref, second = sig.kernel_order[0], sig.kernel_order[1]
    out = []

    def add(*args, **kw):
        out.append(Case(*args, **kw))

    for name, _ in sig.lists:
        k = sig.kernel_order.index(name)
        written = k != 1

        def at_last(fn, name=name):
            def spoil(bufs, n):
                bufs[name][n - 1] = fn(bufs[name][n - 1])
                return {}
            return spoil

        def whole(value, name=name):
            def spoil(bufs, n):
                bufs[name] = value
                return {}
            return spoil

        # -- the list itself
        add(f"{name}-int", whole(3), TypeError,
            msg(sig, f"{name} must be a list or tuple of numpy arrays, got int"))
        add(f"{name}-dict", whole({}), TypeError,
            msg(sig, f"{name} must be a list or tuple of numpy arrays, got dict"))
        if name in sig.optional:
            add(f"{name}-none", whole(None), ValueError, msg(sig, f"{name} are required"))
        else:
            add(f"{name}-none", whole(None), TypeError,
                msg(sig, f"{name} must be a list or tuple of numpy arrays, got NoneType"))

        def drop_last(bufs, n, name=name):
            bufs[name] = bufs[name][:-1]
            return {}

        def add_one(bufs, n, name=name):
            bufs[name] = list(bufs[name]) + [bufs[name][0].copy()]
            return {}

        def as_tuple_short(bufs, n, name=name):
            bufs[name] = tuple(bufs[name][:-1])
            return {}

        if k == 0:
            add(f"{name}-short", drop_last, ValueError,
                msg(sig, f"{second} has {{n}} arrays, expected {{n1}} (one per param)"))
        else:
            add(f"{name}-short", drop_last, ValueError,
                msg(sig, f"{name} has {{n1}} arrays, expected {{n}} (one per param)"))
            add(f"{name}-long", add_one, ValueError,
                msg(sig, f"{name} has {{np1}} arrays, expected {{n}} (one per param)"))
            add(f"{name}-tuple-short", as_tuple_short, ValueError,
                msg(sig, f"{name} has {{n1}} arrays, expected {{n}} (one per param)"))

        # -- the last element is not an array
        add(f"{name}-pylist", at_last(lambda a: a.ravel().tolist()), TypeError,
            msg(sig, f"{name}[{{i}}] is a list, expected a numpy.ndarray"))
        add(f"{name}-float", at_last(lambda a: 0.5), TypeError,
            msg(sig, f"{name}[{{i}}] is a float, expected a numpy.ndarray"))

        # -- dtype
        if k == 0:
            for bad in ("int32", "int16", "complex128"):
                def all_bad(bufs, n, bad=bad):
                    for lst in bufs.values():
                        lst[n - 1] = lst[n - 1].astype(bad)
                    return {}
                add(f"{name}-{bad}", all_bad, TypeError,
                    msg(sig, f"{name}[{{i}}] has dtype {bad}, expected float32, float64, "
                             "bfloat16 or float16"))
        else:
            # beside a float32 reference: 16-bit grads, bfloat16 state (csrc/storage.h)
            allowed = "float32, bfloat16 or float16" if k == 1 else "float32 or bfloat16"
            add(f"{name}-float64-for-float32", at_last(lambda a: a.astype(np.float64)), TypeError,
                msg(sig, f"{name}[{{i}}] has dtype float64, expected {allowed} "
                         f"(with a float32 {ref}[{{i}}])"))
            add(f"{name}-float32-for-float64", at_last(lambda a: a.astype(np.float32)), TypeError,
                msg(sig, f"{name}[{{i}}] has dtype float32, expected float64 "
                         f"(the dtype of {ref}[{{i}}])"), dtype=np.float64)
            add(f"{name}-int32", at_last(lambda a: a.astype(np.int32)), TypeError,
                msg(sig, f"{name}[{{i}}] has dtype int32, expected {allowed} "
                         f"(with a float32 {ref}[{{i}}])"))
        add(f"{name}-big-endian", at_last(lambda a: a.astype(">f4")), TypeError,
            msg(sig, f"{name}[{{i}}] has a non-native byte order"))

        # -- shape
        if k == 0:
            add(f"{name}-shape", at_last(lambda a: a.reshape(3, 4)), ValueError,
                msg(sig, f"{second}[{{i}}] has shape (4, 3), expected (3, 4) "
                         f"(the shape of {ref}[{{i}}])"))
        else:
            add(f"{name}-shape", at_last(lambda a: a.reshape(3, 4)), ValueError,
                msg(sig, f"{name}[{{i}}] has shape (3, 4), expected (4, 3) "
                         f"(the shape of {ref}[{{i}}])"))
            add(f"{name}-size", at_last(lambda a: np.zeros(13, a.dtype)), ValueError,
                msg(sig, f"{name}[{{i}}] has shape (13,), expected (4, 3) "
                         f"(the shape of {ref}[{{i}}])"))

        # -- writeability (only written lists; read-only inputs are accepted, tested below)
        if written:
            def readonly(a):
                a.flags.writeable = False
                return a
            add(f"{name}-readonly", at_last(readonly), ValueError,
                msg(sig, f"{name}[{{i}}] is read-only"))

        # -- layout
        add(f"{name}-strided", at_last(strided), ValueError,
            msg(sig, f"{name}[{{i}}] is not contiguous"))
        add(f"{name}-reversed", at_last(lambda a: np.ascontiguousarray(a)[::-1]), ValueError,
            msg(sig, f"{name}[{{i}}] is not contiguous"))
        if k == 0:
            add(f"{name}-fortran", at_last(np.asfortranarray), ValueError,
                msg(sig, f"{second}[{{i}}] has a different memory order"))
        else:
            add(f"{name}-fortran", at_last(np.asfortranarray), ValueError,
                msg(sig, f"{name}[{{i}}] has a different memory order"))
        add(f"{name}-unaligned", at_last(unaligned), ValueError,
            msg(sig, f"{name}[{{i}}] is not aligned"))
        add(f"{name}-unaligned-f8", at_last(unaligned), ValueError,
            msg(sig, f"{name}[{{i}}] is not aligned"), dtype=np.float64)

        # -- overlap
        if k != 0:
            def same_as_ref(bufs, n, name=name):
                bufs[name][n - 1] = bufs[ref][n - 1]
                return {}
            add(f"{name}-is-{ref}", same_as_ref, ValueError,
                overlap_msg(sig, f"{name}[{{i}}]", f"{ref}[{{i}}]"))

            def half_overlap(bufs, n, name=name):
                base = np.zeros(18, bufs[ref][n - 1].dtype)
                bufs[ref][n - 1] = base[:12].reshape(4, 3)
                bufs[name][n - 1] = base[6:].reshape(4, 3)
                return {}
            add(f"{name}-overlaps-{ref}", half_overlap, ValueError,
                overlap_msg(sig, f"{name}[{{i}}]", f"{ref}[{{i}}]"))
        if written:
            def twice(bufs, n, name=name):
                bufs[name][n - 1] = bufs[name][n - 2]
                return {}
            add(f"{name}-twice", twice, ValueError,
                overlap_msg(sig, f"{name}[{{i}}]", f"{name}[{{i1}}]"))

            def view_of_previous(bufs, n, name=name):
                prev = bufs[name][n - 2]
                base = np.zeros(prev.size + 6, prev.dtype)
                bufs[name][n - 2] = base[: prev.size].reshape(prev.shape)
                bufs[name][n - 1] = base[6:].reshape(prev.shape)
                return {}
            add(f"{name}-overlaps-previous", view_of_previous, ValueError,
                overlap_msg(sig, f"{name}[{{i}}]", f"{name}[{{i1}}]"))

    # -- state lists overlapping each other
    states = [name for name in sig.kernel_order[2:]]
    if states:
        other = states[-1] if len(states) > 1 else ref

        def state_is_other(bufs, n, a=states[0], b=other):
            bufs[a][n - 1] = bufs[b][n - 1]
            return {}
        add(f"{states[0]}-is-{other}", state_is_other, ValueError,
            overlap_msg(sig, f"{states[0]}[{{i}}]", f"{other}[{{i}}]"))

    # -- step
    if sig.has_step:
        for bad in (0, -3):
            add(f"step{bad}", lambda bufs, n, bad=bad: {"step": bad}, ValueError,
                msg(sig, f"step must be >= 1, got {bad}"))
    return out


ERROR_CASES = [
    pytest.param(sig, case, n, id=f"{sig.fn}-{case.id}-n{n}")
    for sig in SIGNATURES
    for case in cases_for(sig)
    for n in LENGTHS
]


@pytest.mark.parametrize("sig, case, n", ERROR_CASES)
def test_bad_input_is_refused_and_nothing_is_written(sig, case, n):
    bufs = make_bufs(sig, n, case.dtype)
    override = case.spoil(bufs, n)
    snap = snapshot(bufs)
    with pytest.raises(case.exc, match=case.match(n)):
        sig.call(functional, bufs, **override)
    assert_untouched(bufs, snap)


# -- hyper-parameter combinations refused by functional and reference alike

HP_ERRORS = [
    ("sgd-nesterov-no-momentum", "sgd", dict(momentum=0.0, nesterov=True), True,
     "^sgd: Nesterov momentum requires a momentum and zero dampening$"),
    ("sgd-nesterov-dampening", "sgd", dict(momentum=0.9, dampening=0.1, nesterov=True), True,
     "^sgd: Nesterov momentum requires a momentum and zero dampening$"),
    ("sgd-momentum-no-buffers", "sgd", dict(momentum=0.9), False,
     "^sgd: momentum_buffers are required when momentum != 0$"),
    ("rmsprop-momentum-no-buffers", "rmsprop", dict(momentum=0.9), False,
     "^rmsprop: momentum_buffers are required when momentum > 0$"),
    ("rmsprop-centered-no-grad_avgs", "rmsprop", dict(centered=True), False,
     "^rmsprop: grad_avgs are required when centered=True$"),
    ("adam-amsgrad-no-max", "adam", dict(amsgrad=True), False,
     "^adam: max_exp_avg_sqs are required when amsgrad=True$"),
    ("adamw-amsgrad-no-max", "adamw", dict(amsgrad=True), False,
     "^adamw: max_exp_avg_sqs are required when amsgrad=True$"),
]


@pytest.mark.parametrize("module", [functional, reference], ids=["functional", "reference"])
@pytest.mark.parametrize(
    "fn, hp, with_states, match", [pytest.param(*c[1:], id=c[0]) for c in HP_ERRORS]
)
def test_bad_hyper_parameters(module, fn, hp, with_states, match):
    algo = ALGO_BY_NAME[fn]
    rng = np.random.default_rng(0)
    p, g = [rng.standard_normal(5)], [rng.standard_normal(5)]
    names = [n for n, role in algo.args if role == "state"]
    states = {s: ([np.zeros(5)] if with_states or s in ("exp_avgs", "exp_avg_sqs", "square_avgs")
                  else None) for s in names}
    bufs = dict(params=p, grads=g, **states)
    snap = snapshot(bufs)
    with pytest.raises(ValueError, match=match):
        getattr(module, fn)(p, g, *states.values(), step=1, **hp)
    assert_untouched(bufs, snap)


@pytest.mark.parametrize("module", [functional, reference], ids=["functional", "reference"])
@pytest.mark.parametrize("sig", [s for s in SIGNATURES if s.has_step], ids=lambda s: s.fn)
def test_step_zero_in_reference_too(module, sig):
    bufs = make_bufs(sig, 3, np.float64)
    snap = snapshot(bufs)
    with pytest.raises(ValueError, match=msg(sig, "step must be >= 1, got 0")(3)):
        sig.call(module, bufs, step=0)
    assert_untouched(bufs, snap)


# -- inputs that must be accepted


def run_pair(sig, bufs, steps=(1, 2, 3)):
    """Apply ``steps`` through functional on ``bufs`` and through reference on float64 copies."""
    ref_bufs = {k: [a.astype(np.float64) for a in v] for k, v in bufs.items()}
    for t in steps:
        sig.call(functional, bufs, step=t)
        sig.call(reference, ref_bufs, step=t)
    return ref_bufs


def assert_matches(bufs, ref_bufs):
    for name in bufs:
        for i, (a, r) in enumerate(zip(bufs[name], ref_bufs[name], strict=True)):
            rtol, atol = TOL[a.dtype.type]
            scale = float(np.max(np.abs(r), initial=0.0))
            np.testing.assert_allclose(a, r, rtol=rtol, atol=atol * scale, err_msg=f"{name}[{i}]")


@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.fn)
def test_read_only_inputs_are_accepted(sig):
    bufs = make_bufs(sig, 6, np.float64)
    read_only = sig.kernel_order[1]
    for a in bufs[read_only]:
        a.flags.writeable = False
    ref_bufs = run_pair(sig, bufs)
    assert_matches(bufs, ref_bufs)


@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.fn)
def test_read_only_inputs_may_share_memory(sig):
    """Only written buffers must be disjoint; one gradient may be read for two params."""
    bufs = make_bufs(sig, 6, np.float64)
    read_only = sig.kernel_order[1]
    bufs[read_only][-1] = bufs[read_only][-2]
    ref_bufs = run_pair(sig, bufs)
    assert_matches(bufs, ref_bufs)


def _carved(n, order, rng):
    """Adam's four lists of ``n`` arrays of 8 float32 carved from one buffer, list by list, the
    arrays of each list laid out in the address order ``order`` names: "ascending" (one run per
    list), "runs" (each list in 3 ascending runs: 12 runs in all), "random" (many runs)."""
    base = rng.standard_normal(4 * n * 8).astype(np.float32) ** 2
    lists = []
    for s in range(4):
        if order == "ascending":
            pos = np.arange(n)
        elif order == "runs":
            pos = np.concatenate([np.arange(n)[k::3] for k in range(3)])
        else:
            pos = rng.permutation(n)
        lists.append([base[(s * n + q) * 8:(s * n + q + 1) * 8] for q in pos])
    return base, lists


def _overlap(kind, base, lists, j, k):
    """Makes exp_avg_sqs[k] or grads[k] overlap the j-th arrays; returns the message's pattern."""
    ps, gs, ms, vs = lists
    if kind == "half":  # from the middle of exp_avgs[j] into the array after it: met right after it
        at = (ms[j].ctypes.data - base.ctypes.data) // 4
        vs[k] = base[at + 4:at + 12]
    elif kind == "alias":  # at one address, the later slot is the one named as overlapping
        vs[k] = ms[j]
    else:
        gs[k] = ps[j]
        return rf"grads\[{k}\] overlaps params\[{j}\]"
    return rf"exp_avg_sqs\[{k}\] overlaps exp_avgs\[{j}\]"


@pytest.mark.parametrize("kind", ["half", "alias", "grad-is-param"])
@pytest.mark.parametrize("empty", [0, 3], ids=["", "3empty"])
@pytest.mark.parametrize("order", ["ascending", "runs", "random"])
@pytest.mark.parametrize("n", [1, 5, 40, 300])
def test_overlap_is_found_whatever_the_address_order(order, n, empty, kind):
    """Note [Sorting spans]: a call's spans are radix-sorted by address (sorted outright when
    few); the one overlap of a call is found, and named the same way, whatever order its arrays
    lie in memory, and of two arrays at one address the later slot is named. With ``empty``, the
    lists begin with that many empty arrays (which have no memory to check)."""
    rng = np.random.default_rng(n)
    for _ in range(3):
        base, lists = _carved(n, order, rng)
        lists = [[np.zeros(0, np.float32) for _ in range(empty)] + x for x in lists]
        good = [list(x) for x in lists]
        j, k = empty + rng.integers(n), empty + rng.integers(n)
        message = _overlap(kind, base, lists, j, k)
        before = base.tobytes()
        with pytest.raises(ValueError, match=f"^adam: {message}$"):
            functional.adam(*lists, step=1, lr=0.1)
        assert base.tobytes() == before
        functional.adam(*good, step=1, lr=0.1)  # the same arrays, disjoint: the call goes through
        assert base.tobytes() != before


@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.fn)
def test_c_and_f_contiguous_at_once_is_any_order(sig):
    """An array that is both C- and F-contiguous (a row, a column, 1-D) matches either order."""
    bufs = make_bufs(sig, 4, np.float64)
    ref = sig.kernel_order[0]
    for name, lst in bufs.items():
        order = "F" if name == ref else "C"
        lst[-1] = np.asarray(lst[-1].reshape(1, 12), order=order)
        lst[-2] = np.asarray(lst[-2].reshape(12, 1), order="C" if name == ref else "F")
    ref_bufs = run_pair(sig, bufs)
    assert_matches(bufs, ref_bufs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.fn)
def test_empty_arrays_are_a_no_op(sig, dtype):
    """Size-0 arrays of any shape pass every check and are not touched; the others are updated."""
    bufs = make_bufs(sig, 5, dtype)
    for lst in bufs.values():
        lst[0] = np.zeros((0,), dtype)
        lst[1] = np.zeros((3, 0), dtype)
        lst[2] = np.asfortranarray(np.zeros((0, 4), dtype))
    ref_bufs = run_pair(sig, bufs)
    for name, lst in bufs.items():
        assert [a.shape for a in lst[:3]] == [(0,), (3, 0), (0, 4)], name
    assert_matches(bufs, ref_bufs)


@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.fn)
def test_only_empty_arrays(sig):
    bufs = {
        name: [np.zeros((0,), np.float32), np.zeros((2, 0), np.float64)] for name, _ in sig.lists
    }
    snap = snapshot(bufs)
    sig.call(functional, bufs)
    assert_untouched(bufs, snap)


NAN_CASES = [
    pytest.param(a, c, dt, id=f"{aid}-{DTYPE_IDS[dt]}")
    for (a, c), aid in zip(ALGO_CONFIGS, ALGO_CONFIG_IDS)
    for dt in DTYPES
]


@pytest.mark.parametrize("algo, cfg, dtype", NAN_CASES)
def test_nan_and_inf_gradients_propagate_like_the_reference(algo, cfg, dtype):
    """A NaN or Inf gradient does not crash; NaN and Inf reach the same elements of the params
    and states as in the reference (NaN-propagating max in AMSGrad and Adamax included), and every
    other element is updated normally."""
    rng = np.random.default_rng(5)
    n = 40
    params = [rng.standard_normal(n).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)]
    states = algo.new_states(params, cfg)
    params64 = [p.astype(np.float64) for p in params]
    states64 = {k: [a.astype(np.float64) for a in v] for k, v in states.items()}
    carry_f = carry_r = None
    for k in range(4):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        if k == 1:
            grads[0][:6] = [np.nan, np.inf, -np.inf, np.nan, np.inf, -np.inf]
            grads[1][0, 0] = np.nan
        if k == 2:
            grads[0][6:9] = [np.nan, np.inf, -np.inf]
        t = cfg.start + k
        carry_f = algo.step(functional, params, grads, states, t, cfg.hp, carry_f)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            carry_r = algo.step(reference, params64, [g.astype(np.float64) for g in grads],
                                states64, t, cfg.hp, carry_r)
    got = dict(params=params, **states)
    ref = dict(params=params64, **states64)
    rtol, atol = TOL[dtype]
    for name in got:
        for i, (a, r) in enumerate(zip(got[name], ref[name])):
            what = f"{name}[{i}]"
            assert np.array_equal(np.isnan(a), np.isnan(r)), f"{what}: NaN in other places"
            assert np.array_equal(np.isposinf(a), np.isposinf(r)), f"{what}: +Inf in other places"
            assert np.array_equal(np.isneginf(a), np.isneginf(r)), f"{what}: -Inf in other places"
            fin = np.isfinite(r)
            scale = float(np.max(np.abs(r[fin]), initial=0.0))
            np.testing.assert_allclose(a[fin], r[fin], rtol=rtol, atol=atol * scale, err_msg=what)
    if algo.name == "lion":  # sgn(NaN) = 0: the NaN stays in the momentum, the weights move on
        assert np.isnan(states["exp_avgs"][0][0]) and np.isfinite(params[0]).all()
    else:
        assert np.isnan(params[0][0])


# -- a learning rate that is not a number: refused by every call that takes one (a regression of
# the step-function hyper-parameters let None through as +inf and a callable as NaN)


@pytest.mark.parametrize("bad, exc", [(None, TypeError), (lambda t: 0.1, TypeError),
                                      ("0.1", TypeError), (float("nan"), ValueError)],
                         ids=["None", "callable", "str", "nan"])
@pytest.mark.parametrize("algo", [a for a in ALGOS if "lr" in SPECS[a.name].call_hypers],
                         ids=lambda a: a.name)
def test_a_learning_rate_that_is_not_a_number_is_refused(algo, bad, exc):
    cfg = algo.config(algo.full)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5)]
    grads = [rng.standard_normal(5)]
    states = algo.new_states(params, cfg)
    bufs = dict(params=params, grads=grads, **states)
    snap = snapshot(bufs)
    with pytest.raises(exc, match="lr|learning rate"):
        algo.step(functional, params, grads, states, 2, {**cfg.hp, "lr": bad})
    assert_untouched(bufs, snap)


def test_schedule_free_far_into_a_run_needs_its_scalar_state():
    """Without weight_sum and lr_max a call replays the run from step 1 to find them; past 2**24
    steps that is refused (it would hold the interpreter for seconds), and nothing is written."""
    p, g, z, v = (np.ones(3) for _ in range(4))
    snap = snapshot(dict(params=[p], zs=[z], exp_avg_sqs=[v]))
    with pytest.raises(ValueError, match="weight_sum and lr_max are needed past step 16777216"):
        functional.adamw_schedulefree(p, g, z, v, step=2**40)
    assert_untouched(dict(params=[p], zs=[z], exp_avg_sqs=[v]), snap)
    functional.adamw_schedulefree(p, g, z, v, step=2**40, weight_sum=1.0, lr_max=0.0025)
