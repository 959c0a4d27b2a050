"""Kahan-compensated 16-bit params (Note [Kahan summation] in csrc/storage.h): ``kahan_comps=`` of
the functional calls, ``kahan_summation=True`` of the optimizers.

Oracles, none of them the code under test:
- the float32 kernel: a compensated 16-bit call stores exactly what NumPy computes, in float32,
  from the new values the float32 kernel gives on the same (exactly widened) inputs:
  ``u = c + (q - p)``, ``p = round(p + u)``, ``c = round(u - (p_new - p))`` (0 where p_new is not
  finite), rounded by NumPy / ml_dtypes; every algorithm, every configuration, sizes across a
  chunk and a staging tile; the states as without compensation;
- :func:`fusedopt.reference.kahan` (float64), one step from the same values, with the tolerance
  below;
- long runs: the compensated params follow the float64 trajectory where plain rounding stalls.
Bitwise equality across SIMD paths and thread counts: test_low_precision's subprocess script.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fusedopt
from fusedopt import functional, reference
from algos import ALGOS

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)

ONE_CALL = [a for a in ALGOS if a.name != "ewa"]  # EWA's step is two calls: its own test
# (param, grad, state)
COMBOS = ((BF16, BF16, F32), (BF16, BF16, BF16), (F16, F16, F32))
COMBO_IDS = ["-".join(d.name for d in c) for c in COMBOS]
SIZES = (3077, 65539)  # three staging tiles and a tail; a 65536-element chunk and a tail


def lp(x, dtype):
    return np.asarray(x, np.float32).astype(dtype).astype(np.float32)


def kahan32(q, p, c, dtype):
    """The stores of Note [Kahan summation], in NumPy float32: (param, comp) as float32."""
    with np.errstate(all="ignore"):
        u = c + (q - p)
        was = np.isfinite(p)
        now = lp(np.where(was, p + u, q), dtype)
        comp = lp(np.where(was & np.isfinite(now), u - (now - p), np.float32(0)), dtype)
    return now, comp


def _comps(params, rng, dtype):
    """Compensations below half an ulp of their params (what a step leaves), some zero."""
    out = []
    for p in params:
        c = (p.astype(np.float32) * np.float32(2.0 ** -9)
             * rng.uniform(-1, 1, p.shape).astype(np.float32))
        c[::7] = 0
        out.append(c.astype(dtype))
    return out


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("algo", ONE_CALL, ids=[a.name for a in ONE_CALL])
def test_kahan_stores_the_float32_kernels_new_values_compensated(algo, combo):
    pd, gd, sd = combo
    for cfg in algo.configs:
        for size in SIZES if cfg.id == algo.full else SIZES[:1]:
            rng = np.random.default_rng(3)
            params = [rng.standard_normal(size).astype(pd), rng.standard_normal(9).astype(pd)]
            comps = _comps(params, rng, pd)
            states = {k: [s.astype(sd) for s in v] for k, v in
                      algo.new_states([p.astype(np.float32) for p in params], cfg).items()}
            carry = carry32 = None
            for t in range(cfg.start, cfg.start + 3):
                grads = [(rng.standard_normal(p.shape) * 0.5).astype(gd) for p in params]
                p32 = [p.astype(np.float32) for p in params]
                q32 = [p.copy() for p in p32]
                c32 = [c.astype(np.float32) for c in comps]
                s32 = {k: [s.astype(np.float32) for s in v] for k, v in states.items()}
                carry32 = algo.step(functional, q32, [g.astype(np.float32) for g in grads], s32,
                                    t, cfg.hp, carry)
                carry = algo.step(functional, params, grads, states, t, cfg.hp, carry,
                                  kahan_comps=comps)
                assert carry == carry32
                for i in range(len(params)):
                    want_p, want_c = kahan32(q32[i], p32[i], c32[i], pd)
                    msg = f"{algo.name}-{cfg.id} n={size} step {t} [{i}]"
                    assert params[i].dtype == pd and comps[i].dtype == pd
                    if algo.name == "lamb" and sd != F32:
                        continue  # Note [LAMB's passes]: pass 2 reads the rounded moments
                    np.testing.assert_array_equal(params[i].astype(np.float32), want_p,
                                                  err_msg="params" + msg)
                    np.testing.assert_array_equal(comps[i].astype(np.float32), want_c,
                                                  err_msg="kahan_comps" + msg)
                for k in states:
                    for i, (s, s32_) in enumerate(zip(states[k], s32[k])):
                        np.testing.assert_array_equal(s.astype(np.float32), lp(s32_, sd),
                                                      err_msg=f"{algo.name} {k}[{i}] step {t}")


def test_kahan_with_a_grad_scale_stores_the_unscaled_float32_step_compensated():
    """grad_scale (Note [The fused unscale]) on compensated bf16 params: the Kahan stores of what
    the float32 kernel computes from the same scaled grads and scale."""
    from fusedopt import _core
    hyper = (1e-2, (0.9, 0.999), 1e-8, 0.0, False, False, False)
    rng = np.random.default_rng(9)
    for sd in (F32, BF16):
        params = [rng.standard_normal(n).astype(BF16) for n in (33, 3077)]
        comps = _comps(params, rng, BF16)
        states = [[np.zeros(p.shape, sd) for p in params] for _ in range(2)]
        p32 = [p.astype(np.float32) for p in params]
        s32 = [[np.zeros(p.shape, np.float32) for p in params] for _ in range(2)]
        b = _core.cpu.bind("adam", (params, None, *states, None), hyper, grads_later=True,
                           kahan_comps=comps)
        b32 = _core.cpu.bind("adam", (p32, None, *s32, None), hyper, grads_later=True)
        for t in (1, 2, 3):
            grads = [(rng.standard_normal(p.shape) * 1024).astype(BF16) for p in params]
            old = [p.astype(np.float32) for p in params]
            c32 = [c.astype(np.float32) for c in comps]
            b32.run([x.astype(np.float32) for x in grads], step=t, grad_scale=1024.0)
            b.run(grads, step=t, grad_scale=1024.0)
            for i in range(len(params)):
                want_p, want_c = kahan32(p32[i], old[i], c32[i], BF16)
                np.testing.assert_array_equal(params[i].astype(np.float32), want_p)
                np.testing.assert_array_equal(comps[i].astype(np.float32), want_c)
                p32[i][...] = params[i].astype(np.float32)  # the float32 run goes on from them
            for k in range(2):
                for i in range(len(params)):
                    np.testing.assert_array_equal(states[k][i].astype(np.float32),
                                                  lp(s32[k][i], sd))
                    s32[k][i][...] = states[k][i].astype(np.float32)


def test_ewa_averages_are_compensated():
    """EWA's averages (its "params") of 16-bit values: an average of many values moves by less
    than half an ulp per step, the case compensation is for."""
    rng = np.random.default_rng(4)
    for dt in (BF16, F16):
        avg = [rng.standard_normal(5000).astype(dt)]
        comp = [np.zeros(5000, dt)]
        for _ in range(3):
            x = [rng.standard_normal(5000).astype(dt)]
            p32, c32 = avg[0].astype(np.float32), comp[0].astype(np.float32)
            q = p32.copy()
            functional.ewa([q], [x[0].astype(np.float32)], beta=0.999)
            functional.ewa(avg, x, beta=0.999, kahan_comps=comp)
            want_p, want_c = kahan32(q, p32, c32, dt)
            np.testing.assert_array_equal(avg[0].astype(np.float32), want_p)
            np.testing.assert_array_equal(comp[0].astype(np.float32), want_c)


# ---- against the float64 reference ---------------------------------------------------------------
# One step from the same values. The kernel's new value q is float32 (the reference's float64),
# so p may land one ulp of its dtype apart, and then c differs by that ulp the other way: the
# tolerance is on p (one ulp of p's dtype) and on p + c, the value the pair holds: each side
# rounds its c once to c's dtype (half an ulp of the larger c each, so one ulp), plus 2^-20 of
# |p| + |update| for float32's errors in q and u.


def _ulp(x, dtype):
    x = np.abs(np.asarray(x, np.float64))
    eps, tiny = (2.0 ** -7, 2.0 ** -133) if dtype == BF16 else (2.0 ** -10, 2.0 ** -24)
    return np.maximum(2.0 ** np.floor(np.log2(np.maximum(x, 1e-300))) * eps, tiny)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("algo", ONE_CALL, ids=[a.name for a in ONE_CALL])
def test_one_compensated_step_is_within_the_tolerance_of_the_float64_reference(algo, dtype):
    cfg = algo.config(algo.full)
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(4099).astype(dtype)]
    comps = _comps(params, rng, dtype)
    states = {k: [s.astype(np.float32) for s in v] for k, v in
              algo.new_states([p.astype(np.float32) for p in params], cfg).items()}
    grads = [rng.standard_normal(4099).astype(dtype)]
    t = cfg.start + 2
    ref_p = [p.copy() for p in params]
    ref_c = [c.copy() for c in comps]
    ref_s = {k: [s.copy() for s in v] for k, v in states.items()}
    old = params[0].astype(np.float64)
    reference.kahan(lambda wide: algo.step(reference, wide, grads, ref_s, t, cfg.hp), ref_p, ref_c)
    algo.step(functional, params, grads, states, t, cfg.hp, kahan_comps=comps)
    p, c = params[0].astype(np.float64), comps[0].astype(np.float64)
    rp, rc = ref_p[0].astype(np.float64), ref_c[0].astype(np.float64)
    assert np.all(np.abs(p - rp) <= _ulp(np.maximum(np.abs(p), np.abs(rp)), dtype)), algo.name
    step = np.abs(rp - old) + np.abs(rc)
    tol = (_ulp(np.maximum(np.abs(c), np.abs(rc)), dtype)
           + 2.0 ** -20 * (np.abs(rp) + step) + 1e-30)
    bad = np.abs((p + c) - (rp + rc)) > tol
    assert not bad.any(), (algo.name, np.flatnonzero(bad)[:5], (p + c)[bad][:5], (rp + rc)[bad][:5])


# ---- what compensation is for --------------------------------------------------------------------


def test_kahan_keeps_updates_smaller_than_half_an_ulp():
    """bfloat16 SGD, steps of 1e-4 on params of 1 (half an ulp below 1 is 2^-9 ~ 2e-3): plain
    rounding loses every step; compensated, p + c is 1 - 100e-4 within c's roundings (100 of
    at most half an ulp of a bfloat16 |c| <= 2^-9 each: 100 * 2^-18), and p is within an ulp of
    it."""
    g = np.ones(1000, BF16)
    p_plain, p_kahan = np.ones(1000, BF16), np.ones(1000, BF16)
    plain = fusedopt.SGD([p_plain], lr=1e-4)
    kahan = fusedopt.SGD([p_kahan], lr=1e-4, kahan_summation=True)
    for _ in range(100):
        plain.step([g])
        kahan.step([g])
    assert (p_plain.astype(np.float32) == 1).all()
    c = kahan.state[0]["kahan_comp"]
    assert c.dtype == BF16
    held = p_kahan.astype(np.float64) + c.astype(np.float64)
    assert np.abs(held - (1 - 100e-4)).max() <= 100 * 2.0 ** -18
    assert np.abs(p_kahan.astype(np.float64) - 0.99).max() <= 2.0 ** -8


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_compensated_adamw_follows_the_float64_trajectory_where_plain_rounding_drifts(dtype):
    """300 AdamW steps at lr 1e-4 on 16-bit params (the same 16-bit grads for all): the error of
    the compensated params against float64 params stays within an ulp or two of the dtype, a
    fifth of plain rounding's at most."""
    rng = np.random.default_rng(6)
    n = 2000
    start = rng.standard_normal(n)
    runs = {}
    for name in ("plain", "kahan"):
        p = [start.astype(dtype)]
        opt = fusedopt.AdamW(p, lr=1e-4, weight_decay=0.01,
                             kahan_summation=name == "kahan")
        runs[name] = (p, opt)
    wide = [start.astype(dtype).astype(np.float64)]
    m, v = [np.zeros(n)], [np.zeros(n)]
    for t in range(1, 301):
        g = [(rng.standard_normal(n) + 0.3).astype(dtype)]
        for _p, opt in runs.values():
            opt.step(g)
        reference.adamw(wide, g, m, v, step=t, lr=1e-4, weight_decay=0.01)
    err = {k: np.abs(p[0].astype(np.float64) - wide[0]) / _ulp(wide[0], dtype)
           for k, (p, _) in runs.items()}
    assert err["kahan"].max() <= 2.0, err["kahan"].max()
    assert err["kahan"].mean() <= 0.2 * err["plain"].mean(), (err["kahan"].mean(),
                                                              err["plain"].mean())


