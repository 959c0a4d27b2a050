"""Swapping in for ``torch.optim`` mid-run: a ``torch.optim`` state dict (CPU tensors, ``step`` and
NAdam's ``mu_product`` as 0-d tensors, torch's extra group keys) loads into the fusedopt class of the
same name over NumPy params, and the run continues as torch's does. Also the PyTorch adapter of
``fusedopt._arrays``, which the classes use for CUDA tensors, exercised here on CPU tensors (its
calls are device-agnostic).

Skipped when PyTorch is not installed (it is not a dependency); CI runs it in its torch step.

Tolerance: float64 throughout, rtol 1e-12 and atol 1e-13 * max(1, max |torch|) after three more
steps: the kernels fold step scalars and use Adam's efficient order (Note [Adam's efficient order]),
so they differ from torch in the last bits of each step.
"""

from __future__ import annotations

import operator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedopt  # noqa: E402
from fusedopt import _arrays  # noqa: E402

CONFIGS = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("Adadelta", dict(lr=1.0, rho=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01, momentum_decay=8e-3)),
    ("NAdam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    ("Adamax", dict(lr=0.01, weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.8, 0.99))),
]
SHAPES = [(300,), (7, 5), (1,)]


@pytest.fixture(autouse=True)
def float64_scalars():
    """torch keeps ``step`` and NAdam's ``mu_product`` as tensors of the default dtype: float64
    keeps them as exact as fusedopt's Python floats (float32 would be torch's own rounding)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def grads(k):
    rng = np.random.default_rng([4, k])
    return [rng.standard_normal(s) for s in SHAPES]


@pytest.mark.parametrize("name, kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_torch_state_dict_continues_in_fusedopt(name, kw):
    rng = np.random.default_rng(2)
    t_params = [torch.tensor(rng.standard_normal(s), requires_grad=True) for s in SHAPES]
    t_opt = getattr(torch.optim, name)(t_params, **kw)

    def torch_step(k):
        for p, g in zip(t_params, grads(k)):
            p.grad = torch.from_numpy(g.copy())
        t_opt.step()

    for k in range(3):
        torch_step(k)
    sd = t_opt.state_dict()
    if name != "SGD":  # torch's SGD keeps no step count: fusedopt's loads as step 0
        assert isinstance(sd["state"][0]["step"], torch.Tensor)  # what the loader must take
    params = [p.detach().numpy().copy() for p in t_params]
    opt = getattr(fusedopt, name)(params, **kw)
    opt.load_state_dict(sd)
    for i, s in opt.state.items():
        assert s["step"] == (0 if name == "SGD" else 3) and type(s["step"]) is int
        for key, v in s.items():
            if key not in ("step", "mu_product"):
                assert type(v) is np.ndarray and v.dtype == np.float64, (i, key)
    for k in range(3, 6):
        torch_step(k)
        opt.step(grads(k))
    for i, (got, p) in enumerate(zip(params, t_params)):
        want = p.detach().numpy()
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13 * scale, err_msg=f"params[{i}]")
    for i, s in opt.state.items():
        for key, v in s.items():
            if key == "step":
                assert v == (3 if name == "SGD" else int(t_opt.state[t_params[i]][key].item()))
                continue
            want = t_opt.state[t_params[i]][key]
            if key == "mu_product":
                assert v == pytest.approx(float(want), rel=1e-13)
            else:
                w = want.numpy()
                np.testing.assert_allclose(v, w, rtol=1e-12, atol=1e-13 * max(1.0, np.max(np.abs(w))),
                                           err_msg=f"state[{i}][{key!r}]")


def test_torch_state_of_another_dtype_is_refused_by_name():
    t_params = [torch.zeros(4, dtype=torch.float32, requires_grad=True)]
    t_opt = torch.optim.Adam(t_params)
    t_params[0].grad = torch.ones(4, dtype=torch.float32)
    t_opt.step()
    opt = fusedopt.Adam([np.zeros(4)], lr=1e-3)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has dtype float32, expected "
                                         r"float64 \(the dtype of params\[0\]\)"):
        opt.load_state_dict(t_opt.state_dict())
    assert len(opt.state) == 0


@pytest.mark.parametrize("order", ["C", "F"])
def test_torch_adapter(order):
    """The calls the classes make for a CUDA tensor, on a CPU tensor: allocation like the param
    (strides kept, never requiring grad), copies that do not alias, writes from NumPy (any
    order) and from another tensor, and reading back."""
    ad = _arrays._Torch()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    p = (base if order == "C" else base.t().contiguous().t()).requires_grad_()
    full = ad.full_like(p, 0.25, 1)
    assert full.stride() == p.stride() and not full.requires_grad
    assert full.dtype == p.dtype and bool((full == 0.25).all())
    empty = ad.empty_like(p)
    assert empty.stride() == p.stride() and empty.shape == p.shape and not empty.requires_grad
    c = ad.copy(p)
    assert c.stride() == p.stride() and c.data_ptr() != p.data_ptr() and not c.requires_grad
    assert torch.equal(c, p.detach())
    src = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4) * -1.0)
    ad.write(full, src)
    assert np.array_equal(ad.to_host(full), src)
    ad.write(full, c)
    assert np.array_equal(ad.to_host(full), p.detach().numpy())
    assert _arrays.shape_dtype(p) == ((3, 4), "float32")
    # a CPU tensor's saved value loads into a NumPy param (through the host)
    w = np.zeros((3, 4), np.float32, order=order)
    got = _arrays.load_like(w, p, 0)
    assert type(got) is np.ndarray and np.array_equal(got, p.detach().numpy())
    assert got.flags.f_contiguous == (order == "F")


# ---- the PyTorch fast path of the CUDA backend (Note [The PyTorch fast path]) -------------------
# _cuda_arrays.torch_fast reads a call's tensors with C-level maps; here over CPU tensors, with
# ``device_of`` standing in for Tensor.get_device. It must give exactly what the general path
# reads (pointers, sizes, dtype), and give up (None) on anything irregular, so that the general
# path words the error.


def _device0(t):
    return 0


def _call(n=5, dtype=torch.float32, nbuf=3):
    shapes = [(3, 4), (7,), (1,), (0,), (2, 3, 2)][:n]
    return [[torch.randn(s, dtype=dtype) for s in shapes] for _ in range(nbuf)]


def _fast(args, device_of=_device0):
    from fusedopt import _cuda_arrays

    return _cuda_arrays.torch_fast(torch, args, device_of)


def test_torch_fast_path_reads_what_the_general_path_reads():
    from fusedopt import _cuda_arrays

    args = _call()
    args[0] = [torch.nn.Parameter(t) for t in args[0]]  # params usually are
    ptrs, sizes, dtype = _fast(args)
    assert dtype == "float32"
    assert sizes == [t.numel() for t in args[0]]
    for got, arr in zip(ptrs, args):
        assert got == [_cuda_arrays.torch_view(t).ptr for t in arr]
    # a tuple, an absent optional list, mixed dtypes (one name per tensor)
    args = _call()
    args[1] = tuple(args[1])
    mixed = [t.double() if i % 2 else t for i, t in enumerate(args[0])]
    ptrs, _, dtype = _fast([mixed, [t.clone() for t in mixed], None])
    assert dtype == ["float32", "float64", "float32", "float64", "float32"] and ptrs[2] is None


class _Sub(torch.Tensor):
    pass


def _edit(k, i, make):
    def edit(args):
        args[k][i] = make(args[k][i])
        return args
    return edit


IRREGULAR = {
    "subclass": _edit(1, 2, lambda t: t.as_subclass(_Sub)),
    "not-a-tensor": _edit(2, 0, lambda t: t.numpy()),
    "transposed": _edit(1, 0, lambda t: t.t().contiguous().t()),
    "strided": _edit(2, 1, lambda t: torch.zeros(14)[::2]),
    "negative-view": _edit(1, 1, lambda t: t._neg_view()),
    "dtype-of-param": _edit(0, 0, lambda t: t.half()),
    "dtype-mismatch": _edit(2, 4, lambda t: t.double()),
    "shape-mismatch": _edit(1, 0, lambda t: t.reshape(4, 3).contiguous()),
    "length": lambda args: [args[0], args[1][:-1], args[2]],
    "list-type": lambda args: [args[0], set(args[1]), args[2]],
    "empty": lambda args: [[], [], []],
}


@pytest.mark.parametrize("name", IRREGULAR)
def test_torch_fast_path_gives_up_on_anything_irregular(name):
    args = IRREGULAR[name](_call())
    assert _fast(args) is None


def test_torch_fast_path_needs_one_cuda_device():
    args = _call()
    assert _fast(args, lambda t: -1) is None  # CPU tensors: get_device() is -1
    other = {id(args[0][2]), id(args[1][1])}
    assert _fast(args, lambda t: 1 if id(t) in other else 0) is None  # two devices
    grad = args[1][1]
    assert _fast(args, lambda t: 1 if t is grad else 0) is None  # a grad on another device


def test_negative_view_refused_by_the_general_path():
    from fusedopt import _cuda_arrays

    with pytest.raises(ValueError, match="negative view"):
        _cuda_arrays.torch_view(torch.zeros(3)._neg_view())


@pytest.mark.parametrize("name", [n for n in IRREGULAR if n not in ("length", "list-type", "empty")])
def test_grads_match_check_of_the_classes(name):
    """``torch_lists_match`` (the classes' grad check on several calls) accepts matching grads and
    refuses every irregular one, so that each grad is then looked at and the bad one named."""
    from fusedopt import _cuda_arrays

    params, grads, _ = _call()
    assert _cuda_arrays.torch_lists_match(grads, params, _device0)
    assert not _cuda_arrays.torch_lists_match(grads, params, lambda t: -1)
    edited = IRREGULAR[name]([list(params), list(grads), [t.clone() for t in grads]])
    if all(map(operator.is_, edited[0], params)):  # a grad list was edited: it is refused
        assert not all(_cuda_arrays.torch_lists_match(g, params, _device0) for g in edited[1:])
    else:  # a param was edited: no grad list matches it
        assert not _cuda_arrays.torch_lists_match(grads, edited[0], _device0)


def test_own_state_dict_keeps_float64_scalar_state():
    """A fusedopt.torch NAdam over float32 params loads its own state dict with ``mu_product``
    still float64 and equal (torch's base ``load_state_dict`` casts every floating state tensor
    but ``step`` to the param's dtype, which rounded it to float32), so a resumed run continues
    bitwise as the uninterrupted one."""
    ft = pytest.importorskip("fusedopt.torch")
    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float32))
              for _ in range(2)]
    grads = [[torch.randn(5, generator=gen, dtype=torch.float32) for _ in params]
             for _ in range(4)]
    copy = [torch.nn.Parameter(p.detach().clone()) for p in params]
    whole = ft.NAdam(params, lr=0.1)
    for t in range(4):
        for p, g in zip(params, grads[t]):
            p.grad = g.clone()
        whole.step()
    first = ft.NAdam(copy, lr=0.1)
    for t in range(2):
        for p, g in zip(copy, grads[t]):
            p.grad = g.clone()
        first.step()
    saved = first.state_dict()
    resumed = ft.NAdam(copy, lr=0.1)
    resumed.load_state_dict(saved)
    mu = resumed.state_dict()["state"][0]["mu_product"]
    assert mu.dtype == torch.float64
    assert mu.item() == saved["state"][0]["mu_product"].item()
    for t in range(2, 4):
        for p, g in zip(copy, grads[t]):
            p.grad = g.clone()
        resumed.step()
    assert whole.state_dict()["state"][0]["mu_product"].item() == \
        resumed.state_dict()["state"][0]["mu_product"].item()
    for a, b in zip(params, copy):
        assert torch.equal(a, b)
