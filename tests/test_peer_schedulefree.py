"""fusedopt.AdamWScheduleFree and fusedopt.torch.AdamWScheduleFree against the ``schedulefree``
package (1.4.1), whose ``AdamWScheduleFree`` FORMULAS.md names as the rule: steps, train() and
eval(), state dicts both ways; and fusedopt.functional.lerp against fusedopt.reference.lerp.

The peer runs its single-tensor path (``foreach=False``; its foreach path is the same math).
Tolerances: float64 1e-12 relative; float32 1e-5 relative; both plus an absolute 1e-14 (fp64) /
1e-6 (fp32) of the tensor's largest value. The kernels divide once where the peer divides twice
(Note [Adam's efficient order] in csrc/algorithms/adam.h) and compute torch.lerp in its scalar
form, so each step differs from the peer's in the last bits.
"""

from __future__ import annotations

import copy
import functools
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
schedulefree = pytest.importorskip("schedulefree")
ft = pytest.importorskip("fusedopt.torch")

from peer_tools import assert_close_to_peer  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import functional, reference  # noqa: E402

SHAPES = ((), (1,), (7,), (33, 5), (4097,), (3, 4, 5))
CONFIGS = {
    "default": dict(lr=1e-2),
    "wd": dict(lr=1e-2, weight_decay=0.1),
    "warmup": dict(lr=1e-2, warmup_steps=4),
    "r-power": dict(lr=1e-2, r=1.0, weight_lr_power=1.0),
    "betas-eps": dict(lr=1e-2, betas=(0.5, 0.99), eps=1e-3),
    "no-lr-weight": dict(lr=1e-2, weight_lr_power=0.0, warmup_steps=3),
}
STEPS = 10
EVAL_AT = 5  # eval() then train() after this many steps, as a training loop's evaluation does


_close = functools.partial(assert_close_to_peer, fp32=(1e-5, 1e-6))


def _grouped(xs, groups):
    if groups == 1:
        return xs
    return [{"params": xs[:3]}, {"params": xs[3:], "lr": 3e-2, "weight_decay": 0.05}]


def _pair(kwargs, dtype, groups):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    qs = [p.clone() for p in ps]
    ours = ft.AdamWScheduleFree(_grouped(ps, groups), **kwargs)
    theirs = schedulefree.AdamWScheduleFree(_grouped(qs, groups), foreach=False, **kwargs)
    return ps, qs, ours, theirs, g


def _set_grads(ps, qs, g):
    for p, q in zip(ps, qs):
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = d.clone()
        q.grad = d.clone()


def _compare(ps, qs, ours, theirs):
    for i, (p, q) in enumerate(zip(ps, qs)):
        _close(p, q, f"params[{i}]")
        for name in ("z", "exp_avg_sq"):
            _close(ours.state[p][name], theirs.state[q][name], f"{name}[{i}]")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_matches_the_schedulefree_package(name, dtype, groups):
    ps, qs, ours, theirs, g = _pair(CONFIGS[name], dtype, groups)
    ours.train()
    theirs.train()
    for k in range(STEPS):
        _set_grads(ps, qs, g)
        ours.step()
        theirs.step()
        if k + 1 == EVAL_AT:
            ours.eval()
            theirs.eval()
            _compare(ps, qs, ours, theirs)  # x
            ours.train()
            theirs.train()
    _compare(ps, qs, ours, theirs)  # y
    ours.eval()
    theirs.eval()
    _compare(ps, qs, ours, theirs)  # x
    sd = ours.state_dict()
    for gi, group in enumerate(theirs.param_groups):
        for key in ("k", "weight_sum", "lr_max", "train_mode"):
            assert sd["param_groups"][gi][key] == pytest.approx(group[key], rel=1e-15), key


def test_the_constructor_is_the_packages():
    mine = dict(inspect.signature(ft.AdamWScheduleFree.__init__).parameters)
    theirs = inspect.signature(schedulefree.AdamWScheduleFree.__init__).parameters
    for k in ("state_dtype", "stochastic_rounding", "seed", "kahan_summation",
              "master_weights"):  # fusedopt's own
        assert mine.pop(k).kind == inspect.Parameter.KEYWORD_ONLY
    assert list(mine) == list(theirs)
    for k, p in theirs.items():
        if k not in ("self", "params"):
            assert mine[k].default == p.default, k


