"""Global-norm clipping (fusedopt.global_norm, fusedopt.clip_grad_norm_, fusedopt.torch's
clip_grad_norm_) against the float64 reference and torch.nn.utils.clip_grad_norm_.

Tolerances: the norm is the exact 2-norm (math.fsum) rounded to the tensors' dtype, so it is
within one ulp of it (2**-24 relative for float32, 1e-15 for float64, where only the double sum's
own error remains). The clipped grads are within 4 float32 ulp (5e-7 relative) of the float64
reference: the coefficient is computed in float32 in torch's order (three roundings) and the
product rounded once. torch's own float32 norm is less accurate (its relative error reaches 1e-5
at a million elements; 4e-7 at the sizes here), so against torch the norm and the grads are
compared at 2e-6 relative, and bit for bit where both norms are exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fusedopt
from fusedopt import reference

SIZES = (0, 1, 7, 513, 4097, 65537, 100_003)
DTYPES = {"fp32": np.float32, "fp64": np.float64}


def _grads(seed, dtype, sizes=SIZES, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]


def _ulp_close(got, want, dtype):
    rel = 2.0**-24 if dtype == np.float32 else 1e-15
    assert abs(float(got) - want) <= rel * abs(want), (float(got), want)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_global_norm_is_the_exact_norm_rounded(dtype, scale):
    gs = _grads(0, dtype, scale=scale)
    got = fusedopt.global_norm(gs)
    assert isinstance(got, dtype)
    _ulp_close(got, reference.global_norm(gs), dtype)


def test_global_norm_of_nothing_and_of_one_array():
    assert fusedopt.global_norm([]) == 0.0
    x = np.array([3.0, 4.0], np.float32)
    assert fusedopt.global_norm(x) == np.float32(5.0)
    assert fusedopt.global_norm([np.zeros(0, np.float64)]) == 0.0


def test_mixed_dtypes_give_a_float64_norm():
    gs = [np.full(3, 2.0, np.float32), np.full(1, 2.0, np.float64)]
    got = fusedopt.global_norm(gs)
    assert isinstance(got, np.float64) and got == 4.0


def test_global_norm_has_the_same_bits_for_any_thread_count():
    gs = _grads(1, np.float32, sizes=(300_001, 65536, 3))
    before = fusedopt.get_num_threads()
    try:
        fusedopt.set_num_threads(1)
        one = fusedopt.global_norm(gs)
        fusedopt.set_num_threads(2)
        two = fusedopt.global_norm(gs)
    finally:
        fusedopt.set_num_threads(before)
    assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("max_norm", [0.5, 10.0, 1e9])
def test_clip_matches_the_reference(dtype, max_norm):
    gs = _grads(2, dtype)
    want = [g.astype(np.float64) for g in gs]
    n_want = reference.clip_grad_norm_(want, max_norm)
    before = [g.copy() for g in gs]
    n = fusedopt.clip_grad_norm_(gs, max_norm)
    _ulp_close(n, n_want, dtype)
    rtol = 5e-7 if dtype == np.float32 else 1e-14
    for g, w in zip(gs, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=0)
    if max_norm > n:  # no clipping: the grads keep their bits (torch multiplies by 1.0)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(gs, before))


def test_a_nonfinite_norm_raises_when_asked_and_changes_nothing():
    gs = _grads(3, np.float32, sizes=(5, 9))
    gs[1][4] = np.inf
    before = [g.copy() for g in gs]
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients from "
                                           "`parameters` is non-finite"):
        fusedopt.clip_grad_norm_(gs, 1.0, error_if_nonfinite=True)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(gs, before))


@pytest.mark.parametrize("bad", ["norm_type", "max_norm", "read-only", "strided", "int", "list",
                                 "element"])
def test_bad_input_is_refused_by_name_before_anything_is_written(bad):
    gs = _grads(4, np.float32, sizes=(5, 9, 4))
    kw: dict = {}
    if bad == "norm_type":
        kw, err, match = {"norm_type": 1.0}, ValueError, r"norm_type=1.0: .*2-norm only"
    elif bad == "max_norm":
        kw, err, match = {"max_norm": "1"}, TypeError, "max_norm must be a number"
    elif bad == "read-only":
        gs[2].flags.writeable = False
        err, match = ValueError, r"clip_grad_norm_: tensors\[2\] is read-only"
    elif bad == "strided":
        gs[1] = np.zeros(18, np.float32)[::2]
        err, match = ValueError, r"clip_grad_norm_: tensors\[1\] is not contiguous"
    elif bad == "int":
        gs[0] = np.ones(5, np.int32)
        err, match = TypeError, r"clip_grad_norm_: tensors\[0\] has dtype int32"
    elif bad == "element":
        gs[1] = [1.0, 2.0]
        err, match = TypeError, r"clip_grad_norm_: tensors\[1\] is a list"
    else:
        gs, err, match = 3.0, TypeError, "tensors must be an array or a list of arrays"
    before = [np.array(g).copy() for g in gs] if isinstance(gs, list) else None
    with pytest.raises(err, match=match):
        fusedopt.clip_grad_norm_(gs, kw.pop("max_norm", 1e-3), **kw)
    if before is not None:
        assert all(np.array(a).tobytes() == b.tobytes() for a, b in zip(gs, before))


def test_functional_scale_matches_the_reference():
    gs = _grads(5, np.float32, sizes=(1, 33, 4097))
    want = [g.astype(np.float64) for g in gs]
    fusedopt.functional.scale(gs, factor=0.37)
    reference.scale(want, factor=float(np.float32(0.37)))
    for g, w in zip(gs, want):
        np.testing.assert_allclose(g, w, rtol=2.0**-24, atol=0)


# ---- against torch ---------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _twins(torch, grads):
    ours = [torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype)) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad = g.clone()
        q.grad = g.clone()
    return ours, theirs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
def test_torch_front_matches_torch(torch, dtype, max_norm):
    import fusedopt.torch as ft

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, generator=gen, dtype=getattr(torch, dtype)) for n in SIZES]
    ours, theirs = _twins(torch, grads)
    ours.append(torch.nn.Parameter(torch.zeros(3)))  # no grad: skipped, as torch does
    n = ft.clip_grad_norm_(ours, max_norm)
    m = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert isinstance(n, torch.Tensor) and n.dim() == 0 and n.dtype == m.dtype
    torch.testing.assert_close(n, m, rtol=2e-6, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-6, atol=0)


def test_torch_bits_where_the_norms_are_exact(torch):
    import fusedopt.torch as ft

    grads = [torch.tensor([3.0, 0.0, -12.0]), torch.tensor([4.0])]  # norm 13
    ours, theirs = _twins(torch, grads)
    assert float(ft.clip_grad_norm_(ours, 1.0)) == float(
        torch.nn.utils.clip_grad_norm_(theirs, 1.0)) == 13.0
    for p, q in zip(ours, theirs):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("poison", [math.inf, -math.inf, math.nan])
def test_nonfinite_grads_are_scaled_as_torch_scales_them(torch, poison):
    import fusedopt.torch as ft

    grads = [torch.tensor([1.0, poison, 2.0]), torch.tensor([3.0, 4.0])]
    ours, theirs = _twins(torch, grads)
    n = ft.clip_grad_norm_(ours, 1.0)
    m = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isnan(float(n)) == math.isnan(float(m)) and (math.isnan(float(m)) or n == m)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="non-finite"):
        ft.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)


def test_torch_front_without_grads_returns_zero(torch):
    import fusedopt.torch as ft

    p = torch.nn.Parameter(torch.ones(2))
    n = ft.clip_grad_norm_(p, 1.0)
    assert torch.equal(n, torch.nn.utils.clip_grad_norm_(torch.nn.Parameter(torch.ones(2)), 1.0))


@pytest.mark.parametrize("bad", ["bfloat16", "sparse"])
def test_torch_tensors_without_a_view_are_refused_by_name(torch, bad):
    t = torch.zeros(3, dtype=torch.bfloat16) if bad == "bfloat16" else torch.zeros(3).to_sparse()
    good = torch.ones(2)
    with pytest.raises(TypeError, match=rf"clip_grad_norm_: tensors\[1\] has (dtype|layout) "
                                        rf"torch\.{'bfloat16' if bad == 'bfloat16' else 'sparse'}"):
        fusedopt.clip_grad_norm_([good, t], 0.1)
    assert torch.equal(good, torch.ones(2))


def test_torch_tensors_that_require_grad_are_read_through_a_view(torch):
    t = torch.tensor([3.0, 4.0], requires_grad=True)
    assert float(fusedopt.clip_grad_norm_([t], 1.0)) == 5.0
    assert torch.allclose(t.detach(), torch.tensor([0.6, 0.8]))