# ---- the optimizers ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_optimizer_kahan_summation_steps_as_the_functional_call_and_saves_its_comps(dtype):
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(70_000).astype(dtype), rng.standard_normal(33).astype(F32)]
    twin = [p.copy() for p in params]
    comps = [np.zeros(70_000, dtype), None]
    m = [np.zeros(70_000, F32), np.zeros(33, F32)]
    v = [np.zeros(70_000, F32), np.zeros(33, F32)]
    opt = fusedopt.AdamW(params, lr=1e-3, kahan_summation=True)
    for t in range(1, 5):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        opt.step(grads)
        functional.adamw(twin, grads, m, v, step=t, lr=1e-3, kahan_comps=comps)
        assert params[0].tobytes() == twin[0].tobytes()
        assert params[1].tobytes() == twin[1].tobytes()
        assert opt.state[0]["kahan_comp"].tobytes() == comps[0].tobytes()
        assert "kahan_comp" not in opt.state[1]  # float32: nothing to compensate
    assert np.count_nonzero(comps[0].astype(np.float32)) > 60_000
    sd = opt.state_dict()
    assert sd["state"][0]["kahan_comp"].dtype == dtype
    again = fusedopt.AdamW([params[0].copy(), params[1].copy()], lr=1e-3, kahan_summation=True)
    again.load_state_dict(sd)
    assert again.state[0]["kahan_comp"].tobytes() == comps[0].tobytes()
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    p_again = again.param_groups[0]["params"]
    again.step(grads)
    opt.step(grads)
    assert p_again[0].tobytes() == params[0].tobytes()


