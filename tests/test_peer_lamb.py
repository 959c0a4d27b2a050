"""fusedopt.LAMB and fusedopt.torch.LAMB against timm's ``Lamb`` (timm 1.0.15), the CPU
implementation of apex's ``FusedLAMB`` rule that installs here (apex's own needs CUDA): timm's
``Lamb`` with ``decoupled_decay=False`` is apex's ``adam_w_mode=True`` (the decay added to the
update), its ``always_adapt`` is apex's ``use_nvlamb`` and ``max_grad_norm=None`` is no clipping
(ours: ``float("inf")``). Both clip by the norm of every grad of the step, across groups, and keep
the step count in each group.

timm's package imports torchvision, which these tests do not need: its ``optim/lamb.py`` (torch
only) is run from the installed distribution's file (``bench/algorithms.py: timm_lamb``, which
the benchmarks' peer shares). timm divides ``p.grad`` in place, so each
optimizer gets its own copy of the grads. Tolerances (``peer_tools.assert_close_to_peer``):
float64 1e-12 relative, float32 1e-6 relative, plus an absolute 1e-14 / 1e-7 of the tensor's
largest value: the kernels evaluate the direction in Adam's efficient order (one division, Note
[LAMB's passes]) where timm divides twice, and their norms are sums in double.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedopt.torch")

from peer_tools import assert_close_to_peer  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import reference  # noqa: E402


def _timm_lamb():
    """timm's Lamb, as the benchmarks load it (bench/algorithms.py)."""
    bench = str(Path(__file__).resolve().parent.parent / "bench")
    sys.path.insert(0, bench)
    try:
        from algorithms import timm_lamb
    finally:
        sys.path.remove(bench)
    cls = timm_lamb()
    if cls is None:
        pytest.skip("timm is not installed", allow_module_level=True)
    return cls


Lamb = _timm_lamb()

SHAPES = ((), (1,), (7,), (33, 5), (4097,), (3, 4, 5))
CONFIGS = {
    "default": dict(lr=1e-2),
    "wd0": dict(lr=1e-2, weight_decay=0.0),  # no trust ratio
    "nvlamb": dict(lr=1e-2, weight_decay=0.0, use_nvlamb=True),
    "wd-no-clip": dict(lr=1e-2, weight_decay=0.1, max_grad_norm=float("inf")),
    "no-averaging": dict(lr=1e-2, grad_averaging=False),
    "no-bias-correction": dict(lr=1e-2, bias_correction=False, betas=(0.8, 0.99), eps=1e-3),
    "clip-5": dict(lr=1e-2, max_grad_norm=5.0, weight_decay=0.05),
}
STEPS = 6


def _theirs(kwargs):
    k = dict(kwargs)
    if k.pop("use_nvlamb", False):
        k["always_adapt"] = True
    if k.get("max_grad_norm") == float("inf"):
        k["max_grad_norm"] = None
    return k


