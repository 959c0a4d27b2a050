"""Adafactor against torch.optim.Adafactor (torch 2.13), its definition: fusedopt.Adafactor,
fusedopt.functional.adafactor and fusedopt.torch.Adafactor, and the float64 reference
(fusedopt.reference.adafactor) itself. tests/test_adafactor.py has the tests that need no torch.

Tolerances (rtol, and an absolute term times the largest magnitude, peer_tools.assert_close_to_peer):
- the reference against torch in float64: 1e-12, 1e-14 (the same rule; only the sums' order
  differs);
- the kernels against the reference and against torch in float64: 1e-12, 1e-14;
- the kernels against torch in float32 on small tensors: 1e-5, 1e-6. Both round each element
  operation to float32, but torch's norms and means are float32 reductions and ours double ones
  (Note [Adafactor's sums]), and a factored U is formed from row and column factors (Note
  [Adafactor's direction]): alpha, den and U differ by a few float32 ulps, and a step moves p by
  up to lr;
- on a large matrix torch's float32 column sums drift (about 1e-5 of the step after a few
  steps) and ours stay within 1e-6 of the reference: test_large_matrix_is_closer_to_float64
  asserts ours.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fusedopt
from fusedopt import functional, reference

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedopt.torch")

from peer_tools import assert_close_to_peer  # noqa: E402
from test_adafactor import CONFIGS, SHAPES, STEPS  # noqa: E402
from test_adafactor import new_states as _new_states  # noqa: E402

close = assert_close_to_peer


def _params(dtype, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def _grad_seq(params, steps, seed=1, zero_every=5):
    """Grads per step: normal, some exactly 0; at step 1 a row of each matrix all 0 and one
    tiny (eps1 the dtype's epsilon, torch's default)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        gs = []
        for p in params:
            d = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if d.dim() >= 1:
                d.view(-1)[::zero_every] = 0.0
            if k == 0 and d.dim() >= 2:
                # a row of 0.1 eps1: its vhat is under eps1^2 (the clamp binds: U = g / eps1,
                # about 0.1, where the unclamped U would be about 1); a row of zeros: U 0
                d[..., -1, :] *= 0.1 * torch.finfo(d.dtype).eps
                d[..., 0, :] = 0.0
            gs.append(d)
        out.append(gs)
    return out


def _torch_run(params, grads, groups=None, **kw):
    ps = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.Adafactor(groups(ps) if groups else ps, **kw)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = None if g is None else g.clone()
        opt.step()
    return ps, opt


def _states_of(opt, ps):
    return [opt.state[p] for p in ps]


def _run_fn(fn, params, grads, **kw):
    """``fn`` (functional.adafactor or reference.adafactor) over NumPy copies, step by step."""
    ps = [p.numpy().copy() for p in params]
    row, col, var = _new_states(ps)
    for t, gs in enumerate(grads, start=1):
        fn(ps, [g.numpy() for g in gs], row, col, var, steps=[t] * len(ps), **kw)
    return ps, row, col, var


