"""The optimizer classes and EMA over CUDA arrays, run here without a GPU: host memory posing as
device memory.

``Emu`` is a NumPy array behind a ``__cuda_array_interface__`` on an emulated device number, so
the classes send it to the CUDA backend (``fusedopt._cuda_calls``), which reads and checks it as it
reads a CuPy array. A stand-in for ``_core.cuda`` (``HostCuda``) binds the device pointers it is
given, refuses a call whose arrays are on more than one device (as the driver check does), looks up
the NumPy arrays behind the pointers and binds ``_core.cpu`` over them; an adapter lets the classes
allocate, copy and load ``Emu`` state as they do CuPy or PyTorch state.

So everything the classes do for CUDA arrays runs here through the shipped code: params and grads
checked, state allocated on the param's device with its library, ``state_dict`` kept on the
device, state loaded from any library and device, a group spanning devices split into one call
per device, bad grads refused before any launch. The arithmetic is the CPU kernels', so results
must equal a NumPy run bit for bit. Not covered here: CuPy's and PyTorch's own allocation and copy
calls and the CUDA kernels, which tests/test_cuda.py runs on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from fusedopt import _arrays, _core, _cuda_calls
from fusedopt.optim import EMA
from test_optim import CASES, DTYPES, EDIT_AT, build, flat, grads_at, make_params

STEPS = 12


class Emu:
    """A NumPy array posing as CUDA memory on device ``device``."""

    def __init__(self, a, device=0):
        self.a = a
        self.device = device
        _MEMORY[a.__array_interface__["data"][0]] = (a, device)

    @property
    def __cuda_array_interface__(self):
        a = self.a
        return {
            "version": 3, "shape": a.shape, "typestr": a.dtype.str, "stream": None,
            "data": (a.__array_interface__["data"][0], not a.flags.writeable),
            "strides": None if a.flags.c_contiguous else a.strides,
        }

    def __repr__(self):
        return f"Emu(cuda:{self.device}, {self.a!r})"


_MEMORY = {}  # data pointer -> (NumPy array, device): what HostCuda reads a pointer as


class EmuAdapter(_arrays._Adapter):
    label = "an Emu array"

    def owns(self, x):
        return isinstance(x, Emu)

    def meta(self, x):
        return _arrays._NUMPY.meta(x.a)._replace(place=("cuda", x.device))

    def full_like(self, x, fill_value, slot):
        return Emu(_arrays.state_like(x.a, fill_value, slot), x.device)

    def empty_like(self, x):
        return Emu(np.empty_like(x.a), x.device)

    def copy(self, x):
        return Emu(x.a.copy(order="K"), x.device)

    def to_host(self, x):
        return x.a

    def f64_zeros(self, x, n):
        out = Emu(np.zeros(n), x.device)
        return out, out.a.__array_interface__["data"][0]

    def write(self, dst, src):
        np.copyto(dst.a, src.a if isinstance(src, Emu) else src)


class HostCuda:
    """``_core.cuda`` run on the host: ``bind`` takes the same arguments (pointer lists, ``sizes``,
    ``dtype``, hyper-parameters) and binds ``_core.cpu`` over the NumPy arrays behind the pointers;
    each run is recorded with the device of its arrays."""

    def __init__(self):
        self.calls = []

    def bind(self, algo, lists, sizes, dtype, hyper, *, name, index=None, grads_later=False,
             aliases=None):
        devices = {_MEMORY[p][1] for ptrs in lists if ptrs for p in ptrs}
        if len(devices) > 1:
            raise ValueError(f"{name}: arrays on devices {sorted(devices)} in one call")
        arrays = tuple(None if ptrs is None else [_MEMORY[p][0] for p in ptrs] for ptrs in lists)
        core = _core.cpu.bind(algo, arrays, hyper, name=name, index=index, grads_later=grads_later,
                              aliases=aliases)
        return HostBound(self, core, devices.pop() if devices else None, name, index)


class HostBound:
    """A bound call of ``HostCuda``: its ``core`` is the ``_core.cpu`` bound call (which
    ``_core.Calls`` checks across a step's calls); grads come as pointers, and one on another
    device is refused as the driver check refuses it."""

    def __init__(self, cuda, core, device, name, index):
        self.cuda, self.core, self.device, self.name = cuda, core, device, name
        self.at = lambda i: i if index is None else index + i if isinstance(index, int) else index[i]

    def grads_arg(self, ptrs):
        if ptrs is None:
            return None
        for i, p in enumerate(ptrs):
            if self.device is not None and _MEMORY[p][1] != self.device:
                raise ValueError(f"{self.name}: grads[{self.at(i)}] is on cuda:{_MEMORY[p][1]}, "
                                 f"expected cuda:{self.device} (the device of params[{self.at(0)}])")
        return [_MEMORY[p][0] for p in ptrs]

    def check(self, ptrs):
        self.core.check(self.grads_arg(ptrs))

    def run(self, ptrs=None, *, step, lr, scalars, stream, wait_streams, out=None, **run):
        result = self.core.run(self.grads_arg(ptrs), step=step, lr=lr, scalars=scalars, **run)
        if out is not None:  # a reduction's sums, into the device array at `out`
            sums = _MEMORY[out][0]
            sums[...] = np.asarray(result).reshape(sums.shape)
            result = None
        self.cuda.calls.append((self.core.algorithm, self.device))  # a launch: it passed
        return result


@pytest.fixture(autouse=True)
def emulated_cuda(monkeypatch):
    cuda = HostCuda()
    monkeypatch.setattr(_cuda_calls, "_cuda_module", lambda: cuda)
    monkeypatch.setattr(_arrays, "_ADAPTERS", [*_arrays._ADAPTERS, EmuAdapter()])
    _MEMORY.clear()
    yield cuda
    _MEMORY.clear()


def on_device(groups, device=lambda gi, j: 0):
    """Device twins of ``groups`` (lists of NumPy params): copies in Emu, same layout."""
    return [[Emu(p.copy(order="K"), device(gi, j)) for j, p in enumerate(g)]
            for gi, g in enumerate(groups)]


def drive(opt, params, start, stop, wrap):
    """Steps ``start..stop-1`` of test_optim's run: its grads (laid out like the params) and its
    mid-run lr edit; ``wrap(i, g)`` puts grad ``i`` where its param is."""
    host = [p.a if isinstance(p, Emu) else p for p in params]
    for k in range(start, stop):
        if k == EDIT_AT:
            opt.param_groups[0]["lr"] *= 0.5
        opt.step([wrap(i, g) for i, g in enumerate(grads_at(host, k))])


def like(params):
    """``wrap`` for ``drive``: each grad on its param's device (host arrays stay NumPy)."""
    return lambda i, g: Emu(g, params[i].device) if isinstance(params[i], Emu) else g


def host(x):
    return x.a if isinstance(x, Emu) else x


def assert_same_bits(got, want, what):
    got, want = host(got), host(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes(order="A") == want.tobytes(order="A"), what


def assert_same_state(got, want):
    assert list(got) == list(want)
    for i in want:
        assert list(got[i]) == list(want[i]), i
        for name, w in want[i].items():
            g = got[i][name]
            if isinstance(w, (np.ndarray, Emu)):
                assert_same_bits(g, w, f"state[{i}][{name!r}]")
            else:
                assert g == w and type(g) is type(w), (i, name)


def state_arrays(state):
    """(index, name, array) of every state array (not the step count nor the scalar state:
    NAdam's mu_product, Schedule-Free's weight_sum and lr_max)."""
    return [(i, k, v) for i, s in state.items() for k, v in s.items()
            if k not in ("step", "mu_product", "weight_sum", "lr_max")]


def run_beside_host(case, groups, placed):
    """``case`` run over the NumPy ``groups`` and over ``placed`` (their twins, some or all on
    emulated devices); the params and states must agree bit for bit. Returns the placed run's
    optimizer and flat params."""
    opt_h, opt = build(case, groups), build(case, placed)
    params, placed_params = flat(groups), flat(placed)
    drive(opt_h, params, 0, STEPS, lambda i, g: g)
    drive(opt, placed_params, 0, STEPS, like(placed_params))
    for i, (h, d) in enumerate(zip(params, placed_params)):
        assert_same_bits(d, h, f"params[{i}]")
    assert_same_state(opt.state, opt_h.state)
    return opt, placed_params


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_classes_on_device_arrays_match_host(case, dtype, emulated_cuda):
    groups = make_params(dtype)
    opt_d, d_params = run_beside_host(case, groups, on_device(groups))
    # every state array is the param's library, on its device, laid out like it
    for i, name, v in state_arrays(opt_d.state):
        assert isinstance(v, Emu) and v.device == 0, (i, name)
        assert v.a.flags.f_contiguous == d_params[i].a.flags.f_contiguous, (i, name)
    assert opt_d.state[d_params[3]] is opt_d.state[3]
    # one launch per group and step, all on the CUDA backend
    assert len(emulated_cuda.calls) == 2 * STEPS
    assert {dev for _, dev in emulated_cuda.calls} == {0}


def test_schedule_free_modes_on_a_group_spanning_devices_match_host(emulated_cuda):
    """eval() and train() over a group whose params live on two devices and the host: one lerp
    per (group, place), the NumPy run's bits."""
    case = next(c for c in CASES if c.id == "adamw_schedulefree")
    groups = make_params(np.float64)
    place = {(0, 0): 1, (0, 1): 0, (0, 2): None, (1, 0): 0, (1, 1): 1}
    mixed = [[p.copy(order="K") if place[gi, j] is None else Emu(p.copy(order="K"), place[gi, j])
              for j, p in enumerate(g)] for gi, g in enumerate(groups)]
    opt_h, opt = build(case, groups), build(case, mixed)
    m_params = flat(mixed)
    drive(opt_h, flat(groups), 0, STEPS, lambda i, g: g)
    drive(opt, m_params, 0, STEPS, like(m_params))
    before = len(emulated_cuda.calls)
    for o in (opt, opt_h):
        o.eval()
    # group 0: cuda:1 and cuda:0 (its host param on the CPU); group 1: cuda:0 and cuda:1
    assert sorted(dev for _, dev in emulated_cuda.calls[before:]) == [0, 0, 1, 1]
    for i, (h, d) in enumerate(zip(flat(groups), m_params)):
        assert_same_bits(d, h, f"params[{i}] in eval mode")
    for o in (opt, opt_h):
        o.train()
    for i, (h, d) in enumerate(zip(flat(groups), m_params)):
        assert_same_bits(d, h, f"params[{i}] back in train mode")


@pytest.mark.parametrize("case", CASES[::3], ids=[c.id for c in CASES[::3]])
def test_a_group_spanning_devices_makes_one_call_per_device(case, emulated_cuda):
    """Group 0 holds a param on cuda:1, one on cuda:0 and one in host memory; group 1 one on
    cuda:0 and one on cuda:1. Each step makes one call per (group, device), and the result is the
    NumPy run's, bit for bit."""
    groups = make_params(np.float32)
    place = {(0, 0): 1, (0, 1): 0, (0, 2): None, (1, 0): 0, (1, 1): 1}
    mixed = [[p.copy(order="K") if place[gi, j] is None else Emu(p.copy(order="K"), place[gi, j])
              for j, p in enumerate(g)] for gi, g in enumerate(groups)]
    opt_m, m_params = run_beside_host(case, groups, mixed)
    for i, _, v in state_arrays(opt_m.state):
        p = m_params[i]
        assert type(v) is type(p) and getattr(v, "device", None) == getattr(p, "device", None)
    # per step: group 0 on cuda:1 and cuda:0 (its host param goes to the CPU), group 1 on both
    devices = [dev for _, dev in emulated_cuda.calls]
    assert devices == [1, 0, 0, 1] * STEPS


@pytest.mark.parametrize("case", CASES[::2], ids=[c.id for c in CASES[::2]])
def test_state_dict_stays_on_the_device_and_loads_anywhere(case, emulated_cuda):
    groups = make_params(np.float64)
    dev_groups = on_device(groups)
    opt_d = build(case, dev_groups)
    d_params = flat(dev_groups)
    drive(opt_d, d_params, 0, 5, like(d_params))
    sd = opt_d.state_dict()
    for i, name, v in state_arrays(sd["state"]):
        live = opt_d.state[i][name]
        assert isinstance(v, Emu) and v.device == 0 and v.a is not live.a, (i, name)
        assert not np.shares_memory(v.a, live.a), (i, name)

    # the unbroken runs, on the host and on the device
    ref_groups = make_params(np.float64)
    ref = build(case, ref_groups)
    drive(ref, flat(ref_groups), 0, STEPS, lambda i, g: g)
    drive(opt_d, d_params, 5, STEPS, like(d_params))
    assert_same_state(opt_d.state, ref.state)

    # resumed on the host from the device's state dict, and on cuda:1 from a host state dict
    host_groups = make_params(np.float64)
    on_host = build(case, host_groups)
    drive(on_host, flat(host_groups), 0, 5, lambda i, g: g)  # params as after step 5
    host_sd = on_host.state_dict()
    on_host.load_state_dict(sd)
    drive(on_host, flat(host_groups), 5, STEPS, lambda i, g: g)
    assert_same_state(on_host.state, ref.state)
    for i, (h, r) in enumerate(zip(flat(host_groups), flat(ref_groups))):
        assert_same_bits(h, r, f"params[{i}]")

    dev1_groups = on_device(make_params(np.float64), lambda gi, j: 1)
    dev1 = build(case, dev1_groups)
    d1_params = flat(dev1_groups)
    drive(dev1, d1_params, 0, 5, like(d1_params))
    dev1.load_state_dict(host_sd)
    for i, name, v in state_arrays(dev1.state):
        assert isinstance(v, Emu) and v.device == 1, (i, name)
    drive(dev1, d1_params, 5, STEPS, like(d1_params))
    assert_same_state(dev1.state, ref.state)

    # and from cuda:0's state dict onto cuda:1
    dev1b_groups = on_device(make_params(np.float64), lambda gi, j: 1)
    dev1b = build(case, dev1b_groups)
    dev1b.load_state_dict(sd)
    assert all(v.device == 1 for s in dev1b.state.values() for v in s.values() if isinstance(v, Emu))


def adam_on_device(n_groups=1, device=0):
    groups = on_device(make_params(np.float32), lambda gi, j: device)
    opt = fusedopt.Adam([{"params": g} for g in groups[:n_groups]], lr=0.01)
    return flat(groups[:n_groups]), opt


BAD_GRADS = [
    ("host-array", lambda p, i: host(p[i]).copy(), TypeError,
     "grads[{i}] is host memory (numpy.ndarray), but params[{i}] is a CUDA array; all arrays of "
     "one call must be on one CUDA device"),
    ("other-device", lambda p, i: Emu(host(p[i]).copy(), 1), ValueError,
     "grads[{i}] is on cuda:1, expected cuda:0 (the device of params["),
    ("dtype", lambda p, i: Emu(host(p[i]).astype(np.float64)), TypeError,
     "grads[{i}] has dtype float64, expected float32 (the dtype of params[{i}])"),
    ("shape", lambda p, i: Emu(np.zeros(host(p[i]).size + 1, np.float32)), ValueError,
     "grads[{i}] has shape"),
    ("order", lambda p, i: Emu(np.asfortranarray(host(p[i])) if host(p[i]).flags.c_contiguous
                               else np.ascontiguousarray(host(p[i]))), ValueError,
     "grads[{i}] has a different memory order (C) than params[{i}] (F)"),
    ("not-an-array", lambda p, i: [1.0], TypeError,
     "grads[{i}] is a list, but params[{i}] is a CUDA array"),
]


@pytest.mark.parametrize("n_groups", [1, 2], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("after", [0, 2], ids=["first-step", "later-step"])
@pytest.mark.parametrize("name, make, exc, message", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
def test_bad_device_grads_change_nothing(name, make, exc, message, after, n_groups, emulated_cuda):
    """A bad grad is refused with the optimizer's message before any launch, whether the step is
    one call or several (the bad grad in the last group), and nothing changes."""
    params, opt = adam_on_device(n_groups)
    drive(opt, params, 0, after, like(params))
    before = [host(p).copy(order="K") for p in params]
    state_before = opt.state_dict()
    launches = len(emulated_cuda.calls)
    bad = len(params) - 1 if name != "order" else 1  # param 1 is Fortran-ordered
    grads = [Emu(np.zeros_like(host(p))) for p in params]
    grads[bad] = make(params, bad)
    with pytest.raises(exc) as info:
        opt.step(grads)
    assert str(info.value).startswith("Adam.step: ")
    assert message.format(i=bad) in str(info.value)
    assert len(emulated_cuda.calls) == launches
    for p, b in zip(params, before):
        assert_same_bits(p, b, "param")
    assert_same_state(opt.state_dict()["state"], state_before["state"])


@pytest.mark.parametrize("n_groups", [1, 2], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("after", [0, 2], ids=["first-step", "later-step"])
def test_device_grad_that_is_its_param_changes_nothing(after, n_groups, emulated_cuda):
    """A refusal only the pointer check makes (a grad overlapping a written buffer), in the last
    group: with two groups it is found before the first group's launch (``_core.Calls``)."""
    params, opt = adam_on_device(n_groups)
    drive(opt, params, 0, after, like(params))
    before = [host(p).copy(order="K") for p in params]
    state_before = opt.state_dict()
    launches = len(emulated_cuda.calls)
    bad = len(params) - 1
    grads = [Emu(np.zeros_like(host(p))) for p in params]
    grads[bad] = Emu(host(params[bad]))
    with pytest.raises(ValueError) as info:
        opt.step(grads)
    assert str(info.value) == f"Adam.step: grads[{bad}] overlaps params[{bad}]"
    assert len(emulated_cuda.calls) == launches
    for p, b in zip(params, before):
        assert_same_bits(p, b, "param")
    assert_same_state(opt.state_dict()["state"], state_before["state"])


class ForeignDeviceArray:
    """A CUDA array of a library the classes cannot allocate with (as Numba's)."""

    def __init__(self, a):
        self.__cuda_array_interface__ = Emu(a).__cuda_array_interface__


@pytest.mark.parametrize(
    "make, exc, message",
    [
        (lambda: ForeignDeviceArray(np.zeros(4, np.float32)), TypeError,
         "Adam: params[0] is a CUDA array of type ForeignDeviceArray, whose library the optimizer "
         "classes cannot allocate state with (they use CuPy or PyTorch); allocate the state "
         "yourself and use fusedopt.functional"),
        (lambda: Emu(np.zeros(4, np.int32)), TypeError,
         "Adam: params[0] has dtype int32, expected float32, float64, bfloat16 or float16"),
        (lambda: Emu(np.zeros(4, np.float32)[::2]), ValueError, "Adam: params[0] is not contiguous"),
    ],
    ids=["foreign-library", "dtype", "strided"],
)
def test_device_params_refused_by_name(make, exc, message):
    with pytest.raises(exc) as info:
        fusedopt.Adam([make()], lr=0.1)
    assert str(info.value).startswith(message)


def test_read_only_and_shared_device_params_refused():
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^Adam: params\[0\] is read-only$"):
        fusedopt.Adam([Emu(ro)], lr=0.1)
    base = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        fusedopt.Adam([Emu(base[:6]), Emu(base[4:])], lr=0.1)


def test_bare_device_param_and_grad():
    w = Emu(np.ones(3, np.float32), device=1)
    opt = fusedopt.SGD(w, lr=0.5, momentum=0.9)
    opt.step(Emu(np.ones(3, np.float32), device=1))
    assert host(w).tolist() == [0.5, 0.5, 0.5]
    assert isinstance(opt.state[0]["momentum_buffer"], Emu)
    assert opt.state[w]["momentum_buffer"].device == 1


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_ema_on_device_arrays_matches_host(dtype, emulated_cuda):
    groups = make_params(dtype)
    params = flat(groups)
    d_params = [Emu(p.copy(order="K"), i % 2) for i, p in enumerate(params)]
    ema_h, ema_d = EMA(params, decay=0.9), EMA(d_params, decay=0.9)
    rng = np.random.default_rng(3)
    for _ in range(4):
        for p, d in zip(params, d_params):
            p[...] = rng.standard_normal(p.shape)
            d.a[...] = p
        ema_h.update()
        ema_d.update()
    outs_h, outs_d = ema_h.averages(), ema_d.averages()
    for i, (h, d) in enumerate(zip(outs_h, outs_d)):
        assert isinstance(d, Emu) and d.device == i % 2
        assert_same_bits(d, h, f"averages()[{i}]")
    sd = ema_d.state_dict()
    assert all(isinstance(a, Emu) and a.device == i % 2 for i, a in sd["averages"].items())
    ema_h2 = EMA([p.copy(order="K") for p in params], decay=0.9)
    ema_h2.load_state_dict(sd)  # device -> host
    for i, (h, h2) in enumerate(zip(ema_h.averages(), ema_h2.averages())):
        assert_same_bits(h2, h, f"loaded averages()[{i}]")
    ema_d.copy_to()
    ema_h.copy_to()
    for i, (h, d) in enumerate(zip(params, d_params)):
        assert_same_bits(d, h, f"params[{i}] after copy_to")
    with pytest.raises(TypeError, match=r"^EMA.update: params\[1\] is host memory \(numpy.ndarray\), "
                                        r"but averages\[1\] is a CUDA array; all arrays of one "
                                        r"call must be on one CUDA device$"):
        ema_d.update([d_params[0], params[1], *d_params[2:]])


def test_ema_copy_to_over_two_places_refused_by_the_second_changes_nothing(emulated_cuda):
    """EMA makes one call per place; params given to ``copy_to`` that overlap on the second place
    are refused before the first place is written, and named by their own indices."""
    rng = np.random.default_rng(4)
    host_p = [rng.standard_normal(5 + i) for i in range(2)]
    dev_p = [Emu(rng.standard_normal(3)), Emu(rng.standard_normal(3))]
    ema = EMA(host_p + dev_p, decay=0.5)
    ema.update()
    for p in host_p:
        p += 1.0  # so that copy_to would change them
    before = [p.copy() for p in host_p]
    launches = len(emulated_cuda.calls)
    overlapping = host_p + [dev_p[0], Emu(dev_p[0].a)]
    with pytest.raises(ValueError, match=r"^EMA.copy_to: params\[3\] overlaps params\[2\]$"):
        ema.copy_to(overlapping)
    assert all(np.array_equal(p, b) for p, b in zip(host_p, before))
    assert len(emulated_cuda.calls) == launches
    ema.copy_to()  # the same call with the EMA's own params goes through
    assert not np.array_equal(host_p[0], before[0])


def test_torch_cpu_tensor_param_is_refused_whole():
    """A CPU tensor is one (unsupported) array, not a list of its rows."""
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^Adam: params\[0\] is a Tensor, expected a numpy.ndarray"):
        fusedopt.Adam(torch.zeros(3, 4), lr=0.1)


@pytest.mark.parametrize("clip", [True, False], ids=["clip_grad_norm_", "global_norm"])
def test_clipping_device_arrays_matches_host(clip, emulated_cuda):
    """fusedopt.clip_grad_norm_ and global_norm over device arrays: the CUDA backend's reduction
    into a float64 array of the grads' library and its scaling pass, the same norm and grads as
    over the host arrays (float32 and float64 in one call)."""
    rng = np.random.default_rng(5)
    host = [(rng.standard_normal(n) * 3).astype(dt)
            for n, dt in ((7, np.float64), (70000, np.float32), (1, np.float32))]
    dev = [Emu(h.copy()) for h in host]
    if clip:
        want = fusedopt.clip_grad_norm_(host, max_norm=1.0)
        got = fusedopt.clip_grad_norm_(dev, max_norm=1.0)
    else:
        want, got = fusedopt.global_norm(host), fusedopt.global_norm(dev)
    assert type(got) is type(want) and got == want
    for d, h in zip(dev, host):
        np.testing.assert_array_equal(d.a, h)
    assert [c[0] for c in emulated_cuda.calls] == ["sumsq"] + (["scale"] if clip else [])
