"""16-bit storage (Note [Storage is not compute], [Staged storage] in csrc/storage.h): bfloat16 and
float16 params, grads and states, the math in float32, each stored value rounded once to nearest.

Three oracles, none of them the code under test:
- rounding: NumPy's float32 -> float16 and ml_dtypes' float32 -> bfloat16 conversions (both round
  to nearest even), over every 16-bit pattern and over sums whose float32 bits land on ties;
- the kernels: a 16-bit call gives exactly the bits of the float32 kernel run on the same values
  (every 16-bit value is a float32) with each buffer it stores rounded by NumPy / ml_dtypes after
  the step -- every algorithm, every configuration of tests/algos.py, every staged combination,
  sizes across a chunk, a staging tile and a reduction row;
- the float64 reference, one step from the same 16-bit values: within one unit in the last place
  of the stored dtype (a float32 result may fall on the other side of a rounding boundary than
  the float64 one), plus 2^-20 of the tensor's scale where float32 cancellation shows;
and bitwise equality across SIMD paths and thread counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fusedopt
from fusedopt import _core, functional, reference
from fusedopt._spec import SPECS
from fusedopt.optim.optimizer import call_seed
from algos import ALGOS

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

# (param, grad, state): the staged combinations the README lists.
COMBOS = (
    (BF16, BF16, F32),
    (BF16, BF16, BF16),
    (F16, F16, F32),
    (F16, F16, BF16),
    (F32, F32, BF16),
    (F32, BF16, F32),
    (F32, F16, F32),
    (F32, BF16, BF16),
    (F32, F16, BF16),
)
COMBO_IDS = ["-".join(d.name for d in c) for c in COMBOS]
# 65539: a 65536-element chunk and a tail; 3077: three 1024-element staging tiles and a tail that
# ends within a 512-lane reduction row
SIZES = (7, 3077, 65539)


def lp(x, dtype):
    """float32 values rounded to `dtype` by NumPy / ml_dtypes, back as float32."""
    return np.asarray(x, np.float32).astype(dtype).astype(np.float32)


# ---- rounding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_every_16_bit_value_loads_exactly_and_sums_round_to_nearest_even(dtype):
    """SGD with maximize, lr 1 and no momentum stores p + g: over every 16-bit pattern as p (g = 0,
    a round trip), and over p + g for random pairs, whose float32 sums hit ties, overflow and the
    subnormal range, the bits are NumPy's / ml_dtypes' rounding of the float32 sum."""
    every = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    finite = every[np.isfinite(every.astype(np.float32))]
    p = finite.copy()
    functional.sgd([p], [np.zeros_like(p)], [None], step=1, lr=1.0, maximize=True)
    want = (finite.astype(np.float32) + np.float32(0.0)).astype(dtype)  # -0 + 0 is +0
    assert p.view(np.uint16).tolist() == want.view(np.uint16).tolist()

    rng = np.random.default_rng(1)
    a = rng.integers(0, 1 << 16, 400_000).astype(np.uint16).view(dtype)
    b = rng.integers(0, 1 << 16, 400_000).astype(np.uint16).view(dtype)
    ok = np.isfinite(a.astype(np.float32)) & np.isfinite(b.astype(np.float32))
    a, b = a[ok], b[ok]
    # near neighbours too: their sums cancel into the subnormals and round at ties
    with np.errstate(over="ignore"):
        b[: b.size // 2] = (-a[: b.size // 2].astype(np.float32) * 1.001).astype(dtype)
        want = (a.astype(np.float32) + b.astype(np.float32)).astype(dtype)
    got = a.copy()
    functional.sgd([got], [b], [None], step=1, lr=1.0, maximize=True)
    w32 = want.astype(np.float32)
    tiny = float(ml_dtypes.finfo(dtype).smallest_normal)
    assert np.isinf(w32).any() and (np.abs(w32[w32 != 0]) < tiny).any()  # overflow, subnormals
    assert got.view(np.uint16).tolist() == want.view(np.uint16).tolist()


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_nan_and_inf_are_stored_as_such(dtype):
    p = np.array([0.0, 1.0, -1.0, 2.0], dtype)
    g = np.array([np.nan, np.inf, -np.inf, -np.nan], dtype)
    functional.sgd([p], [g], [None], step=1, lr=1.0, maximize=True)
    out = p.astype(np.float32)
    assert np.isnan(out[0]) and np.isnan(out[3])
    assert out[1] == np.inf and out[2] == -np.inf


# ---- every algorithm: the float32 kernel's bits, each store rounded ------------------------------


def _dtypes(algo, combo):
    """(param, grad, state) dtypes; EWA's read-out writes its outs in the averages' dtype."""
    pd, gd, sd = combo
    return (pd, gd, pd) if algo.name == "ewa" else combo


def _arrays(algo, cfg, combo, size, seed):
    pd, gd, sd = _dtypes(algo, combo)
    rng = np.random.default_rng(seed)
    params32 = [lp(rng.standard_normal(size), pd), lp(rng.standard_normal(size % 97 + 1), pd)]
    states32 = algo.new_states(params32, cfg)
    states32 = {k: [lp(s, sd) for s in v] for k, v in states32.items()}
    return params32, states32


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("algo", ALGOS, ids=[a.name for a in ALGOS])
def test_16_bit_storage_is_the_float32_kernel_rounded_once_per_store(algo, combo):
    pd, gd, sd = _dtypes(algo, combo)
    for cfg in algo.configs:
        for size in SIZES if cfg.id == algo.full else SIZES[:1]:
            params32, states32 = _arrays(algo, cfg, combo, size, 7)
            params = [p.astype(pd) for p in params32]
            states = {k: [s.astype(sd) for s in v] for k, v in states32.items()}
            rng = np.random.default_rng(11)
            carry = carry32 = None
            for t in range(cfg.start, cfg.start + 3):
                grads = [(rng.standard_normal(p.shape) * 0.5).astype(gd) for p in params]
                carry = algo.step(functional, params, grads, states, t, cfg.hp, carry)
                g32 = [g.astype(np.float32) for g in grads]
                if algo.name == "ewa":  # two calls: the read-out reads the rounded averages
                    functional.ewa(params32, g32, beta=cfg.hp["beta"])
                    params32 = [lp(p, pd) for p in params32]
                    functional.ewa_readout(params32, states32["outs"], beta=cfg.hp["beta"], step=t)
                else:
                    carry32 = algo.step(functional, params32, g32, states32, t, cfg.hp, carry32)
                params32 = [lp(p, pd) for p in params32]
                states32 = {k: [lp(s, sd) for s in v] for k, v in states32.items()}
                for i, (p, p32) in enumerate(zip(params, params32)):
                    assert p.dtype == pd
                    msg = f"{algo.name}-{cfg.id} n={size} step {t} params[{i}]"
                    if algo.name == "lamb" and sd != F32:
                        # Note [LAMB's passes]: pass 2's u is of the moments as stored, rounded,
                        # which no float32 call gives; the reference test below bounds it
                        continue
                    np.testing.assert_array_equal(p.astype(np.float32), p32, err_msg=msg)
                for k in states:
                    for i, (s, s32) in enumerate(zip(states[k], states32[k])):
                        assert s.dtype == sd
                        np.testing.assert_array_equal(
                            s.astype(np.float32), s32,
                            err_msg=f"{algo.name}-{cfg.id} n={size} step {t} {k}[{i}]")
                # the float32 twin goes on from the rounded values the 16-bit call holds
                for p, p32 in zip(params, params32):
                    p32[...] = p.astype(np.float32)
            assert carry == carry32


# ---- against the float64 reference ---------------------------------------------------------------


def _ulps_apart(a, b, dtype):
    """|a - b| in units in the last place of `dtype` (both rounded to it), counted through zero."""
    if dtype == F32:
        ia, ib = np.asarray(a, np.float32).view(np.int32), np.asarray(b, np.float32).view(np.int32)
        ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia).astype(np.int64)
        ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib).astype(np.int64)
        return np.abs(ia - ib)
    ua = np.asarray(a, np.float32).astype(dtype).view(np.uint16).astype(np.int64)
    ub = np.asarray(b, np.float32).astype(dtype).view(np.uint16).astype(np.int64)
    ia = np.where(ua & 0x8000, -(ua & 0x7FFF), ua)
    ib = np.where(ub & 0x8000, -(ub & 0x7FFF), ub)
    return np.abs(ia - ib)


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("algo", ALGOS, ids=[a.name for a in ALGOS])
def test_one_step_is_within_one_ulp_of_the_stored_dtype_of_the_reference(algo, combo):
    """Tolerance table: a stored 16-bit value is within 1 ulp of its dtype of the float64
    reference's value (rounded to that dtype); a stored float32 state within 64 float32 ulps
    (the float32 contract of the other tests, as ulps); either may instead be within 2^-20 of the
    largest magnitude of its tensor (float32 cancellation near zero, where ulps are tiny)."""
    pd, gd, sd = _dtypes(algo, combo)
    cfg = algo.config(algo.full)
    params32, states32 = _arrays(algo, cfg, combo, 4099, 3)
    params = [p.astype(pd) for p in params32]
    states = {k: [s.astype(sd) for s in v] for k, v in states32.items()}
    grads = [(np.random.default_rng(5).standard_normal(p.shape) * 0.5).astype(gd) for p in params]
    p64 = [p.astype(np.float64) for p in params32]
    s64 = {k: [s.astype(np.float64) for s in v] for k, v in states32.items()}
    g64 = [g.astype(np.float64) for g in grads]
    p64_before = [p.copy() for p in p64]
    t = cfg.start
    algo.step(functional, params, grads, states, t, cfg.hp)
    algo.step(reference, p64, g64, s64, t, cfg.hp)
    checks = [("params", params, p64, pd)] + [(k, states[k], s64[k], sd) for k in states]
    for name, got, want, dtype in checks:
        limit = 1 if dtype != F32 else 64
        for i, (a, r) in enumerate(zip(got, want)):
            a32 = a.astype(np.float32)
            ulps = _ulps_apart(a32, r.astype(np.float32), dtype)
            near = np.abs(a32 - r) <= 2.0**-20 * max(np.max(np.abs(r)), 1e-30)
            if algo.name == "lamb" and sd != F32 and name == "params":
                # Note [LAMB's passes]: pass 2 reads the moments as stored, each within a
                # relative 2^-9 (bfloat16): the step within 2^-7 of the reference's
                near |= np.abs(a32 - r) <= 2.0**-7 * np.abs(r - p64_before[i])
            bad = (ulps > limit) & ~near
            assert not bad.any(), (
                f"{algo.name}-{cfg.id} {'-'.join(d.name for d in combo)} {name}[{i}]: "
                f"{int(bad.sum())} of {a.size} elements past {limit} ulp of {dtype.name}, "
                f"the worst {int(ulps[bad].max())} ulp at {a32[bad][0]!r} vs {r[bad][0]!r}")


# ---- the same bits everywhere --------------------------------------------------------------------

SCRIPT = r"""
import sys
import numpy as np, ml_dtypes
sys.path.insert(0, sys.argv[2])
import fusedopt
from fusedopt import functional
from algos import ALGO_BY_NAME
bf = ml_dtypes.bfloat16
out = {}
for name in ("adam", "lamb", "sgd", "adamw_schedulefree"):
    algo = ALGO_BY_NAME[name]
    cfg = algo.config(algo.full)
    for pd, gd, sd in ((bf, bf, np.float32), (bf, bf, bf), (np.float16, np.float16, bf),
                       (np.float32, bf, np.float32)):
        rng = np.random.default_rng(0)
        params = [rng.standard_normal(n).astype(pd) for n in (300_001, 5, 70_000)]
        states = {k: [s.astype(sd) for s in v]
                  for k, v in algo.new_states([p.astype(np.float32) for p in params], cfg).items()}
        carry = None
        for t in range(cfg.start, cfg.start + 4):
            grads = [rng.standard_normal(p.shape).astype(gd) for p in params]
            carry = algo.step(functional, params, grads, states, t, cfg.hp, carry)
        for key, arrays in dict(params=params, **states).items():
            out[f"{name}:{np.dtype(pd).name}:{np.dtype(sd).name}:{key}"] = np.concatenate(
                [a.view(np.uint16 if a.itemsize == 2 else np.uint32).ravel() for a in arrays])
