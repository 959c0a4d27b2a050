"""fusedopt against the installable peers that define an algorithm (FORMULAS.md names them):
lion-pytorch's ``Lion`` for fusedopt.Lion and fusedopt.torch.Lion.

Tolerances: float64 1e-12 relative (the same operations in the same order, up to the FMA that
torch's ``add(alpha=)`` may use); float32 1e-6 relative plus 1e-7 of the tensor's largest value.
A coordinate whose momentum ``c`` is within rounding of 0 could take the other sign and move by
2 lr; the sizes and seeds here have none (a failure would show it as a difference of 2 lr).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lion_pytorch = pytest.importorskip("lion_pytorch")
ft = pytest.importorskip("fusedopt.torch")

from peer_tools import assert_close_to_peer  # noqa: E402

import fusedopt  # noqa: E402

SIZES = (1, 7, 33, 4097)
CONFIGS = {
    "default": dict(lr=1e-3),
    "betas": dict(lr=1e-3, betas=(0.5, 0.9)),
    "wd": dict(lr=1e-3, weight_decay=0.5),
    "decoupled": dict(lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True),
    "use_triton-ignored": dict(lr=1e-3, use_triton=False),
}


_close = assert_close_to_peer


def _pair(kwargs, dtype, groups):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(n, generator=g, dtype=dtype).requires_grad_() for n in SIZES]
    qs = [p.detach().clone().requires_grad_() for p in ps]

    def grouped(xs):
        if groups == 1:
            return xs
        return [{"params": xs[:2]}, {"params": xs[2:], "lr": 3e-3, "weight_decay": 0.1}]

    ours = ft.Lion(grouped(ps), **copy.deepcopy(kwargs))
    theirs = lion_pytorch.Lion(grouped(qs), **copy.deepcopy(kwargs))
    return ps, qs, ours, theirs, g


def _grads(ps, qs, g, k):
    for i, (p, q) in enumerate(zip(ps, qs)):
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if k in (0, 1):
            d[::3] = 0.0  # c = 0 (zero momentum, zero grad): sgn(0) = 0, no move
        if k == 2 and i == 3:
            d[5] = float("nan")  # torch.sgn(NaN) = 0: m turns NaN, p stays
        p.grad = d.clone()
        q.grad = d.clone()


def _compare(ps, qs, ours, theirs):
    for i, (p, q) in enumerate(zip(ps, qs)):
        _close(p.detach(), q.detach(), f"params[{i}]")
        _close(ours.state[p]["exp_avg"], theirs.state[q]["exp_avg"], f"exp_avg[{i}]")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_lion_matches_lion_pytorch(name, dtype, groups):
    ps, qs, ours, theirs, g = _pair(CONFIGS[name], dtype, groups)
    for k in range(6):
        _grads(ps, qs, g, k)
        ours.step()
        theirs.step()
    _compare(ps, qs, ours, theirs)
    assert torch.isnan(ours.state[ps[3]]["exp_avg"][5])  # the NaN grad's coordinate
    assert not any(torch.isnan(p).any() for p in ps)


def test_decoupled_decay_divides_by_the_constructor_lr():
    """lion-pytorch divides the decay by the lr given to the constructor, for every group and
    whatever a scheduler does to the groups' lr since: so does init_lr."""
    ps, qs, ours, theirs, g = _pair(CONFIGS["decoupled"], torch.float64, 2)
    assert [grp["init_lr"] for grp in ours.param_groups] == [1e-3, 1e-3]
    s1 = torch.optim.lr_scheduler.StepLR(ours, step_size=2, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(theirs, step_size=2, gamma=0.5)
    for k in range(6):
        _grads(ps, qs, g, k)
        ours.step()
        theirs.step()
        s1.step()
        s2.step()
    _compare(ps, qs, ours, theirs)


@pytest.mark.parametrize("direction", ["ours-into-theirs", "theirs-into-ours"])
def test_lion_state_dicts_load_both_ways_mid_run(direction):
    kwargs = CONFIGS["decoupled"]
    ps, qs, ours, theirs, g = _pair(kwargs, torch.float64, 2)
    for k in range(3):
        _grads(ps, qs, g, k)
        ours.step()
        theirs.step()
    # the run continues in a new optimizer of the other kind, loaded from a state dict
    rs = [p.detach().clone().requires_grad_() for p in (ps if direction == "ours-into-theirs"
                                                        else qs)]
    grouped = [{"params": rs[:2]}, {"params": rs[2:]}]
    if direction == "ours-into-theirs":  # ours stops; lion-pytorch goes on, against theirs
        new = lion_pytorch.Lion(grouped, **kwargs)
        new.load_state_dict(ours.state_dict())
        ref, ref_opt = qs, theirs
    else:
        new = ft.Lion(grouped, **kwargs)
        new.load_state_dict(theirs.state_dict())
        ref, ref_opt = ps, ours
    for _ in range(3, 6):
        for r, q in zip(rs, ref):
            d = torch.randn(r.shape, generator=g, dtype=r.dtype)
            r.grad = d.clone()
            q.grad = d.clone()
        new.step()
        ref_opt.step()
    for i, (r, q) in enumerate(zip(rs, ref)):
        _close(r.detach(), q.detach(), f"params[{i}]")


def test_numpy_lion_matches_lion_pytorch():
    g = torch.Generator().manual_seed(1)
    qs = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_() for n in SIZES]
    arrays = [q.detach().numpy().copy() for q in qs]
    kwargs = dict(lr=1e-3, weight_decay=0.3, betas=(0.8, 0.95))
    ours = fusedopt.Lion(arrays, **kwargs)
    theirs = lion_pytorch.Lion(qs, **kwargs)
    for _ in range(5):
        grads = [torch.randn(q.shape, generator=g, dtype=q.dtype) for q in qs]
        for q, d in zip(qs, grads):
            q.grad = d
        ours.step([d.numpy() for d in grads])
        theirs.step()
    for i, (a, q) in enumerate(zip(arrays, qs)):
        np.testing.assert_allclose(a, q.detach().numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"params[{i}]")


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "use_triton-ignored"])
def test_the_reference_lion_is_lion_pytorch(name):
    """The float64 oracle the parity tests use (fusedopt.reference.lion), against the peer."""
    from fusedopt import reference

    kwargs = dict(CONFIGS[name])
    g = torch.Generator().manual_seed(2)
    qs = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_() for n in SIZES]
    arrays = [q.detach().numpy().copy() for q in qs]
    ms = [np.zeros_like(a) for a in arrays]
    theirs = lion_pytorch.Lion(qs, **kwargs)
    hp = {k: v for k, v in kwargs.items() if k != "use_triton"}
    if hp.get("decoupled_weight_decay"):
        hp["init_lr"] = kwargs["lr"]
    for t in range(1, 6):
        grads = [torch.randn(q.shape, generator=g, dtype=q.dtype) for q in qs]
        grads[0][0] = 0.0
        for q, d in zip(qs, grads):
            q.grad = d
        theirs.step()
        reference.lion(arrays, [d.numpy() for d in grads], ms, step=t, **hp)
    for i, (a, q) in enumerate(zip(arrays, qs)):
        np.testing.assert_allclose(a, q.detach().numpy(), rtol=1e-13, atol=1e-15,
                                   err_msg=f"params[{i}]")
        np.testing.assert_allclose(ms[i], theirs.state[q]["exp_avg"].numpy(), rtol=1e-13,
                                   atol=1e-15, err_msg=f"exp_avg[{i}]")


def test_numpy_lion_loads_a_lion_pytorch_state_dict():
    """lion-pytorch keeps decoupled_weight_decay and its initial lr on the optimizer, not in its
    groups: a NumPy Lion loading its state dict keeps its own, and goes on as lion-pytorch."""
    kwargs = dict(lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True)
    g = torch.Generator().manual_seed(3)
    qs = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_() for n in SIZES]
    theirs = lion_pytorch.Lion(qs, **kwargs)
    for _ in range(2):
        for q in qs:
            q.grad = torch.randn(q.shape, generator=g, dtype=q.dtype)
        theirs.step()
    arrays = [q.detach().numpy().copy() for q in qs]
    ours = fusedopt.Lion(arrays, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    group = ours.param_groups[0]
    assert group["decoupled_weight_decay"] is True and group["init_lr"] == 1e-3
    for _ in range(3):
        grads = [torch.randn(q.shape, generator=g, dtype=q.dtype) for q in qs]
        for q, d in zip(qs, grads):
            q.grad = d
        theirs.step()
        ours.step([d.numpy() for d in grads])
    for i, (a, q) in enumerate(zip(arrays, qs)):
        np.testing.assert_allclose(a, q.detach().numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"params[{i}]")