def test_kahan_summation_excludes_master_weights_and_stochastic_rounding():
    p = [np.ones(8, BF16)]
    with pytest.raises(ValueError, match="AdamW: kahan_summation and master_weights exclude each "
                                         "other"):
        fusedopt.AdamW(p, master_weights=True, kahan_summation=True)
    with pytest.raises(ValueError, match="SGD: kahan_summation and stochastic_rounding exclude"):
        fusedopt.SGD(p, lr=0.1, stochastic_rounding=True, kahan_summation=True)
    opt = fusedopt.SGD(p, lr=0.1, kahan_summation=True)
    with pytest.raises(ValueError, match="SGD: stochastic_rounding and kahan_summation exclude"):
        opt.stochastic_rounding = True
    with pytest.raises(ValueError, match="SGD: master_weights and kahan_summation exclude"):
        opt.master_weights = True
    assert opt.kahan_summation and not opt.stochastic_rounding and not opt.master_weights
    with pytest.raises(TypeError, match="Adam: kahan_summation must be a bool, got int"):
        fusedopt.Adam(p, kahan_summation=1)


def test_turning_kahan_summation_on_later_starts_the_comps_at_zero():
    rng = np.random.default_rng(8)
    p = [rng.standard_normal(100).astype(BF16)]
    twin = [p[0].copy()]
    opt = fusedopt.SGD(p, lr=1e-3)
    g = [rng.standard_normal(100).astype(BF16)]
    opt.step(g)
    functional.sgd(twin, g, [None], step=1, lr=1e-3)
    opt.kahan_summation = True
    comps = [np.zeros(100, BF16)]
    opt.step(g)
    functional.sgd(twin, g, [None], step=2, lr=1e-3, kahan_comps=comps)
    assert p[0].tobytes() == twin[0].tobytes()
    assert opt.state[0]["kahan_comp"].tobytes() == comps[0].tobytes()


