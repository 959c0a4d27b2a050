"""fusedopt.EMA: the weight EMA against fusedopt.reference and against its closed form.

Tolerances as in test_optim.py: fp64 rtol 1e-12 (atol 1e-13), fp32 rtol 1e-5 (atol 1e-6). The
closed form is the bias-corrected weighted mean
``sum_k (1 - b) b^(n-k) x_k / (1 - b^n)`` of the n values seen, computed in float64.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fusedopt
from fusedopt import reference
from fusedopt.optim import EMA

from backends import CallLog, Oracle

TOL = {np.float64: dict(rtol=1e-12, atol=1e-13), np.float32: dict(rtol=1e-5, atol=1e-6)}
UPDATES = 25


def make_params(seed=0):
    """Mixed dtypes and layouts in one EMA: one fused call covers them all."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype, order in (((7,), np.float32, "C"), ((33, 5), np.float64, "F"), ((4097,), np.float64, "C"),
                                ((1,), np.float32, "C")):
        p = np.empty(shape, dtype=dtype, order=order)
        p[...] = rng.standard_normal(shape)
        out.append(p)
    return out


def drive(ema, params, start, stop, seed=1):
    """Set the params to the values of updates start..stop-1 and fold each in."""
    for k in range(start, stop):
        rng = np.random.default_rng([seed, k])
        for p in params:
            p[...] = rng.standard_normal(p.shape)
        ema.update()


def bits(a):
    return (a.dtype, a.shape, a.flags.f_contiguous, a.tobytes(order="A"))


def test_matches_reference_and_closed_form():
    decay = 0.9
    got_params, want_params = make_params(), make_params()
    got, want = EMA(got_params, decay=decay), EMA(want_params, decay=decay)
    want._backend = Oracle(reference)
    history = []
    for k in range(UPDATES):
        drive(got, got_params, k, k + 1)
        drive(want, want_params, k, k + 1)
        history.append([p.astype(np.float64) for p in got_params])
    assert got.num_updates == want.num_updates == UPDATES
    n = UPDATES
    weights = np.array([(1 - decay) * decay ** (n - 1 - k) for k in range(n)]) / (1 - decay**n)
    for i, (a, b) in enumerate(zip(got.averages(), want.averages())):
        tol = TOL[a.dtype.type]
        assert a.dtype == got_params[i].dtype and a.flags.f_contiguous == got_params[i].flags.f_contiguous
        np.testing.assert_allclose(a, b, err_msg=f"averages[{i}]", **tol)
        closed = sum(w * h[i] for w, h in zip(weights, history))
        np.testing.assert_allclose(a, closed, err_msg=f"closed form {i}", **tol)


def test_one_fused_call_each():
    params = make_params()
    ema = EMA(params, decay=0.99)
    ema._backend = log = CallLog()
    ema.update()
    ema.update(params)
    ema.averages()
    ema.copy_to()
    # the update is bound once, each read-out binds its own outputs
    assert log.binds == ["ewa", "ewa_readout", "ewa_readout"]
    assert [(name, n, step) for name, n, step, _ in log.calls] == [
        ("ewa", 4, None), ("ewa", 4, None), ("ewa_readout", 4, 2), ("ewa_readout", 4, 2)]


def test_copy_to_writes_in_place():
    w = np.array([1.0, 3.0])
    ema = EMA(w, decay=0.5)  # a bare array: averages() returns a bare array
    ema.update()
    w[:] = [3.0, 5.0]
    ema.update()
    avg = ema.averages()
    assert isinstance(avg, np.ndarray)
    np.testing.assert_allclose(avg, [(0.25 * 1 + 0.5 * 3) / 0.75, (0.25 * 3 + 0.5 * 5) / 0.75], rtol=1e-15)
    other = np.zeros(2)
    ema.copy_to(other)
    np.testing.assert_array_equal(other, avg)
    ref = w
    ema.copy_to()
    assert ref is w
    np.testing.assert_array_equal(w, avg)


def test_decay_zero_is_the_last_value():
    w = np.array([2.0])
    ema = EMA([w], decay=0.0)
    drive(ema, [w], 0, 3)
    np.testing.assert_array_equal(ema.averages()[0], w)


def test_state_dict_round_trip_is_bitwise():
    unbroken_params = make_params()
    unbroken = EMA(unbroken_params, decay=0.95)
    drive(unbroken, unbroken_params, 0, UPDATES)

    params = make_params()
    first = EMA(params, decay=0.95)
    drive(first, params, 0, 11)
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    saved_copy = first.state_dict()
    saved_copy["averages"][0][...] = 42.0  # the state dict holds copies
    assert not np.any(first.state_dict()["averages"][0] == 42.0)
    resumed = EMA(params, decay=0.95)
    resumed.load_state_dict(saved)
    assert resumed.num_updates == 11
    drive(resumed, params, 11, UPDATES)
    for a, b in zip(resumed.averages(), unbroken.averages()):
        assert bits(a) == bits(b)
    for a, b in zip(resumed.state_dict()["averages"].values(), unbroken.state_dict()["averages"].values()):
        assert bits(a) == bits(b)


def _edit(fn):
    def make(sd):
        fn(sd)
        return sd

    return make


