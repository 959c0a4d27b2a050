"""fusedopt.torch against torch.optim: every CPU config of torch's own optimizer tests
(``torch.testing._internal.common_optimizers.optim_db``), fp32 and fp64, one and two groups; the
construction errors of the same table; state dicts both ways mid-run; named params; GradScaler
with skipped steps; schedulers; hooks; bad input.

Tolerances (``_tol``): float64 rtol 1e-10 with atol 1e-12 times the tensor's largest value (NAdam
rtol 1e-6, atol 1e-9: torch keeps ``mu_product`` in float32, fusedopt in float64); float32 rtol 1e-5
with atol 1e-6 times the largest value (the kernels' documented rounding differences, Note [Adam's
efficient order] in ``csrc/algorithms/adam.h``).
"""

from __future__ import annotations

import copy
import io
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedopt.torch")

# every algorithm torch.optim has too (Lion's peer is lion-pytorch: tests/test_peers.py)
NAMES = [name for name in ft.__all__
         if isinstance(getattr(ft, name), type) and name != "Optimizer" and hasattr(torch.optim, name)]


def _optim_db():
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except ImportError:  # torch's test helpers need expecttest
        return {}
    return {o.optim_cls.__name__: o for o in optim_db if o.optim_cls.__name__ in NAMES}


DB = _optim_db()


def _configs():
    if not DB:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="torch's optim_db needs expecttest"))]
    out = []
    for name in NAMES:
        for inp in DB[name].optim_inputs_func(device="cpu"):
            out.append(pytest.param(name, inp.kwargs, id=f"{name}-{inp.desc.replace(' ', '_')}"))
    return out


def _tol(name, dtype):
    """(rtol, atol as a fraction of the tensor's largest value)."""
    if dtype == torch.float64:
        # torch rounds NAdam's mu_product to float32 (relative error up to 2**-24), which enters
        # the update's coefficients; fusedopt keeps it in float64.
        return (1e-6, 1e-9) if name == "NAdam" else (1e-10, 1e-12)
    return 1e-5, 1e-6


def _close(a, b, name, dtype, what):
    rtol, scale = _tol(name, dtype)
    atol = scale * max(float(b.abs().max()), 1.0)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _pair(name, kwargs, dtype, sizes=(1, 7, 33, 4097), groups=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(n, generator=g, dtype=dtype).requires_grad_() for n in sizes]
    qs = [p.detach().clone().requires_grad_() for p in ps]

    def grouped(xs):
        if groups == 1:
            return xs
        half = len(xs) // 2
        return [{"params": xs[:half]}, {"params": xs[half:], "lr": 0.05}]

    ours = getattr(ft, name)(grouped(ps), **copy.deepcopy(kwargs))
    theirs = getattr(torch.optim, name)(grouped(qs), **copy.deepcopy(kwargs))
    return ps, qs, ours, theirs, g


def _grads(ps, qs, g):
    for p, q in zip(ps, qs):
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = d.clone()
        q.grad = d.clone()


def _compare(ps, qs, ours, theirs, name):
    for i, (p, q) in enumerate(zip(ps, qs)):
        _close(p.detach(), q.detach(), name, p.dtype, f"params[{i}]")
        mine, ref = ours.state[p], theirs.state[q]
        for key, value in ref.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                _close(mine[key], value, name, p.dtype, f"state[{i}][{key!r}]")
            elif key == "step":
                assert float(mine[key]) == float(value)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name,kwargs", _configs())
def test_matches_torch_optim(name, kwargs, dtype, groups):
    ps, qs, ours, theirs, g = _pair(name, kwargs, dtype, groups=groups)
    for _ in range(7):
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
    _compare(ps, qs, ours, theirs, name)