# ---- what is refused -----------------------------------------------------------------------------


def test_kahan_comps_are_checked_before_anything_is_written():
    rng = np.random.default_rng(9)
    p = rng.standard_normal(1000).astype(BF16)
    g = rng.standard_normal(1000).astype(BF16)
    c = np.zeros(1000, BF16)
    before = p.tobytes(), c.tobytes()

    def sgd(params, comps, **kw):
        functional.sgd([params], [g], [None], step=1, lr=0.1, kahan_comps=comps, **kw)

    with pytest.raises(TypeError, match=r"kahan_comps\[0\] has dtype float16, expected bfloat16 "
                                        r"\(its param's\)"):
        sgd(p, [np.zeros(1000, F16)])
    with pytest.raises(TypeError, match=r"kahan_comps\[0\] is a list, expected a numpy.ndarray "
                                        r"\(or None: no compensation\)"):
        sgd(p, [[0.0] * 1000])
    with pytest.raises(ValueError, match=r"kahan_comps\[0\] has shape \(999,\), expected"):
        sgd(p, [np.zeros(999, BF16)])
    with pytest.raises(ValueError, match=r"kahan_comps\[0\] is read-only"):
        ro = c.copy()
        ro.flags.writeable = False
        sgd(p, [ro])
    with pytest.raises(ValueError, match=r"kahan_comps\[0\] is not contiguous"):
        sgd(p, [np.zeros(2000, BF16)[::2]])
    with pytest.raises(ValueError, match=r"overlap|share memory"):
        sgd(p, [p])
    with pytest.raises(ValueError, match="kahan_comps and sr_seed exclude each other"):
        sgd(p, [c], sr_seed=1)
    with pytest.raises(ValueError, match="kahan_comps has 2 entries|2 arrays|length"):
        sgd(p, [c, c.copy()])
    f = rng.standard_normal(1000).astype(F32)
    with pytest.raises(TypeError, match=r"kahan_comps\[0\]: Kahan compensations are of bfloat16 "
                                        r"or float16 params, but params\[0\] has dtype float32"):
        functional.sgd([f], [f.copy()], [None], step=1, lr=0.1, kahan_comps=[np.zeros(1000, F32)])
    with pytest.raises(ValueError, match="kahan_comps and param_copies exclude each other"):
        functional.sgd([f], [f.copy()], [None], step=1, lr=0.1, kahan_comps=[None],
                       param_copies=[None])
    assert (p.tobytes(), c.tobytes()) == before