def test_a_step_outside_train_mode_is_refused_and_changes_nothing():
    for make in (lambda ps: ft.AdamWScheduleFree(ps, lr=0.1),
                 lambda ps: fusedopt.AdamWScheduleFree([p.numpy() for p in ps], lr=0.1)):
        ps = [torch.randn(4, dtype=torch.float64)]
        opt = make(ps)
        before = ps[0].clone()
        ps[0].grad = torch.ones(4, dtype=torch.float64)
        step = opt.step
        if isinstance(opt, fusedopt.optim.Optimizer):  # the NumPy class takes its grads
            step = lambda opt=opt: opt.step([np.ones(4)])  # noqa: E731
        with pytest.raises(RuntimeError, match=r"param_groups\[0\] is not in train mode"):
            step()
        assert torch.equal(ps[0], before) and len(opt.state) == 0
        opt.train()
        step()
        opt.eval()
        after = ps[0].clone()
        with pytest.raises(RuntimeError, match="not in train mode"):
            step()
        assert torch.equal(ps[0], after)


def test_modes_are_idempotent_and_skip_params_without_state():
    ps = [torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    opt = ft.AdamWScheduleFree(ps, lr=0.1)
    opt.train()
    ps[0].grad = torch.ones(5, dtype=torch.float64)  # ps[1] has no grad: no z, never moved
    opt.step()
    before = [p.clone() for p in ps]
    opt.train()  # already in train mode: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(ps, before))
    opt.eval()
    opt.eval()
    assert torch.equal(ps[1], before[1])
    opt.train()
    torch.testing.assert_close(ps[0], before[0], rtol=1e-15, atol=1e-15)


def test_eval_with_beta1_zero_is_refused_before_anything_moves():
    ps = [torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    opt = ft.AdamWScheduleFree([{"params": [ps[0]]}, {"params": [ps[1]], "betas": (0.0, 0.9)}])
    opt.train()
    for p in ps:
        p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    before = [p.clone() for p in ps]
    with pytest.raises(ValueError, match=r"param_groups\[1\] has betas\[0\] = 0"):
        opt.eval()
    assert all(torch.equal(a, b) for a, b in zip(ps, before))
    assert [g["train_mode"] for g in opt.param_groups] == [True, True]


def test_grads_are_only_read_and_z_starts_as_a_copy():
    p = torch.randn(6, dtype=torch.float64)
    start = p.clone()
    opt = ft.AdamWScheduleFree([p], lr=0.1)
    opt.train()
    p.grad = torch.randn(6, dtype=torch.float64)
    grad = p.grad.clone()
    opt.step()
    assert torch.equal(p.grad, grad)  # the package writes u into p.grad
    z = opt.state[p]["z"]
    assert z.data_ptr() != p.data_ptr()
    # step 1: c = 1, so y = z = z0 - lr * u
    torch.testing.assert_close(z, p, rtol=0, atol=0)
    assert not torch.equal(z, start)


@pytest.mark.parametrize("direction", ["ours-into-theirs", "theirs-into-ours"])
def test_state_dicts_load_both_ways_mid_run(direction):
    """Four steps, eval() (checkpoints are saved in eval mode), the state dict into the other
    optimizer, train(), four more steps: as the unbroken run."""
    kwargs = dict(lr=1e-2, warmup_steps=3, weight_decay=0.1)
    ps, qs, ours, theirs, g = _pair(kwargs, torch.float64, 2)
    ours.train()
    theirs.train()
    for _ in range(4):
        _set_grads(ps, qs, g)
        ours.step()
        theirs.step()
    ours.eval()
    theirs.eval()
    if direction == "ours-into-theirs":
        src, dst_params = ours, [q.clone() for q in qs]
        dst = schedulefree.AdamWScheduleFree(_grouped(dst_params, 2), foreach=False, **kwargs)
    else:
        src, dst_params = theirs, [p.clone() for p in ps]
        dst = ft.AdamWScheduleFree(_grouped(dst_params, 2), **kwargs)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    for opt in (src, dst):
        opt.train()
    for _ in range(4):
        _set_grads(ps, qs, g)
        for p, d in zip(ps, dst_params):
            d.grad = p.grad.clone()
        src.step()
        dst.step()
    for i, (a, b) in enumerate(zip(dst_params, ps if direction == "ours-into-theirs" else qs)):
        _close(a, b, f"params[{i}]")


def test_numpy_class_and_reference_match_the_package():
    kwargs = dict(lr=1e-2, weight_decay=0.1, warmup_steps=3, r=0.5)
    g = torch.Generator().manual_seed(3)
    qs = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    ws = [q.numpy().copy() for q in qs]
    rs = [q.numpy().copy() for q in qs]
    zs = [r.copy() for r in rs]
    vs = [np.zeros_like(r) for r in rs]
    theirs = schedulefree.AdamWScheduleFree(qs, foreach=False, **kwargs)
    ours = fusedopt.AdamWScheduleFree(ws, **kwargs)
    theirs.train()
    ours.train()
    scalars = (None, None)
    for _ in range(STEPS):
        grads = [torch.randn(q.shape, generator=g, dtype=q.dtype) for q in qs]
        for q, d in zip(qs, grads):
            q.grad = d.clone()  # the package writes u into it
        theirs.step()
        ours.step([d.numpy() for d in grads])
        scalars = reference.adamw_schedulefree(
            rs, [d.numpy() for d in grads], zs, vs, step=theirs.param_groups[0]["k"],
            weight_sum=scalars[0], lr_max=scalars[1], **kwargs)
    theirs.eval()
    ours.eval()
    reference.lerp(rs, zs, weight=1 - 1 / 0.9)
    for i, (q, w, r) in enumerate(zip(qs, ws, rs)):
        np.testing.assert_allclose(w, q.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"params[{i}]")
        np.testing.assert_allclose(r, q.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"ref[{i}]")
    assert scalars == pytest.approx((theirs.param_groups[0]["weight_sum"],
                                     theirs.param_groups[0]["lr_max"]), rel=1e-15)


def test_numpy_class_loads_a_package_state_dict():
    qs = [torch.randn(5, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    theirs = schedulefree.AdamWScheduleFree([q.clone() for q in qs], foreach=False, lr=1e-2)
    theirs.train()
    for _ in range(3):
        for q in theirs.param_groups[0]["params"]:
            q.grad = torch.ones_like(q)
        theirs.step()
    theirs.eval()
    ours = fusedopt.AdamWScheduleFree([q.numpy().copy() for q in qs], lr=1e-2)
    ours.load_state_dict(theirs.state_dict())
    group = theirs.param_groups[0]
    assert ours.state[0]["step"] == 3 == group["k"]
    assert ours.state[1]["weight_sum"] == group["weight_sum"]
    assert ours.state[1]["lr_max"] == group["lr_max"]
    assert "k" not in ours.param_groups[0] and ours.param_groups[0]["train_mode"] is False


@pytest.mark.parametrize("weight", [-1 / 9, 0.1, 0.49, 0.5, 0.9, -1.0, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lerp_is_torch_lerp(weight, dtype):
    rng = np.random.default_rng(0)
    a = [rng.standard_normal(n).astype(dtype) for n in (1, 33, 4097)]
    b = [rng.standard_normal(n).astype(dtype) for n in (1, 33, 4097)]
    want = [torch.lerp(torch.from_numpy(x), torch.from_numpy(y), weight).numpy()
            for x, y in zip(a, b)]
    ref = [x.astype(np.float64) for x in a]
    reference.lerp(ref, [y.astype(np.float64) for y in b], weight=weight)
    functional.lerp(a, b, weight=weight)
    for x, w, r in zip(a, want, ref):
        tol = 1e-6 if dtype == np.float32 else 1e-15
        np.testing.assert_allclose(x, w, rtol=tol, atol=tol)
        np.testing.assert_allclose(x, r, rtol=tol, atol=tol)
    if weight == 1.0:  # the second form gives the end exactly
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_param_without_a_grad_on_some_steps_takes_the_groups_counts():
    """The package counts steps per group: a param that had no grad on a step (or joins late)
    still takes the group's k, weight_sum and lr_max at its next step."""
    g = torch.Generator().manual_seed(7)
    ps = [torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3)]
    qs = [p.clone() for p in ps]
    ours = ft.AdamWScheduleFree(ps, lr=0.05, warmup_steps=2)
    theirs = schedulefree.AdamWScheduleFree(qs, lr=0.05, warmup_steps=2, foreach=False)
    ours.train()
    theirs.train()
    for k in range(5):
        for i, (p, q) in enumerate(zip(ps, qs)):
            if (i == 1 and k in (0, 2)) or (i == 2 and k < 3):  # no grad: skipped by both
                p.grad = q.grad = None
                continue
            d = torch.randn(4, generator=g, dtype=torch.float64)
            p.grad, q.grad = d.clone(), d.clone()
        ours.step()
        theirs.step()
    for i, (p, q) in enumerate(zip(ps, qs)):
        _close(p, q, f"params[{i}]")


@pytest.mark.parametrize("power", [-1.0, float("nan")])
def test_a_negative_weight_lr_power_is_refused(power):
    """The package raises ZeroDivisionError at lr = 0 with a negative power (0 ** -1) and
    computes nonsense weights otherwise; refused here at construction."""
    with pytest.raises(ValueError, match="Invalid weight_lr_power value"):
        ft.AdamWScheduleFree([torch.zeros(2)], weight_lr_power=power)
    with pytest.raises(ValueError, match="Invalid weight_lr_power value"):
        functional.adamw_schedulefree(np.zeros(2), np.ones(2), np.zeros(2), np.zeros(2), step=1,
                                      weight_lr_power=power)