def _error_cases():
    if not DB:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="torch's optim_db needs expecttest"))]
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    out = []
    for name in NAMES:
        for k, e in enumerate(DB[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            if e.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                out.append(pytest.param(name, e, id=f"{name}-{k}"))
    return out


@pytest.mark.parametrize("name,case", _error_cases())
def test_construction_errors_as_torch(name, case):
    """torch's construction error cases: the same exception type and message. A group with a
    duplicate param, on which torch only warns, is warned of the same way and then refused (the
    fused kernels would update it twice)."""
    inp = case.optimizer_error_input
    cls = getattr(ft, name)
    if issubclass(case.error_type, Warning):
        with pytest.warns(case.error_type, match=case.error_regex), \
                pytest.raises(ValueError, match="duplicate parameters"):
            cls(inp.params, **inp.kwargs)
        return
    with pytest.raises(case.error_type, match=case.error_regex):
        cls(inp.params, **inp.kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_is_torchs(name):
    import inspect

    mine = dict(inspect.signature(getattr(ft, name).__init__).parameters)
    theirs = inspect.signature(getattr(torch.optim, name).__init__).parameters
    # torch's, and fusedopt's keyword-only low-precision options last (Note [State dtypes],
    # [Stochastic rounding], [Kahan summation], [Master weights])
    # (Adafactor, its own class, keeps float32 state for 16-bit params: no state_dtype)
    for k, default in (("state_dtype", None), ("stochastic_rounding", False), ("seed", None),
                       ("kahan_summation", False), ("master_weights", False)):
        if name == "Adafactor" and k == "state_dtype":
            continue
        extra = mine.pop(k)
        assert extra.kind == extra.KEYWORD_ONLY and extra.default == default, k
    assert list(mine) == list(theirs)
    for k, p in theirs.items():
        if p.default is not inspect.Parameter.empty:
            assert mine[k].default == p.default, k
        assert mine[k].kind == p.kind, k


@pytest.mark.parametrize("flag", ["capturable", "differentiable"])
def test_flags_that_cannot_be_honoured_are_refused(flag):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"{flag}=True is not supported"):
        ft.Adam([p], **{flag: True})


@pytest.mark.parametrize("steps_before", [0, 2])  # 2: the edit comes after steady steps
@pytest.mark.parametrize("flag", ["capturable", "differentiable"])
def test_a_flag_set_in_a_group_later_is_refused_at_the_next_step(flag, steps_before):
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p], lr=0.1)
    for _ in range(steps_before):
        p.grad = torch.ones(3)
        opt.step()
    p.grad = torch.ones(3)
    before, exp_avg = p.detach().clone(), [s["exp_avg"].clone() for s in opt.state.values()]
    opt.param_groups[0][flag] = True
    with pytest.raises(ValueError, match=rf"param_groups\[0\]: {flag}=True is not supported"):
        opt.step()
    assert torch.equal(p.detach(), before)
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(opt.state.values(), exp_avg))
    opt.param_groups[0][flag] = False
    opt.step()
    assert not torch.equal(p.detach(), before)


@pytest.mark.parametrize("flags", [{"foreach": True}, {"foreach": False}, {"fused": True}])
def test_implementation_flags_change_nothing(flags):
    ps, qs, ours, theirs, g = _pair("Adam", flags, torch.float32)
    plain = ft.Adam([p.detach().clone().requires_grad_() for p in ps])
    for _ in range(3):
        _grads(ps, qs, g)
        for a, p in zip(plain.param_groups[0]["params"], ps):
            a.grad = p.grad.clone()
        ours.step()
        plain.step()
    for a, p in zip(plain.param_groups[0]["params"], ps):
        assert torch.equal(a, p)


# ---- state dicts ---------------------------------------------------------------------------------


def _stepped(opt, p, steps=2):
    for _ in range(steps):
        p.grad = torch.full_like(p, 0.5)
        opt.step()


@pytest.mark.parametrize("case", ["sgd-into-adam", "foreign-entry", "no-step", "group-key"])
def test_a_state_dict_of_another_algorithm_is_refused_and_changes_nothing(case):
    q = torch.ones(3, requires_grad=True)
    if case == "sgd-into-adam":
        other = torch.optim.SGD([q], lr=0.1, momentum=0.9)
        _stepped(other, q)
        sd, match = other.state_dict(), r"param_groups\[0\] lacks 'betas'"
    else:
        other = torch.optim.Adam([q], lr=0.1)
        _stepped(other, q)
        sd = other.state_dict()
        if case == "foreign-entry":
            sd["state"][0]["momentum_buffer"] = torch.zeros(3)
            match = r"state\[0\] has an entry 'momentum_buffer', which Adam does not keep"
        elif case == "no-step":
            del sd["state"][0]["step"]
            match = r"state\[0\] lacks 'step'"
        else:
            sd["param_groups"][0]["momentum_decay"] = 4e-3  # NAdam's
            match = r"param_groups\[0\] has 'momentum_decay', which Adam does not use"
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p], lr=0.2)
    _stepped(opt, p, 3)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: " + match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(after["state"][0][k], before["state"][0][k])