BAD_STATE_DICTS = [
    ("not-a-dict", lambda sd: [], ValueError, "expected a dict with 'decay', 'num_updates' and 'averages'"),
    ("decay", _edit(lambda sd: sd.update(decay=0.5)), ValueError, "the state dict has decay=0.5, this EMA decay=0.99"),
    ("count", _edit(lambda sd: sd["averages"].pop(3)), ValueError, "the state dict has 3 averages, this EMA has 4"),
    ("shape", _edit(lambda sd: sd["averages"].update({2: np.zeros(4096)})), ValueError,
     "averages[2] has shape (4096,), expected (4097,)"),
    ("dtype", _edit(lambda sd: sd["averages"].update({0: np.zeros(7)})), ValueError,
     "averages[0] has dtype float64, expected float32"),
    ("not-an-array", _edit(lambda sd: sd["averages"].update({0: [0.0] * 7})), TypeError,
     "averages[0] is a list, expected a numpy.ndarray"),
    ("num-updates", _edit(lambda sd: sd.update(num_updates=-2)), ValueError, "expected an int >= 0"),
]


@pytest.mark.parametrize("name,make,exc,message", BAD_STATE_DICTS, ids=[b[0] for b in BAD_STATE_DICTS])
def test_bad_state_dict_changes_nothing(name, make, exc, message):
    params = make_params()
    ema = EMA(params, decay=0.99)
    drive(ema, params, 0, 3)
    before = ema.state_dict()
    with pytest.raises(exc) as info:
        ema.load_state_dict(make(ema.state_dict()))
    assert str(info.value).startswith("EMA.load_state_dict: ") and message in str(info.value)
    after = ema.state_dict()
    assert after["num_updates"] == 3
    assert all(bits(after["averages"][i]) == bits(a) for i, a in before["averages"].items())


@pytest.mark.parametrize(
    "params,decay,exc,message",
    [
        ([np.ones(2)], 1.0, ValueError, "EMA: decay must be in [0, 1), got decay=1.0"),
        ([np.ones(2)], -0.1, ValueError, "EMA: decay must be in [0, 1), got decay=-0.1"),
        ([np.ones(2)], "0.9", TypeError, "EMA: decay must be a real number, got str"),
        ([], 0.9, ValueError, "EMA: got an empty parameter list"),
        ([np.ones(2), np.ones(2, np.int32)], 0.9, TypeError,
         "EMA: params[1] has dtype int32, expected float32, float64, bfloat16 or float16"),
        ([np.ones(2), (1.0, 2.0)], 0.9, TypeError,
         "EMA: params[1] is a tuple, expected a numpy.ndarray (or a CUDA array of CuPy or PyTorch)"),
    ],
    ids=["decay-1", "decay-negative", "decay-str", "empty", "int-dtype", "not-an-array"],
)
def test_constructor_errors(params, decay, exc, message):
    with pytest.raises(exc) as info:
        EMA(params, decay=decay)
    assert type(info.value) is exc and str(info.value) == message


@pytest.mark.parametrize(
    "make,exc,message",
    [
        (lambda p: p[:3], ValueError, "EMA.update: got 3 arrays for 4 averages"),
        (lambda p: p[:2] + [np.ones(4096), p[3]], ValueError,
         "EMA.update: params[2] has shape (4096,), expected (4097,) (the shape of averages[2])"),
        (lambda p: [p[0].astype(np.float64)] + p[1:], TypeError,
         "EMA.update: params[0] has dtype float64, expected float32, bfloat16 or float16 (with a "
         "float32 averages[0])"),
        (lambda p: p[0], TypeError, "EMA.update: params must be a list of arrays, got ndarray"),
    ],
    ids=["count", "shape", "dtype", "bare-array"],
)
def test_update_errors_change_nothing(make, exc, message):
    params = make_params()
    ema = EMA(params, decay=0.99)
    drive(ema, params, 0, 2)
    before = ema.state_dict()
    with pytest.raises(exc) as info:
        ema.update(make(params))
    assert str(info.value) == message
    assert ema.num_updates == 2
    assert all(bits(ema.state_dict()["averages"][i]) == bits(a) for i, a in before["averages"].items())


def test_reading_before_any_update_raises():
    w = np.ones(3)
    ema = EMA([w])
    with pytest.raises(RuntimeError, match=r"EMA.averages: no update yet"):
        ema.averages()
    with pytest.raises(RuntimeError, match=r"EMA.copy_to: no update yet"):
        ema.copy_to()
    np.testing.assert_array_equal(w, 1.0)


def test_decay_is_read_only_and_exported():
    ema = EMA([np.ones(1)], decay=0.9)
    with pytest.raises(AttributeError):
        ema.decay = 0.5
    assert ema.decay == 0.9
    assert fusedopt.EMA is EMA
    assert repr(ema) == "EMA(decay=0.9, arrays=1, num_updates=0)"


def test_copy_to_overlapping_params_is_refused_in_emas_terms():
    a, b = np.zeros(4), np.zeros(4)
    ema = EMA([a, b], decay=0.9)
    ema.update()
    with pytest.raises(ValueError, match=r"^EMA.copy_to: params\[1\] overlaps params\[0\]$"):
        ema.copy_to([a, a])
