"""Property tests (hypothesis): random sizes, list lengths, dtypes and hyper-parameters, extremes
included, against the reference; and random bad inputs, which must raise TypeError/ValueError and
leave every buffer as it was."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fusedopt import functional, reference

from algos import ALGO_BY_NAME, ALGOS, SIGNATURES

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Hyper-parameter values per name, extremes included (lr=0, betas at 0 and close to 1, tiny eps).
HP_VALUES = {
    "lr": st.sampled_from([0.0, 1e-8, 1e-3, 0.1, 1.0]),
    "momentum": st.sampled_from([0.0, 0.5, 0.99]),
    "dampening": st.sampled_from([0.0, 0.5]),
    "weight_decay": st.sampled_from([0.0, 1e-4, 0.1]),
    "eps": st.sampled_from([1e-30, 1e-10, 1e-8, 1e-3]),
    "betas": st.sampled_from([(0.0, 0.0), (0.9, 0.999), (0.5, 0.9999999), (0.9999999, 0.5)]),
    "beta": st.sampled_from([0.0, 0.5, 0.999, 0.9999999]),
    "rho": st.sampled_from([0.0, 0.9, 0.9999999]),
    "alpha": st.sampled_from([0.0, 0.99, 0.9999999]),
    "lr_decay": st.sampled_from([0.0, 0.1]),
    "momentum_decay": st.sampled_from([0.0, 4e-3, 1.0]),
}
FLAGS = ("nesterov", "maximize", "amsgrad", "centered", "decoupled_weight_decay")

# Gradient magnitudes: ordinary, huge (squares overflow only in float32), tiny and subnormal.
SCALES = [1.0, 1e-3, 1e30, 1e-40, 1e-310]


@st.composite
def hyper(draw, algo):
    hp = dict(algo.configs[0].hp)
    for name in list(hp) + [k for k in HP_VALUES if k not in hp]:
        if name in HP_VALUES and _takes(algo, name):
            hp[name] = draw(HP_VALUES[name])
    for flag in FLAGS:
        if _takes(algo, flag):
            hp[flag] = draw(st.booleans())
    if hp.get("nesterov"):
        hp["momentum"], hp["dampening"] = max(hp.get("momentum", 0.0), 0.5), 0.0
    if algo.name == "adopt" and hp.get("weight_decay") and not hp.get("decouple"):
        # ADOPT divides this step's g by the previous step's |g| (Adam by the same g's): with
        # coupled decay g is wd * p where the grads are small, and p itself can be the result of
        # a cancellation (p - lr m, at lr 1 with m ~ 1), known to ~1e-16 absolute; a later step
        # divides by it, which amplifies the rounding of any implementation (seen: 1.8e-12 on a
        # param of 6e-5, between two correct float64 computations). A floor eps >= 1e-3 bounds
        # the amplification, as Note [eps with coupled weight decay] in algos.py does for the
        # other algorithms' first step; the tiny eps stays tested without coupled decay.
        hp["eps"] = max(hp.get("eps", 1e-6), 1e-3)
    return hp


def _takes(algo, name):
    import inspect

    fn = getattr(functional, algo.name if algo.name != "ewa" else "ewa_readout")
    params = inspect.signature(fn).parameters
    return name in params or (algo.name == "ewa" and name == "beta")


def _nonfinite_pattern_equal(a, b):
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isinf(a), np.isinf(b))


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: a.name)
@SETTINGS
@given(data=st.data())
def test_random_calls_match_reference_fp64(algo, data):
    """float64 kernels against the reference on random lists, sizes and extreme values: the same
    NaN/Inf pattern and, where finite, agreement to 1e-9 of the buffer's scale."""
    hp = data.draw(hyper(algo))
    sizes = data.draw(st.lists(st.integers(0, 3000), min_size=1, max_size=6))
    scale = data.draw(st.sampled_from(SCALES))
    special = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf]))
    steps = data.draw(st.integers(1, 4))
    start = data.draw(st.sampled_from([1, 2, 50]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cfg = algo.configs[0]
    params = [rng.standard_normal(n) for n in sizes]
    states = algo.new_states(params, type(cfg)(cfg.id, hp, cfg.start, cfg.init))
    params_r = [p.copy() for p in params]
    states_r = {k: [a.copy() for a in v] for k, v in states.items()}
    # LAMB's trust ratio makes each tensor's step r u as large as lr ||p|| (its very point): where
    # u is all decay (u = wd p, the grads clipped to zero) the new p = p - (lr/wd) wd p cancels to
    # the rounding of p, so its error is measured against that step, not against what is left.
    floor = [hp["lr"] * float(np.max(np.abs(p), initial=0.0)) if algo.name == "lamb" else 0.0
             for p in params]
    carry_f = carry_r = None
    with np.errstate(all="ignore"):
        for t in range(start, start + steps):
            grads = [rng.standard_normal(n) * scale for n in sizes]
            if special is not None and sizes[0] > 0:
                grads[0][rng.integers(sizes[0])] = special
            carry_f = algo.step(functional, params, grads, states, t, hp, carry_f)
            carry_r = algo.step(reference, params_r, grads, states_r, t, hp, carry_r)
    for name, got_list, ref_list in [("params", params, params_r)] + [
        (k, states[k], states_r[k]) for k in states
    ]:
        for i, (got, ref) in enumerate(zip(got_list, ref_list)):
            assert _nonfinite_pattern_equal(got, ref), f"{name}[{i}] NaN/Inf differ, hp={hp}"
            fin = np.isfinite(ref)
            peak = float(np.max(np.abs(ref[fin]), initial=0.0))
            if name == "params":
                peak = max(peak, floor[i])
            err = np.abs(got[fin] - ref[fin])
            assert np.all(err <= 1e-9 * np.abs(ref[fin]) + 1e-12 * peak), (
                f"{name}[{i}] max err {err.max():.3g} (peak {peak:.3g}), hp={hp}"
            )


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: a.name)
@SETTINGS
@given(data=st.data())
def test_random_calls_match_reference_fp32(algo, data):
    """float32 kernels on ordinary values against the float64 reference."""
    hp = data.draw(hyper(algo))
    # float32 has no headroom for the extremes of the fp64 test (a 1e30 gradient squares to inf
    # there and not in the reference); those are covered in float64 above. The values are moved
    # into range rather than filtered with assume(), which would reject most draws.
    if "eps" in hp:
        hp["eps"] = max(hp["eps"], 1e-3 if hp.get("weight_decay") else 1e-8)  # Note [eps with coupled weight decay]
    if "lr" in hp:
        hp["lr"] = min(hp["lr"], 0.1)
    sizes = data.draw(st.lists(st.integers(0, 3000), min_size=1, max_size=6))
    _check_fp32(algo, hp, sizes, data.draw(st.integers(0, 2**32 - 1)))


def _check_fp32(algo, hp, sizes, seed):
    """3 steps in float32 against the float64 reference: |got - ref| <= 1e-5 |ref| + 1e-5 scale,
    with scale the largest |value| the reference held in that buffer at any step (test_parity's
    rule): a param that ends near zero after passing through large values carries their absolute
    rounding."""
    rng = np.random.default_rng(seed)
    cfg = algo.configs[0]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    states = algo.new_states(params, type(cfg)(cfg.id, hp, cfg.start, cfg.init))
    params_r = [p.astype(np.float64) for p in params]
    states_r = {k: [a.astype(np.float64) for a in v] for k, v in states.items()}
    pairs = [(params, params_r)] + [(states[k], states_r[k]) for k in states]

    def peaks():
        return [[float(np.max(np.abs(r), initial=0.0)) for r in refs] for _, refs in pairs]

    scale = peaks()
    carry_f = carry_r = None
    for t in range(1, 4):
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        carry_f = algo.step(functional, params, grads, states, t, hp, carry_f)
        carry_r = algo.step(reference, params_r, [g.astype(np.float64) for g in grads], states_r,
                            t, hp, carry_r)
        scale = [[max(a, b) for a, b in zip(x, y)] for x, y in zip(scale, peaks())]
    for (got_list, ref_list), peak_list in zip(pairs, scale):
        for got, ref, peak in zip(got_list, ref_list, peak_list):
            # rtol as the parity table; atol 1e-5 of the scale: with rho/alpha/beta at 0.9999999
            # the (1 - beta) factor is itself rounded to float32 (relative error up to 1e-6 after
            # 1 - beta loses 23 bits), which the parity table's configs never stress.
            assert np.allclose(got, ref, rtol=1e-5, atol=1e-5 * peak)


def test_fp32_param_that_cancels_to_near_zero():
    """A case hypothesis found: RMSprop with momentum 0.99 and alpha 0.9999999 moves param 0
    through 47.5 and -79.7 to -0.570; float32 ends 2.3e-5 off (0.3 ulp of the 128-sized steps),
    which the final value alone (0.57) cannot scale."""
    hp = {"lr": 0.1, "momentum": 0.99, "weight_decay": 0.1, "eps": 1e-3, "alpha": 0.9999999,
          "maximize": True, "centered": False}
    _check_fp32(ALGO_BY_NAME["rmsprop"], hp, [1, 2660], 236)


@pytest.mark.parametrize("sig", SIGNATURES, ids=lambda s: s.fn)
@SETTINGS
@given(data=st.data())
def test_random_bad_input_raises_and_changes_nothing(sig, data):
    """One random defect in one random list entry: a clean TypeError/ValueError, nothing written."""
    n_tensors = data.draw(st.integers(1, 4))
    sizes = [data.draw(st.integers(1, 50)) for _ in range(n_tensors)]
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(0)
    bufs = {name: [rng.standard_normal(n).astype(dtype) for n in sizes] for name, _ in sig.lists}
    target = data.draw(st.sampled_from([n for n, _ in sig.lists]))
    i = data.draw(st.integers(0, n_tensors - 1))
    defect = data.draw(st.sampled_from(
        ["dtype", "int", "shape", "readonly", "strided", "list", "short", "alias", "pylist"]))
    arr = bufs[target][i]
    role = dict(sig.lists)[target]
    if defect == "dtype":
        bufs[target][i] = arr.astype(np.complex64)  # (float16 grads of float32 params are taken)
        expected = TypeError
    elif defect == "int":
        bufs[target][i] = arr.astype(np.int32)
        expected = TypeError
    elif defect == "shape":
        bufs[target][i] = np.concatenate([arr, arr[:1]])
        expected = ValueError
    elif defect == "readonly":
        assume(role != "grad")  # grads are only read: read-only ones are fine
        arr.flags.writeable = False
        expected = ValueError
    elif defect == "strided":
        assume(arr.size > 1)  # a one-element view is contiguous whatever its stride
        bufs[target][i] = np.repeat(arr, 2)[::2]
        expected = ValueError
    elif defect == "list":
        bufs[target][i] = list(arr)
        expected = TypeError
    elif defect == "short":
        bufs[target] = bufs[target][:-1]
        expected = ValueError
    elif defect == "pylist":
        bufs[target] = 3.0
        expected = TypeError
    else:  # alias: a written buffer shares memory with another list's entry
        other = next((n for n, r in sig.lists if n != target), None)
        assume(other is not None and (role != "grad" or dict(sig.lists)[other] != "grad"))
        bufs[target][i] = bufs[other][i]
        expected = ValueError
    before = {k: [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in v]
              if isinstance(v, list) else v for k, v in bufs.items()}
    with pytest.raises(expected):
        sig.call(functional, bufs)
    for k, v in bufs.items():
        if isinstance(v, list):
            for a, b in zip(v, before[k]):
                if isinstance(a, np.ndarray):
                    assert a.dtype == b.dtype and np.array_equal(a, b), f"{k} changed"