def test_a_torch_state_dict_without_its_flags_loads_with_their_defaults():
    """torch's __setstate__ gives a group without ``maximize`` or ``decoupled_weight_decay``
    (older torch releases save neither) their defaults; so do we, AdamW's True included."""
    for name, want in (("Adam", False), ("AdamW", True)):
        q = torch.ones(3, requires_grad=True)
        other = getattr(torch.optim, name)([q], lr=0.1)
        _stepped(other, q)
        sd = other.state_dict()
        for k in ("maximize", "decoupled_weight_decay", "foreach"):
            del sd["param_groups"][0][k]
        p = q.detach().clone().requires_grad_()
        opt = getattr(ft, name)([p], lr=0.1)
        opt.load_state_dict(sd)
        group = opt.param_groups[0]
        assert group["maximize"] is False and group["decoupled_weight_decay"] is want
        assert group["foreach"] is None
        _stepped(opt, p, 1)
        _stepped(other, q, 1)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("direction", ["ours->torch", "torch->ours"])
def test_state_dicts_move_both_ways_mid_run(name, direction):
    kwargs = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.5, "centered": True}}.get(name, {})
    dtype = torch.float64
    ps, qs, ours, theirs, g = _pair(name, kwargs, dtype)
    for _ in range(3):
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
    if direction == "ours->torch":
        src, dst_params = ours, [p.detach().clone().requires_grad_() for p in ps]
        dst = getattr(torch.optim, name)(dst_params, **kwargs)
    else:
        src, dst_params = theirs, [q.detach().clone().requires_grad_() for q in qs]
        dst = getattr(ft, name)(dst_params, **kwargs)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(4):
        _grads(ps, qs, g)
        for d, p in zip(dst_params, ps):
            d.grad = p.grad.clone()
        ours.step()
        theirs.step()
        dst.step()
    _compare(dst_params, qs, dst, theirs, name)  # either way, against the unbroken torch run


def test_state_dict_round_trip_is_bitwise():
    ps, qs, ours, theirs, g = _pair("AdamW", {"amsgrad": True}, torch.float32)
    for _ in range(3):
        _grads(ps, qs, g)
        ours.step()
    saved = copy.deepcopy(ours.state_dict())
    copies = [p.detach().clone().requires_grad_() for p in ps]
    other = ft.AdamW(copies, amsgrad=True)
    other.load_state_dict(saved)
    for _ in range(3):
        _grads(ps, qs, g)
        for c, p in zip(copies, ps):
            c.grad = p.grad.clone()
        ours.step()
        other.step()
    for c, p in zip(copies, ps):
        assert torch.equal(c, p)


def test_named_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = ft.AdamW(model.named_parameters())
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    ref = torch.optim.AdamW(model.named_parameters())
    ref.load_state_dict(sd)
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        ft.Adam([named[0], named[1][1]])
    opt2 = ft.Adam(named[:2])
    with pytest.raises(ValueError, match="cannot add param group without names"):
        opt2.add_param_group({"params": [named[2][1]]})
    assert len(opt2.param_groups) == 1


# ---- the step ------------------------------------------------------------------------------------


def test_params_without_grad_are_skipped():
    a, b = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    opt = ft.Adam([a, b], lr=0.1)
    a.grad = torch.ones(4)
    opt.step()
    assert b not in opt.state and torch.equal(b, torch.ones(4))
    assert float(opt.state[a]["step"]) == 1 and not torch.equal(a, torch.ones(4))
    b.grad = torch.ones(4)
    opt.step()  # a at step 2, b at step 1: two calls
    assert float(opt.state[a]["step"]) == 2 and float(opt.state[b]["step"]) == 1