for name in ("adam", "sgd"):  # Note [Kahan summation]
    algo = ALGO_BY_NAME[name]
    cfg = algo.config(algo.full)
    for pd in (bf, np.float16):
        rng = np.random.default_rng(1)
        params = [rng.standard_normal(n).astype(pd) for n in (300_001, 5, 70_000)]
        comps = [np.zeros(p.shape, pd) for p in params]
        states = algo.new_states([p.astype(np.float32) for p in params], cfg)
        for t in range(cfg.start, cfg.start + 4):
            grads = [(rng.standard_normal(p.shape) * 1e-3).astype(pd) for p in params]
            algo.step(functional, params, grads, states, t, cfg.hp, kahan_comps=comps)
        for key, arrays in (("params", params), ("kahan_comps", comps)):
            out[f"kahan:{name}:{np.dtype(pd).name}:{key}"] = np.concatenate(
                [a.view(np.uint16).ravel() for a in arrays])
out["simd"] = np.array(fusedopt.build_info()["simd_active"])
np.savez(sys.argv[1], **out)
"""


def _run(tmp_path, threads, isa):
    out = tmp_path / f"lp-{threads}-{isa}.npz"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), FUSEDOPT_SIMD=isa)
    package = Path(fusedopt.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(package)] + ([env["PYTHONPATH"]]
                                                          if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_16_bit_steps_are_bitwise_equal_across_simd_paths_and_thread_counts(tmp_path):
    isas = list(fusedopt.build_info()["simd_supported"])
    runs = {(t, isa): _run(tmp_path, t, isa) for isa in isas for t in (1, 3)}
    for (_t, isa), r in runs.items():
        assert str(r.pop("simd")) == isa
    (k0, base), *rest = runs.items()
    assert len(base) >= 40
    for k, r in rest:
        for key in base:
            assert base[key].tobytes() == r[key].tobytes(), f"{key}: {k0} and {k} differ"


# ---- what is refused -----------------------------------------------------------------------------


def test_combinations_not_listed_are_refused_by_name_and_nothing_is_written():
    p = np.ones(10, np.float64)
    g = np.ones(10, BF16)
    m, v = np.zeros(10), np.zeros(10)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype bfloat16, expected float64"):
        functional.adam([p], [g], [m], [v], step=1, lr=0.1)
    p16 = np.ones(10, F16)
    before = p16.copy()
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype float16, expected float32 or "
                                        r"bfloat16 \(with a float16 params\[0\]\)"):
        functional.adam([p16], [p16.copy()], [np.zeros(10, F16)], [np.zeros(10, F16)], step=1,
                        lr=0.1)
    assert p16.tobytes() == before.tobytes()
    pb = np.ones(10, BF16)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32, expected bfloat16"):
        functional.adam([pb], [np.ones(10, np.float32)], [np.zeros(10, np.float32)],
                        [np.zeros(10, np.float32)], step=1, lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] has dtype int16, expected float32, "
                                        r"float64, bfloat16 or float16"):
        functional.sgd([np.ones(3, np.int16)], [np.ones(3, np.int16)], [None], step=1, lr=0.1)


def test_announced_grad_dtype_binds_the_mixed_combination_and_is_checked():
    p = np.ones(4, np.float32)
    bound = _core.cpu.bind("sgd", ([p], None, [None]), (0.1, 0.0, 0.0, 0.0, False, False),
                           grads_later=True, grad_dtype=BF16)
    bound.run([np.full(4, 2.0, BF16)], step=1, lr=0.5)
    np.testing.assert_array_equal(p, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32, but the call was bound "
                                        r"for bfloat16 grads"):
        bound.run([np.ones(4, np.float32)], step=2, lr=0.5)
    # grads announced that float64 params do not take: bound for float64 grads, and those refused
    b64 = _core.cpu.bind("sgd", ([np.ones(4)], None, [None]), (0.1, 0.0, 0.0, 0.0, False, False),
                         grads_later=True, grad_dtype=BF16)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype bfloat16, expected float64 "
                                        r"\(the dtype of params\[0\]\)"):
        b64.run([np.ones(4, BF16)], step=1, lr=0.5)
    with pytest.raises(TypeError, match="grad_dtype must be float32, float64, float16 or "
                                        "bfloat16, got int8"):
        _core.cpu.bind("sgd", ([p], None, [None]), (0.1, 0.0, 0.0, 0.0, False, False),
                       grads_later=True, grad_dtype=np.int8)


def test_the_emulated_cuda_driver_refuses_16_bit_buffers():
    p = np.ones(4, BF16)
    with pytest.raises(TypeError, match="emulated CUDA driver runs float32 and float64 only"):
        _core._cuda_emulation.call("sgd", ([p], [p.copy()], [None]),
                                   (0.1, 0.0, 0.0, 0.0, False, False), step=1)
    assert (p.astype(np.float32) == 1).all()


# ---- the optimizer classes -----------------------------------------------------------------------


def test_classes_keep_float32_state_for_16_bit_params_and_step_as_the_functional_calls():
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(5000).astype(BF16), rng.standard_normal((30, 7)).astype(F16)]
    copies = [p.copy() for p in params]
    opt = fusedopt.AdamW(params, lr=1e-2)
    assert opt.state_dtype is None
    states = [[np.zeros(p.shape, np.float32) for p in copies] for _ in range(2)]
    for t in range(1, 4):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        opt.step(grads)
        for p, g, m, v in zip(copies, grads, *states):
            functional.adamw([p], [g], [m], [v], step=t, lr=1e-2)
    for i, (p, c) in enumerate(zip(params, copies)):
        assert p.dtype == c.dtype and p.tobytes() == c.tobytes()
        assert opt.state[i]["exp_avg"].dtype == F32
        assert opt.state[i]["exp_avg"].tobytes() == states[0][i].tobytes()


def test_state_dtype_bfloat16_and_a_state_dict_round_trip():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(70_000).astype(np.float32)
    opt = fusedopt.Adam([p], lr=1e-3, state_dtype="bfloat16")
    g = rng.standard_normal(p.shape).astype(np.float32)
    opt.step([g])
    assert opt.state[0]["exp_avg"].dtype == BF16 and opt.state[0]["exp_avg_sq"].dtype == BF16
    sd = opt.state_dict()
    q = p.copy()
    again = fusedopt.Adam([q], lr=1e-3, state_dtype=ml_dtypes.bfloat16)
    again.load_state_dict(sd)
    assert again.state[0]["exp_avg"].dtype == BF16
    opt.step([g])
    again.step([g])
    assert p.tobytes() == q.tobytes()
    # a state of float32 loaded into bfloat16 state is rounded to nearest; into float32, kept
    wide = fusedopt.Adam([p.copy()], lr=1e-3)
    wide.step([g])
    narrow = fusedopt.Adam([p.copy()], lr=1e-3, state_dtype="bfloat16")
    narrow.load_state_dict(wide.state_dict())
    m32 = wide.state[0]["exp_avg"]
    assert narrow.state[0]["exp_avg"].tobytes() == m32.astype(BF16).tobytes()


def test_float32_params_take_bfloat16_grads_step_after_step():
    rng = np.random.default_rng(4)
    p = rng.standard_normal(9000).astype(np.float32)
    ref = p.copy()
    opt = fusedopt.SGD([p], lr=0.1, momentum=0.9)
    buf = np.zeros_like(ref)
    for t in range(1, 5):
        g = rng.standard_normal(p.shape).astype(BF16)
        opt.step([g])
        functional.sgd([ref], [g.astype(np.float32)], [buf], step=t, lr=0.1, momentum=0.9)
    assert p.tobytes() == ref.tobytes()
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float16, but the call was bound "
                                        r"for bfloat16 grads"):
        opt.step([np.ones(p.shape, F16)])
    assert p.tobytes() == ref.tobytes()


@pytest.mark.parametrize("bad", ["float16", np.float64, "int8", 3])
def test_state_dtype_must_be_float32_or_bfloat16(bad):
    with pytest.raises(ValueError, match=r"Adam: state_dtype must be None, 'float32' or "
                                         r"'bfloat16', got"):
        fusedopt.Adam([np.ones(3, np.float32)], state_dtype=bad)


def test_float64_params_refuse_bfloat16_state_and_keep_nothing():
    p = np.ones(5)
    opt = fusedopt.Adam([p], state_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"Adam.step: exp_avgs\[0\] has dtype bfloat16, expected "
                                        r"float64 \(the dtype of params\[0\]\)"):
        opt.step([np.ones(5)])
    assert (p == 1).all() and 0 not in opt.state


# ---- param copies (Note [Param copies]) ----------------------------------------------------------


@pytest.mark.parametrize("grad", [BF16, F16, F32], ids=["bf16-grads", "fp16-grads", "fp32-grads"])
@pytest.mark.parametrize("copy", [BF16, F16], ids=["bf16-copies", "fp16-copies"])
@pytest.mark.parametrize("algo", [a for a in ALGOS if a.name != "ewa"],  # (two calls: below)
                         ids=[a.name for a in ALGOS if a.name != "ewa"])
def test_param_copies_are_the_new_params_rounded_once(algo, copy, grad):
    """Every update over float32 params writes, with param_copies, each param's new value rounded
    to the copy's dtype (NumPy's / ml_dtypes' rounding), and the params and states bit for bit as
    without copies; a None entry is a param without a copy. (EWA's update writes its averages:
    test_ewa_copies_are_the_averages_rounded.)"""
    cfg = algo.config(algo.full)
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(n).astype(np.float32) for n in (3077, 9, 65539)]
    twin = [p.copy() for p in params]
    states = {k: [s.astype(np.float32) for s in v]
              for k, v in algo.new_states(params, cfg).items()}
    states2 = {k: [s.copy() for s in v] for k, v in states.items()}
    copies = [np.zeros(params[0].shape, copy), None, np.zeros(params[2].shape, copy)]
    carry = carry2 = None
    for t in range(cfg.start, cfg.start + 3):
        grads = [rng.standard_normal(p.shape).astype(grad) for p in params]
        carry = _step_with_copies(algo, params, grads, states, t, cfg.hp, carry, copies)
        carry2 = algo.step(functional, twin, [g.astype(np.float32) for g in grads], states2, t,
                           cfg.hp, carry2)
        for i, (p, q) in enumerate(zip(params, twin)):
            assert p.tobytes() == q.tobytes(), f"{algo.name} step {t} params[{i}]"
            if copies[i] is not None:
                assert copies[i].tobytes() == p.astype(copy).tobytes(), f"copies[{i}] step {t}"
        for k in states:
            for s, s2 in zip(states[k], states2[k]):
                assert s.tobytes() == s2.tobytes()


def _step_with_copies(algo, params, grads, states, t, hp, carry, copies):
    fn = getattr(functional, algo.name)
    pos = [params if role == "param" else grads if role == "grad" else states.get(name)
           for name, role in algo.args]
    kwargs = dict(hp)
    names = [n for n, _ in SPECS[algo.name].scalars]
    if len(names) == 1:
        kwargs[names[0]] = carry
    elif names and carry is not None:
        kwargs.update(zip(names, carry))
    return fn(*pos, step=t, param_copies=copies, **kwargs)


def test_param_copies_are_checked_before_anything_is_written():
    rng = np.random.default_rng(9)
    p = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(BF16)
    m, v = np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    c = np.zeros(1000, BF16)
    before = [x.tobytes() for x in (p, m, v, c)]
    cases = [
        ([c, np.zeros(7, F16)], [p, p[:7].copy()], TypeError,
         r"adam: param_copies\[1\] has dtype float16, expected bfloat16 \(every copy of a call "
         r"has one dtype\)"),
        ([p.astype(np.float64)], [p], TypeError,
         r"adam: param_copies\[0\] has dtype float64, expected bfloat16 or float16"),
        ([c[:10]], [p], ValueError,
         r"adam: param_copies\[0\] has shape \(10,\), expected \(1000,\) \(the shape of "
         r"params\[0\]\)"),
        ([m.view(BF16)[:1000]], [p], ValueError, r"adam: param_copies\[0\] overlaps exp_avgs\[0\]"),
        ([np.zeros(2000, BF16)[::2]], [p], ValueError,
         r"adam: param_copies\[0\] is not contiguous"),
        ([c, c], [p, p[:1000].copy()], ValueError, r"param_copies\[\d\] overlaps param_copies"),
        ("no", [p], TypeError, r"adam: param_copies must be a list or tuple of numpy arrays"),
        ([c, None], [p], ValueError, r"adam: param_copies has 2 arrays, expected 1"),
    ]
    for copies, params, exc, msg in cases:
        ms = [m] + [np.zeros(q.shape, np.float32) for q in params[1:]]
        vs = [v] + [np.zeros(q.shape, np.float32) for q in params[1:]]
        gs = [g] + [np.zeros(q.shape, BF16) for q in params[1:]]
        with pytest.raises(exc, match=msg):
            functional.adam(params, gs, ms, vs, step=1, lr=0.1, param_copies=copies)
        assert [x.tobytes() for x in (p, m, v, c)] == before
    ro = np.zeros(1000, BF16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"adam: param_copies\[0\] is read-only"):
        functional.adam([p], [g], [m], [v], step=1, lr=0.1, param_copies=[ro])
    pb = np.ones(5, BF16)
    with pytest.raises(TypeError, match=r"param_copies\[0\]: copies are written of float32 "
                                        r"params, but params\[0\] has dtype bfloat16"):
        functional.adam([pb], [pb.copy()], [np.zeros(5, F32)], [np.zeros(5, F32)], step=1,
                        lr=0.1, param_copies=[np.zeros(5, BF16)])
    with pytest.raises(TypeError, match="sumsq takes no param_copies"):
        _core.cpu.bind("sumsq", ([p],), (), param_copies=[c])
    assert [x.tobytes() for x in (p, m, v, c)] == before


# ---- master weights (Note [Master weights]) ------------------------------------------------------


@pytest.mark.parametrize("low", [BF16, F16], ids=["bf16", "fp16"])
def test_master_weights_step_the_float32_master_and_write_the_param_rounded(low):
    rng = np.random.default_rng(10)
    params = [rng.standard_normal(70_000).astype(low), rng.standard_normal(33).astype(np.float32)]
    master = params[0].astype(np.float32)
    wide = params[1].copy()
    opt = fusedopt.AdamW(params, lr=1e-3, master_weights=True)
    m = [np.zeros(70_000, np.float32), np.zeros(33, np.float32)]
    v = [np.zeros(70_000, np.float32), np.zeros(33, np.float32)]
    for t in range(1, 5):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        opt.step(grads)
        functional.adamw([master, wide], [grads[0].astype(np.float32), grads[1]], m, v, step=t,
                         lr=1e-3)
        assert opt.state[0]["master_param"].tobytes() == master.tobytes()
        assert params[0].tobytes() == master.astype(low).tobytes()
        assert params[1].tobytes() == wide.tobytes() and "master_param" not in opt.state[1]
    sd = opt.state_dict()
    assert sd["state"][0]["master_param"].dtype == F32
    again = fusedopt.AdamW([params[0].copy(), params[1].copy()], lr=1e-3, master_weights=True)
    again.load_state_dict(sd)
    assert again.state[0]["master_param"].tobytes() == master.tobytes()


def test_master_weights_keep_updates_smaller_than_half_an_ulp():
    """bfloat16 SGD with a step of 1e-4 on params of 1: plain rounding loses every update, the
    float32 master keeps them."""
    p_plain, p_master = np.ones(1000, BF16), np.ones(1000, BF16)
    g = np.ones(1000, BF16)
    plain = fusedopt.SGD([p_plain], lr=1e-4)
    master = fusedopt.SGD([p_master], lr=1e-4, master_weights=True)
    for _ in range(100):
        plain.step([g])
        master.step([g])
    assert (p_plain.astype(np.float32) == 1).all()
    assert np.allclose(master.state[0]["master_param"], 1 - 100e-4, rtol=1e-5)
    assert (p_master.astype(np.float32) == np.float32(1 - 100e-4).astype(BF16)).all()


def test_master_weights_must_be_a_bool():
    with pytest.raises(TypeError, match="Adam: master_weights must be a bool, got str"):
        fusedopt.Adam([np.ones(3, BF16)], master_weights="yes")


# ---- stochastic rounding (Note [Stochastic rounding]) --------------------------------------------


def _neighbours(x32, dtype):
    """The two values of `dtype` around each float32 in x32 (both the value where it is one),
    found through the bit patterns: the next one away from zero is the pattern + 1."""
    near = x32.astype(dtype)
    bits = near.view(np.uint16).astype(np.int32)
    mag = bits & 0x7FFF
    away = ((bits & 0x8000) | (mag + 1)).astype(np.uint16).view(dtype).astype(np.float32)
    toward = ((bits & 0x8000) | np.maximum(mag - 1, 0)).astype(np.uint16).view(dtype)
    toward = toward.astype(np.float32)
    near = near.astype(np.float32)
    tiny = np.float32(ml_dtypes.finfo(dtype).smallest_subnormal)
    # above or below near, on the side of x32; from zero, the smallest subnormal of x32's sign
    other = np.where(near == 0, np.copysign(tiny, x32),
                     np.where(np.abs(x32) > np.abs(near), away, toward))
    lo, hi = np.minimum(near, other), np.maximum(near, other)
    return np.where(near == x32, near, lo), np.where(near == x32, near, hi)


def _sr_copies(x32, dtype, seed, step=1):
    """x32 stored stochastically into `dtype` through SGD's param copies (p = 0 + x)."""
    p = np.zeros(x32.shape, np.float32)
    c = np.zeros(x32.shape, dtype)
    functional.sgd([p], [x32], [None], step=step, lr=1.0, maximize=True, param_copies=[c],
                   sr_seed=seed)
    # (values, not bits: a NaN's sign after p = 0 - lr * (-g) is the compiler's choice, and
    # differs between the -O3 and the sanitizer builds)
    assert np.array_equal(p, x32, equal_nan=True)
    return c.astype(np.float32)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_stochastic_rounding_is_unbiased_within_a_binomial_bound(dtype):
    """Each of 40 values (normal, negative, and for float16 subnormal) stored 2^17 times: the
    mean of the stored values is the value within 5 standard deviations of the binomial mean
    (plus, for float16 subnormals, the 2^-14 ulp bias the note states)."""
    rng = np.random.default_rng(12)
    values = np.concatenate([rng.standard_normal(20), -rng.uniform(1e3, 6e4, 10),
                             rng.uniform(-1, 1, 10) * (2.0**-17 if dtype == F16 else 1e-30)])
    values = values.astype(np.float32)
    n = 1 << 17
    x = np.repeat(values, n)
    out = _sr_copies(x, dtype, seed=7).reshape(values.size, n)
    lo, hi = _neighbours(values, dtype)
    assert ((out == lo[:, None]) | (out == hi[:, None])).all()
    gap = (hi - lo).astype(np.float64)
    frac = np.where(gap > 0, (values - lo) / np.where(gap > 0, gap, 1), 0)
    sigma = gap * np.sqrt(frac * (1 - frac) / n)
    bias = np.where(np.abs(values) < 2.0**-14, gap * 2.0**-14, 0) if dtype == F16 else 0
    err = np.abs(out.astype(np.float64).mean(axis=1) - values)
    assert (err <= 5 * sigma + bias + 1e-300).all(), (values[err > 5 * sigma + bias], err)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_stochastic_rounding_stays_between_the_two_neighbours(dtype):
    rng = np.random.default_rng(13)
    bits = rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    big = 3.0e38 if dtype == BF16 else 65000.0
    x = x[np.isfinite(x) & (np.abs(x) < big)]
    out = _sr_copies(x, dtype, seed=1)
    lo, hi = _neighbours(x, dtype)
    bad = ~((out == lo) | (out == hi))
    assert not bad.any(), (x[bad][:5], out[bad][:5], lo[bad][:5], hi[bad][:5])
    exact = x.astype(dtype).astype(np.float32) == x  # representable values never move
    assert (out[exact] == x[exact]).all()
    # infinities and NaN stay; the seed, and the step, change the draw
    special = np.array([np.inf, -np.inf, np.nan], np.float32)
    s = _sr_copies(special, dtype, seed=1)
    assert s[0] == np.inf and s[1] == -np.inf and np.isnan(s[2])
    y = np.full(100_000, 1 + 2.0**-10 / 3, np.float32)
    a, b, c = _sr_copies(y, dtype, 1), _sr_copies(y, dtype, 2), _sr_copies(y, dtype, 1, step=2)
    assert a.tobytes() == _sr_copies(y, dtype, 1).tobytes()
    assert a.tobytes() != b.tobytes() and a.tobytes() != c.tobytes()