def test_a_none_entry_is_a_param_stored_without_compensation():
    rng = np.random.default_rng(10)
    ps = [rng.standard_normal(50).astype(BF16) for _ in range(2)]
    twin = [p.copy() for p in ps]
    g = [rng.standard_normal(50).astype(BF16) for _ in range(2)]
    comps = [None, np.zeros(50, BF16)]
    p1, c1 = ps[1].astype(np.float32), comps[1].astype(np.float32)
    functional.sgd(ps, g, [None, None], step=1, lr=0.1, kahan_comps=comps)
    functional.sgd(twin, g, [None, None], step=1, lr=0.1)
    assert ps[0].tobytes() == twin[0].tobytes()
    q = p1.copy()
    functional.sgd([q], [g[1].astype(np.float32)], [None], step=1, lr=0.1)
    want_p, want_c = kahan32(q, p1, c1, BF16)
    assert np.array_equal(ps[1].astype(np.float32), want_p)
    assert np.array_equal(comps[1].astype(np.float32), want_c)


def test_float32_and_float64_params_of_a_compensated_call_are_stored_as_without_it():
    """A call with kahan_comps updates its float32 and float64 params (None entries) exactly as
    a call without: only 16-bit params' lists are compensated (a float64 list once ran the
    float32 kernel over its memory as 16-bit values)."""
    rng = np.random.default_rng(12)
    for dt in (np.float64, np.float32):
        p = [rng.standard_normal(5000).astype(dt)]
        g = [rng.standard_normal(5000).astype(dt)]
        twin = [p[0].copy()]
        functional.sgd(p, g, [None], step=1, lr=0.1, kahan_comps=[None])
        functional.sgd(twin, g, [None], step=1, lr=0.1)
        assert p[0].tobytes() == twin[0].tobytes(), dt
    wide = rng.standard_normal(3000)
    low = rng.standard_normal(3000).astype(BF16)
    opt = fusedopt.SGD([wide, low], lr=0.1, kahan_summation=True)
    twin_w, twin_l = wide.copy(), low.copy()
    comp = np.zeros(3000, BF16)
    for t in range(1, 4):
        gw, gl = rng.standard_normal(3000), rng.standard_normal(3000).astype(BF16)
        opt.step([gw, gl])
        functional.sgd([twin_w], [gw], [None], step=t, lr=0.1)
        functional.sgd([twin_l], [gl], [None], step=t, lr=0.1, kahan_comps=[comp])
        assert wide.tobytes() == twin_w.tobytes() and low.tobytes() == twin_l.tobytes()