def test_cpu_tensors_are_updated_in_place_without_a_copy():
    p = torch.zeros(1000, requires_grad=True)
    ptr = p.data_ptr()
    opt = ft.SGD([p], lr=1.0, momentum=0.9)
    p.grad = torch.ones(1000)
    opt.step()
    assert p.data_ptr() == ptr and torch.equal(p.detach(), -torch.ones(1000))
    buf = opt.state[p]["momentum_buffer"]
    assert buf.data_ptr() != ptr and torch.equal(buf, torch.ones(1000))


def test_zero_grad_and_closure():
    p = torch.ones(3, requires_grad=True)
    opt = ft.SGD([p], lr=0.5)
    def closure():
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 3.0 and torch.allclose(p.detach(), torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))


def test_hooks():
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p])
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append("sd-post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load-post"))
    p.grad = torch.ones(3)
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert seen == ["pre", "post", "sd-pre", "sd-post", "load-pre", "load-post"]


def test_bad_input_is_refused_and_changes_nothing():
    p = torch.ones(4, requires_grad=True)
    q = torch.ones(4, requires_grad=True)
    opt = ft.Adam([{"params": [p]}, {"params": [q], "lr": 0.5}])
    p.grad = torch.ones(4)
    q.grad = torch.ones(2, 2).t().reshape(4)  # contiguous: fine
    q.grad = torch.ones(8)[::2]  # not contiguous
    with pytest.raises(ValueError, match="contiguous|memory order|strides"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4)) and not opt.state
    with pytest.raises(TypeError, match="complex"):
        ft.Adam([torch.ones(2, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(TypeError, match="dtype torch.int64"):
        ft.Adam([torch.ones(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match="not contiguous"):
        ft.Adam([torch.ones(4, 4).t().requires_grad_()])
    base = torch.ones(8)
    with pytest.raises(ValueError, match="share memory"):
        ft.Adam([base[:5].requires_grad_(), base[3:].requires_grad_()])
    with pytest.raises(ValueError, match=re.escape("Invalid learning rate: -1")):
        ft.Adam([p], lr=-1)
    opt.param_groups[1]["betas"] = (1.5, 0.9)
    q.grad = torch.ones(4)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4)) and not opt.state


def test_sparse_grads_are_refused():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = ft.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


def test_tensor_lr_and_fusedopt_schedules():
    from fusedopt import schedules

    ps, qs, ours, theirs, g = _pair("SGD", {"lr": torch.tensor(0.01)}, torch.float64)
    for _ in range(3):
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
    _compare(ps, qs, ours, theirs, "SGD")
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    sched = schedules.Linear(0.5, 0.1, 4)
    opt = ft.SGD([p], lr=sched)
    for _ in range(3):
        p.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
    expected = -sum(sched(t) for t in range(3))
    assert torch.allclose(p.detach(), torch.full((2,), expected, dtype=torch.float64))


# ---- schedulers ----------------------------------------------------------------------------------


def _schedulers(opt):
    S = torch.optim.lr_scheduler
    return {
        "LambdaLR": lambda: S.LambdaLR(opt, lambda t: 0.9**t),
        "MultiplicativeLR": lambda: S.MultiplicativeLR(opt, lambda t: 0.95),
        "StepLR": lambda: S.StepLR(opt, 2, 0.5),
        "MultiStepLR": lambda: S.MultiStepLR(opt, [2, 4], 0.5),
        "ConstantLR": lambda: S.ConstantLR(opt, 0.5, 3),
        "LinearLR": lambda: S.LinearLR(opt, 0.2, 1.0, 4),
        "ExponentialLR": lambda: S.ExponentialLR(opt, 0.9),
        "PolynomialLR": lambda: S.PolynomialLR(opt, 6, 2.0),
        "CosineAnnealingLR": lambda: S.CosineAnnealingLR(opt, 6),
        "CosineAnnealingWarmRestarts": lambda: S.CosineAnnealingWarmRestarts(opt, 3),
        "CyclicLR": lambda: S.CyclicLR(opt, 0.001, 0.01, 2, cycle_momentum=False),
        "OneCycleLR": lambda: S.OneCycleLR(opt, 0.05, total_steps=10),
        "SequentialLR": lambda: S.SequentialLR(
            opt, [S.ConstantLR(opt, 0.5, 2), S.ExponentialLR(opt, 0.9)], milestones=[2]),
        "ChainedScheduler": lambda: S.ChainedScheduler(
            [S.ConstantLR(opt, 0.5, 2), S.ExponentialLR(opt, 0.9)]),
        "ReduceLROnPlateau": lambda: S.ReduceLROnPlateau(opt, patience=0, factor=0.5),
    }


SCHEDULERS = list(_schedulers(None))


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_torch_schedulers_drive_the_optimizers(sched):
    """Every scheduler of torch.optim.lr_scheduler: the same learning rates, and the same params,
    as with torch.optim.Adam (OneCycleLR cycles Adam's beta1 too)."""
    ps, qs, ours, theirs, g = _pair("Adam", {"lr": 0.01}, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation notes
        a, b = _schedulers(ours)[sched](), _schedulers(theirs)[sched]()
    seen = set()
    for t in range(8):
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
        seen.add(ours.param_groups[0]["lr"])
        if sched == "ReduceLROnPlateau":
            a.step(float(t % 3))
            b.step(float(t % 3))
        else:
            a.step()
            b.step()
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    assert len(seen) > 1  # the scheduler did drive the learning rate
    _compare(ps, qs, ours, theirs, "Adam")


# ---- AMP -----------------------------------------------------------------------------------------


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam"])
def test_grad_scaler_with_autocast_and_an_injected_inf(name):
    """GradScaler("cpu") + autocast(bfloat16): the same run as torch.optim's, whose GradScaler
    unscales the grads itself; the step with an inf is skipped by both, changing nothing."""
    kwargs = {"SGD": {"lr": 0.05, "momentum": 0.9}}.get(name, {"lr": 0.01})
    runs = []
    for lib in (ft, torch.optim):
        model = _model(0)
        opt = getattr(lib, name)(model.parameters(), **kwargs)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        gen = torch.Generator().manual_seed(1)
        snapshots = []
        for t in range(6):
            x = torch.randn(32, 8, generator=gen)
            y = torch.randn(32, 4, generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if t in (0, 3):  # the first step and a later one overflow
                next(model.parameters()).grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
            state_before = copy.deepcopy(opt.state_dict()["state"])
            scaler.step(opt)
            scaler.update()
            if t in (0, 3):
                assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
                after = opt.state_dict()["state"]
                assert after.keys() == state_before.keys()
                for k in after:
                    for key, v in after[k].items():
                        if isinstance(v, torch.Tensor):
                            assert torch.equal(v, state_before[k][key]), (k, key)
            if t == 0:
                assert not opt.state  # a skipped first step leaves no state at all
            snapshots.append([p.detach().clone() for p in model.parameters()])
        runs.append((snapshots, opt))
    (mine, ours), (ref, theirs) = runs
    assert [float(s["step"]) for s in ours.state.values() if "step" in s] == \
        [4.0] * len([s for s in ours.state.values() if "step" in s])
    for a, b in zip(mine[-1], ref[-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# inductor is torch's default backend; torch 2.13's inductor itself calls the deprecated
# torch.jit.script_method, whose DeprecationWarning the suite's settings would make an error
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_model_trains(backend):
    """A torch.compile'd model trains with our optimizer (its step runs eagerly); inductor
    generates and builds C++ for the model (about 20 s on a 2-vCPU machine)."""
    model = _model(0)
    compiled = torch.compile(model, backend=backend)
    opt = ft.AdamW(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randn(64, 4, generator=gen)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(compiled(x), y)
        loss.backward()
        opt.step()
        loss = loss.detach()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_deepcopy_and_pickle():
    import pickle

    ps, qs, ours, theirs, g = _pair("RMSprop", {"momentum": 0.5}, torch.float32)
    _grads(ps, qs, g)
    ours.step()
    twin = copy.deepcopy(ours)
    clone = pickle.loads(pickle.dumps(ours))
    new_ps = twin.param_groups[0]["params"]
    for p, q in zip(new_ps, ps):
        p.grad = q.grad.clone()
    twin.step()
    ours.step()
    for p, q in zip(new_ps, ps):
        assert torch.equal(p, q)
    assert isinstance(clone, ft.RMSprop)


def test_import_fusedopt_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fusedopt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numpy_views_share_memory():
    p = torch.zeros(5, requires_grad=True)
    opt = ft.Adagrad([p], lr=1.0, initial_accumulator_value=0.5)
    p.grad = torch.ones(5)
    opt.step()
    ref = np.zeros(5)
    ref -= 1.0 / (np.sqrt(1.5) + 1e-10)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-6)


# ---- the steady step (Note [The steady step of a torch optimizer]) --------------------------------


def _twins(name="Adam", kwargs=None, groups=2, dtype=torch.float32):
    kwargs = kwargs or {}
    ps, qs, ours, theirs, g = _pair(name, kwargs, dtype, groups=groups)
    for _ in range(3):  # past the general steps: the groups run steadily
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
    assert len(ours._runs) == len(ours.param_groups)  # the steady path is what is tested
    return ps, qs, ours, theirs, g


def test_steady_steps_keep_the_step_counts_torch_shows():
    ps, qs, ours, theirs, g = _twins("NAdam")
    for _ in range(4):
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
    sd = ours.state_dict()
    assert [float(e["step"]) for e in sd["state"].values()] == [7.0] * len(ps)
    assert float(ours.state[ps[0]]["step"]) == 7.0  # a look through opt.state
    _compare(ps, qs, ours, theirs, "NAdam")
    _grads(ps, qs, g)
    ours.step()  # that group now takes the general step: still right
    theirs.step()
    assert float(ours.state[ps[0]]["step"]) == 8.0
    _compare(ps, qs, ours, theirs, "NAdam")


@pytest.mark.parametrize("look", ["dict", "copy", "values", "get"])
def test_every_look_at_opt_state_sees_current_step_counts(look):
    ps, qs, ours, theirs, g = _twins("Adam")
    if look == "dict":
        states = list(dict(ours.state).values())
    elif look == "copy":
        states = list(copy.copy(ours.state).values())
    elif look == "values":
        states = list(ours.state.values())
    else:
        states = [ours.state.get(p) for p in ps]
    for _ in range(2):
        _grads(ps, qs, g)
        ours.step()
    assert [float(s["step"]) for s in states] == [5.0] * len(ps)


def test_a_state_dict_taken_keeps_its_step_counts():
    ps, qs, ours, theirs, g = _twins("Adam")
    sd = ours.state_dict()
    _grads(ps, qs, g)
    ours.step()
    assert [float(e["step"]) for e in sd["state"].values()] == [3.0] * len(ps)


@pytest.mark.parametrize("edit", ["state entry", "param data", "betas", "betas in place",
                                  "lr", "grad None", "params list"])
def test_edits_between_steady_steps_take_effect(edit):
    """Each edit made to both optimizers between steps: the runs continue alike."""
    ps, qs, ours, theirs, g = _twins("Adam", {"amsgrad": True})
    _grads(ps, qs, g)
    if edit == "state entry":
        for opt, x in ((ours, ps[0]), (theirs, qs[0])):
            opt.state[x]["exp_avg"] = torch.full_like(x, 0.5)
    elif edit == "param data":
        for x in (ps[1], qs[1]):
            grad = x.grad
            x.data = torch.full_like(x.detach(), 2.0)
            x.grad = grad
    elif edit in ("betas", "lr"):
        for opt in (ours, theirs):
            opt.param_groups[1][edit] = (0.5, 0.9) if edit == "betas" else 0.3
    elif edit == "betas in place":
        for opt in (ours, theirs):
            opt.param_groups[0]["betas"] = [0.9, 0.999]
        ours.step()
        theirs.step()
        _grads(ps, qs, g)
        for opt in (ours, theirs):
            opt.param_groups[0]["betas"][0] = 0.5
    elif edit == "grad None":
        ps[2].grad = qs[2].grad = None
    elif edit == "params list":
        for opt in (ours, theirs):
            opt.param_groups[0]["params"].pop()
    ours.step()
    theirs.step()
    for _ in range(2):
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
    _compare(ps, qs, ours, theirs, "Adam")


@pytest.mark.parametrize("bad", ["not contiguous", "in another group's param"])
def test_a_steady_step_refuses_a_bad_grad_and_changes_nothing(bad):
    ps, qs, ours, theirs, g = _twins("Adam")
    _grads(ps, qs, g)
    before = [p.detach().clone() for p in ps]
    sd = copy.deepcopy(ours.state_dict())
    if bad == "not contiguous":
        ps[3].grad = torch.ones(2 * ps[3].numel())[::2]
        assert ours._steady_step(None) is False  # left to the general step, which words it
        message = "contiguous|memory order"
    else:
        ps[1].grad = ps[3].detach()[: ps[1].numel()]
        with pytest.raises(ValueError, match="overlaps"):
            ours._steady_step(None)  # the steady step itself refuses it
        message = "overlaps"
    with pytest.raises(ValueError, match=message):
        ours.step()
    assert all(torch.equal(a, p) for a, p in zip(before, ps))
    after = ours.state_dict()
    for k in sd["state"]:
        for key, v in sd["state"][k].items():
            assert torch.equal(v, after["state"][k][key]), (k, key)


# ---- CUDA tensors (skipped without a usable GPU) -------------------------------------------------


def _cuda_usable():
    import fusedopt

    return torch.cuda.is_available() and fusedopt.cuda_available()


needs_cuda = pytest.mark.skipif(not _cuda_usable(), reason="no CUDA device usable by torch and fusedopt")


@needs_cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_tensors_match_torch_optim(name):
    kwargs = {"SGD": {"momentum": 0.9}}.get(name, {})
    ps, qs, ours, theirs, g = _pair(name, kwargs, torch.float32)
    ps = [p.detach().cuda().requires_grad_() for p in ps]
    qs = [q.detach().cuda().requires_grad_() for q in qs]
    ours = getattr(ft, name)(ps, **kwargs)
    theirs = getattr(torch.optim, name)(qs, **kwargs)
    for _ in range(5):
        for p, q in zip(ps, qs):
            d = torch.randn(p.shape, generator=g).cuda()
            p.grad, q.grad = d.clone(), d.clone()
        ours.step()
        theirs.step()
    torch.cuda.synchronize()
    for i, (p, q) in enumerate(zip(ps, qs)):
        _close(p.detach().cpu(), q.detach().cpu(), name, torch.float32, f"params[{i}]")
        for key, value in theirs.state[q].items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                mine = ours.state[p][key]
                assert mine.device == p.device
                _close(mine.cpu(), value.cpu(), name, torch.float32, f"state[{i}][{key!r}]")


@needs_cuda
def test_one_group_over_cpu_and_cuda_params_makes_a_call_per_device():
    a = torch.randn(100, requires_grad=True)
    b = torch.randn(100, device="cuda", requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours, theirs = ft.Adam([a, b], lr=0.1), torch.optim.Adam([a2, b2], lr=0.1)
    for _ in range(3):
        for x, y in ((a, a2), (b, b2)):
            x.grad = torch.ones_like(x)
            y.grad = torch.ones_like(y)
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(b.cpu(), b2.cpu())
    assert ours.state[b]["exp_avg"].device.type == "cuda"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "Adafactor"])  # not torch's either
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("scale", [2.0**16, 3.0])
def test_the_fused_unscale_gives_the_bits_of_unscaled_grads(name, dtype, scale):
    """Grads scaled by s with grad_scale=s (GradScaler's protocol) against GradScaler's own
    unscale (grad * float32(1/s)) before an unscaled step: the same bits, on the general and the
    steady steps; the scaled grads are left as they were."""
    kwargs = {"SGD": {"momentum": 0.9}}.get(name, {})
    ps, qs, ours, _, g = _pair(name, kwargs, dtype, groups=2)
    plain = getattr(ft, name)([{"params": qs[:2]}, {"params": qs[2:], "lr": 0.05}], **kwargs)
    inv = torch.reciprocal(torch.tensor(scale, dtype=torch.float64)).float()
    for _ in range(4):
        for p, q in zip(ps, qs):
            d = torch.randn(p.shape, generator=g, dtype=dtype)
            p.grad = d * scale
            q.grad = p.grad * inv  # what GradScaler.unscale_ leaves
        kept = [p.grad.clone() for p in ps]
        ours.grad_scale, ours.found_inf = torch.tensor(scale), torch.tensor(0.0)
        ours.step()
        del ours.grad_scale, ours.found_inf
        plain.step()
        assert all(torch.equal(k, p.grad) for k, p in zip(kept, ps))
    assert ours._runs  # the steady step took part
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
