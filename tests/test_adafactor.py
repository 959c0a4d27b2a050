"""Adafactor's kernel, classes and errors without torch: fusedopt.functional.adafactor and
fusedopt.Adafactor against the float64 reference, fusedopt.reference.adafactor (run on the same
inputs); the same bits for any thread count and SIMD path; refusals that write nothing.
tests/test_peer_adafactor.py compares with torch.optim.Adafactor itself.

Tolerances: float64 1e-12 relative plus 1e-14 of the largest magnitude (the kernel and the
reference differ only in the order of the sums and in the rounding of a factored U: Note
[Adafactor's direction]); float32 1e-5 relative plus 1e-6 of the largest magnitude: each element
operation is rounded to float32 (a few ulps per step), and a step moves p by up to lr.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fusedopt
from fusedopt import _core, functional, reference

SHAPES = [(), (1,), (17,), (5, 7), (1, 9), (9, 1), (3, 4, 6), (2, 3, 4, 5)]
CONFIGS = {
    "default": {},
    "lr": dict(lr=0.3),
    "beta2_decay": dict(beta2_decay=-0.5),
    "eps": dict(eps=(1e-4, 1e-2)),
    "d": dict(d=1.5, lr=0.5),
    "wd": dict(weight_decay=0.1),
    "maximize": dict(maximize=True, weight_decay=0.01),
    "small-lr": dict(lr=1e-3),  # rho = lr: the cap binds from the first step
}
STEPS = 8
TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-14)}


def close(a, b, what):
    rtol, scale = TOL[a.dtype.type]
    atol = scale * max(float(np.max(np.abs(np.nan_to_num(b)), initial=0.0)), 1.0)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


def new_states(arrays):
    """Zero states for each array: its factors for 2 or more dims, else its variance (float32
    for a 16-bit array: Note [Adafactor in 16 bits])."""
    row, col, var = [], [], []
    for a in arrays:
        dtype = np.float32 if a.dtype.itemsize == 2 else a.dtype
        if a.ndim >= 2:
            row.append(np.zeros((*a.shape[:-1], 1), dtype))
            col.append(np.zeros((*a.shape[:-2], 1, a.shape[-1]), dtype))
            var.append(None)
        else:
            row.append(None)
            col.append(None)
            var.append(np.zeros(a.shape, dtype))
    return row, col, var


def _problem(dtype, steps=STEPS, seed=0):
    """Params and a grad sequence: normal, every 5th grad 0; at step 1 a row of each matrix all 0
    and one of 0.1 eps1 (eps1 the dtype's epsilon: its vhat is under eps1^2, the clamp binds)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    seq = []
    for k in range(steps):
        gs = []
        for p in params:
            d = rng.standard_normal(p.shape).astype(dtype)
            if d.ndim >= 1:
                d.reshape(-1)[::5] = 0.0
            if k == 0 and d.ndim >= 2:
                d[..., -1, :] *= 0.1 * np.finfo(dtype).eps
                d[..., 0, :] = 0.0
            gs.append(d)
        seq.append(gs)
    return params, seq


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_functional_matches_the_reference(name, dtype):
    kw = CONFIGS[name]
    params, seq = _problem(dtype)
    ours = [p.copy() for p in params]
    theirs = [p.copy() for p in params]
    states, rstates = new_states(ours), new_states(theirs)
    for t, gs in enumerate(seq, start=1):
        functional.adafactor(ours, gs, *states, steps=t, **kw)
        reference.adafactor(theirs, gs, *rstates, steps=t, **kw)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        close(a, b, f"{name} param {k}")
    for which, (xs, ys) in enumerate(zip(states, rstates)):
        for k, (a, b) in enumerate(zip(xs, ys)):
            if a is not None:
                close(a, b, f"{name} state {which} of param {k}")


def test_numpy_class_matches_the_reference_with_groups_and_skipped_grads():
    """Two groups (the second with its own lr, wd, eps and d); a param without a grad on some
    steps keeps its own, lagging, step count."""
    params, seq = _problem(np.float64)
    ours = [p.copy() for p in params]

    def groups(xs):
        return [{"params": xs[:4]},
                {"params": xs[4:], "lr": 0.2, "weight_decay": 0.05, "eps": (1e-5, 1e-3),
                 "d": 2.0}]

    opt = fusedopt.Adafactor(groups(ours), lr=0.05)
    theirs = [p.copy() for p in params]
    rstates = new_states(theirs)
    counts = [0] * len(theirs)
    for k, gs in enumerate(seq):
        gs = [None if (i == 3 and k % 3 == 1) or (i == 0 and k == 0) else g
              for i, g in enumerate(gs)]
        opt.step(gs)
        for lo, hi, hyper in ((0, 4, dict(lr=0.05)),
                              (4, len(theirs), dict(lr=0.2, weight_decay=0.05, eps=(1e-5, 1e-3),
                                                    d=2.0))):
            idx = [i for i in range(lo, hi) if gs[i] is not None]
            for i in idx:
                counts[i] += 1
            reference.adafactor([theirs[i] for i in idx], [gs[i] for i in idx],
                                [rstates[0][i] for i in idx], [rstates[1][i] for i in idx],
                                [rstates[2][i] for i in idx], steps=[counts[i] for i in idx],
                                **hyper)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        close(a, b, f"param {k}")
        assert opt.state[k]["step"] == counts[k]


def test_hyper_parameter_errors_are_torchs_texts():
    """torch 2.13's messages (tests/test_peer_adafactor.py checks them against torch itself)."""
    cases = [(dict(lr=-1.0), "Learning rate should be >= 0 but is: -1.0"),
             (dict(beta2_decay=0.5), "beta2_decay should be <= 0 but is: 0.5"),
             (dict(eps=(-1.0, 1e-3)), "epsilon1 should be >= 0 but is: -1.0"),
             (dict(eps=(None, -1.0)), "epsilon2 should be >= 0 but is: -1.0"),
             (dict(d=0.5), "Clipping threshold d should be >= 1 but is: 0.5"),
             (dict(weight_decay=-0.1), "weight_decay should be >= 0 but is: -0.1")]
    for kw, text in cases:
        with pytest.raises(ValueError) as e:
            fusedopt.Adafactor([np.zeros(3)], **kw)
        assert str(e.value) == text
        with pytest.raises(ValueError) as e:
            functional.adafactor([np.zeros(3)], [np.zeros(3)], None, None, [np.zeros(3)],
                                 steps=1, **kw)
        assert str(e.value) == text


def test_state_dict_round_trip_continues_the_run():
    params, seq = _problem(np.float32)
    a = [p.copy() for p in params]
    opt = fusedopt.Adafactor(a, lr=0.05, weight_decay=0.01)
    for gs in seq[:3]:
        opt.step(gs)
    b = [p.copy() for p in a]
    other = fusedopt.Adafactor(b, lr=0.05, weight_decay=0.01)
    other.load_state_dict(opt.state_dict())
    for gs in seq[3:]:
        opt.step(gs)
        other.step(gs)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    sd = opt.state_dict()
    sd["state"][3]["row_var"] = np.zeros((3, 1))
    with pytest.raises(ValueError, match=r"state\[3\]\['row_var'\] has shape \(3, 1\)"):
        other.load_state_dict(sd)


def _tiled_case(dtype):
    """Shapes that span several tiles and chunks (Note [Adafactor's sums]): 3 batch matrices of
    70 x 2100 (2 column blocks, 3 row blocks each), a 1 x 70000 row, 200,000 elements of a
    vector (4 chunks), a 0-d param."""
    rng = np.random.default_rng(3)
    shapes = [(3, 70, 2100), (1, 70000), (200_000,), ()]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gs = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    return ps, gs


def _run_tiled(dtype, sr_seed=None):
    ps, gseq = _tiled_case(dtype)
    row, col, var = new_states(ps)
    for t, gs in enumerate(gseq, start=1):
        functional.adafactor(ps, gs, row, col, var, steps=t, weight_decay=0.01, sr_seed=sr_seed)
    return [a for a in ps + row + col + var if a is not None]


@pytest.mark.parametrize("dtype,sr_seed", [
    (np.float32, None), (np.float64, None), (ml_dtypes.bfloat16, None), (np.float16, None),
    (ml_dtypes.bfloat16, 5), (np.float16, 5)],
    ids=["fp32", "fp64", "bf16", "fp16", "bf16-sr", "fp16-sr"])
def test_bitwise_equal_across_thread_counts_and_simd_paths(dtype, sr_seed):
    isas = list(fusedopt.build_info()["simd_supported"])
    active = fusedopt.build_info()["simd_active"]
    before = fusedopt.get_num_threads()
    results = {}
    try:
        for isa in isas:
            _core.cpu.set_simd(isa)
            for threads in (1, 2, 3):
                fusedopt.set_num_threads(threads)
                results[(isa, threads)] = _run_tiled(dtype, sr_seed)
    finally:
        _core.cpu.set_simd(active)
        fusedopt.set_num_threads(before)
    base_key = next(iter(results))
    for key, arrays in results.items():
        for k, (a, b) in enumerate(zip(arrays, results[base_key])):
            assert a.tobytes() == b.tobytes(), f"buffer {k}: {key} != {base_key}"


def test_tiled_shapes_match_the_reference():
    ps, gseq = _tiled_case(np.float64)
    rps = [p.copy() for p in ps]
    row, col, var = new_states(ps)
    rrow, rcol, rvar = new_states(ps)
    for t, gs in enumerate(gseq, start=1):
        functional.adafactor(ps, gs, row, col, var, steps=t, weight_decay=0.01)
        reference.adafactor(rps, gs, rrow, rcol, rvar, steps=t, weight_decay=0.01)
    for a, b in zip(ps + row + col, rps + rrow + rcol):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_empty_params_are_left_alone_and_match_the_reference():
    """torch raises ZeroDivisionError on an empty param (its rms divides by numel 0); the kernel
    updates nothing and keeps torch's states: a mean over an empty dim is NaN."""
    shapes = [(0,), (0, 5), (5, 0), (2, 0, 3), (4,)]
    ps = [np.ones(s) for s in shapes]
    gs = [np.ones(s) for s in shapes]
    row, col, var = new_states(ps)
    rps = [p.copy() for p in ps]
    rrow, rcol, rvar = new_states(ps)
    functional.adafactor(ps, gs, row, col, var, steps=1)
    reference.adafactor(rps, gs, rrow, rcol, rvar, steps=1)
    for a, b in zip(ps + row + col + var, rps + rrow + rcol + rvar):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert np.isnan(col[1]).all() and np.isnan(row[2]).all()


def _bad_calls():
    """(what is wrong, the call's lists as a function of fresh arrays, the message)."""
    def lists():
        p2, p1 = np.ones((4, 6)), np.ones(5)
        return dict(params=[p2, p1], grads=[np.ones((4, 6)), np.ones(5)],
                    row_vars=[np.zeros((4, 1)), None], col_vars=[np.zeros((1, 6)), None],
                    variances=[None, np.zeros(5)])

    def edit(fn):
        def make():
            d = lists()
            fn(d)
            return d
        return make

    def overlap(d):
        d["grads"][1] = d["params"][0].reshape(-1)[:5]

    def fortran(d):
        d["params"][0] = np.asfortranarray(np.ones((4, 6)))
        d["grads"][0] = np.asfortranarray(np.ones((4, 6)))

    yield "row_var shape", edit(lambda d: d["row_vars"].__setitem__(0, np.zeros((6, 1)))), \
        r"row_vars\[0\] has shape \(6, 1\), expected \(4, 1\)"
    yield "col_var dtype", edit(lambda d: d["col_vars"].__setitem__(0, np.zeros((1, 6), np.float32))), \
        r"col_vars\[0\] has dtype float32, expected float64"
    yield "variance missing", edit(lambda d: d["variances"].__setitem__(1, None)), \
        r"variances\[1\] is None"
    yield "variance for a matrix", edit(lambda d: d["variances"].__setitem__(0, np.zeros((4, 6)))), \
        r"variances\[0\] must be None"
    yield "grad shape", edit(lambda d: d["grads"].__setitem__(1, np.ones(4))), r"grads\[1\] has shape"
    yield "grad dtype", edit(lambda d: d["grads"].__setitem__(1, np.ones(5, np.float32))), \
        r"grads\[1\] has dtype float32"
    yield "read-only state", edit(lambda d: d["variances"][1].setflags(write=False)), \
        r"variances\[1\] is read-only"
    yield "overlap", edit(overlap), r"overlaps"
    yield "F order", edit(fortran), r"params\[0\] is not C-contiguous"
    yield "count", edit(lambda d: d["grads"].pop()), r"grads has 1 items, expected 2"


@pytest.mark.parametrize("what,make,match", list(_bad_calls()), ids=[c[0] for c in _bad_calls()])
def test_bad_calls_are_refused_and_write_nothing(what, make, match):
    d = make()
    before = {k: [None if a is None else a.copy() for a in v] for k, v in d.items()}
    with pytest.raises((TypeError, ValueError), match=match):
        functional.adafactor(**d, steps=1)
    for k, v in d.items():
        for a, b in zip(v, before[k]):
            if a is not None and b is not None:
                np.testing.assert_array_equal(a, b)


def test_a_refused_group_stops_the_whole_step():
    """The second group's bad grad is found before the first group is written."""
    a, b = np.ones((3, 4)), np.ones(5)
    opt = fusedopt.Adafactor([{"params": [a]}, {"params": [b], "lr": 0.1}])
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype float32"):
        opt.step([np.ones((3, 4)), np.ones(5, np.float32)])
    assert (a == 1).all() and opt.state == {}
    with pytest.raises(ValueError, match=r"overlaps"):
        opt.step([np.ones((3, 4)), a.reshape(-1)[:5]])
    assert (a == 1).all() and (b == 1).all()




def test_copies_and_pickles_step_as_the_original():
    import copy
    import pickle

    params, seq = _problem(np.float32, steps=4)
    opt = fusedopt.Adafactor([p.copy() for p in params], lr=0.05)
    opt.step(seq[0])
    twins = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    for gs in seq[1:]:
        for o in (opt, *twins):
            o.step(gs)
    for twin in twins:
        for a, b in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
            assert a.tobytes() == b.tobytes() and a is not b


def test_load_state_dict_refuses_what_is_not_a_float_array_and_writes_nothing():
    params, seq = _problem(np.float64, steps=2)
    opt = fusedopt.Adafactor([p.copy() for p in params])
    opt.step(seq[0])
    good = opt.state_dict()
    for bad, err, match in ((None, TypeError, "is a NoneType, expected a numpy.ndarray"),
                            ("2.5", TypeError, "is a str"),
                            (np.zeros(17, complex), TypeError, "has dtype complex128"),
                            (np.zeros(17, np.int64), TypeError, "has dtype int64")):
        sd = opt.state_dict()
        sd["state"][2]["variance"] = bad
        with pytest.raises(err, match=match):
            opt.load_state_dict(sd)
    after = opt.state_dict()
    for k, entry in good["state"].items():
        for name, v in entry.items():
            assert np.array_equal(v, after["state"][k][name])


def test_a_fortran_ordered_matrix_is_refused_when_added():
    with pytest.raises(ValueError, match=r"params\[1\] is not C-contiguous"):
        fusedopt.Adafactor([np.zeros(3), np.asfortranarray(np.zeros((3, 4)))])
    with pytest.raises(TypeError, match="lr must be a float"):
        functional.adafactor([np.zeros(3)], [np.zeros(3)], None, None, [np.zeros(3)], steps=1,
                             lr=lambda t: 0.1)


def test_steps_are_checked_before_anything_is_written():
    p = np.ones(3)
    for steps, err, match in (([0], ValueError, r"steps\[0\] must be >= 1"),
                              ([2**70], ValueError, r"steps\[0\] is out of range"),
                              ([True], TypeError, r"steps\[0\] is a bool"),
                              ([1.5], TypeError, r"steps\[0\] is a float"),
                              ([1, 2], ValueError, r"steps has 2 items, expected 1")):
        with pytest.raises(err, match=match):
            functional.adafactor([p], [np.ones(3)], None, None, [np.zeros(3)], steps=steps)
        assert (p == 1).all()


def test_large_state_gets_its_own_page_offsets():
    """Note [State at its own 4 KiB offset], as the generic classes allocate: a large param's
    variance (slot 0), and a 16-bit param's master or Kahan compensation (slot 1), start 1088 *
    (slot + 1) bytes after the param in the page (fusedopt.state_like's rule)."""
    rng = np.random.default_rng(3)

    def after(a, p):
        return (a.ctypes.data - p.ctypes.data) % 4096

    v = rng.standard_normal(40_000).astype(np.float32)  # 156 KiB
    opt = fusedopt.Adafactor([v])
    opt.step([np.ones_like(v)])
    assert after(opt.state[0]["variance"], v) == 1088
    for option, name in (("master_weights", "master_param"), ("kahan_summation", "kahan_comp")):
        w = rng.standard_normal((200, 300)).astype(ml_dtypes.bfloat16)  # 117 KiB
        opt = fusedopt.Adafactor([w], **{option: True})
        opt.step([np.ones_like(w)])
        assert after(opt.state[0][name], w) == 2176, option