def test_a_param_going_to_infinity_leaves_a_zero_comp_and_stays_as_without_compensation():
    p = np.array([3.0e38, 1.0, np.nan, -3.0e38], F32).astype(BF16)
    g = np.array([-1.0e38, 0.0, 1.0, 1.0e38], F32).astype(BF16)
    c = np.array([0.0, 2.0 ** -12, 0.0, 0.0], F32).astype(BF16)
    plain = p.copy()
    functional.sgd([p], [g], [None], step=1, lr=10.0, kahan_comps=[c])
    pf, cf = p.astype(np.float32), c.astype(np.float32)
    assert pf[0] == np.inf and cf[0] == 0 and pf[3] == -np.inf and cf[3] == 0
    assert pf[1] == 1 and cf[1] == np.float32(2.0 ** -12)
    assert np.isnan(pf[2]) and cf[2] == 0
    # and after: an infinite param steps as it would uncompensated (inf - inf would be NaN)
    functional.sgd([plain], [g], [None], step=1, lr=10.0)
    for t in (2, 3):
        functional.sgd([p], [g], [None], step=t, lr=10.0, kahan_comps=[c])
        functional.sgd([plain], [g], [None], step=t, lr=10.0)
        assert np.array_equal(p.astype(np.float32)[[0, 2, 3]], plain.astype(np.float32)[[0, 2, 3]],
                              equal_nan=True)
        assert np.isinf(p.astype(np.float32)[[0, 3]]).all() and (c.astype(np.float32)[[0, 3]] == 0).all()


def test_the_cuda_path_refuses_kahan_comps_by_name():
    pytest.importorskip("cupy")
    import cupy

    if not fusedopt.cuda_available():
        pytest.skip("no CUDA device")
    p = cupy.ones(8, cupy.float32)
    with pytest.raises(TypeError, match="kahan_comps is for the CPU kernels only"):
        functional.sgd([p], [p.copy()], [None], step=1, lr=0.1, kahan_comps=[None])