def _grouped(xs, groups):
    if groups == 1:
        return xs
    return [{"params": xs[0::2]}, {"params": xs[1::2], "weight_decay": 0.0}]


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _grads(ps, k):
    gen = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) * (1 + i) for i, p in enumerate(ps)]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_lamb_matches_timm(name, dtype, groups):
    kwargs = CONFIGS[name]
    ps = [p.requires_grad_() for p in _params(dtype)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = ft.LAMB(_grouped(ps, groups), **kwargs)
    theirs = Lamb(_grouped(qs, groups), **_theirs(kwargs))
    for k in range(STEPS):
        for p, q, g in zip(ps, qs, _grads(ps, k)):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for i, (p, q) in enumerate(zip(ps, qs)):
        assert_close_to_peer(p.detach(), q.detach(), f"params[{i}]")
        for s in ("exp_avg", "exp_avg_sq"):
            assert_close_to_peer(ours.state[p][s], theirs.state[q][s], f"state[{i}][{s!r}]")


def test_numpy_lamb_and_the_reference_match_timm():
    """fusedopt.LAMB over NumPy arrays (fp64, two groups) and fusedopt.reference.lamb given the
    norm of every grad of the step, against the peer."""
    qs = [p.requires_grad_() for p in _params(torch.float64)]
    ws = [q.detach().numpy().copy() for q in qs]
    rs = [w.copy() for w in ws]
    states = [[np.zeros_like(w) for w in ws] for _ in range(2)]
    kwargs = dict(lr=1e-2, weight_decay=0.1)
    theirs = Lamb(_grouped(qs, 2), **kwargs)
    ours = fusedopt.LAMB(_grouped(ws, 2), **kwargs)
    for k in range(STEPS):
        grads = _grads(qs, k)
        for q, g in zip(qs, grads):
            q.grad = g.clone()
        theirs.step()
        gs = [g.numpy() for g in grads]
        ours.step(gs[0::2] + gs[1::2])  # the groups' params in order
        norm = reference.global_norm(gs)
        for half in (0, 1):  # the groups' calls, each given the norm of both
            sel = slice(half, None, 2)
            reference.lamb(rs[sel], gs[sel], states[0][sel], states[1][sel], step=k + 1,
                           grad_norm=norm, **dict(kwargs, weight_decay=0.1 if half == 0 else 0.0))
    for i, (q, w, r) in enumerate(zip(qs, ws, rs)):
        assert_close_to_peer(torch.from_numpy(w), q.detach(), f"params[{i}]")
        assert_close_to_peer(torch.from_numpy(r), q.detach(), f"reference params[{i}]")


@pytest.mark.parametrize("direction", ["timm-to-ours", "ours-to-timm"])
def test_state_dicts_interchange_with_timm(direction):
    """A run continued after a state dict moved between the two: the step count travels in each
    group (both keep it there) and the moments per param."""
    kwargs = dict(lr=1e-2, weight_decay=0.05)
    ps = [p.requires_grad_() for p in _params(torch.float64, seed=1)]
    src_params = [p.detach().clone().requires_grad_() for p in ps]
    first, second = (Lamb, ft.LAMB) if direction == "timm-to-ours" else (ft.LAMB, Lamb)
    src = first(_grouped(src_params, 2), **kwargs)
    for k in range(3):
        for p, g in zip(src_params, _grads(ps, k)):
            p.grad = g
        src.step()
    sd = copy.deepcopy(src.state_dict())  # as saved: torch's loader keeps the tensors it is given
    assert [g["step"] for g in sd["param_groups"]] == [3, 3]
    if second is Lamb:  # timm reads group keys of its own that apex's groups lack: its defaults
        for g in sd["param_groups"]:
            g.update(trust_clip=False, always_adapt=g["use_nvlamb"], caution=False)
    dst_params = [p.detach().clone().requires_grad_() for p in src_params]
    dst = second(_grouped(dst_params, 2), **kwargs)
    dst.load_state_dict(sd)
    for k in range(3, 6):
        for p, q, g in zip(src_params, dst_params, _grads(ps, k)):
            p.grad, q.grad = g.clone(), g.clone()
        src.step()
        dst.step()
    for i, (p, q) in enumerate(zip(src_params, dst_params)):
        assert_close_to_peer(q.detach(), p.detach(), f"params[{i}]")


def test_a_param_without_grads_takes_the_groups_step_count():
    """apex and timm count steps per group: a param whose grad was None on some steps steps again
    with the group's count (its bias correction is the group's, not its own)."""
    kwargs = dict(lr=1e-2)
    ps = [p.requires_grad_() for p in _params(torch.float64, seed=2)[:4]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours, theirs = ft.LAMB(ps, **kwargs), Lamb(qs, **kwargs)
    for k in range(6):
        for i, (p, q, g) in enumerate(zip(ps, qs, _grads(ps, k))):
            skip = (i == 1 and k in (0, 2)) or (i == 3 and k < 3)  # late, and intermittent
            p.grad, q.grad = (None, None) if skip else (g.clone(), g.clone())
        ours.step()
        theirs.step()
    for i, (p, q) in enumerate(zip(ps, qs)):
        assert_close_to_peer(p.detach(), q.detach(), f"params[{i}]")
    assert [int(ours.state[p]["step"]) for p in ps] == [6, 6, 6, 6]


def test_the_grad_norm_spans_every_group_and_dtype():
    """A step of two calls (two groups, one of them float32 and float64) clips each by the norm
    of all the grads together, as one call over everything does: the same bits."""
    rng = np.random.default_rng(3)
    shapes = [(5,), (300,), (7, 3), (2,)]
    start = [rng.standard_normal(s).astype(np.float32 if i == 2 else np.float64)
             for i, s in enumerate(shapes)]
    grads = [(rng.standard_normal(s) * 4).astype(x.dtype) for s, x in zip(shapes, start)]
    a = [x.copy() for x in start]
    b = [x.copy() for x in start]
    split = fusedopt.LAMB([{"params": a[:2]}, {"params": a[2:]}], lr=0.1)
    whole = fusedopt.LAMB(b, lr=0.1)
    for _ in range(3):
        split.step(grads)
        whole.step(grads)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # clipping each group by its own grads' norm gives other params
    c = [x.copy() for x in start]
    alone = [fusedopt.LAMB(c[:2], lr=0.1), fusedopt.LAMB(c[2:], lr=0.1)]
    for _ in range(3):
        alone[0].step(grads[:2])
        alone[1].step(grads[2:])
    assert not any(np.array_equal(x, y) for x, y in zip(c, b))


def test_a_nan_norm_does_not_clip():
    """A grad norm of NaN (a NaN in some grad) does not clip, given or computed (apex: NaN >
    max_grad_norm is false): two groups, one holding the NaN, step as one call does."""
    p = [np.ones(3)]
    m, v = [np.zeros(3)], [np.zeros(3)]
    fusedopt.functional.lamb(p, [np.full(3, 10.0)], m, v, step=1, weight_decay=0.0,
                             grad_norm=float("nan"))
    np.testing.assert_allclose(m[0], 1.0)  # (1 - beta1) * 10: not clipped
    rng = np.random.default_rng(4)
    start = [rng.standard_normal(s) for s in (4, 6)]
    grads = [rng.standard_normal(s) * 10 for s in (4, 6)]
    grads[0][1] = np.nan
    a, b = [x.copy() for x in start], [x.copy() for x in start]
    fusedopt.LAMB([{"params": a[:1]}, {"params": a[1:]}], lr=0.1).step(grads)
    fusedopt.LAMB(b, lr=0.1).step(grads)
    np.testing.assert_array_equal(a[1], b[1])
    assert np.isnan(a[0]).all() and np.isnan(b[0]).all()  # the NaN's tensor: a NaN norm of u