SR_SCRIPT = r"""
import sys
import numpy as np, ml_dtypes
import fusedopt
from fusedopt import functional
bf = ml_dtypes.bfloat16
rng = np.random.default_rng(0)
out = {}
for pd, sd in ((bf, np.float32), (bf, bf), (np.float16, bf)):
    ps = [rng.standard_normal(n).astype(pd) for n in (300_001, 5, 70_000)]
    ms = [np.zeros(p.shape, sd) for p in ps]
    vs = [np.zeros(p.shape, sd) for p in ps]
    for t in range(1, 4):
        gs = [rng.standard_normal(p.shape).astype(pd) for p in ps]
        functional.adamw(ps, gs, ms, vs, step=t, lr=1e-2, sr_seed=99)
    for name, arrs in (("p", ps), ("m", ms), ("v", vs)):
        out[f"{np.dtype(pd).name}:{np.dtype(sd).name}:{name}"] = np.concatenate(
            [a.view(np.uint16 if a.itemsize == 2 else np.uint32).ravel() for a in arrs])
p = rng.standard_normal(200_003).astype(np.float32)
c = np.zeros(p.shape, bf)
functional.sgd([p], [rng.standard_normal(p.shape).astype(bf)], [None], step=5, lr=0.1,
               param_copies=[c], sr_seed=3)
out["copies"] = c.view(np.uint16)
out["simd"] = np.array(fusedopt.build_info()["simd_active"])
np.savez(sys.argv[1], **out)
"""


