"""Note [A bound call] (csrc/bindings/bound.h): a bound call checks the params and states once,
keeps them, and at each run checks only that they are unchanged and the new grads in full. So it
must accept exactly what a fresh bind (the full check of every array) accepts, refuse everything
else, and write the same bits.

Each test runs two identical worlds side by side: ``a`` keeps one bound call (and binds again only
when its lists hold other arrays, as the optimizer classes do), ``b`` binds afresh at every call.
The same change is applied to both between calls, and the outcomes compared: the same error type
(and, after one change, the same message, except that an array changed in place under a bound call
is named as such), or the same arrays, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedopt import _core

HYPER = (0.01, (0.9, 0.999), 1e-8, 0.1, False, False, True)  # adam's, decoupled decay
SHAPES = [(7,), (3, 4), (0,), (5, 2), (130,)]


class World:
    """Params, grads and Adam state (exp_avgs, exp_avg_sqs), built from one seed."""

    def __init__(self, seed, dtype, keep):
        rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        self.params[3] = np.asfortranarray(self.params[3])
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        self.grads[3] = np.asfortranarray(self.grads[3])
        self.keep = keep
        self.bound = None  # the bound call, and the arrays it was bound to
        self.binds = 0
        self.rebound = False
        self.step = 0

    def lists(self):
        return (self.params, None, self.m, self.v, None)

    def _bound(self):
        arrays = [list(map(id, col)) for col in (self.params, self.m, self.v)]
        self.rebound = self.bound is None or self.bound[1] != arrays
        if self.rebound:
            self.bound = None
            self.bound = (_core.cpu.bind("adam", self.lists(), HYPER, grads_later=True), arrays)
            self.binds += 1
        return self.bound[0]

    def call(self):
        try:
            if self.keep:
                self._bound().run(self.grads, step=self.step + 1)
            else:
                _core.cpu.bind("adam", (self.params, self.grads, self.m, self.v, None),
                               HYPER).run(step=self.step + 1)
        except (TypeError, ValueError) as e:
            return (type(e), str(e))
        self.step += 1
        return None

    def bits(self):
        return [a.tobytes() for col in (self.params, self.m, self.v) for a in col]

def _other_dtype(dtype):
    return np.int32 if dtype == np.float32 else np.int64


# Each change takes a world and an index, and changes the world in place (the same in both).
def _fresh_grads(w, i):
    fill = 0.25 * (w.step + 1)
    w.grads = [np.full(p.shape, fill, w.dtype, order="F" if p.ndim > 1 and p.flags.f_contiguous
                       and not p.flags.c_contiguous else "C") for p in w.params]


def _grad_dtype(w, i):
    w.grads[i] = w.grads[i].astype(np.float64 if w.dtype == np.float32 else np.float32)


def _grad_shape(w, i):
    w.grads[i] = np.zeros(w.grads[i].size + 1, w.dtype)


def _grad_strided(w, i):
    w.grads[i] = np.zeros((2 * w.grads[i].size,), w.dtype)[::2].reshape(w.grads[i].shape)


def _grad_order(w, i):
    g = w.grads[i]
    w.grads[i] = np.ascontiguousarray(g) if g.flags.f_contiguous and not g.flags.c_contiguous \
        else np.asfortranarray(g)


def _grad_misaligned(w, i):
    n = w.grads[i].size
    raw = np.zeros(n * w.grads[i].itemsize + 1, np.uint8)
    w.grads[i] = raw[1:].view(w.dtype).reshape(w.grads[i].shape)


def _grad_big_endian(w, i):
    w.grads[i] = w.grads[i].astype(np.dtype(w.dtype).newbyteorder(">"))


def _grad_not_array(w, i):
    w.grads[i] = w.grads[i].tolist()


def _grad_is_param(w, i):
    w.grads[i] = w.params[i]


def _grad_is_other_param(w, i):
    j = (i + 1) % len(w.params)
    if w.params[j].size == w.grads[i].size:
        w.grads[i] = w.params[j].reshape(w.grads[i].shape)
    else:
        w.grads[i] = w.params[j].reshape(-1)[: w.grads[i].size].reshape(w.grads[i].shape) \
            if w.params[j].size >= w.grads[i].size else w.grads[i]


def _grad_is_state(w, i):
    w.grads[i] = w.v[i]


def _grad_shared(w, i):
    j = (i + 2) % len(w.grads)
    if isinstance(w.grads[j], np.ndarray) and w.grads[j].shape == w.grads[i].shape:
        w.grads[i] = w.grads[j]


def _grad_read_only(w, i):
    w.grads[i] = w.grads[i].copy(order="K")
    w.grads[i].setflags(write=False)


def _param_read_only(w, i):
    w.params[i].setflags(write=False)


def _param_writeable(w, i):
    w.params[i].setflags(write=True)


def _state_read_only(w, i):
    w.m[i].setflags(write=False)


def _state_writeable(w, i):
    w.m[i].setflags(write=True)


def _param_reshaped_in_place(w, i):
    p = w.params[i]
    if p.ndim == 1 and p.size and p.size % 2 == 0 and p.flags.c_contiguous:
        p.shape = (2, p.size // 2)
    elif p.ndim == 2 and p.flags.c_contiguous:
        p.shape = (p.size,)


def _param_shape_reversed_in_place(w, i):
    p = w.params[i]
    if p.ndim == 2 and p.flags.c_contiguous:
        p.shape = p.shape[::-1]  # (3, 4) -> (4, 3): the same flags, the same number of dims


def _param_dtype_in_place(w, i):
    p = w.params[i]
    p.dtype = _other_dtype(w.dtype) if p.dtype == w.dtype else w.dtype


def _state_dtype_in_place(w, i):
    v = w.v[i]
    v.dtype = _other_dtype(w.dtype) if v.dtype == w.dtype else w.dtype


def _state_replaced(w, i):
    w.v[i] = w.v[i].copy(order="K")


def _param_replaced(w, i):
    w.params[i] = w.params[i].copy(order="K")


def _param_resized(w, i):
    p = w.params[i]
    if p.ndim == 1 and p.flags.owndata:
        p.resize(p.size, refcheck=False)  # may move the data


def _lists_shortened(w, i):
    for name in ("params", "grads", "m", "v"):
        col = getattr(w, name)
        if len(col) > 1:
            setattr(w, name, col[:-1])


def _params_swapped(w, i):
    j = (i + 1) % len(w.params)
    w.params[i], w.params[j] = w.params[j], w.params[i]


def _state_is_param(w, i):
    w.m[i] = w.params[i]


def _tuple_lists(w, i):
    w.params, w.grads = tuple(w.params), tuple(w.grads)
    w.params, w.grads = list(w.params), list(w.grads)


def _guarded(change):
    """A change of grads[i] applies to an array; a grad that is no array any more stays."""
    def apply(w, i):
        if change.__name__.startswith("_grad_") and not isinstance(w.grads[i], np.ndarray):
            return
        change(w, i)

    apply.__name__ = change.__name__
    return apply


CHANGES = [
    _fresh_grads, _grad_dtype, _grad_shape, _grad_strided, _grad_order, _grad_misaligned,
    _grad_big_endian, _grad_not_array, _grad_is_param, _grad_is_other_param, _grad_is_state,
    _grad_shared, _grad_read_only, _param_read_only, _param_writeable, _state_read_only,
    _state_writeable, _param_reshaped_in_place, _param_shape_reversed_in_place,
    _param_dtype_in_place, _state_dtype_in_place, _state_replaced, _param_replaced,
    _param_resized, _lists_shortened, _params_swapped, _state_is_param, _tuple_lists,
]
CHANGES = [_guarded(c) for c in CHANGES]


def _repair(w, i):
    """Undo what can be undone in place (flags, dtypes), give every param state of its shape and
    new grads, so that a random sequence keeps reaching calls that are accepted."""
    for col in (w.params, w.m, w.v):
        for a in col:
            if a.dtype != w.dtype:
                a.dtype = w.dtype
            a.setflags(write=True)
    for k, p in enumerate(w.params):
        for col in (w.m, w.v):
            same_order = (col[k].flags.c_contiguous if p.flags.c_contiguous
                          else col[k].flags.f_contiguous)
            if col[k] is p or col[k].shape != p.shape or not same_order:
                col[k] = np.zeros_like(p)
    _fresh_grads(w, i)


def _pair(message):
    """An overlap names the same two arrays whichever the check found first: the full check
    sweeps the memory in address order, a bound call names the grad first."""
    head, sep, tail = message.partition(": ")
    x, found, y = tail.partition(" overlaps ")
    return (head, *sorted((x, y))) if found else message


def compare(a, b, exact):
    """Calls both worlds: ``a`` (its bound call) must do what ``b`` (a fresh bind) does. With
    ``exact``, the messages too, but for an array changed in place under ``a``'s bound call,
    which ``a`` names as such."""
    got = a.call()
    want = b.call()
    assert (got is None) == (want is None), (got, want)
    # Several problems at once may be found in another order (a bound call checks its params and
    # states before the grads, and those it binds anew before the grads): with one change, and
    # no new binding, the same problem is found.
    if got is not None and exact and not a.rebound:
        assert got[0] is want[0], (got, want)
        if "was changed in place" not in got[1]:
            assert _pair(got[1]) == _pair(want[1])
    assert a.bits() == b.bits()
    return got


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_change_between_runs(change, dtype):
    """Two good calls, one change, the call again."""
    for i in range(len(SHAPES)):
        a, b = World(0, dtype, keep=True), World(0, dtype, keep=False)
        for _ in range(2):
            assert a.call() is None and b.call() is None
        assert a.bits() == b.bits()
        change(a, i)
        change(b, i)
        compare(a, b, exact=True)


@pytest.mark.parametrize("seed", range(40))
def test_random_changes_between_runs(seed):
    rng = np.random.default_rng(seed)
    dtype = (np.float32, np.float64)[seed % 2]
    a, b = World(seed, dtype, keep=True), World(seed, dtype, keep=False)
    outcomes = []
    for _ in range(30):
        if rng.random() < 0.25:
            _repair(a, 0)
            _repair(b, 0)
        if rng.random() < 0.6:
            k = int(rng.integers(len(CHANGES)))
            i = int(rng.integers(len(a.params)))
            CHANGES[k](a, i)
            CHANGES[k](b, i)
        outcomes.append(compare(a, b, exact=False) is None)
    assert a.binds < len(outcomes)  # some calls ran through a kept bound call


def test_steady_calls_bind_once():
    w = World(1, np.float32, keep=True)
    for _ in range(5):
        _fresh_grads(w, 0)
        assert w.call() is None
    assert w.binds == 1
    _state_replaced(w, 2)  # another array: bound again
    assert w.call() is None and w.binds == 2
    assert w.call() is None and w.binds == 2
    _param_read_only(w, 1)
    assert w.call() == (ValueError, "adam: params[1] is read-only")
    _param_writeable(w, 1)  # back as it was: the bound call still fits
    assert w.call() is None and w.binds == 2


def test_an_array_changed_in_place_is_named():
    w = World(2, np.float64, keep=True)
    assert w.call() is None
    _param_shape_reversed_in_place(w, 1)
    assert w.call() == (ValueError, "adam: params[1] was changed in place: shape (3, 4) -> (4, 3); "
                                    "the arrays of a call must keep their dtype and shape")
    _param_shape_reversed_in_place(w, 1)
    _state_dtype_in_place(w, 4)
    assert w.call() == (TypeError, "adam: exp_avg_sqs[4] was changed in place: dtype float64 -> "
                                   "int64; the arrays of a call must keep their dtype and shape")


# ---- grad_scale (Note [The fused unscale]) -------------------------------------------------------


def _adam_call(rng, dtype):
    params = [rng.standard_normal(n).astype(dtype) for n in (1, 33, 4097)]
    states = [[np.zeros_like(p) for p in params] for _ in range(2)]
    hyper = (1e-2, (0.9, 0.999), 1e-8, 0.0, False, False, False)
    return params, states, hyper


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [65536.0, 3.0])
def test_grad_scale_unscales_as_gradscaler_does(dtype, scale):
    """run(grads * s, grad_scale=s) against run(grads * float32(1/s)): the same bits; the grads
    are only read."""
    rng = np.random.default_rng(0)
    out = []
    for fused in (True, False):
        params, states, hyper = _adam_call(np.random.default_rng(1), dtype)
        b = _core.cpu.bind("adam", (params, None, *states, None), hyper, grads_later=True)
        for t in range(1, 4):
            g = [np.random.default_rng(t).standard_normal(p.size).astype(dtype) * dtype(scale)
                 for p in params]
            if fused:
                kept = [x.copy() for x in g]
                b.run(g, step=t, grad_scale=scale)
                assert all(np.array_equal(k, x) for k, x in zip(kept, g))
            else:
                inv = np.float32(1.0 / scale)
                b.run([x * inv if dtype == np.float32 else x * np.float64(inv) for x in g], step=t)
        out.append(params)
    for a, c in zip(*out):
        np.testing.assert_array_equal(a, c)
    del rng


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_grad_scale_must_be_finite_and_positive(bad):
    params, states, hyper = _adam_call(np.random.default_rng(0), np.float32)
    before = [p.copy() for p in params]
    b = _core.cpu.bind("adam", (params, None, *states, None), hyper, grads_later=True)
    with pytest.raises(ValueError, match="grad_scale must be a finite number > 0"):
        b.run([np.ones_like(p) for p in params], step=1, grad_scale=bad)
    assert all(np.array_equal(a, p) for a, p in zip(before, params))


def test_grad_scale_of_a_call_without_grads_is_refused():
    avg = [np.zeros(4, np.float32)]
    b = _core.cpu.bind("ewa", (avg, [np.ones(4, np.float32)]), (0.5,))
    with pytest.raises(TypeError, match="takes no grads to unscale"):
        b.run(grad_scale=2.0)


def test_pass_hook_reads_and_replaces_the_sums_between_passes():
    """Note [The pass hook]: LAMB's bound call hands each summing pass's sums (one row per
    tensor: ||g||^2 and ||p||^2, then ||u||^2) to the hook, which may replace them before the
    trust ratio is formed. A hook that changes nothing leaves the bits of a call without one;
    one that multiplies ||p||^2 by 4 doubles each trust ratio, so each param moves twice as far
    (to the rounding of p - r u: rtol 1e-6 on the step)."""
    rng = np.random.default_rng(7)
    shapes = [(5,), (3, 4), ()]
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    hyper = (1e-2, True, (0.9, 0.999), 1e-6, 0.01, True, True, 1.0, False)

    def run(hook):
        p = [x.copy() for x in p0]
        m, v = [np.zeros_like(x) for x in p], [np.zeros_like(x) for x in p]
        b = _core.cpu.bind("lamb", (p, g, m, v), hyper)
        b.pass_hook = hook
        b.run(step=1, lr=1e-2)
        return p

    seen = []

    def record(k, sums):
        seen.append((k, sums.shape, sums.copy()))

    plain, same = run(None), run(record)
    assert [(k, shape) for k, shape, _ in seen] == [(0, (3, 2)), (1, (3, 1))]
    gn = [float(np.sum(x.astype(np.float64) ** 2)) for x in g]
    pn = [float(np.sum(x.astype(np.float64) ** 2)) for x in p0]
    np.testing.assert_allclose(seen[0][2], np.array([gn, pn]).T, rtol=1e-12)
    for a, b in zip(plain, same):
        assert np.array_equal(a, b)

    def quadruple(k, sums):
        if k == 0:
            sums[:, 1] *= 4.0

    doubled = run(quadruple)
    for x0, a, b in zip(p0, plain, doubled):
        np.testing.assert_allclose(b.astype(np.float64) - x0, 2 * (a.astype(np.float64) - x0),
                                   rtol=1e-5, atol=1e-7)
        assert not np.array_equal(a, b)