def _compare_states(row, col, var, tstates, what):
    for i, s in enumerate(tstates):
        if "row_var" in s:
            close(torch.from_numpy(row[i]), s["row_var"], f"{what} row_var[{i}]")
            close(torch.from_numpy(col[i]), s["col_var"], f"{what} col_var[{i}]")
        else:
            close(torch.from_numpy(var[i]), s["variance"], f"{what} variance[{i}]")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_reference_is_torch_adafactor(name):
    kw = CONFIGS[name]
    params = _params(torch.float64)
    grads = _grad_seq(params, STEPS)
    tps, topt = _torch_run(params, grads, **copy.deepcopy(kw))
    ps, row, col, var = _run_fn(reference.adafactor, params, grads, **kw)
    for i, (p, q) in enumerate(zip(ps, tps)):
        close(torch.from_numpy(p), q.detach(), f"{name} param {i}")
    _compare_states(row, col, var, _states_of(topt, tps), name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_functional_matches_torch_and_the_reference(name, dtype):
    kw = CONFIGS[name]
    params = _params(dtype)
    grads = _grad_seq(params, STEPS)
    tps, topt = _torch_run(params, grads, **copy.deepcopy(kw))
    ps, row, col, var = _run_fn(functional.adafactor, params, grads, **kw)
    tol = dict(fp32=(1e-5, 1e-6))
    for i, (p, q) in enumerate(zip(ps, tps)):
        close(torch.from_numpy(p), q.detach(), f"{name} param {i}", **tol)
    if dtype == torch.float64:
        rps, rrow, rcol, rvar = _run_fn(reference.adafactor, params, grads, **kw)
        for i, (p, q) in enumerate(zip(ps, rps)):
            close(torch.from_numpy(p), torch.from_numpy(q), f"{name} vs reference {i}")
    _compare_states(row, col, var, _states_of(topt, tps), name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_classes_match_torch_with_groups_and_skipped_grads(dtype):
    """Two groups (the second with its own lr, wd, eps and d), and a param without a grad on
    some steps: its own step count lags, as torch's does."""
    params = _params(dtype)
    grads = _grad_seq(params, STEPS)
    for k, gs in enumerate(grads):
        if k % 3 == 1:
            gs[3] = None  # the (5, 7) matrix skips steps 2, 5, 8
        if k == 0:
            gs[0] = None

    def groups(xs):
        return [{"params": xs[:4]},
                {"params": xs[4:], "lr": 0.2, "weight_decay": 0.05, "eps": (1e-5, 1e-3),
                 "d": 2.0}]

    tps, topt = _torch_run(params, grads, groups=groups, lr=0.05)
    # the NumPy class
    nps = [p.numpy().copy() for p in params]
    nopt = fusedopt.Adafactor(groups(nps), lr=0.05)
    for gs in grads:
        nopt.step([None if g is None else g.numpy() for g in gs])
    # fusedopt.torch
    fps = [p.clone().requires_grad_() for p in params]
    fopt = ft.Adafactor(groups(fps), lr=0.05)
    for gs in grads:
        for p, g in zip(fps, gs):
            p.grad = None if g is None else g.clone()
        fopt.step()
    tol = dict(fp32=(1e-5, 1e-6))
    for i, q in enumerate(tps):
        close(torch.from_numpy(nps[i]), q.detach(), f"NumPy class param {i}", **tol)
        close(fps[i].detach(), q.detach(), f"fusedopt.torch param {i}", **tol)
        assert nopt.state[i]["step"] == int(topt.state[q]["step"])
        assert torch.equal(fopt.state[fps[i]]["step"], topt.state[q]["step"])
    # torch's groups, and our low-precision flags (group keys, as in fusedopt.torch's other
    # classes)
    ours = [dict(g) for g in fopt.state_dict()["param_groups"]]
    flags = ("stochastic_rounding", "seed", "master_weights", "kahan_summation")
    assert [tuple(g.pop(k) for k in flags) for g in ours] == [(False, None, False, False)] * 2
    assert ours == topt.state_dict()["param_groups"]


def test_eps1_none_is_the_first_params_dtype_eps_for_the_whole_group():
    """torch's loop sets eps1 from the group's first param and keeps it: a float64 param after
    a float32 one gets float32's epsilon (bug for bug)."""
    params = [torch.randn(4, 5, dtype=torch.float32), torch.full((6,), 1e-4, dtype=torch.float64)]
    # |g| = 1e-9: g^2 is below float32's eps1^2 (1.4e-14), above float64's (4.9e-32)
    grads = [[torch.randn(4, 5), torch.full((6,), 1e-9, dtype=torch.float64)] for _ in range(3)]
    tps, _ = _torch_run(params, grads)
    ps, *_ = _run_fn(functional.adafactor, params, grads)
    close(torch.from_numpy(ps[1]), tps[1].detach(), "float64 param after a float32 one")
    # with the float64 param first, its own epsilon: a different result
    ps2, *_ = _run_fn(functional.adafactor, params[::-1], [g[::-1] for g in grads])
    assert not np.array_equal(ps2[0], ps[1])


def test_nan_and_inf_grads_match_torch():
    params = _params(torch.float64, [(4, 6), (7,)])
    grads = _grad_seq(params, 3)
    grads[1][0][2, 3] = float("nan")
    grads[1][1][4] = float("inf")
    tps, topt = _torch_run(params, grads)
    ps, row, col, var = _run_fn(functional.adafactor, params, grads)
    for i, (p, q) in enumerate(zip(ps, tps)):
        close(torch.from_numpy(p), q.detach(), f"param {i}")
    _compare_states(row, col, var, _states_of(topt, tps), "nan")


def test_large_matrix_is_closer_to_float64_than_torch():
    """A 300 x 4500 float32 matrix, 4 steps: ours within 1e-6 of the float64 reference (run on
    the same float32 inputs); torch's float32 reductions drift further (their error is printed
    on failure, not asserted)."""
    params = _params(torch.float32, [(300, 4500)])
    grads = _grad_seq(params, 4)
    ps, *_ = _run_fn(functional.adafactor, params, grads)
    rps, *_ = _run_fn(reference.adafactor, [p.double() for p in params],
                      [[g.double() for g in gs] for gs in grads],
                      eps=(float(np.finfo(np.float32).eps), 1e-3))
    tps, _ = _torch_run(params, grads)
    ours = float(np.max(np.abs(ps[0] - rps[0])))
    theirs = float(np.max(np.abs(tps[0].detach().double().numpy() - rps[0])))
    assert ours <= 1e-6, (ours, theirs)


def test_state_dicts_load_both_ways_mid_run():
    params = _params(torch.float32)
    grads = _grad_seq(params, 6)
    tps, topt = _torch_run(params, grads[:3], lr=0.05)
    # torch -> fusedopt.torch and -> the NumPy class, then both continue
    fps = [p.detach().clone().requires_grad_() for p in tps]
    fopt = ft.Adafactor(fps, lr=0.05)
    fopt.load_state_dict(copy.deepcopy(topt.state_dict()))
    nps = [p.detach().numpy().copy() for p in tps]
    nopt = fusedopt.Adafactor(nps, lr=0.05)
    nopt.load_state_dict(copy.deepcopy(topt.state_dict()))
    for gs in grads[3:]:
        for p, q, g in zip(tps, fps, gs):
            p.grad = g.clone()
            q.grad = g.clone()
        topt.step()
        fopt.step()
        nopt.step([g.numpy() for g in gs])
    tol = dict(fp32=(1e-5, 1e-6))
    for i, q in enumerate(tps):
        close(fps[i].detach(), q.detach(), f"fusedopt.torch param {i}", **tol)
        close(torch.from_numpy(nps[i]), q.detach(), f"NumPy class param {i}", **tol)
    # ours -> torch: the NumPy class's state dict as tensors
    sd = nopt.state_dict()
    sd = {"param_groups": sd["param_groups"],
          "state": {k: {n: torch.tensor(v) if n == "step" else torch.from_numpy(v)
                        for n, v in s.items()} for k, s in sd["state"].items()}}
    back = [torch.from_numpy(p.copy()).requires_grad_() for p in nps]
    bopt = torch.optim.Adafactor(back, lr=0.05)
    bopt.load_state_dict(sd)
    for p, g in zip(back, grads[0]):
        p.grad = g.clone()
    bopt.step()
    for p, g in zip(fps, grads[0]):
        p.grad = g.clone()
    fopt.step()
    for i, (a, b) in enumerate(zip(back, fps)):
        close(b.detach(), a.detach(), f"after loading ours into torch {i}", fp32=(1e-5, 1e-5))


def test_hyper_parameter_errors_are_torchs():
    p = [torch.zeros(3, requires_grad=True)]
    cases = [dict(lr=-1.0), dict(beta2_decay=0.5), dict(eps=(-1.0, 1e-3)), dict(eps=(None, -1.0)),
             dict(d=0.5), dict(weight_decay=-0.1)]
    for kw in cases:
        with pytest.raises(ValueError) as theirs:
            torch.optim.Adafactor(p, **kw)
        for cls, params in ((ft.Adafactor, p), (fusedopt.Adafactor, [np.zeros(3)])):
            with pytest.raises(ValueError) as ours:
                cls(params, **kw)
            assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="Clipping threshold d"):
        functional.adafactor([np.zeros(3)], [np.zeros(3)], None, None, [np.zeros(3)], steps=1,
                             d=0.0)


def test_torch_class_refuses_what_it_cannot_run():
    # (16-bit params are taken: tests/test_torch_low_precision.py)
    q = torch.zeros(4, 3, requires_grad=True)
    q.grad = torch.ones(3, 4).t()
    with pytest.raises(ValueError, match=r"\.grad is not contiguous"):
        ft.Adafactor([q]).step()
    assert (q == 0).all()


def test_grad_scaler_and_tensor_lr_as_torch():
    """GradScaler unscales the grads before the step (neither torch's Adafactor nor ours takes
    part in the fused unscale: a grad_scale set on it is refused as torch refuses it); a
    1-element tensor lr is taken as torch takes it."""
    params = _params(torch.float32, [(4, 6), (7,)])
    targets = _params(torch.float32, [(4, 6), (7,)], seed=5)
    runs = []
    for cls in (torch.optim.Adafactor, ft.Adafactor):
        ps = [p.clone().requires_grad_() for p in params]
        opt = cls(ps, lr=torch.tensor(0.05))
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for _ in range(3):
            opt.zero_grad()
            loss = sum(((p - t) ** 2).sum() for p, t in zip(ps, targets))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        runs.append(ps)
        opt.grad_scale = torch.tensor(2.0)
        with pytest.raises(AssertionError, match="Grad scaling should occur outside"):
            opt.step()
    for i, (a, b) in enumerate(zip(*runs)):
        close(b.detach(), a.detach(), f"param {i}", fp32=(1e-5, 1e-6))
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        ft.Adafactor(params, lr=torch.tensor([0.1, 0.2]))


def test_a_param_off_the_cpu_is_refused_before_anything_is_written():
    """No CUDA kernel yet: a param on another device (here torch's meta device, which every build
    has) is refused by name, and the CPU params of the step are left alone."""
    a = torch.ones(3, 4, requires_grad=True)
    b = torch.empty(5, device="meta", requires_grad=True)
    a.grad, b.grad = torch.ones(3, 4), torch.empty(5, device="meta")
    opt = ft.Adafactor([a, b])
    with pytest.raises(TypeError, match=r"\['params'\]\[1\] is on meta; Adafactor has no CUDA"):
        opt.step()
    assert (a == 1).all() and len(opt.state) == 0


@pytest.mark.parametrize("scale", [1e10, 1e19, 1e20, 1e25])
def test_float32_overflow_as_torch(scale):
    """Huge float32 values overflow where torch's do: R_i C_j past 3.4e38 (grads of 1e10) makes
    vhat inf and U 0; a norm whose squares sum past 3.4e38 (values of 2e19) is inf (an inf ||p||
    makes alpha inf, an inf row norm makes row_var inf). The results (inf and NaN included) are
    torch's."""
    params = [torch.ones(2, 3), torch.full((4, 5), scale), torch.ones(6), torch.full((7,), scale)]
    grads = [[torch.full(p.shape, scale if k % 2 == 0 else 1.0) for p in params]
             for k in range(3)]
    tps, topt = _torch_run(params, grads, lr=0.1)
    ps, row, col, var = _run_fn(functional.adafactor, params, grads, lr=0.1)
    for i, (p, q) in enumerate(zip(ps, tps)):
        close(torch.from_numpy(p), q.detach(), f"param {i} at scale {scale}")
    _compare_states(row, col, var, _states_of(topt, tps), f"scale {scale}")


def test_a_torch_state_dict_with_a_tensor_lr_loads_into_the_numpy_class():
    params = _params(torch.float32, [(3, 4), (5,)])
    ps = [p.clone().requires_grad_() for p in params]
    topt = torch.optim.Adafactor(ps, lr=torch.tensor(0.02))
    for p in ps:
        p.grad = torch.ones_like(p)
    topt.step()
    nopt = fusedopt.Adafactor([p.detach().numpy().copy() for p in ps])
    nopt.load_state_dict(topt.state_dict())
    assert nopt.param_groups[0]["lr"] == pytest.approx(0.02)


def test_the_torch_class_sees_replaced_memory_and_copies():
    """A param whose data is replaced (p.data = ...), or a state replaced by load_state_dict, is
    stepped where it is now; a deep copy steps as the original."""
    p = torch.arange(9.0).reshape(3, 3).requires_grad_()
    q = p.detach().clone().requires_grad_()
    ours, theirs = ft.Adafactor([p]), torch.optim.Adafactor([q])
    for k in range(3):
        for x in (p, q):
            x.grad = torch.full((3, 3), 1.0 + k)
        ours.step()
        theirs.step()
        if k == 0:
            p.data = p.data.t().contiguous()
            q.data = q.data.t().contiguous()
        if k == 1:
            ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # (else they share states)
    close(p.detach(), q.detach(), "after p.data and load_state_dict")
    twin = copy.deepcopy(ours)
    for x in (p, twin.param_groups[0]["params"][0]):
        x.grad = torch.ones(3, 3)
    ours.step()
    twin.step()
    torch.testing.assert_close(twin.param_groups[0]["params"][0], p, rtol=0, atol=0)


@pytest.mark.parametrize("edit", ["state entry", "state data", "state deleted", "step replaced",
                                  "step data", "step in place", "param data", "param reshaped",
                                  "param replaced", "grad None", "params list", "lr", "new group",
                                  "load"])
def test_edits_between_steady_steps_take_effect(edit):
    """fusedopt.torch.Adafactor's steps that repeat the last one reuse its gather (Note
    [Adafactor's steady step]); each edit made to it and to torch.optim.Adafactor between steps
    is seen: the runs continue alike, in float64."""
    shapes = [(4, 5), (6,), (2, 3, 4), (3, 3)]
    ps = [p.requires_grad_() for p in _params(torch.float64, shapes)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = ft.Adafactor([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.05)
    theirs = torch.optim.Adafactor([{"params": qs[:2]}, {"params": qs[2:]}], lr=0.05)
    seq = _grad_seq(ps, 6)

    def step(k):
        for x, y, g in zip(ps, qs, seq[k]):
            if x.grad is not None or k == 0 or edit != "grad None":
                x.grad, y.grad = g.reshape(x.shape).clone(), g.reshape(y.shape).clone()
        ours.step()
        theirs.step()

    for k in range(3):
        step(k)
    if edit == "state entry":
        for opt, x in ((ours, ps[0]), (theirs, qs[0])):
            opt.state[x]["row_var"] = torch.full_like(opt.state[x]["row_var"], 0.5)
    elif edit == "state data":
        for opt, x in ((ours, ps[1]), (theirs, qs[1])):
            opt.state[x]["variance"].data = torch.full_like(x.detach(), 0.25)
    elif edit == "step replaced":
        for opt, x in ((ours, ps[0]), (theirs, qs[0])):
            opt.state[x]["step"] = torch.tensor(10.0)
    elif edit == "step data":
        for opt, x in ((ours, ps[1]), (theirs, qs[1])):
            opt.state[x]["step"].data = torch.tensor(20.0)
    elif edit == "step in place":
        for opt, x in ((ours, ps[2]), (theirs, qs[2])):
            opt.state[x]["step"].fill_(30.0)
    elif edit == "state deleted":
        for opt, x in ((ours, ps[2]), (theirs, qs[2])):
            del opt.state[x]
    elif edit == "param replaced":  # in the group's list, by a param with no state
        for opt, xs in ((ours, ps), (theirs, qs)):
            xs[3] = xs[3].detach().clone().requires_grad_()
            opt.param_groups[1]["params"][1] = xs[3]
    elif edit == "param data":
        for x in (ps[3], qs[3]):
            x.data = torch.full_like(x.detach(), 2.0)
    elif edit == "param reshaped":  # the same memory, another shape: other states
        for opt, x in ((ours, ps[0]), (theirs, qs[0])):
            x.data = x.data.view(5, 4)
            del opt.state[x]
    elif edit == "grad None":
        ps[1].grad = qs[1].grad = None
    elif edit == "params list":
        for opt in (ours, theirs):
            opt.param_groups[1]["params"].pop()
    elif edit == "lr":
        for opt in (ours, theirs):
            opt.param_groups[0]["lr"] = 0.2
    elif edit == "new group":
        extra = _params(torch.float64, [(3, 2)], seed=7)[0]
        ps.append(extra.clone().requires_grad_())
        qs.append(extra.clone().requires_grad_())
        seq = [gs + [torch.full((3, 2), 0.5 + k, dtype=torch.float64)] for k, gs in enumerate(seq)]
        ours.add_param_group({"params": [ps[-1]]})
        theirs.add_param_group({"params": [qs[-1]]})
    elif edit == "load":
        ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # (else they share states)
    for k in range(3, 6):
        step(k)
    for i, (x, y) in enumerate(zip(ps, qs)):
        close(x.detach(), y.detach(), f"{edit}: param {i}")
        for name, v in theirs.state[y].items():
            close(ours.state[x][name], v, f"{edit}: param {i} {name}")


@pytest.mark.parametrize("edit", ["param transposed", "state reinterpreted"])
def test_a_steady_step_refuses_what_the_general_step_refuses(edit):
    """Memory that keeps its address and shape but not its layout or dtype between steps (Note
    [Adafactor's steady step]) is refused as a first step refuses it, and nothing is written."""
    p = torch.arange(16.0, dtype=torch.float32).reshape(4, 4).requires_grad_()
    opt = ft.Adafactor([p])
    for _ in range(2):
        p.grad = torch.ones(4, 4, dtype=torch.float32)
        opt.step()
    if edit == "param transposed":  # the same address and shape, not contiguous
        p.data = p.data.t()
        error, match = ValueError, "contiguous"
    else:  # the same address and shape, int32 (float32's width)
        rv = opt.state[p]["row_var"]
        rv.data = rv.data.view(torch.int32)
        error, match = TypeError, "dtype"
    before = p.detach().clone()
    p.grad = torch.ones(4, 4, dtype=torch.float32)
    with pytest.raises(error, match=match):
        opt.step()
    torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)