def test_stochastic_rounding_is_bitwise_equal_across_simd_paths_and_thread_counts(tmp_path):
    package = Path(fusedopt.__file__).resolve().parent.parent
    runs = {}
    for isa in fusedopt.build_info()["simd_supported"]:
        for threads in (1, 3):
            out = tmp_path / f"sr-{threads}-{isa}.npz"
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), FUSEDOPT_SIMD=isa)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(package)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            proc = subprocess.run([sys.executable, "-c", SR_SCRIPT, str(out)], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            with np.load(out) as z:
                runs[(threads, isa)] = {k: z[k] for k in z.files}
            assert str(runs[(threads, isa)].pop("simd")) == isa
    (k0, base), *rest = runs.items()
    for k, r in rest:
        for key in base:
            assert base[key].tobytes() == r[key].tobytes(), f"{key}: {k0} and {k} differ"


def test_stochastic_rounding_changes_only_16_bit_stores():
    """float32 stores ignore the seed: a float32 call with sr_seed is the call without."""
    rng = np.random.default_rng(14)
    p = rng.standard_normal(5000).astype(np.float32)
    g = rng.standard_normal(5000).astype(np.float32)
    q = p.copy()
    functional.sgd([p], [g], [None], step=1, lr=0.1, sr_seed=5)
    functional.sgd([q], [g], [None], step=1, lr=0.1)
    assert p.tobytes() == q.tobytes()
    # the offload step (float32 params and state, bfloat16 grads) stores nothing in 16 bits but
    # its copies, which round stochastically: with no copies it is the call without the seed
    gb = g.astype(BF16)
    for copies in (False, True):
        bufs = [[x.copy() for x in (p, np.zeros_like(p), np.zeros_like(p))] for _ in range(2)]
        cps = [[np.zeros(5000, BF16)] if copies else None for _ in range(2)]
        for t in (1, 2):
            for (pp, m, v), cp, seed in zip(bufs, cps, (7, None)):
                functional.adam([pp], [gb], [m], [v], step=t, lr=0.1, param_copies=cp,
                                sr_seed=seed)
        for a, b in zip(bufs[0], bufs[1]):
            assert a.tobytes() == b.tobytes(), copies
        if copies:
            assert cps[0][0].tobytes() != cps[1][0].tobytes()
            assert np.all(np.abs(cps[0][0].astype(np.float32) - bufs[0][0])
                          <= np.abs(bufs[0][0]) * 2.0 ** -7)
    # float32 params with bfloat16 state: the states round stochastically, so two seeds differ
    moments = []
    for seed in (7, 8):
        pp, m, v = p.copy(), np.zeros(5000, BF16), np.zeros(5000, BF16)
        for t in (1, 2):
            functional.adam([pp], [g], [m], [v], step=t, lr=0.1, sr_seed=seed)
        moments.append((m.tobytes(), v.tobytes()))
    assert moments[0][0] != moments[1][0] and moments[0][1] != moments[1][1]
    with pytest.raises(TypeError, match="sr_seed must be an int"):
        functional.sgd([p], [g], [None], step=1, lr=0.1, sr_seed=1.5)
    with pytest.raises(ValueError, match=r"sr_seed must be in \[0, 2\*\*64\)"):
        functional.sgd([p], [g], [None], step=1, lr=0.1, sr_seed=-1)


def test_optimizer_stochastic_rounding_is_seeded_and_recorded():
    rng = np.random.default_rng(15)
    start = rng.standard_normal(20_000).astype(BF16)
    grads = [rng.standard_normal(20_000).astype(BF16) for _ in range(4)]

    def run(**kw):
        p = start.copy()
        opt = fusedopt.AdamW([p], lr=1e-3, **kw)
        for g in grads[:2]:
            opt.step([g])
        return p, opt

    a, oa = run(stochastic_rounding=True, seed=11)
    b, _ = run(stochastic_rounding=True, seed=11)
    c, _ = run(stochastic_rounding=True, seed=12)
    d, _ = run()
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes() and a.tobytes() != d.tobytes()
    # the same steps as the functional calls with the call's seed (its first param's index 0)
    p = start.copy()
    m, v = np.zeros(p.shape, np.float32), np.zeros(p.shape, np.float32)
    for t, g in enumerate(grads[:2], 1):
        functional.adamw([p], [g], [m], [v], step=t, lr=1e-3, sr_seed=call_seed(11, 0))
    assert p.tobytes() == a.tobytes()
    # the seed is in the state dict: a resumed run draws what the first would have
    sd = oa.state_dict()
    assert sd["stochastic_rounding"] == {"seed": 11}
    resumed = fusedopt.AdamW([a.copy()], lr=1e-3, stochastic_rounding=True)
    resumed.load_state_dict(sd)
    assert resumed.seed == 11
    oa.step([grads[2]])
    resumed.step([grads[2]])
    assert resumed.param_groups[0]["params"][0].tobytes() == a.tobytes()
    # a seed of None is drawn per optimizer
    assert fusedopt.Adam([start.copy()], stochastic_rounding=True).seed != \
        fusedopt.Adam([start.copy()], stochastic_rounding=True).seed
    with pytest.raises(TypeError, match="Adam: stochastic_rounding must be a bool, got int"):
        fusedopt.Adam([start.copy()], stochastic_rounding=1)
    with pytest.raises(ValueError, match=r"Adam: seed must be in \[0, 2\*\*64\), got -3"):
        fusedopt.Adam([start.copy()], stochastic_rounding=True, seed=-3)


# ---- Adafactor (Note [Adafactor in 16 bits]) -----------------------------------------------------

# 0-d, 1-d, a matrix, batched matrices; a matrix of 2 column blocks and 3 row blocks (3 x 70 x
# 2100 is 3 matrices of 2 x 3 tiles) and a vector of 4 chunks (Note [Adafactor's sums])
ADAFACTOR_SHAPES = [(), (17,), (5, 7), (2, 3, 6), (3, 70, 2100), (200_000,)]


def _adafactor_states(params):
    """float32 zero states for each param: its factors for 2 or more dims, else its variance."""
    row, col, var = [], [], []
    for p in params:
        two = p.ndim >= 2
        row.append(np.zeros((*p.shape[:-1], 1), F32) if two else None)
        col.append(np.zeros((*p.shape[:-2], 1, p.shape[-1]), F32) if two else None)
        var.append(None if two else np.zeros(p.shape, F32))
    return row, col, var


def _adafactor_problem(dtype, steps=3):
    rng = np.random.default_rng(11)
    params = [np.asarray(rng.standard_normal(s), dtype) for s in ADAFACTOR_SHAPES]
    grads = [[np.asarray(rng.standard_normal(s) * 0.1, dtype) for s in ADAFACTOR_SHAPES]
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("kw", [{}, dict(weight_decay=0.1, maximize=True, lr=0.05)],
                         ids=["default", "wd-maximize"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_adafactor_16_bit_is_the_float32_kernel_rounded_once(dtype, kw):
    """A 16-bit Adafactor step gives the bits of the float32 kernel run on the same values (every
    16-bit value is a float32) with float32 states, the param then rounded by NumPy / ml_dtypes;
    eps1 None is the 16-bit dtype's machine epsilon. Three steps, each oracle step starting from
    the 16-bit call's params."""
    params, grads = _adafactor_problem(dtype)
    row, col, var = _adafactor_states(params)
    orow, ocol, ovar = _adafactor_states(params)
    eps1 = float(np.finfo(dtype).eps)
    for t, gs in enumerate(grads, start=1):
        want = [p.astype(F32) for p in params]
        functional.adafactor(want, [g.astype(F32) for g in gs], orow, ocol, ovar, steps=t,
                             eps=(eps1, 1e-3), **kw)
        functional.adafactor(params, gs, row, col, var, steps=t, **kw)
        for i, (p, w) in enumerate(zip(params, want)):
            assert p.dtype == dtype
            assert p.tobytes() == w.astype(dtype).tobytes(), f"step {t}: params[{i}]"
        for name, a, b in (("row_var", row, orow), ("col_var", col, ocol), ("variance", var, ovar)):
            for i, (x, y) in enumerate(zip(a, b)):
                if x is not None:
                    assert x.dtype == F32 and x.tobytes() == y.tobytes(), f"step {t}: {name}[{i}]"


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_adafactor_16_bit_step_is_within_one_ulp_of_the_reference(dtype):
    """Tolerance table: one step from the same 16-bit values, a param within 1 ulp of its dtype
    of the float64 reference's (rounded to it), or within 2^-20 of the tensor's largest magnitude;
    the float32 states within 1e-5 relative plus 1e-6 of their largest magnitude (tests/
    test_adafactor.py's float32 contract)."""
    params, grads = _adafactor_problem(dtype, steps=1)
    row, col, var = _adafactor_states(params)
    p64 = [p.astype(F64) for p in params]
    r64, c64, v64 = ([None if x is None else x.astype(F64) for x in a] for a in (row, col, var))
    functional.adafactor(params, grads[0], row, col, var, steps=1)
    reference.adafactor(p64, [g.astype(F64) for g in grads[0]], r64, c64, v64, steps=1,
                        eps=(float(np.finfo(dtype).eps), 1e-3))
    for i, (a, r) in enumerate(zip(params, p64)):
        a32 = a.astype(F32)
        ulps = _ulps_apart(a32, r.astype(F32), dtype)
        near = np.abs(a32 - r) <= 2.0**-20 * max(float(np.max(np.abs(r))), 1e-30)
        bad = (ulps > 1) & ~near
        assert not bad.any(), f"params[{i}]: {int(bad.sum())} of {a.size} past 1 ulp"
    for a, b in zip(row + col + var, r64 + c64 + v64):
        if a is not None:
            scale = max(float(np.max(np.abs(b))), 1.0)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


_M64 = (1 << 64) - 1


def _splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _bf16_sr_oracle(x32, seed, step, tensor, slot=0):
    """x32 (finite, under 2^32 elements) stored into bfloat16 by the rule of Note [Stochastic
    rounding], written out here: the random bits of element i are mix32(mix32(i ^ lo) + hi), (lo,
    hi) the halves of the key of (seed, step, tensor, buffer slot: 0 the param, 5 its copy), and
    the value rounds up when its low 16 bits plus the top 16 random bits carry."""
    run = _splitmix64(seed ^ _splitmix64(step))
    key = _splitmix64(run ^ _splitmix64(tensor ^ (slot << 40)))
    lo, hi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    with np.errstate(over="ignore"):
        r = _mix32(_mix32(np.arange(x32.size, dtype=np.uint32) ^ lo) + hi)
        u = np.ascontiguousarray(x32, np.float32).reshape(-1).view(np.uint32)
        out = ((u + (r >> np.uint32(16))) >> np.uint32(16)).astype(np.uint16)
    return out.view(BF16).reshape(x32.shape)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_adafactor_stochastic_rounding_stores_a_neighbour_of_the_float32_kernels_value(dtype):
    """With sr_seed, each 16-bit param is the float32 kernel's value (Note [Adafactor in 16
    bits]) rounded to one of its two neighbours; for bfloat16 exactly the one the rule of Note
    [Stochastic rounding] draws, keyed by (seed, the param's step, its position in the call,
    element), as the other algorithms key theirs; the states are the float32 kernel's bits. A
    second seed draws differently, the same seed the same."""
    params, grads = _adafactor_problem(dtype, steps=2)
    row, col, var = _adafactor_states(params)
    orow, ocol, ovar = _adafactor_states(params)
    eps = (float(np.finfo(dtype).eps), 1e-3)
    for t, gs in enumerate(grads, start=1):
        want = [p.astype(F32) for p in params]
        functional.adafactor(want, [g.astype(F32) for g in gs], orow, ocol, ovar, steps=t,
                             eps=eps)
        again = [p.copy() for p in params]
        other = [p.copy() for p in params]
        states = [[None if x is None else x.copy() for x in a] for a in (row, col, var)]
        functional.adafactor(params, gs, row, col, var, steps=t, sr_seed=99)
        functional.adafactor(again, gs, *[[None if x is None else x.copy() for x in a]
                                          for a in states], steps=t, sr_seed=99)
        functional.adafactor(other, gs, *states, steps=t, sr_seed=100)
        moved = 0
        for i, (p, w) in enumerate(zip(params, want)):
            lo, hi = _neighbours(w, dtype)
            got = p.astype(F32)
            assert ((got == lo) | (got == hi)).all(), f"step {t}: params[{i}]"
            if dtype == BF16:
                assert p.tobytes() == _bf16_sr_oracle(w, 99, t, i).tobytes(), f"params[{i}]"
            assert p.tobytes() == again[i].tobytes()
            moved += int((p.view(np.uint16) != other[i].view(np.uint16)).sum())
        assert moved > 1000  # of 639,000 elements
        for a, b in ((row, orow), (col, ocol), (var, ovar)):
            for x, y in zip(a, b):
                assert x is None or x.tobytes() == y.tobytes()


def test_adafactor_stochastic_rounding_is_unbiased_over_seeds():
    """The mean over 4096 seeds of one bfloat16 Adafactor step is the float32 kernel's value
    within 5 binomial standard deviations, element by element."""
    rng = np.random.default_rng(21)
    p0 = np.asarray(rng.standard_normal((8, 16)), BF16)
    g = np.asarray(rng.standard_normal((8, 16)), BF16)
    want = p0.astype(F32)
    row, col, _ = _adafactor_states([p0])
    functional.adafactor([want], [g.astype(F32)], row, col, [None], steps=1, lr=0.05,
                         eps=(float(np.finfo(BF16).eps), 1e-3))
    n = 4096
    total = np.zeros(p0.shape)
    for seed in range(n):
        p = p0.copy()
        r, c, _ = _adafactor_states([p])
        functional.adafactor([p], [g], r, c, [None], steps=1, lr=0.05, sr_seed=seed)
        total += p.astype(np.float64)
    lo, hi = _neighbours(want, BF16)
    gap = (hi - lo).astype(np.float64)
    frac = np.where(gap > 0, (want - lo) / np.where(gap > 0, gap, 1), 0)
    sigma = gap * np.sqrt(frac * (1 - frac) / n)
    err = np.abs(total / n - want)
    assert (err <= 5 * sigma + 1e-300).all(), (err.max(), sigma.max())


def test_adafactor_class_rounds_stochastically_with_its_recorded_seed():
    """stochastic_rounding=True: each group's call draws under call_seed(seed, its first flat
    index); the seed is in the state dict, and an optimizer loaded from it continues with the
    same bits."""
    rng = np.random.default_rng(5)
    start = [np.asarray(rng.standard_normal(s), BF16) for s in ((6, 40), (300,))]
    grads = [[np.asarray(rng.standard_normal(p.shape), BF16) for p in start] for _ in range(3)]
    opt = fusedopt.Adafactor([{"params": [start[0].copy()]}, {"params": [start[1].copy()]}],
                             stochastic_rounding=True, seed=1234)
    assert opt.stochastic_rounding and opt.seed == 1234
    ps = [p.copy() for p in start]
    row, col, var = _adafactor_states(ps)
    opt.step(grads[0])
    for i in range(2):
        functional.adafactor([ps[i]], [grads[0][i]], [row[i]], [col[i]], [var[i]], steps=1,
                             sr_seed=call_seed(1234, i))
    mine = [g["params"][0] for g in opt.param_groups]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(mine, ps))
    sd = opt.state_dict()
    assert sd["stochastic_rounding"] == {"seed": 1234}
    other = fusedopt.Adafactor([{"params": [mine[0].copy()]}, {"params": [mine[1].copy()]}],
                               stochastic_rounding=True)
    assert other.seed != 1234  # drawn
    other.load_state_dict(sd)
    assert other.seed == 1234
    for gs in grads[1:]:
        opt.step(gs)
        other.step(gs)
    theirs = [g["params"][0] for g in other.param_groups]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(mine, theirs))
    bad = {**sd, "stochastic_rounding": {"seed": -1}}
    with pytest.raises(ValueError, match=r"Adafactor.load_state_dict: stochastic_rounding\['seed'\] "
                                         r"must be an int in \[0, 2\*\*64\), got -1"):
        other.load_state_dict(bad)
    assert other.seed == 1234
    with pytest.raises(TypeError, match="Adafactor: stochastic_rounding must be a bool"):
        fusedopt.Adafactor([start[0].copy()], stochastic_rounding=1)
    with pytest.raises(ValueError, match=r"Adafactor: seed must be in \[0, 2\*\*64\), got -1"):
        fusedopt.Adafactor([start[0].copy()], stochastic_rounding=True, seed=-1)
    with pytest.raises(TypeError, match="sr_seed must be an int"):
        functional.adafactor([start[1].copy()], [grads[0][1]], None, None,
                             [np.zeros(300, F32)], steps=1, sr_seed=1.5)


@pytest.mark.parametrize("sr", [None, 31], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_adafactor_float32_master_with_16_bit_grads_writes_its_copy(dtype, sr):
    """float32 params (the masters) with 16-bit grads: the float32 kernel's bits on the grads'
    values, states too; each param's copy (param_copies, of the grads' dtype) is the new param
    rounded to nearest, or stochastically (bfloat16: exactly the draw of the copy's key, slot
    5; float16: a neighbour)."""
    params16, grads = _adafactor_problem(dtype, steps=2)
    masters = [p.astype(F32) for p in params16]
    copies = [p.copy() for p in params16]
    row, col, var = _adafactor_states(masters)
    orow, ocol, ovar = _adafactor_states(masters)
    want = [m.copy() for m in masters]
    for t, gs in enumerate(grads, start=1):
        functional.adafactor(want, [g.astype(F32) for g in gs], orow, ocol, ovar, steps=t)
        functional.adafactor(masters, gs, row, col, var, steps=t, param_copies=copies,
                             sr_seed=sr)
        for i, (m, w, c) in enumerate(zip(masters, want, copies)):
            assert m.tobytes() == w.tobytes(), f"step {t}: params[{i}]"
            if sr is None:
                assert c.tobytes() == w.astype(dtype).tobytes(), f"step {t}: copies[{i}]"
            elif dtype == BF16:
                assert c.tobytes() == _bf16_sr_oracle(w, sr, t, i, slot=5).tobytes()
            else:
                lo, hi = _neighbours(w, dtype)
                assert ((c.astype(F32) == lo) | (c.astype(F32) == hi)).all()
        for a, b in ((row, orow), (col, ocol), (var, ovar)):
            assert all(x is None or x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _kahan_oracle(q, p, c, dtype):
    """Note [Kahan summation] in float32 NumPy arithmetic (finite values): the compensated sum
    of the old 16-bit value and the new float32 value q, and the new compensation."""
    old = p.astype(F32)
    u = c.astype(F32) + (q - old)
    stored = (old + u).astype(dtype)
    return stored, (u - (stored.astype(F32) - old)).astype(dtype)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_adafactor_kahan_compensation_is_the_rule_of_the_note(dtype):
    """kahan_comps: each 16-bit param and its compensation are the Kahan store of the float32
    kernel's new value (from the 16-bit param's values), written out in NumPy, step after step;
    the states are the float32 kernel's."""
    params, grads = _adafactor_problem(dtype, steps=3)
    comps = [np.zeros_like(p) for p in params]
    row, col, var = _adafactor_states(params)
    orow, ocol, ovar = _adafactor_states(params)
    eps = (float(np.finfo(dtype).eps), 1e-3)
    for t, gs in enumerate(grads, start=1):
        q = [p.astype(F32) for p in params]
        functional.adafactor(q, [g.astype(F32) for g in gs], orow, ocol, ovar, steps=t, eps=eps,
                             lr=1e-3)
        want = [_kahan_oracle(x, p, c, dtype) for x, p, c in zip(q, params, comps)]
        functional.adafactor(params, gs, row, col, var, steps=t, kahan_comps=comps, lr=1e-3)
        for i, ((wp, wc), p, c) in enumerate(zip(want, params, comps)):
            assert p.tobytes() == wp.tobytes(), f"step {t}: params[{i}]"
            assert c.tobytes() == wc.tobytes(), f"step {t}: kahan_comps[{i}]"
    assert any(c.any() for c in comps)


def test_adafactor_copies_and_compensations_are_checked_before_anything_is_written():
    p32 = np.ones((4, 3), F32)
    p16 = np.ones((4, 3), BF16)
    g16 = np.full((4, 3), 0.5, BF16)
    row, col = np.zeros((4, 1), F32), np.zeros((1, 3), F32)
    arrays = (p32, p16, g16, row, col)
    before = [a.tobytes() for a in arrays]
    cases = [
        (TypeError, r"param_copies\[0\] has dtype float16, expected bfloat16 \(the dtype of "
                    r"grads\[0\]",
         lambda: functional.adafactor([p32], [g16], [row], [col], [None],
                                      steps=1, param_copies=[np.ones((4, 3), F16)])),
        (TypeError, r"param_copies\[0\]: copies are written of float32 params",
         lambda: functional.adafactor([p16], [g16], [row], [col], [None], steps=1,
                                      param_copies=[np.ones((4, 3), BF16)])),
        (TypeError, r"kahan_comps\[0\]: Kahan compensations are of bfloat16 or float16 params",
         lambda: functional.adafactor([p32], [g16], [row], [col], [None], steps=1,
                                      kahan_comps=[np.ones((4, 3), F32)])),
        (ValueError, r"kahan_comps and sr_seed exclude each other",
         lambda: functional.adafactor([p16], [g16], [row], [col], [None], steps=1, sr_seed=1,
                                      kahan_comps=[np.zeros((4, 3), BF16)])),
        (ValueError, r"param_copies\[0\] overlaps params\[0\]",
         lambda: functional.adafactor([p32], [g16], [row], [col], [None], steps=1,
                                      param_copies=[p32.view(BF16).reshape(-1)[:12]
                                                    .reshape(4, 3)])),
        (TypeError, r"grads\[0\] has dtype bfloat16, expected float64",
         lambda: functional.adafactor([np.ones((4, 3))], [g16], [row.astype(F64)],
                                      [col.astype(F64)], [None], steps=1)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
        assert [a.tobytes() for a in arrays] == before, match


@pytest.mark.parametrize("option", ["master_weights", "kahan_summation"])
def test_adafactor_class_master_weights_and_kahan_summation(option):
    """The class: master_weights keeps master_param (float32) and writes the param from it;
    kahan_summation keeps kahan_comp (the param's dtype); either as the functional call, a float32
    param left alone by both; the state dict round trip continues the run with the same bits;
    the options exclude each other and stochastic rounding as the other classes' do."""
    rng = np.random.default_rng(9)
    start = [np.asarray(rng.standard_normal(s), d) for s, d in (((6, 5), BF16), ((9,), F16),
                                                                 ((4,), F32))]
    grads = [[np.asarray(rng.standard_normal(p.shape), p.dtype) for p in start] for _ in range(4)]
    opt = fusedopt.Adafactor([p.copy() for p in start], lr=1e-3, **{option: True})
    ps = [p.copy() for p in start]
    extra = [p.astype(F32) if option == "master_weights" else np.zeros_like(p) for p in ps[:2]]
    row, col, var = _adafactor_states(ps)
    eps = (float(np.finfo(BF16).eps), 1e-3)  # the group's first param's
    for t in (1, 2):
        opt.step(grads[t - 1])
        for i in range(3):
            kw = {}
            if i < 2:
                kw = ({"param_copies": [ps[i]]} if option == "master_weights"
                      else {"kahan_comps": [extra[i]]})
            target = extra[i] if i < 2 and option == "master_weights" else ps[i]
            functional.adafactor([target], [grads[t - 1][i]], [row[i]], [col[i]], [var[i]],
                                 steps=t, lr=1e-3, eps=eps, **kw)
    name = "master_param" if option == "master_weights" else "kahan_comp"
    mine = opt.param_groups[0]["params"]
    for i in range(3):
        assert mine[i].tobytes() == ps[i].tobytes(), f"params[{i}]"
        if i < 2:
            assert opt.state[i][name].tobytes() == extra[i].tobytes()
            assert opt.state[i][name].dtype == (F32 if option == "master_weights" else ps[i].dtype)
        else:
            assert name not in opt.state[i]
    _adafactor_reload_continues(opt, grads[2:], lr=1e-3, **{option: True})
    with pytest.raises(ValueError, match="exclude each other"):
        fusedopt.Adafactor([start[0].copy()], master_weights=True, kahan_summation=True)
    with pytest.raises(ValueError, match="Adafactor: stochastic_rounding and kahan_summation exclude"):
        fusedopt.Adafactor([start[0].copy()], kahan_summation=True).stochastic_rounding = True
    with pytest.raises(TypeError, match=f"Adafactor: {option} must be a bool"):
        fusedopt.Adafactor([start[0].copy()], **{option: 1})


def test_adafactor_class_keeps_float32_state_for_16_bit_params_and_round_trips():
    """The class: float32 states for bfloat16 and float16 params (float64 for float64), its steps
    the functional call's bits, and a state dict that continues the run exactly."""
    rng = np.random.default_rng(2)
    shapes = [(6, 5), (7,), (6, 5), ()]
    dtypes = [BF16, BF16, F16, F64]
    start = [np.asarray(rng.standard_normal(s), d) for s, d in zip(shapes, dtypes)]
    grads = [[np.asarray(rng.standard_normal(s), d) for s, d in zip(shapes, dtypes)]
             for _ in range(4)]
    opt = fusedopt.Adafactor([p.copy() for p in start], lr=0.05, weight_decay=0.01)
    params = [p.copy() for p in start]
    row, col, var = _adafactor_states(params)
    row[3] = col[3] = None
    var[3] = np.zeros((), F64)
    for t in (1, 2):
        opt.step(grads[t - 1])
        for k in range(3):  # one call per dtype (the class makes one per group)
            idx = [i for i, d in enumerate(dtypes) if d == [BF16, F16, F64][k]]
            functional.adafactor([params[i] for i in idx], [grads[t - 1][i] for i in idx],
                                 [row[i] for i in idx], [col[i] for i in idx],
                                 [var[i] for i in idx], steps=t, lr=0.05, weight_decay=0.01,
                                 eps=(float(np.finfo(BF16).eps), 1e-3))  # the group's first
    for i, (a, b) in enumerate(zip(opt.param_groups[0]["params"], params)):
        assert a.dtype == dtypes[i] and a.tobytes() == b.tobytes(), f"params[{i}]"
    want = {0: F32, 1: F32, 2: F32, 3: F64}
    for i, s in opt.state.items():
        for name, x in s.items():
            if name != "step":
                assert x.dtype == want[i], (i, name, x.dtype)
    _adafactor_reload_continues(opt, grads[2:], lr=0.05, weight_decay=0.01)


def _adafactor_reload_continues(opt, grads, **kw):
    """A new Adafactor(**kw) over copies of opt's (one group's) params, loaded with opt's state
    dict, steps with opt's bits over `grads`."""
    other = fusedopt.Adafactor([p.copy() for p in opt.param_groups[0]["params"]], **kw)
    other.load_state_dict(opt.state_dict())
    for gs in grads:
        opt.step(gs)
        other.step(gs)
    for a, b in zip(opt.param_groups[0]["params"], other.param_groups[0]["params"]):
        assert a.tobytes() == b.tobytes()


def _adafactor_bad_16_bit_calls():
    p = np.ones((4, 3), BF16)
    g = np.full((4, 3), 0.5, BF16)
    row, col = np.zeros((4, 1), F32), np.zeros((1, 3), F32)
    return [
        ("grads", lambda: functional.adafactor([p], [g.astype(F32)], [row], [col], [None],
                                               steps=[1]),
         r"adafactor: grads\[0\] has dtype float32, expected bfloat16 \(the dtype of params\[0\]\)"),
        ("state", lambda: functional.adafactor([p], [g], [row.astype(BF16)], [col], [None],
                                               steps=[1]),
         r"adafactor: row_vars\[0\] has dtype bfloat16, expected float32 \(the state of "
         r"bfloat16 params\[0\]\)"),
        ("int", lambda: functional.adafactor([p.view(np.int16)], [g.view(np.int16)], [row],
                                             [col], [None], steps=[1]),
         r"adafactor: params\[0\] has dtype int16, expected float32, float64, bfloat16 or "
         r"float16"),
    ], p, g, row, col


@pytest.mark.parametrize("case", [0, 1, 2], ids=["grads", "state", "int"])
def test_adafactor_refuses_mismatched_16_bit_dtypes_and_writes_nothing(case):
    calls, p, g, row, col = _adafactor_bad_16_bit_calls()
    _, call, match = calls[case]
    before = [a.tobytes() for a in (p, g, row, col)]
    with pytest.raises(TypeError, match=match):
        call()
    assert [a.tobytes() for a in (p, g, row, col)] == before


def test_ewa_copies_are_the_averages_rounded():
    rng = np.random.default_rng(16)
    avg = rng.standard_normal(5000).astype(np.float32)
    twin = avg.copy()
    c = np.zeros(5000, BF16)
    for _ in range(3):
        x = rng.standard_normal(5000).astype(BF16)
        functional.ewa([avg], [x], beta=0.9, param_copies=[c])
        functional.ewa([twin], [x.astype(np.float32)], beta=0.9)
        assert avg.tobytes() == twin.tobytes() and c.tobytes() == avg.astype(BF16).tobytes()


def test_stochastic_rounding_of_two_groups_draws_apart():
    """Each call of a step (each group) keys its draws by a seed of its own: two groups of equal
    params and grads round differently (they would draw the same bits with one seed for both)."""
    rng = np.random.default_rng(17)
    start = rng.standard_normal(4096).astype(BF16)
    g = rng.standard_normal(4096).astype(BF16)
    a, b = start.copy(), start.copy()
    opt = fusedopt.SGD([{"params": [a]}, {"params": [b]}], lr=1e-3, stochastic_rounding=True,
                       seed=1)
    opt.step([g, g])
    assert a.tobytes() != b.tobytes()
    # and within expectations: each is a stochastic rounding of the same float32 value
    exact = start.astype(np.float32) - np.float32(1e-3) * g.astype(np.float32)
    lo, hi = _neighbours(exact, BF16)
    for x in (a, b):
        assert ((x.astype(np.float32) == lo) | (x.astype(np.float32) == hi)).all()


def test_stochastic_rounding_is_refused_where_there_is_no_step():
    avg = np.zeros(10, BF16)
    with pytest.raises(TypeError, match="ewa takes no sr_seed: it has no step to key the draws by"):
        functional.ewa([avg], [np.ones(10, BF16)], beta=0.9, sr_seed=3)
    assert (avg.astype(np.float32) == 0).all()


def test_changing_the_rounding_options_takes_effect_at_the_next_step():
    rng = np.random.default_rng(18)
    start = rng.standard_normal(4096).astype(BF16)
    g = rng.standard_normal(4096).astype(BF16)

    def run(change):
        p = start.copy()
        opt = fusedopt.SGD([p], lr=1e-3, stochastic_rounding=True, seed=1)
        opt.step([g])  # a steady run is bound with seed 1
        change(opt)
        opt.step([g])
        opt.step([g])
        return p.tobytes()

    same = run(lambda o: None)
    assert run(lambda o: setattr(o, "seed", 2)) != same
    assert run(lambda o: setattr(o, "stochastic_rounding", False)) != same
    with pytest.raises(TypeError, match="SGD: master_weights must be a bool"):
        fusedopt.SGD([start.copy()]).master_weights = 1


def test_bfloat16_state_loads_a_torch_state_dict_of_bfloat16_params():
    torch = pytest.importorskip("torch")
    p = torch.randn(300).to(torch.bfloat16).requires_grad_()
    peer = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.randn(300).to(torch.bfloat16)
    peer.step()
    mine = fusedopt.Adam([np.zeros(300, BF16)], lr=1e-3, state_dtype="bfloat16")
    mine.load_state_dict(peer.state_dict())
    m = mine.state[0]["exp_avg"]
    assert m.dtype == BF16
    assert m.tobytes() == peer.state[p]["exp_avg"].view(torch.int16).numpy().tobytes()


def test_grad_dtype_needs_the_params_to_be_a_list():
    with pytest.raises(TypeError, match="params must be a list or tuple of numpy arrays, got int"):
        _core.cpu.bind("sgd", (3, None, [None]), (0.1, 0.0, 0.0, 0.0, False, False),
                       grads_later=True, grad_dtype=[BF16])
