"""fusedopt.torch with bfloat16 and float16 CPU tensors (Note [State dtypes]): the same bits as the
NumPy classes over the same memory, state in float32 by default or in ``state_dtype``, state dicts
that keep the dtypes, and torch.optim's state dicts of bfloat16 params loaded without rounding.
(CI runs this file where torch is installed: .ci/run, step 2.)"""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest

import fusedopt

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedopt.torch")


def _numpy(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@pytest.mark.parametrize("state", [None, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Lion", "RAdam"])
def test_16_bit_tensors_step_as_the_numpy_class(name, dtype, state):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(70_000, generator=gen).to(dtype).requires_grad_()
    q = p.detach().clone()
    kw = dict(lr=1e-2, **({"momentum": 0.9} if name == "SGD" else {}))
    opt = getattr(ft, name)([p], state_dtype=state, **kw)
    twin = getattr(fusedopt, name)([_numpy(q)], state_dtype=None if state is None else "bfloat16",
                                   **kw)
    for _ in range(3):
        g = torch.randn(70_000, generator=gen).to(dtype)
        p.grad = g.clone()
        opt.step()
        twin.step([_numpy(g)])
    assert torch.equal(p.detach(), q)
    want = torch.float32 if state is None else torch.bfloat16
    for name_, s in opt.state[p].items():
        if name_ != "step" and isinstance(s, torch.Tensor) and s.dim() > 0:
            assert s.dtype == want, name_
            assert np.array_equal(_numpy(s).astype(np.float32),
                                  twin.state[0][name_].astype(np.float32))
    # a state dict round trip keeps the dtypes and the values
    p2 = p.detach().clone().requires_grad_()
    again = getattr(ft, name)([p2], state_dtype=state, **kw)
    again.load_state_dict(opt.state_dict())
    for name_, s in opt.state[p].items():
        if isinstance(s, torch.Tensor) and s.dim() > 0:
            assert again.state[p2][name_].dtype == s.dtype and torch.equal(again.state[p2][name_], s)


def test_torch_optim_state_dict_of_bfloat16_params_loads_into_float32_state_exactly():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(1000, generator=gen).to(torch.bfloat16).requires_grad_()
    peer = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.randn(1000, generator=gen).to(torch.bfloat16)
    peer.step()
    assert peer.state[p]["exp_avg"].dtype == torch.bfloat16
    p2 = p.detach().clone().requires_grad_()
    mine = ft.Adam([p2], lr=1e-3)
    mine.load_state_dict(peer.state_dict())
    for name in ("exp_avg", "exp_avg_sq"):
        assert mine.state[p2][name].dtype == torch.float32
        assert torch.equal(mine.state[p2][name], peer.state[p][name].float())
    p2.grad = p.grad.clone()
    mine.step()  # and it steps on from there


def test_float32_state_saved_is_not_rounded_by_torchs_load():
    """torch's load casts a state to its param's dtype; fusedopt.torch reads the saved tensor again
    in the state's dtype, so a bfloat16 param's float32 state survives a round trip bit for bit."""
    p = torch.randn(5000).to(torch.bfloat16).requires_grad_()
    opt = ft.AdamW([p], lr=1e-2)
    for _ in range(2):
        p.grad = torch.randn(5000).to(torch.bfloat16)
        opt.step()
    m = opt.state[p]["exp_avg"]
    assert not torch.equal(m, m.to(torch.bfloat16).float())  # not representable in bfloat16
    p2 = p.detach().clone().requires_grad_()
    again = ft.AdamW([p2], lr=1e-2)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[p2]["exp_avg"], m)


def test_refused_state_dtypes_and_param_dtypes():
    p = torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match=r"Adam: state_dtype must be None, 'float32' or "
                                         r"'bfloat16', got 'float16'"):
        ft.Adam([p], state_dtype="float16")
    with pytest.raises(ValueError, match="state_dtype must be"):
        ft.Adam([p], state_dtype=torch.float16)
    with pytest.raises(TypeError, match=r"has dtype torch.int32, expected torch.float32, "
                                        r"torch.float64, torch.bfloat16 or torch.float16"):
        ft.SGD([torch.ones(3, dtype=torch.int32)], lr=0.1)


def test_stochastic_rounding_is_the_numpy_classes_and_its_seed_is_in_the_groups():
    gen = torch.Generator().manual_seed(2)
    p = torch.randn(30_000, generator=gen).to(torch.bfloat16).requires_grad_()
    q = p.detach().clone()
    opt = ft.AdamW([p], lr=1e-3, stochastic_rounding=True, seed=5)
    twin = fusedopt.AdamW([_numpy(q)], lr=1e-3, stochastic_rounding=True, seed=5)
    for _ in range(3):
        g = torch.randn(30_000, generator=gen).to(torch.bfloat16)
        p.grad = g.clone()
        opt.step()
        twin.step([_numpy(g)])
    assert torch.equal(p.detach(), q)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["seed"] == 5 and sd["param_groups"][0]["stochastic_rounding"]
    drawn = ft.Adam([torch.ones(3, dtype=torch.bfloat16, requires_grad=True)],
                    stochastic_rounding=True)
    assert isinstance(drawn.param_groups[0]["seed"], int)
    with pytest.raises(TypeError, match="Adam: stochastic_rounding must be a bool"):
        ft.Adam([torch.ones(3, requires_grad=True)], stochastic_rounding="yes")


def test_a_group_added_with_stochastic_rounding_draws_a_seed_and_rounds_stochastically():
    base = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    opt = ft.SGD([base], lr=1e-3)  # rounding to nearest, no seed
    q = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    opt.add_param_group({"params": [q], "stochastic_rounding": True})
    base.grad = torch.full((4096,), 0.3, dtype=torch.bfloat16)
    q.grad = base.grad.clone()
    opt.step()
    assert isinstance(opt.param_groups[1]["seed"], int)
    assert torch.equal(base.detach(), torch.ones(4096, dtype=torch.bfloat16))  # 3e-4 < ulp/2
    moved = (q.detach() != 1).float().mean().item()
    assert 0.01 < moved < 0.2  # 3e-4 is 0.077 of the ulp below 1 (2^-8 / 2 = 0.0039)


def _stepped_with_twin(name, dtype, seed, **option):
    """A fusedopt.torch optimizer over a 16-bit and a float32 param with ``option``, and its
    NumPy class over copies, stepped three times with the same grads (lr 1e-4: below half an
    ulp of most 16-bit params). Returns (opt, twin, p, w, gen) after checking the same bits."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(30_000, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(50, generator=gen).requires_grad_()
    q, v = p.detach().clone(), w.detach().clone()
    opt = getattr(ft, name)([p, w], lr=1e-4, **option)
    twin = getattr(fusedopt, name)([_numpy(q), v.numpy()], lr=1e-4, **option)
    for _ in range(3):
        g, h = torch.randn(30_000, generator=gen).to(dtype), torch.randn(50, generator=gen)
        p.grad, w.grad = g.clone(), h.clone()
        opt.step()
        twin.step([_numpy(g), h.numpy()])
    assert torch.equal(p.detach(), q) and torch.equal(w.detach(), v)
    return opt, twin, p, w, gen


def _reloaded_steps_alike(opt, p, w, gen, option):
    """A new optimizer loaded from ``opt``'s state dict (a copy, as torch.save and torch.load
    give: torch's load keeps a saved tensor of the right dtype as it is, a bfloat16 comp of a
    bfloat16 param, which the two would then share) has ``option`` on and steps as ``opt``
    does. Returns (the new optimizer, its 16-bit param)."""
    p2, w2 = p.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    again = type(opt)([p2, w2], lr=1e-4)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert again.param_groups[0][option] is True
    for name, s in opt.state[p].items():
        if isinstance(s, torch.Tensor) and s.dim() > 0:
            assert again.state[p2][name].dtype == s.dtype and torch.equal(again.state[p2][name], s)
    g = torch.randn(30_000, generator=gen).to(p.dtype)
    p.grad, p2.grad = g.clone(), g.clone()
    w.grad, w2.grad = torch.zeros(50), torch.zeros(50)
    opt.step()
    again.step()
    assert torch.equal(p.detach(), p2.detach())
    return again, p2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_kahan_summation_is_the_numpy_classes_and_its_comp_is_in_the_state(dtype):
    """Note [Kahan summation]: a ``kahan_comp`` of each 16-bit param's dtype (none for a float32
    param), the NumPy class's bits, kept through a state dict; and refused with stochastic
    rounding, in a group as in the constructor."""
    opt, twin, p, w, gen = _stepped_with_twin("AdamW", dtype, 3, kahan_summation=True)
    comp = opt.state[p]["kahan_comp"]
    assert comp.dtype == dtype and "kahan_comp" not in opt.state[w]
    assert np.array_equal(_numpy(comp).astype(np.float32),
                          twin.state[0]["kahan_comp"].astype(np.float32))
    assert (comp != 0).float().mean().item() > 0.9  # lr 1e-4 is below half an ulp of most p
    again, p2 = _reloaded_steps_alike(opt, p, w, gen, "kahan_summation")
    assert torch.equal(again.state[p2]["kahan_comp"], opt.state[p]["kahan_comp"])
    with pytest.raises(ValueError, match="SGD: kahan_summation and stochastic_rounding exclude"):
        ft.SGD([torch.ones(3, dtype=dtype, requires_grad=True)], lr=0.1, kahan_summation=True,
               stochastic_rounding=True)
    with pytest.raises(TypeError, match="SGD: kahan_summation must be a bool, got str"):
        ft.SGD([torch.ones(3, dtype=dtype, requires_grad=True)], lr=0.1, kahan_summation="on")
    sgd = ft.SGD([torch.ones(3, dtype=dtype, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: kahan_summation and "
                                         r"stochastic_rounding exclude"):
        sgd.add_param_group({"params": [torch.ones(3, dtype=dtype, requires_grad=True)],
                             "kahan_summation": True, "stochastic_rounding": True})
    assert len(sgd.param_groups) == 1
    sgd.param_groups[0]["kahan_summation"] = True  # an edit: refused at the next step
    sgd.param_groups[0]["stochastic_rounding"] = True
    sgd.param_groups[0]["params"][0].grad = torch.ones(3, dtype=dtype)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: kahan_summation and "
                                         r"stochastic_rounding exclude"):
        sgd.step()
    assert torch.equal(sgd.param_groups[0]["params"][0].detach(), torch.ones(3, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_master_weights_are_the_numpy_classes_and_the_master_is_in_the_state(dtype):
    """Note [Master weights]: a float32 ``master_param`` per 16-bit param (none for a float32
    one), updated, and the param written from it rounded, the NumPy class's bits; kept through
    a state dict in float32; refused with kahan_summation."""
    opt, twin, p, w, gen = _stepped_with_twin("Adam", dtype, 4, master_weights=True)
    master = opt.state[p]["master_param"]
    assert master.dtype == torch.float32 and "master_param" not in opt.state[w]
    assert np.array_equal(master.numpy(), twin.state[0]["master_param"])
    assert torch.equal(p.detach(), master.to(dtype))  # the param is its master rounded
    # lr 1e-4 moves the masters by less than half an ulp of most params: the param lags
    assert (master != p.detach().float()).float().mean().item() > 0.5
    again, p2 = _reloaded_steps_alike(opt, p, w, gen, "master_weights")
    assert torch.equal(again.state[p2]["master_param"], opt.state[p]["master_param"])
    with pytest.raises(ValueError, match="Adam: kahan_summation and master_weights exclude"):
        ft.Adam([torch.ones(3, dtype=dtype, requires_grad=True)], master_weights=True,
                kahan_summation=True)
    with pytest.raises(TypeError, match="Adam: master_weights must be a bool, got int"):
        ft.Adam([torch.ones(3, dtype=dtype, requires_grad=True)], master_weights=1)


def test_turning_kahan_summation_off_after_a_refused_step_stops_compensating():
    """The bound call a refused step left is not reused once the flag changed (its key holds
    the flag): the retried step rounds plainly and leaves the comp as it was."""
    p = torch.ones(64, dtype=torch.bfloat16, requires_grad=True)
    opt = ft.SGD([p], lr=1e-3, kahan_summation=True)
    p.grad = torch.full((64,), 1.0, dtype=torch.bfloat16)
    opt.step()
    comp = opt.state[p]["kahan_comp"].clone()
    assert (comp != 0).all()
    p.grad = torch.ones(128, dtype=torch.bfloat16)[::2]  # not contiguous: refused
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    opt.param_groups[0]["kahan_summation"] = False
    p.grad = torch.full((64,), 1.0, dtype=torch.bfloat16)
    before = p.detach().clone()
    opt.step()
    assert torch.equal(opt.state[p]["kahan_comp"], comp)
    assert torch.equal(p.detach(), (before.float() - 1e-3).to(torch.bfloat16))


def test_compensations_and_masters_of_a_state_dict_are_ignored_for_float32_params():
    """A state dict of bfloat16 params with kahan_comp / master_param loaded into float32 params:
    the step runs as without them (they are of 16-bit params only)."""
    for option in ("kahan_summation", "master_weights"):
        p = torch.randn(100, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
        p.requires_grad_()
        opt = ft.AdamW([p], lr=1e-3, **{option: True})
        p.grad = torch.ones(100, dtype=torch.bfloat16)
        opt.step()
        w = p.detach().float().requires_grad_()
        plain = w.detach().clone().requires_grad_()
        again = ft.AdamW([w], lr=1e-3, **{option: True})
        again.load_state_dict(copy.deepcopy(opt.state_dict()))
        twin = ft.AdamW([plain], lr=1e-3)
        twin.load_state_dict(copy.deepcopy(opt.state_dict()))
        twin.param_groups[0][option] = False
        for t in (w, plain):
            t.grad = torch.full((100,), 0.5)
        again.step()
        twin.step()
        assert torch.equal(w.detach(), plain.detach()), option


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_adafactor_16_bit_tensors_step_as_the_numpy_class_and_load_torchs_state(dtype):
    """fusedopt.torch.Adafactor over 16-bit CPU tensors: float32 states, the NumPy class's bits
    over the same values, and torch.optim.Adafactor's state dict (its states in the param's
    dtype) loaded into float32 exactly, then the run continuing as the NumPy class's."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(9, 13), (21,), (2, 3, 5)]
    ps = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]
    twins = [_numpy(p.detach().clone()) for p in ps]
    opt = ft.Adafactor(ps, lr=0.05, weight_decay=0.01)
    twin = fusedopt.Adafactor(twins, lr=0.05, weight_decay=0.01)
    peer_ps = [p.detach().clone().requires_grad_() for p in ps]
    peer = torch.optim.Adafactor(peer_ps, lr=0.05, weight_decay=0.01)
    for _ in range(2):
        gs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        for p, q, g in zip(ps, peer_ps, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        twin.step([_numpy(g) for g in gs])
        peer.step()
    for p, w in zip(ps, twins):
        assert _numpy(p).tobytes() == w.tobytes()
    for s in opt.state.values():
        assert {t.dtype for k, t in s.items() if k != "step"} == {torch.float32}
    sd = peer.state_dict()
    assert sd["state"][0]["row_var"].dtype == dtype  # torch keeps them in the param's dtype
    opt.load_state_dict(sd)
    for i, p in enumerate(ps):
        for name, t in opt.state[p].items():
            if name != "step":
                assert t.dtype == torch.float32
                assert torch.equal(t, sd["state"][i][name].float()), (i, name)
    with torch.no_grad():
        for p, q in zip(ps, peer_ps):
            p.copy_(q)
    twins = [_numpy(q.detach().clone()) for q in peer_ps]
    twin = fusedopt.Adafactor(twins, lr=0.05, weight_decay=0.01)
    twin.load_state_dict(sd)
    _step_alike(opt, twin, ps, twins, shapes, gen, dtype)


def _step_alike(opt, twin, ps, twins, shapes, gen, dtype):
    """One step of a fusedopt.torch optimizer over ps and of its NumPy twin over twins, on the
    same new grads: the same bits."""
    gs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    opt.step()
    twin.step([_numpy(g) for g in gs])
    for p, w in zip(ps, twins):
        assert _numpy(p).tobytes() == w.tobytes()


def test_adafactor_sees_a_param_reinterpreted_in_the_same_memory():
    """fusedopt.torch.Adafactor keeps each param's NumPy view from step to step while its memory,
    shape and dtype stay: a param made float16 over the same memory (p.data = p.data.view(...))
    is stepped as float16, as fusedopt.functional steps a copy of it."""
    gen = torch.Generator().manual_seed(8)
    p = torch.randn(4, 6, generator=gen).to(torch.bfloat16).requires_grad_()
    opt = ft.Adafactor([p])
    p.grad = torch.randn(4, 6, generator=gen).to(torch.bfloat16)
    opt.step()
    ptr = p.data_ptr()
    p.data = p.data.view(torch.float16)
    assert p.data_ptr() == ptr
    p.grad = torch.randn(4, 6, generator=gen).to(torch.float16)
    want = p.detach().numpy().copy()
    row, col = (opt.state[p][k].numpy().copy() for k in ("row_var", "col_var"))
    fusedopt.functional.adafactor([want], [p.grad.numpy()], [row], [col], [None], steps=2)
    opt.step()
    assert p.detach().numpy().tobytes() == want.tobytes()


def test_adafactor_stochastic_rounding_is_the_numpy_classes_and_its_seed_is_in_the_groups():
    """fusedopt.torch.Adafactor(stochastic_rounding=True, seed=...) steps as the NumPy class with
    that seed, group by group; the flags are group keys that its state dict keeps and that a
    torch.optim.Adafactor state dict (which lacks them) leaves as they were."""
    gen = torch.Generator().manual_seed(6)
    shapes = [(5, 40), (70,)]
    ps = [torch.randn(s, generator=gen).to(torch.bfloat16).requires_grad_() for s in shapes]
    twins = [_numpy(p.detach().clone()) for p in ps]
    opt = ft.Adafactor([{"params": [ps[0]]}, {"params": [ps[1]]}], stochastic_rounding=True,
                       seed=77)
    twin = fusedopt.Adafactor([{"params": [twins[0]]}, {"params": [twins[1]]}],
                              stochastic_rounding=True, seed=77)
    assert [g["seed"] for g in opt.param_groups] == [77, 77]
    for _ in range(2):
        _step_alike(opt, twin, ps, twins, shapes, gen, torch.bfloat16)
    sd = opt.state_dict()
    assert all(g["stochastic_rounding"] and g["seed"] == 77 for g in sd["param_groups"])
    peer = torch.optim.Adafactor([p.detach().clone().requires_grad_() for p in ps])
    for q in peer.param_groups[0]["params"]:
        q.grad = torch.ones_like(q)
    peer.step()
    other = ft.Adafactor([p.detach().clone().requires_grad_() for p in ps],
                         stochastic_rounding=True, seed=5)
    other.load_state_dict(peer.state_dict())
    assert other.param_groups[0]["stochastic_rounding"] and other.param_groups[0]["seed"] == 5
    drawn = ft.Adafactor([ps[0]])
    drawn.add_param_group({"params": [ps[1]], "stochastic_rounding": True})
    assert drawn.param_groups[0]["seed"] is None and isinstance(drawn.param_groups[1]["seed"], int)


@pytest.mark.parametrize("option", ["master_weights", "kahan_summation"])
def test_adafactor_master_weights_and_kahan_are_the_numpy_classes(option):
    """fusedopt.torch.Adafactor with master_weights (master_param float32) or kahan_summation
    (kahan_comp of the param's dtype) steps as the NumPy class; its state dict reloads (torch's
    load would cast the master to bfloat16: it is float32 again, from the saved tensor) and the
    run continues with the same bits."""
    gen = torch.Generator().manual_seed(10)
    shapes = [(6, 7), (11,)]
    ps = [torch.randn(s, generator=gen).to(torch.bfloat16).requires_grad_() for s in shapes]
    twins = [_numpy(p.detach().clone()) for p in ps]
    opt = ft.Adafactor(ps, lr=1e-3, **{option: True})
    twin = fusedopt.Adafactor(twins, lr=1e-3, **{option: True})
    name = "master_param" if option == "master_weights" else "kahan_comp"

    for _ in range(2):
        _step_alike(opt, twin, ps, twins, shapes, gen, torch.bfloat16)
    for i, p in enumerate(ps):
        t = opt.state[p][name]
        assert t.dtype == (torch.float32 if option == "master_weights" else torch.bfloat16)
        assert _numpy(t).tobytes() == twin.state[i][name].tobytes()
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)
    assert all(opt.state[p][name].dtype == sd["state"][i][name].dtype for i, p in enumerate(ps))
    _step_alike(opt, twin, ps, twins, shapes, gen, torch.bfloat16)
