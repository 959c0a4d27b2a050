"""fusedopt.ADOPT and fusedopt.torch.ADOPT against the authors' reference implementation
(``torch-adopt`` 0.1.0, module ``adopt``), which FORMULAS.md names as ADOPT's definition; and the
hyper-parameter given as a callable of the step (``clip_lambda``) through both front ends.

The peer runs its single-tensor path (``foreach=False``): its foreach path computes the clip from a
float32 step count (FORMULAS.md). Tolerances: float64 1e-12 relative; float32 1e-6 relative, both
plus an absolute 1e-7 (fp32) / 1e-14 (fp64) of the tensor's largest value. The kernels compute
``torch.lerp`` and ``add(alpha=)`` in their scalar form where torch's vector code may use an FMA,
so they differ from the peer in the last bits of each step.
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
adopt = pytest.importorskip("adopt")
ft = pytest.importorskip("fusedopt.torch")

from peer_tools import assert_close_to_peer  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import reference  # noqa: E402
from fusedopt._spec import StepPower  # noqa: E402

# the peer calls torch helpers that torch 2.13 deprecates
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch._utils.is_compiling` is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Use _accelerator_graph_capture_health_check:DeprecationWarning"),
]

SHAPES = ((), (1,), (7,), (33, 5), (4097,), (3, 4, 5))
CONFIGS = {
    "default": dict(lr=1e-3),
    # Without the clip, u = g / max(sqrt(v), eps) is not bounded, and with the coupled decay of
    # group 2 the first grad g + wd p can cancel to ~1e-4: its relative rounding error,
    # ulp(wd p) / max(|g|, eps), reaches u (7e-6 at eps = 1e-3, beyond the fp32 tolerance, in
    # both implementations alike). eps = 0.1 floors it at 7e-8; u still reaches ~30, unclipped.
    "no-clip": dict(lr=1e-3, clip_lambda=None, eps=0.1),
    "clip-lambda": dict(lr=1e-3, clip_lambda=lambda n: 0.5 + 0.1 * n),
    "wd": dict(lr=1e-3, weight_decay=0.1),
    "decouple": dict(lr=1e-3, weight_decay=0.1, decouple=True),
    "maximize": dict(lr=1e-3, maximize=True, weight_decay=0.01),
    "betas-eps": dict(lr=1e-2, betas=(0.5, 0.99), eps=1e-3),
    "beta1-0": dict(lr=1e-2, betas=(0.0, 0.999)),
    "beta1-0.3": dict(lr=1e-2, betas=(0.3, 0.999)),
}
STEPS = 8


_close = assert_close_to_peer


def _grouped(xs, groups):
    if groups == 1:
        return xs
    return [{"params": xs[:3]}, {"params": xs[3:], "lr": 3e-3, "weight_decay": 0.05}]


def _pair(kwargs, dtype, groups):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    qs = [p.clone() for p in ps]
    ours = ft.ADOPT(_grouped(ps, groups), **kwargs)
    theirs = adopt.ADOPT(_grouped(qs, groups), foreach=False, **kwargs)
    return ps, qs, ours, theirs, g


def _set_grads(ps, qs, g, k):
    for p, q in zip(ps, qs):
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if k == 0 and d.dim() == 1:
            d[::3] = 0.0  # v = 0 there: later divided by eps, and bounded by the clip alone
        p.grad = d.clone()
        q.grad = d.clone()


def _compare(ps, qs, ours, theirs):
    for i, (p, q) in enumerate(zip(ps, qs)):
        _close(p, q, f"params[{i}]")
        for name in ("exp_avg", "exp_avg_sq"):
            _close(ours.state[p][name], theirs.state[q][name], f"{name}[{i}]")
        assert float(ours.state[p]["step"]) == float(theirs.state[q]["step"])


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_adopt_matches_the_reference_implementation(name, dtype, groups):
    ps, qs, ours, theirs, g = _pair(CONFIGS[name], dtype, groups)
    for k in range(STEPS):
        _set_grads(ps, qs, g, k)
        ours.step()
        theirs.step()
        if k == 0:  # the first step only sets v: the params have not moved
            assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    _compare(ps, qs, ours, theirs)


def test_the_constructor_is_the_peers():
    """The same arguments with the same defaults (the default clip is the same function)."""
    import inspect

    mine = dict(inspect.signature(ft.ADOPT.__init__).parameters)
    theirs = inspect.signature(adopt.ADOPT.__init__).parameters
    for k in ("state_dtype", "stochastic_rounding", "seed", "kahan_summation",
              "master_weights"):  # fusedopt's own
        assert mine.pop(k).kind == inspect.Parameter.KEYWORD_ONLY
    assert set(mine) == set(theirs)
    positional = [k for k, p in theirs.items() if p.kind != p.KEYWORD_ONLY]
    assert [k for k, p in mine.items() if p.kind != p.KEYWORD_ONLY] == positional
    for k, p in theirs.items():
        if k in ("self", "params"):
            continue
        assert mine[k].kind == p.kind, k
        if k == "clip_lambda":
            assert [mine[k].default(n) for n in (0.0, 1.0, 7.0)] == \
                [p.default(n) for n in (0.0, 1.0, 7.0)]
        else:
            assert mine[k].default == p.default, k


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
])
def test_construction_errors_are_the_peers(kwargs, message):
    p = torch.zeros(3)
    for cls in (ft.ADOPT, adopt.ADOPT):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            cls([p], **kwargs)


@pytest.mark.parametrize("direction", ["ours-into-theirs", "theirs-into-ours"])
def test_state_dicts_load_both_ways_mid_run(direction):
    """Three steps in one, the state dict into the other, five more steps: as an unbroken run."""
    kwargs = dict(lr=1e-2, weight_decay=0.1)
    ps, qs, ours, theirs, g = _pair(kwargs, torch.float32, 2)
    for k in range(3):
        _set_grads(ps, qs, g, k)
        ours.step()
        theirs.step()
    if direction == "ours-into-theirs":
        src, dst_params = ours, [q.clone() for q in qs]
        dst = adopt.ADOPT(_grouped(dst_params, 2), foreach=False, **kwargs)
    else:
        src, dst_params = theirs, [p.clone() for p in ps]
        dst = ft.ADOPT(_grouped(dst_params, 2), **kwargs)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    if direction == "theirs-into-ours":  # the peer keeps clip_lambda off its groups: ours stays
        assert all(gr["clip_lambda"] == StepPower(0.25) for gr in dst.param_groups)
    for k in range(3, STEPS):
        _set_grads(ps, qs, g, k)
        for p, d in zip(ps, dst_params):
            d.grad = p.grad.clone()
        src.step()
        dst.step()
    for i, (a, b) in enumerate(zip(dst_params, ps if direction == "ours-into-theirs" else qs)):
        _close(a, b, f"params[{i}]")


def test_numpy_adopt_and_the_reference_match_the_peer():
    """fusedopt.ADOPT over NumPy arrays (fp64) and fusedopt.reference.adopt, against the peer."""
    kwargs = dict(lr=1e-2, weight_decay=0.1, decouple=True, clip_lambda=lambda n: 0.3 * n)
    g = torch.Generator().manual_seed(3)
    qs = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    ws = [q.numpy().copy() for q in qs]
    rs = [q.numpy().copy() for q in qs]
    ms = [np.zeros_like(r) for r in rs]
    vs = [np.zeros_like(r) for r in rs]
    theirs = adopt.ADOPT(qs, foreach=False, **kwargs)
    ours = fusedopt.ADOPT(ws, **kwargs)
    for k in range(STEPS):
        grads = [torch.randn(q.shape, generator=g, dtype=q.dtype) for q in qs]
        for q, d in zip(qs, grads):
            q.grad = d
        theirs.step()
        ours.step([d.numpy() for d in grads])
        reference.adopt(rs, [d.numpy() for d in grads], ms, vs, step=k + 1, **kwargs)
    for i, (q, w, r) in enumerate(zip(qs, ws, rs)):
        np.testing.assert_allclose(w, q.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"params[{i}]")
        np.testing.assert_allclose(r, q.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"ref[{i}]")


def test_numpy_adopt_loads_a_peer_state_dict():
    qs = [torch.randn(5, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    theirs = adopt.ADOPT([q.clone() for q in qs], foreach=False, lr=1e-2)
    for _ in range(2):
        for q in theirs.param_groups[0]["params"]:
            q.grad = torch.ones_like(q)
        theirs.step()
    ours = fusedopt.ADOPT([q.numpy().copy() for q in qs], lr=1e-2, clip_lambda=StepPower(0.5))
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0]["clip_lambda"] == StepPower(0.5)  # kept: the peer has none
    assert ours.state[0]["step"] == 2
    np.testing.assert_array_equal(ours.state[1]["exp_avg_sq"],
                                  theirs.state[theirs.param_groups[0]["params"][1]]["exp_avg_sq"])


class Recorder:
    """A clip_lambda that records the counts it is called with."""

    def __init__(self, value=1.0):
        self.calls = []
        self.value = value

    def __call__(self, n):
        self.calls.append(n)
        return self.value(n) if callable(self.value) else self.value


def _two_groups(make, dtype=torch.float32):
    ps = [torch.randn(4, dtype=dtype), torch.randn(3, dtype=dtype)]
    a, b = Recorder(), Recorder()
    opt = make([{"params": [ps[0]], "clip_lambda": a}, {"params": [ps[1]], "clip_lambda": b}])
    return ps, opt, a, b


def test_torch_clip_lambda_is_called_once_per_group_and_step_with_the_completed_count():
    ps, opt, a, b = _two_groups(lambda groups: ft.ADOPT(groups, lr=0.1))
    for _ in range(4):  # the first is a general step, the next ones steady steps of two runs
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    # not at step 1 (n = 0), which only sets v: the peer does not call it there either
    assert a.calls == b.calls == [1.0, 2.0, 3.0]
    assert all(type(n) is float for n in a.calls)


@pytest.mark.parametrize("bad, exc, message", [
    (-1.0, ValueError, r"Invalid clip_lambda value: -1.0 \(returned by clip_lambda\(2.0\)\)"),
    (float("nan"), ValueError, r"Invalid clip_lambda value: nan"),
    ("x", TypeError, r"clip_lambda\(2.0\) must be a real number, got str"),
    (ZeroDivisionError, ZeroDivisionError, "boom"),
])
@pytest.mark.parametrize("steady", [False, True], ids=["general", "steady"])
def test_torch_a_bad_clip_lambda_of_the_second_group_changes_nothing(bad, exc, message, steady):
    ps, opt, a, b = _two_groups(lambda groups: ft.ADOPT(groups, lr=0.1))
    for _ in range(2):  # step 1 sets v (n = 0); step 2 is the first steady step
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    if not steady:
        opt.state[ps[0]]  # a look at the state: the next step takes the general path
    n = 2.0

    def fail(n):
        if bad is ZeroDivisionError:
            raise ZeroDivisionError("boom")
        return bad

    b.value = fail
    assert b.calls[-1] == n - 1
    before = [p.clone() for p in ps]
    states = copy.deepcopy({i: dict(opt.state[p]) for i, p in enumerate(ps)})
    with pytest.raises(exc, match=message):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before))
    for i, p in enumerate(ps):
        for k, v in states[i].items():
            assert torch.equal(opt.state[p][k], v), (i, k)


def test_numpy_a_bad_clip_lambda_of_the_second_group_changes_nothing():
    ws = [np.ones(4), np.ones(3)]
    a, b = Recorder(), Recorder()
    opt = fusedopt.ADOPT([{"params": [ws[0]], "clip_lambda": a},
                          {"params": [ws[1]], "clip_lambda": b}], lr=0.1)
    opt.step([np.ones(4), np.ones(3)])  # step 1 sets v and calls no clip_lambda
    opt.step([np.ones(4), np.ones(3)])
    b.value = -2.0
    before = copy.deepcopy(opt.state_dict())
    w0 = [w.copy() for w in ws]
    with pytest.raises(ValueError, match=r"Invalid clip_lambda value: -2.0 \(returned by "
                                         r"clip_lambda\(2.0\)\)"):
        opt.step([np.ones(4), np.ones(3)])
    assert all(np.array_equal(w, x) for w, x in zip(ws, w0))
    after = opt.state_dict()
    for i in before["state"]:
        assert after["state"][i]["step"] == before["state"][i]["step"]
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(after["state"][i][k], before["state"][i][k])
    assert a.calls == [1.0, 2.0]  # once per step from the second, the refused one included


def test_the_default_clip_pickles_with_the_optimizer():
    w = np.ones(3)
    opt = fusedopt.ADOPT([w])
    opt.step([np.ones(3)])
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.param_groups[0]["clip_lambda"] == StepPower(0.25)
    assert clone.param_groups[0]["clip_lambda"](16.0) == 2.0
    t = ft.ADOPT([torch.ones(3)])
    assert pickle.loads(pickle.dumps(t)).param_groups[0]["clip_lambda"] == StepPower(0.25)
    assert math.isclose(copy.deepcopy(StepPower(0.25))(81.0), 3.0)


@pytest.mark.parametrize("clip", [None, 0.5, StepPower(1.0)], ids=["none", "number", "callable"])
def test_functional_takes_a_number_none_or_a_callable(clip):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(4)]
    mine, ref = p.copy(), p.copy()
    states = [[np.zeros(50), np.zeros(50)] for _ in range(2)]
    for t, g in enumerate(grads, 1):
        fusedopt.functional.adopt(mine, g, *states[0], step=t, lr=0.1, clip_lambda=clip)
        reference.adopt(ref, g, *states[1], step=t, lr=0.1, clip_lambda=clip)
    np.testing.assert_allclose(mine, ref, rtol=1e-12, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"adopt: Invalid clip_lambda value: -1"):
            fusedopt.functional.adopt(mine, grads[0], *states[0], step=5, clip_lambda=-1.0)


def test_the_first_step_does_not_call_clip_lambda():
    """The first step only sets v, and the peer calls clip_lambda from the second step on: a
    callable undefined at n = 0 (a negative power) works in both."""
    fn = lambda n: n ** -0.25  # noqa: E731
    ps = [torch.randn(5, dtype=torch.float64)]
    qs = [p.clone() for p in ps]
    ours, theirs = ft.ADOPT(ps, lr=0.1, clip_lambda=fn), adopt.ADOPT(qs, lr=0.1, clip_lambda=fn,
                                                                     foreach=False)
    w = ps[0].numpy().copy()
    numpy_opt = fusedopt.ADOPT([w], lr=0.1, clip_lambda=fn)
    for k in range(3):
        g = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        ps[0].grad, qs[0].grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        numpy_opt.step([g.numpy()])
    _close(ps[0], qs[0], "params")
    np.testing.assert_allclose(w, qs[0].numpy(), rtol=1e-12)
    # the reference does not call it at n = 0 either (0.0 ** -0.25 would raise)
    reference.adopt([np.zeros(5)], [np.ones(5)], [np.zeros(5)], [np.zeros(5)], step=1,
                    clip_lambda=fn)


def test_clip_lambda_is_left_out_of_state_dicts_as_the_peer_keeps_it():
    """The peer keeps clip_lambda on the optimizer: its state dicts pickle whatever the callable.
    Ours leave it out too (a lambda in them would stop torch.save), and loading keeps the
    optimizer's own."""
    import io

    fn = lambda n: 0.5  # noqa: E731
    p = torch.randn(3)
    opt = ft.ADOPT([p], clip_lambda=fn)
    p.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert "clip_lambda" not in sd["param_groups"][0]
    torch.save(sd, io.BytesIO())
    w = np.ones(3)
    numpy_opt = fusedopt.ADOPT([w], clip_lambda=fn)
    numpy_opt.step([np.ones(3)])
    nsd = numpy_opt.state_dict()
    assert "clip_lambda" not in nsd["param_groups"][0]
    pickle.dumps(nsd)
    other = fusedopt.ADOPT([np.ones(3)])
    other.load_state_dict(nsd)
    assert other.param_groups[0]["clip_lambda"] == StepPower(0.25)
