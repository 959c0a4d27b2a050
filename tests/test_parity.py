"""Every kernel against the float64 reference: every algorithm x option x dtype x size, 8 steps of
fresh random gradients, comparing the parameters, every state buffer and NAdam's ``mu_product``.

The kernels run on arrays of the tested dtype; the reference runs on float64 copies of the very same
starting values and gradients, so the only differences are the kernels' rounding.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fusedopt
from fusedopt import functional, reference
from fusedopt import _core

from algos import (
    ALGO_BY_NAME,
    ALGO_CONFIG_IDS,
    ALGO_CONFIGS,
    ALGOS,
    DTYPE_IDS,
    DTYPES,
    SIZES,
    STEPS,
)

# Declared tolerances, (rtol, atol), checked element by element as
#     |got - ref| <= rtol * |ref| + atol * scale
# where scale is the largest |value| the reference held in that buffer (any element, any step,
# the start included): the buffer's own unit.
# - fp64: the kernels and the reference evaluate the same formulas in the same precision; they
#   differ only in operation order and FMA contraction, a few units of 1.1e-16 per operation.
#   Over 8 steps of ~10 operations that stays below ~1e-14 relative; 1e-12 leaves room for the
#   amplification by divisions (m / (sqrt(v) + eps)) while still catching any wrong constant,
#   misplaced eps or bias correction, which show at 1e-6 or worse.
# - fp32: the kernel computes in float32 and rounds every stored buffer once per step (unit
#   roundoff 6e-8); 8 steps of ~10 operations accumulate a few 1e-7 .. 1e-6 relative, so rtol 1e-5
#   (about 170 ulp) holds with margin. That is too coarse to see small formula errors in p when
#   lr is small; the fp64 row does that, the fp32 row checks the float32 instantiation.
# - atol is relative to the buffer's scale, not to the element: a value that ends near zero by
#   cancellation carries the absolute rounding error of the operands it came from (seen: an fp32
#   RMSprop momentum buffer summing terms of ~10 down to 0.04 is off by 0.6 ulp of 10, and that
#   error reaches p through lr * buf), and those operands are bounded by the buffer's scale.
# See Note [eps with coupled weight decay] in algos.py for the one input the fp32 row avoids.
TOL = {
    np.float64: (1e-12, 1e-13),
    np.float32: (1e-5, 1e-6),
}
MU_PRODUCT_RTOL = 1e-14  # a product of at most a few thousand doubles, computed in double by both

ISAS = list(fusedopt.build_info()["simd_supported"])


def seed_of(*parts):
    return zlib.crc32("-".join(map(str, parts)).encode())


def assert_close(got, ref, dtype, what, scale=None):
    """``got`` (the kernel's array, of ``dtype``) against ``ref`` (float64) with TOL[dtype];
    ``scale`` (default ``max|ref|``) is the buffer's largest magnitude over the run."""
    rtol, atol = TOL[dtype]
    assert got.dtype == np.dtype(dtype), f"{what}: dtype changed to {got.dtype}"
    assert got.shape == ref.shape, what
    assert np.isfinite(ref).all(), f"{what}: the reference is not finite (bad test configuration)"
    if scale is None:
        scale = float(np.max(np.abs(ref), initial=0.0))
    err = np.abs(got.astype(np.float64) - ref)
    bound = rtol * np.abs(ref) + atol * scale
    bad = ~(err <= bound)
    if bad.any():
        j = np.flatnonzero(bad)
        k = j[np.argmax((err.ravel()[j]) / np.maximum(bound.ravel()[j], 1e-300))]
        raise AssertionError(
            f"{what}: {bad.sum()} of {got.size} elements beyond "
            f"rtol={rtol}, atol={atol}*{scale:.3g}; "
            f"worst at flat index {k}: got {got.ravel()[k]!r}, ref {ref.ravel()[k]!r}, "
            f"|err| {err.ravel()[k]:.3g} > {bound.ravel()[k]:.3g}"
        )


def is_f(a):
    return a.flags.f_contiguous and not a.flags.c_contiguous


def random_like(rng, shape, dtype, order):
    return np.asarray(rng.standard_normal(shape).astype(dtype), order=order)


def run_both(algo, cfg, specs, seed, steps=STEPS):
    """Run ``steps`` updates through the kernels and the reference from the same start.

    ``specs`` is a list of ``(shape, dtype, order)``, one per tensor of the call. Returns the
    kernel's buffers, the reference's buffers, the reference's scale of each buffer (its largest
    magnitude over the run; dicts: name -> list) and both lists of returned carries.
    """
    rng = np.random.default_rng(seed)
    params = [random_like(rng, shape, dt, order) for shape, dt, order in specs]
    states = algo.new_states(params, cfg)
    params64 = [p.astype(np.float64) for p in params]
    states64 = {k: [a.astype(np.float64) for a in v] for k, v in states.items()}
    carry_f = carry_r = None
    carries_f, carries_r = [], []
    ref_bufs = dict(params=params64, **states64)
    scales = {k: [float(np.max(np.abs(a), initial=0.0)) for a in v] for k, v in ref_bufs.items()}
    for t in range(cfg.start, cfg.start + steps):
        grads = [random_like(rng, p.shape, p.dtype, "F" if is_f(p) else "C") for p in params]
        carry_f = algo.step(functional, params, grads, states, t, cfg.hp, carry_f)
        carry_r = algo.step(
            reference, params64, [g.astype(np.float64) for g in grads], states64, t, cfg.hp, carry_r
        )
        carries_f.append(carry_f)
        carries_r.append(carry_r)
        for k, v in ref_bufs.items():
            scales[k] = [
                max(sc, float(np.max(np.abs(a), initial=0.0))) for sc, a in zip(scales[k], v)
            ]
    return dict(params=params, **states), ref_bufs, scales, carries_f, carries_r


def check(algo, got, ref, scales, carries_f, carries_r, label):
    assert got.keys() == ref.keys()
    for name in got:
        for i, (a, r, sc) in enumerate(zip(got[name], ref[name], scales[name], strict=True)):
            assert_close(a, r, a.dtype.type, f"{label}: {name}[{i}]", sc)
    if algo.name == "nadam":
        for k, (cf, cr) in enumerate(zip(carries_f, carries_r)):
            assert isinstance(cf, float), f"{label}: nadam returned {type(cf).__name__}"
            assert cf == pytest.approx(cr, rel=MU_PRODUCT_RTOL), f"{label}: mu_product at step {k}"
    elif algo.name == "adamw_schedulefree":  # (weight_sum, lr_max): the same float64 expressions
        for k, (cf, cr) in enumerate(zip(carries_f, carries_r)):
            assert isinstance(cf, tuple) and len(cf) == 2, f"{label}: returned {cf!r}"
            assert cf == pytest.approx(cr, rel=1e-15), f"{label}: scalar state at step {k}"
    else:
        assert all(c is None for c in carries_f), f"{label}: {algo.name} returned a value"


MAIN = [
    pytest.param(a, c, dt, n, id=f"{aid}-{DTYPE_IDS[dt]}-n{n}")
    for (a, c), aid in zip(ALGO_CONFIGS, ALGO_CONFIG_IDS)
    for dt in DTYPES
    for n in SIZES
]


@pytest.mark.parametrize("algo, cfg, dtype, n", MAIN)
def test_parity(algo, cfg, dtype, n):
    label = f"{algo.name}-{cfg.id}-{DTYPE_IDS[dtype]}-n{n}"
    got, ref, scales, cf, cr = run_both(algo, cfg, [((n,), dtype, "C")], seed_of(label))
    check(algo, got, ref, scales, cf, cr, label)


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test on one compiled SIMD path of the kernels, then restore the active one."""
    before = fusedopt.build_info()["simd_active"]
    _core.cpu.set_simd(request.param)
    assert fusedopt.build_info()["simd_active"] == request.param
    yield request.param
    _core.cpu.set_simd(before)


# Every size at once in one call, plus 2-D arrays in C and in Fortran order and an empty array:
# the multi-tensor driver must give each tensor exactly what a call of its own would.
ALL_SHAPES = [((n,), "C") for n in SIZES] + [((33, 65), "C"), ((65, 33), "F"), ((0,), "C"),
                                              ((3, 0), "F")]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("algo, cfg", ALGO_CONFIGS, ids=ALGO_CONFIG_IDS)
def test_parity_all_shapes_one_call(algo, cfg, dtype, isa):
    label = f"{isa}-{algo.name}-{cfg.id}-{DTYPE_IDS[dtype]}-all"
    specs = [(shape, dtype, order) for shape, order in ALL_SHAPES]
    got, ref, scales, cf, cr = run_both(algo, cfg, specs, seed_of(label))
    check(algo, got, ref, scales, cf, cr, label)
    for name, arrays in got.items():
        for (shape, order), a in zip(ALL_SHAPES, arrays):
            assert a.flags["F_CONTIGUOUS" if order == "F" else "C_CONTIGUOUS"], (name, shape)


def many_small_specs(dtype, count=520, seed=0):
    """``count`` tensors of 1..5000 elements (log-uniform) as 1-, 2- and 3-D arrays in C and
    Fortran order."""
    rng = np.random.default_rng(seed)
    specs = []
    for k in range(count):
        n = int(np.exp(rng.uniform(0, np.log(5000))))
        kind = k % 4
        if kind == 0:
            shape, order = (n,), "C"
        elif kind == 1:
            a = max(1, int(np.sqrt(n)))
            shape, order = (a, n // a), "C"
        elif kind == 2:
            a = max(1, int(np.sqrt(n)))
            shape, order = (n // a, a), "F"
        else:
            a = max(1, int(round(n ** (1 / 3))))
            shape, order = (a, a, max(1, n // (a * a))), "C"
        specs.append((shape, dtype, order))
    return specs


def full_and_plain(algo):
    ids = dict.fromkeys([algo.configs[0].id, algo.full])
    return [algo.config(c) for c in ids]


MANY = [
    pytest.param(a, c, dt, id=f"{a.name}-{c.id}-{DTYPE_IDS[dt]}")
    for a in ALGOS
    for c in full_and_plain(a)
    for dt in DTYPES
]


@pytest.mark.parametrize("algo, cfg, dtype", MANY)
def test_many_small_tensors(algo, cfg, dtype):
    label = f"{algo.name}-{cfg.id}-{DTYPE_IDS[dtype]}-many"
    specs = many_small_specs(dtype, seed=seed_of(label))
    assert len(specs) >= 500
    got, ref, scales, cf, cr = run_both(algo, cfg, specs, seed_of(label), steps=STEPS)
    check(algo, got, ref, scales, cf, cr, label)


@pytest.mark.parametrize("algo, cfg", ALGO_CONFIGS, ids=ALGO_CONFIG_IDS)
def test_mixed_dtypes_in_one_list(algo, cfg):
    """Dtypes need only agree per index: float32 and float64 tensors may share one call."""
    label = f"{algo.name}-{cfg.id}-mixed"
    specs = [((101,), np.float32, "C"), ((101,), np.float64, "C"), ((4097,), np.float64, "C"),
             ((6, 7), np.float32, "F"), ((70000,), np.float32, "C")]
    got, ref, scales, cf, cr = run_both(algo, cfg, specs, seed_of(label))
    for name, arrays in got.items():
        assert [a.dtype.type for a in arrays] == [s[1] for s in specs], name
    check(algo, got, ref, scales, cf, cr, label)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: a.name)
def test_bare_array_tuple_and_list_agree(algo):
    """A bare array is a list of one; tuples work like lists; all three give the same bits."""
    cfg = algo.config(algo.full)
    rng = np.random.default_rng(seed_of(algo.name, "bare"))
    p0 = rng.standard_normal(257)
    grads = [rng.standard_normal(257) for _ in range(3)]
    results = []
    for wrap in (lambda a: a, lambda a: [a], lambda a: (a,)):
        p = p0.copy()
        states = algo.new_states([p], cfg)
        carry = None
        for k, g in enumerate(grads):
            carry = algo.step(
                functional, wrap(p), wrap(g), {s: wrap(v[0]) for s, v in states.items()},
                cfg.start + k, cfg.hp, carry,
            )
        results.append((p, {s: v[0] for s, v in states.items()}, carry))
    for p, states, carry in results[1:]:
        assert np.array_equal(p, results[0][0])
        for s in states:
            assert np.array_equal(states[s], results[0][1][s]), s
        assert carry == results[0][2]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_sgd_first_step_overwrites_momentum_buffer(dtype):
    """At step 1 the momentum buffer becomes the gradient whatever it held (torch's fresh buffer):
    a NaN left in it must not leak into the update."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal(1000).astype(dtype)
    g = rng.standard_normal(1000).astype(dtype)
    buf = np.full_like(p, np.nan)
    p_ref = p.astype(np.float64)
    functional.sgd(p, g, buf, step=1, lr=0.1, momentum=0.9, dampening=0.5)
    assert np.array_equal(buf, g)
    buf_ref = np.full(1000, np.nan)
    reference.sgd(p_ref, g.astype(np.float64), buf_ref, step=1, lr=0.1, momentum=0.9, dampening=0.5)
    assert np.array_equal(buf_ref, g.astype(np.float64))
    assert_close(p, p_ref, dtype, "params")


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_nadam_mu_product_none_is_the_closed_form(step):
    """``mu_product=None`` means the product of mu_1..mu_{t-1}; passing that product explicitly
    gives the same update, and the returned value is that product times mu_t."""
    algo = ALGO_BY_NAME["nadam"]
    hp = dict(lr=0.01, momentum_decay=0.01)
    rng = np.random.default_rng(step)
    p0, g = rng.standard_normal(64), rng.standard_normal(64)

    def mu(t):
        return 0.9 * (1.0 - 0.5 * 0.96 ** (t * 0.01))

    explicit = float(np.prod([mu(t) for t in range(1, step)]))
    outs = []
    for mu_product in (None, explicit):
        p = p0.copy()
        states = algo.new_states([p], algo.configs[0])
        ret = functional.nadam(p, g, *states.values(), step=step, mu_product=mu_product, **hp)
        outs.append((p, ret))
    assert outs[0][1] == pytest.approx(explicit * mu(step), rel=MU_PRODUCT_RTOL)
    assert outs[1][1] == pytest.approx(explicit * mu(step), rel=MU_PRODUCT_RTOL)
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-14)
    p_ref = p0.copy()
    states = algo.new_states([p_ref], algo.configs[0])
    ret_ref = reference.nadam(p_ref, g, *states.values(), step=step, **hp)
    assert ret_ref == pytest.approx(explicit * mu(step), rel=MU_PRODUCT_RTOL)
    assert_close(outs[0][0], p_ref, np.float64, "params")


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: a.name)
def test_empty_lists_are_a_no_op(algo):
    cfg = algo.config(algo.full)
    states = {s: [] for s in algo.new_states([], cfg)}
    ret_f = algo.step(functional, [], [], states, cfg.start, cfg.hp)
    ret_r = algo.step(reference, [], [], states, cfg.start, cfg.hp)
    if algo.name == "nadam":
        assert ret_f == pytest.approx(ret_r, rel=MU_PRODUCT_RTOL)
    elif algo.name == "adamw_schedulefree":  # the scalar state advances with no tensors too
        assert ret_f == pytest.approx(ret_r, rel=1e-15) and ret_f[1] == cfg.hp["lr"]
    else:
        assert ret_f is None and ret_r is None
