"""The CUDA backend.

The first part runs everywhere, GPU or not: the build exposes ``_core.cuda`` exactly when
``build_info()["cuda"]`` says so, a call without a device fails with a clean ``RuntimeError``
carrying CUDA's text, and every check that needs no driver (pointers, sizes, dtypes, layouts,
read-only flags, host/device mixes) refuses bad input before anything is launched.

The rest needs a CUDA device and CuPy or a CUDA build of PyTorch, and is skipped cleanly otherwise:
the parity table of ``algos.py`` rerun on device arrays against the float64 reference (params and
every state, all sizes, a 2,000-tensor list, misaligned buffers for the scalar path), CPU-vs-GPU
agreement, bad inputs, stream ordering, DLPack and ``__cuda_array_interface__`` producers, and a
tensor of more than 2^31 elements (``slow``).
"""

from __future__ import annotations


import numpy as np
import pytest

import fusedopt
from fusedopt import _backend, _core, _cuda_arrays, functional, reference

from algos import ALGO_BY_NAME, ALGO_CONFIG_IDS, ALGO_CONFIGS, ALGOS, DTYPE_IDS, DTYPES, SIZES, STEPS
from test_parity import TOL, check, full_and_plain, is_f, many_small_specs, random_like, seed_of

BUILT = bool(fusedopt.build_info()["cuda"])
GPU = fusedopt.cuda_available()
ADAM_HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
               maximize=False, decoupled_weight_decay=False)


# ---- without a GPU ---------------------------------------------------------------------------------


def test_cuda_submodule_matches_build_info():
    assert hasattr(_core, "cuda") == BUILT
    if not BUILT:
        assert fusedopt.cuda_available() is False
        return
    info = _core.cuda.info()
    assert info["device_count"] == _core.cuda.device_count() >= 0
    assert _core.cuda.is_available() == (info["device_count"] > 0) == fusedopt.cuda_available()
    assert (info["reason"] is None) == (info["device_count"] > 0)
    assert info["runtime_version"] > 0
    archs = info["architectures"].split()
    assert "native" not in info["architectures"]
    assert info["chunk_size"] % 4 == 0
    assert archs, info


needs_build = pytest.mark.skipif(not BUILT, reason="fusedopt was built without CUDA")


ADAM_HYPER = (1e-3, (0.9, 0.999), 1e-8, 0.0, False, False, False)  # adam's, in its order
HYPER = {
    "adam": ADAM_HYPER,
    "sgd": (0.1, 0.0, 0.0, 0.0, False, False),
    "nadam": (1e-3, (0.9, 0.999), 1e-8, 0.0, 4e-3, False, False),
    "ewa": (0.9,),
}


@needs_build
@pytest.mark.skipif(GPU, reason="checks the behaviour without a usable CUDA device")
@pytest.mark.parametrize("fn", ["adam", "sgd", "nadam", "ewa"])
def test_call_without_device_is_a_clean_runtime_error(fn):
    lists = {"adam": 5, "sgd": 3, "nadam": 4, "ewa": 2}[fn]
    ptrs = [[0x100000 * (k + 1)] for k in range(lists)]
    if fn in ("adam", "sgd"):
        ptrs[-1] = None  # an optional list the call does not use
    with pytest.raises(RuntimeError, match=rf"^{fn}: CUDA error: .+\(cuda\w+, in "):
        _core.cuda.bind(fn, tuple(ptrs), [16], "float32", HYPER[fn])
    assert _core.cuda.device_count() == 0  # and the module still answers


@needs_build
def test_empty_call_needs_no_device():
    empty = _core.cuda.bind("adam", ([], None, [], [], None), [], "float32", ADAM_HYPER,
                            grads_later=True)
    assert empty.run([], step=1) is None and empty.device == -1
    # tensors of 0 elements are skipped: their pointers are never looked at
    zero = _core.cuda.bind("adam", ([0], [0], [0], [0], None), [0], "float64", ADAM_HYPER)
    assert zero.run(step=3) is None
    mu = _core.cuda.bind("nadam", ([], [], [], []), [], "float32", HYPER["nadam"]).run(step=1)
    assert mu == pytest.approx(0.9 * (1 - 0.5 * 0.96 ** 4e-3), rel=1e-15)


P = [0x10000 * (k + 1) for k in range(8)]  # distinct, aligned, never dereferenced


@needs_build
@pytest.mark.parametrize(
    "lists, kw, exc, msg",
    [
        ([[P[0]], [P[1]], [P[2]]], dict(sizes=[4]), TypeError,
         r"adam: lists must be a tuple of the 5 lists of adam"),
        ([[P[0]], [P[1]], [P[2]], [P[3], P[4]], None], dict(sizes=[4]), ValueError,
         r"exp_avg_sqs has 2 pointers, expected 1 \(one per param\)"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None], dict(sizes=[4, 4]), ValueError,
         r"sizes has 2 entries, expected 1"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None], dict(sizes=[-1]), ValueError, r"sizes\[0\] is -1"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None], dict(sizes=[4.0]), TypeError,
         r"sizes\[0\] is a float, expected an int"),
        ([[P[0]], [1.5], [P[2]], [P[3]], None], dict(sizes=[4]), TypeError,
         r"grads\[0\] is a float, expected a device pointer \(int\)"),
        ([[P[0]], [-8], [P[2]], [P[3]], None], dict(sizes=[4]), ValueError, r"grads\[0\] is -8"),
        ([[P[0]], [0], [P[2]], [P[3]], None], dict(sizes=[4]), ValueError,
         r"grads\[0\] is a null pointer \(with 4 elements\)"),
        ([[P[0]], [P[1] + 2], [P[2]], [P[3]], None], dict(sizes=[4]), ValueError,
         r"grads\[0\] = 0x20002 is not aligned to 4 bytes \(the size of float32\)"),
        ([[P[0]], [P[1] + 4], [P[2]], [P[3]], None], dict(sizes=[4], dtype="float64"), ValueError,
         r"not aligned to 8 bytes \(the size of float64\)"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None], dict(sizes=[4], dtype="float16"), TypeError,
         r"dtype is 'float16', expected 'float32' or 'float64'"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None], dict(sizes=[4], dtype=["float32", "float32"]),
         ValueError, r"dtype has 2 entries, expected 1"),
        ([[P[0]], [P[1]], [P[0] + 12], [P[3]], None], dict(sizes=[4]), ValueError,
         r"exp_avgs\[0\] overlaps params\[0\]"),
        ([(P[0], P[4]), [P[1], P[1]], [P[2], P[5]], [P[3], P[6]], None], dict(sizes=[4, 4]), None,
         None),  # grads may share memory: they are only read
        ([P[0], [P[1]], [P[2]], [P[3]], None], dict(sizes=[4]), TypeError,
         r"params must be a list or tuple of device pointers \(int\), got int"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None], dict(sizes=[4], hyper=(1e-3,)), TypeError,
         r"adam: hyper must be a tuple of the 7 hyper-parameters of adam"),
        ([[P[0]], [P[1]], [P[2]], [P[3]], None],
         dict(sizes=[4], hyper=(-1.0, *ADAM_HYPER[1:])), ValueError,
         r"^adam: Invalid learning rate: -1.0$"),
    ],
)
def test_pointer_checks_come_before_any_cuda_call(lists, kw, exc, msg):
    """Every check that needs no driver refuses bad input first, so these raise the same with or
    without a GPU (the pointers are not device memory: a call that passes them all reaches the
    driver, which has no device here or says the memory is not device memory)."""
    kwargs = dict(dtype="float32", hyper=ADAM_HYPER)
    kwargs.update(kw)
    hyper = kwargs.pop("hyper")
    sizes, dtype = kwargs.pop("sizes"), kwargs.pop("dtype")
    if exc is None:
        with pytest.raises(RuntimeError if not GPU else TypeError):
            _core.cuda.bind("adam", tuple(lists), sizes, dtype, hyper)
        return
    with pytest.raises(exc, match=msg):
        _core.cuda.bind("adam", tuple(lists), sizes, dtype, hyper)


@needs_build
def test_run_arguments_are_checked_before_any_cuda_call():
    """A bound call of no elements needs no driver: its run's arguments are checked all the
    same."""
    b = _core.cuda.bind("adam", ([0], None, [0], [0], None), [0], "float32", ADAM_HYPER,
                        grads_later=True)
    for kwargs, exc, msg in [
        (dict(step=0), ValueError, r"^adam: step must be >= 1, got 0$"),
        (dict(step=1, stream=-1), ValueError, r"^adam: stream is -1, not a stream handle \(int\)$"),
        (dict(step=1, wait_streams=5), TypeError, r"wait_streams must be a list or tuple"),
        (dict(step=1, lr=float("inf")), ValueError, r"^adam: Invalid learning rate: inf$"),
    ]:
        with pytest.raises(exc, match=msg):
            b.run([0], **kwargs)
    with pytest.raises(ValueError, match=r"^adam: grads has 2 pointers, expected 1"):
        b.run([0, 0], step=1)
    with pytest.raises(TypeError, match=r"^adam: grads must be a list or tuple of device pointers"):
        b.run(step=1)
    assert b.run([0], step=1) is None
    # a reduction adds its sums into a device array it is given
    r = _core.cuda.bind("sumsq", ([0, 0],), [0, 0], "float32", ())
    with pytest.raises(TypeError, match=r"^sumsq: out is required: a device array of 2 float64"):
        r.run()
    with pytest.raises(TypeError, match=r"^sumsq: out is a str, expected a device pointer"):
        r.run(out="x")
    assert r.run(out=0x10000) is None  # no elements: nothing is launched, nothing zeroed
    with pytest.raises(TypeError, match=r"^sumsq: sumsq takes no grads$"):
        r.run([0, 0], out=0x10000)


class FakeDeviceArray:
    """An object that says, through __cuda_array_interface__, that it is device memory."""

    def __init__(self, ptr, shape=(10,), typestr="<f4", strides=None, readonly=False, version=3,
                 stream=None):
        self.__cuda_array_interface__ = dict(data=(ptr, readonly), shape=shape, typestr=typestr,
                                             strides=strides, version=version, stream=stream)


def fake(k, **kw):
    return FakeDeviceArray(P[k], **kw)


def masked(k):
    a = fake(k)
    a.__cuda_array_interface__["mask"] = fake(7)
    return a


def fake_adam(params=None, grads=None, exp_avgs=None, exp_avg_sqs=None):
    return [
        [fake(0)] if params is None else params,
        [fake(1)] if grads is None else grads,
        [fake(2)] if exp_avgs is None else exp_avgs,
        [fake(3)] if exp_avg_sqs is None else exp_avg_sqs,
    ]


@needs_build
@pytest.mark.parametrize(
    "lists, exc, msg",
    [
        (fake_adam(grads=[np.zeros(10, np.float32)]), TypeError,
         r"adam: grads\[0\] is host memory \(numpy.ndarray\), but params\[0\] is a CUDA array"),
        (fake_adam(exp_avgs=[object()]), TypeError, r"exp_avgs\[0\] is a object, but params\[0\]"),
        (fake_adam(grads=[fake(1, typestr="<f8")]), TypeError,
         r"grads\[0\] has dtype float64, expected float32 \(the dtype of params\[0\]\)"),
        (fake_adam(params=[fake(0, typestr="<f2")]), TypeError,
         r"params\[0\] has dtype float16, expected float32 or float64"),
        (fake_adam(params=[fake(0, typestr=">f4")]), TypeError, r"float32 \(big-endian\)"),
        (fake_adam(exp_avgs=[fake(2, readonly=True)]), ValueError, r"exp_avgs\[0\] is read-only"),
        (fake_adam(grads=[fake(1, shape=(2, 5))]), ValueError,
         r"grads\[0\] has shape \(2, 5\), expected \(10,\) \(the shape of params\[0\]\)"),
        (fake_adam(*[[fake(k, shape=(2, 5), strides=(40, 8) if k == 3 else None)]
                     for k in range(4)]), ValueError,
         r"exp_avg_sqs\[0\] is not contiguous \(fusedopt never copies a buffer"),
        (fake_adam(*[[fake(k, shape=(2, 5), strides=(4, 8) if k == 1 else None)]
                     for k in range(4)]), ValueError,
         r"grads\[0\] has a different memory order \(F\) than params\[0\] \(C\)"),
        (fake_adam(exp_avg_sqs=[fake(3), fake(4)]), ValueError,
         r"exp_avg_sqs has 2 arrays, expected 1 \(one per param\)"),
        (fake_adam(grads="g"), TypeError, r"grads must be a list or tuple of CUDA arrays, got str"),
        (fake_adam(grads=[fake(0)]), ValueError, r"grads\[0\] overlaps params\[0\]"),
        (fake_adam(grads=[masked(1)]), ValueError, r"adam: grads\[0\] has a mask"),
    ],
)
def test_device_arrays_are_checked_before_launch(lists, exc, msg):
    with pytest.raises(exc, match=msg):
        functional.adam(*lists, step=1)


@needs_build
def test_host_arrays_first_go_to_the_cpu_which_refuses_device_arrays():
    p = np.zeros(10, np.float32)
    with pytest.raises(TypeError, match=r"adam: grads\[0\] is a FakeDeviceArray, expected a numpy"):
        functional.adam([p], [fake(1)], [np.zeros_like(p)], [np.zeros_like(p)], step=1)
    assert not p.any()


@needs_build
def test_a_lying_array_interface_is_caught_by_the_driver():
    """A __cuda_array_interface__ over host memory passes the Python checks; the C++ side asks the
    driver and refuses it (TypeError), or, without a device, fails with the driver's error."""
    host = [np.zeros(10, np.float32) for _ in range(4)]
    arrays = [[FakeDeviceArray(a.ctypes.data)] for a in host]
    with pytest.raises(TypeError if GPU else RuntimeError,
                       match=r"params\[0\] = 0x[0-9a-f]+ is host memory" if GPU else "CUDA error"):
        functional.adam(*arrays, step=1, lr=0.1)
    assert not any(a.any() for a in host)


def test_numpy_lists_go_to_the_cpu_backend():
    a = [np.zeros(3)]
    assert not _backend.on_device(a)
    assert not _backend.on_device([])
    assert _backend.as_list(a[0])[0] is a[0]
    assert _backend.on_device(_backend.as_list(fake(0)))


class _NoStream:
    """Forwards DLPack to a NumPy array (which accepts no CUDA stream argument)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None, **kw):
        return self.a.__dlpack__(**kw)


@pytest.mark.parametrize("order", ["C", "F"])
def test_dlpack_capsule_is_read_in_place(order):
    from fusedopt import _dlpack

    a = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)) if order == "F" else (
        np.arange(12, dtype=np.float32).reshape(3, 4))
    v = _dlpack.view(_NoStream(a), 0, _cuda_arrays.View, _cuda_arrays.layout)
    assert v.ptr == a.ctypes.data
    assert v.shape == (3, 4)
    assert v.dtype == a.dtype.name
    assert v.layout & (_cuda_arrays.F if order == "F" else _cuda_arrays.C)
    assert not v.layout & (_cuda_arrays.C if order == "F" else _cuda_arrays.F)
    assert v.readonly is False
    assert v.device == 0
    a.flags.writeable = False
    try:
        v = _dlpack.view(_NoStream(a), 0, _cuda_arrays.View, _cuda_arrays.layout)
    except BufferError:  # a NumPy too old to export read-only arrays
        return
    assert v.readonly is True


def test_layout_flags():
    C, F = _cuda_arrays.C, _cuda_arrays.F
    assert _cuda_arrays.layout((3, 4), None, 4) == C
    assert _cuda_arrays.layout((1, 4), None, 4) == C | F
    assert _cuda_arrays.layout((3, 4), (16, 4), 4) == C
    assert _cuda_arrays.layout((3, 4), (4, 12), 4) == F
    assert _cuda_arrays.layout((3, 4), (32, 4), 4) == 0
    assert _cuda_arrays.layout((3, 0), (4, 12), 4) == C | F
    assert _cuda_arrays.layout((3, 1), (4, 99), 4) == C | F


# ---- on a GPU ----------------------------------------------------------------------------------------


class Lib:
    """The little the tests need of an array library: to and from the device, sync, raw views."""

    def __init__(self, name):
        self.name = name
        if name == "torch":
            import torch

            self.mod = torch
        else:
            import cupy

            self.mod = cupy

    def __repr__(self):
        return self.name

    def to_device(self, a):
        if self.name == "torch":
            return self.mod.from_numpy(np.array(a, order="K")).cuda()
        return self.mod.array(a, order="K")

    def to_host(self, x):
        if self.name == "torch":
            return x.cpu().numpy()
        return self.mod.asnumpy(x)

    def synchronize(self):
        if self.name == "torch":
            self.mod.cuda.synchronize()
        else:
            self.mod.cuda.runtime.deviceSynchronize()

    def misaligned(self, a, offset):
        """A device copy of ``a`` (1-D) starting ``offset`` elements into a larger allocation."""
        big = np.zeros(a.size + offset, a.dtype)
        big[offset:] = a.ravel()
        return self.to_device(big)[offset:]

    def device_count(self):
        if self.name == "torch":
            return self.mod.cuda.device_count()
        return self.mod.cuda.runtime.getDeviceCount()


def _libs():
    """The array libraries that can reach the GPU here, and why the others cannot."""
    if not GPU:
        return [], {}
    found, why = [], {}
    try:
        import torch

        if torch.cuda.is_available():
            found.append("torch")
        else:
            why["torch"] = "torch.cuda.is_available() is False"
    except Exception as e:  # not installed, or broken
        why["torch"] = f"{type(e).__name__}: {e}"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            found.append("cupy")
    except Exception as e:  # not installed, or built for another CUDA
        why["cupy"] = f"{type(e).__name__}: {e}"
    return found, why


LIBS, _WHY = _libs()
_REASON = (
    "no CUDA device" + (f" ({_core.cuda.info()['reason']})" if BUILT else " (built without CUDA)")
    if not GPU else f"neither CuPy nor a CUDA build of PyTorch is usable: {_WHY}"
)
requires_gpu = pytest.mark.skipif(not LIBS, reason=_REASON)


@pytest.fixture(params=LIBS or ["none"])
def lib(request):
    if request.param == "none":
        pytest.skip(_REASON)
    return Lib(request.param)


@pytest.fixture
def torch_lib():
    if "torch" not in LIBS:
        pytest.skip("needs a CUDA build of PyTorch" if LIBS else _REASON)
    return Lib("torch")


def run_gpu(lib, algo, cfg, specs, seed, steps=STEPS, offset=0):
    """test_parity.run_both with the kernel's buffers on the device for the whole run: params and
    states are uploaded once, each step's grads are uploaded, the update is queued on the current
    stream, and everything comes back at the end. ``offset`` > 0 places every buffer that many
    elements into its allocation (1-D specs only), so that no pointer is 16-byte aligned."""
    rng = np.random.default_rng(seed)
    params = [random_like(rng, shape, dt, order) for shape, dt, order in specs]
    states = algo.new_states(params, cfg)

    def up(a):
        return lib.misaligned(a, offset) if offset else lib.to_device(a)

    d_params = [up(p) for p in params]
    d_states = {k: [up(a) for a in v] for k, v in states.items()}
    params64 = [p.astype(np.float64) for p in params]
    states64 = {k: [a.astype(np.float64) for a in v] for k, v in states.items()}
    ref_bufs = dict(params=params64, **states64)
    peaks = {k: [float(np.max(np.abs(a), initial=0.0)) for a in v] for k, v in ref_bufs.items()}
    carry_f = carry_r = None
    carries_f, carries_r = [], []
    for t in range(cfg.start, cfg.start + steps):
        grads = [random_like(rng, p.shape, p.dtype, "F" if is_f(p) else "C") for p in params]
        carry_f = algo.step(functional, d_params, [up(g) for g in grads], d_states, t, cfg.hp,
                            carry_f)
        carry_r = algo.step(reference, params64, [g.astype(np.float64) for g in grads], states64,
                            t, cfg.hp, carry_r)
        carries_f.append(carry_f)
        carries_r.append(carry_r)
        for k, v in ref_bufs.items():
            peaks[k] = [max(pk, float(np.max(np.abs(a), initial=0.0))) for pk, a in zip(peaks[k], v)]
    lib.synchronize()
    got = {"params": [lib.to_host(x) for x in d_params]}
    got.update({k: [lib.to_host(x) for x in v] for k, v in d_states.items()})
    return got, ref_bufs, peaks, carries_f, carries_r


MAIN = [
    pytest.param(a, c, dt, n, id=f"{aid}-{DTYPE_IDS[dt]}-n{n}")
    for (a, c), aid in zip(ALGO_CONFIGS, ALGO_CONFIG_IDS)
    for dt in DTYPES
    for n in SIZES
]


@requires_gpu
@pytest.mark.parametrize("algo, cfg, dtype, n", MAIN)
def test_parity_gpu(lib, algo, cfg, dtype, n):
    label = f"{lib}-{algo.name}-{cfg.id}-{DTYPE_IDS[dtype]}-n{n}"
    check(algo, *run_gpu(lib, algo, cfg, [((n,), dtype, "C")], seed_of(label)), label)


ALL_SHAPES = [((n,), np.float32, "C") for n in SIZES] + [
    ((33, 65), np.float64, "C"), ((65, 33), np.float32, "F"), ((0,), np.float32, "C"),
    ((3, 0), np.float64, "F"), ((70000,), np.float64, "C"), ((2, 3, 5), np.float32, "C"),
]


@requires_gpu
@pytest.mark.parametrize("algo, cfg", ALGO_CONFIGS, ids=ALGO_CONFIG_IDS)
def test_parity_gpu_all_shapes_and_dtypes_one_call(lib, algo, cfg):
    """Every size, C and Fortran order, empty arrays and both dtypes in one call (one launch
    sequence per dtype)."""
    label = f"{lib}-{algo.name}-{cfg.id}-all"
    check(algo, *run_gpu(lib, algo, cfg, ALL_SHAPES, seed_of(label)), label)


@requires_gpu
@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: a.name)
def test_parity_gpu_misaligned_scalar_path(lib, algo, dtype, offset):
    """Buffers not 16-byte aligned take the scalar path, which must give what the vector path
    gives (both within the tolerance of the reference)."""
    cfg = algo.config(algo.full)
    label = f"{lib}-{algo.name}-{DTYPE_IDS[dtype]}-offset{offset}"
    specs = [((n,), dtype, "C") for n in (1, 7, 4097, 65539, 200003)]
    check(algo, *run_gpu(lib, algo, cfg, specs, seed_of(label), offset=offset), label)


MANY = [
    pytest.param(a, c, dt, id=f"{a.name}-{c.id}-{DTYPE_IDS[dt]}")
    for a in ALGOS
    for c in full_and_plain(a)
    for dt in DTYPES
]


@requires_gpu
@pytest.mark.parametrize("algo, cfg, dtype", MANY)
def test_many_small_tensors_gpu(lib, algo, cfg, dtype):
    """2,000 tensors: dozens of launches of at most 49..98 tensors each (Note [Kernel-argument
    limit] in csrc/cuda/apply.cuh)."""
    label = f"{lib}-{algo.name}-{cfg.id}-{DTYPE_IDS[dtype]}-many"
    specs = many_small_specs(dtype, count=2000, seed=seed_of(label))
    check(algo, *run_gpu(lib, algo, cfg, specs, seed_of(label), steps=4), label)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("algo, cfg", ALGO_CONFIGS, ids=ALGO_CONFIG_IDS)
def test_cpu_and_gpu_agree(lib, algo, cfg, dtype):
    """The CPU and CUDA kernels, from the same start with the same grads, agree within twice the
    reference tolerance (each may round differently: FMA contraction, not bits, is shared)."""
    rng = np.random.default_rng(seed_of("cpu-gpu", algo.name, cfg.id, DTYPE_IDS[dtype]))
    params = [random_like(rng, (n,), dtype, "C") for n in (33, 65539)]
    states = algo.new_states(params, cfg)
    d_params = [lib.to_device(p) for p in params]
    d_states = {k: [lib.to_device(a) for a in v] for k, v in states.items()}
    carry_c = carry_g = None
    for t in range(cfg.start, cfg.start + STEPS):
        grads = [random_like(rng, p.shape, dtype, "C") for p in params]
        carry_c = algo.step(functional, params, grads, states, t, cfg.hp, carry_c)
        carry_g = algo.step(functional, d_params, [lib.to_device(g) for g in grads], d_states, t,
                            cfg.hp, carry_g)
        if carry_c is None:
            assert carry_g is None
        else:  # NAdam's mu_product: double arithmetic on the host in both
            assert carry_g == pytest.approx(carry_c, rel=1e-14)
    rtol, atol = TOL[dtype]
    for name, cpu, dev in [("params", params, d_params)] + [
            (k, states[k], d_states[k]) for k in states]:
        for i, (c, d) in enumerate(zip(cpu, dev)):
            d = lib.to_host(d)
            assert d.dtype == c.dtype
            scale = float(np.max(np.abs(c), initial=0.0))
            np.testing.assert_allclose(d, c, rtol=2 * rtol, atol=2 * atol * scale,
                                       err_msg=f"{lib}-{algo.name}-{cfg.id}: {name}[{i}]")


@requires_gpu
def test_update_is_in_place_and_zero_copy(lib):
    p = lib.to_device(np.ones(1000, np.float32))
    g = lib.to_device(np.full(1000, 2.0, np.float32))
    before = _cuda_arrays.view(p, 0).ptr
    functional.sgd(p, g, step=1, lr=0.25)
    assert _cuda_arrays.view(p, 0).ptr == before
    assert np.array_equal(lib.to_host(p), np.full(1000, 0.5, np.float32))


def _snapshot(lib, arrays):
    """Host copies of the arrays a test can read back (NumPy or ``lib``'s; None for others)."""
    out = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            out.append(a.copy())
        elif isinstance(a, FakeDeviceArray):
            out.append(None)
        else:
            out.append(lib.to_host(a).copy())
    return out


@requires_gpu
def test_bad_device_inputs_modify_nothing(lib):
    rng = np.random.default_rng(0)
    n = 4097

    def fresh():
        return [lib.to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(4)]

    def expect(exc, msg, p, g, m, v):
        flat = [a for lst in (p, g, m, v) for a in lst]
        before = _snapshot(lib, flat)
        with pytest.raises(exc, match=msg):
            functional.adam(p, g, m, v, step=1, lr=0.1)
        lib.synchronize()
        after = _snapshot(lib, flat)
        for i, (x, y) in enumerate(zip(before, after)):
            assert x is None or np.array_equal(x, y), f"buffer {i} modified by a refused call"

    a = [fresh() for _ in range(2)]
    p, g, m, v = ([a[0][k], a[1][k]] for k in range(4))
    # host and device mixed (the host array last, after a valid device tensor)
    expect(TypeError, r"grads\[1\] is host memory", p, [g[0], np.zeros(n, np.float32)], m, v)
    # wrong dtype
    d64 = lib.to_device(np.zeros(n, np.float64))
    expect(TypeError, r"exp_avgs\[1\] has dtype float64, expected float32", p, g, [m[0], d64], v)
    # not contiguous
    strided = lib.to_device(np.zeros(2 * n, np.float32))[::2]
    expect(ValueError, r"exp_avg_sqs\[1\] is not contiguous", p, g, m, [v[0], strided])
    # wrong shape
    short = lib.to_device(np.zeros(n - 1, np.float32))
    expect(ValueError, r"grads\[1\] has shape \(4096,\), expected \(4097,\)", p, [g[0], short], m, v)
    # read-only (a __cuda_array_interface__ that says so, over real device memory)
    ro = FakeDeviceArray(_cuda_arrays.view(m[1], 0).ptr, shape=(n,), readonly=True)
    expect(ValueError, r"exp_avgs\[1\] is read-only", p, g, [m[0], ro], v)
    # a buffer updated twice
    expect(ValueError, r"exp_avgs\[1\] overlaps", p, g, [m[0], p[1]], v)
    # float16
    h = lib.to_device(np.zeros(n, np.float16))
    expect(TypeError, r"params\[0\] has dtype float16", [h], [h], [h], [h])


@requires_gpu
@pytest.mark.parametrize("where", [0, 37, 99])
def test_host_memory_among_views_of_one_allocation_is_refused(lib, where):
    """Note [One driver query per allocation]: 100 params carved out of one device allocation are
    vouched for by one query, but a host buffer among them (in any position, so anywhere in
    address order) is still refused by name, and nothing is written."""
    xp = lib.mod
    big = lib.to_device(np.zeros((100, 16), np.float32))
    params = [big[i] for i in range(100)]
    grads = [lib.to_device(np.ones(16, np.float32)) for _ in range(100)]
    host = np.zeros(16, np.float32)
    fake = FakeDeviceArray(host.ctypes.data, shape=(16,))
    grads_bad = list(grads)
    grads_bad[where] = fake
    with pytest.raises(TypeError, match=rf"grads\[{where}\] = 0x[0-9a-f]+ is host memory"):
        functional.sgd(params, grads_bad, step=1, lr=1.0)
    lib.synchronize()
    assert not lib.to_host(big).any()
    functional.sgd(params, grads, step=1, lr=1.0)  # and the same call with the device grad runs
    lib.synchronize()
    assert bool((big == -1.0).all()) if lib.name == "torch" else bool(xp.all(big == -1.0))


@requires_gpu
def test_arrays_on_two_devices_are_refused(lib):
    if lib.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    n = 100
    if lib.name == "torch":
        on = [lib.mod.zeros(n, device=f"cuda:{d}") for d in (0, 1, 0, 0)]
    else:
        on = []
        for d in (0, 1, 0, 0):
            with lib.mod.cuda.Device(d):
                on.append(lib.mod.zeros(n, np.float32))
    with pytest.raises(ValueError, match=r"grads\[0\] is on cuda:1, expected cuda:0"):
        functional.adam(*[[a] for a in on], step=1)


@requires_gpu
def test_dlpack_and_array_interface_producers(torch_lib):
    """A producer seen only through DLPack, or only through __cuda_array_interface__, gets the
    same update as the torch tensors themselves."""

    class OnlyDLPack:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kw):
            return self.t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    class OnlyCAI:
        def __init__(self, t):
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    algo, cfg = ALGO_BY_NAME["adam"], ALGO_BY_NAME["adam"].config("amsgrad")
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(70001).astype(np.float32)
    grads = [rng.standard_normal(70001).astype(np.float32) for _ in range(3)]
    results = []
    for wrap in (lambda t: t, OnlyDLPack, OnlyCAI):
        p = torch_lib.to_device(p0)
        states = {k: [torch_lib.to_device(a) for a in v] for k, v in
                  algo.new_states([p0], cfg).items()}
        for t, g in enumerate(grads, start=1):
            algo.step(functional, [wrap(p)], [wrap(torch_lib.to_device(g))],
                      {k: [wrap(a) for a in v] for k, v in states.items()}, t, cfg.hp)
        results.append([torch_lib.to_host(p)] + [torch_lib.to_host(v[0]) for v in states.values()])
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert np.array_equal(x, y)


@requires_gpu
def test_update_follows_the_producers_current_stream(torch_lib):
    """Work queued on a non-default, non-blocking stream: the update is queued behind it on that
    stream (the producer's current stream), and nothing synchronizes (the stream is still busy
    when the call returns)."""
    torch = torch_lib.mod
    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep is missing")
    n = 1 << 22
    p = torch.zeros(n, device="cuda")
    g = torch.zeros(n, device="cuda")
    g_src = torch.full((n,), 2.0, device="cuda")
    s = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        torch.cuda._sleep(1 << 28)  # ~0.1 s of GPU time, queued on s
        g.copy_(g_src)  # g is ready only after it
        functional.sgd(p, g, step=1, lr=0.5)
        busy = not s.query()
        out = p.clone()
    s.synchronize()
    assert busy, "the call synchronized with the stream"
    assert torch.equal(out, torch.full_like(out, -1.0))
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


@requires_gpu
def test_update_waits_for_the_interface_stream_of_each_array(torch_lib):
    """__cuda_array_interface__ v3: a grad produced on stream s2 while the update runs on s1 (the
    stream of the params' interface) must wait for s2's work."""
    torch = torch_lib.mod
    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep is missing")

    class CAI:
        def __init__(self, t, stream):
            self.__cuda_array_interface__ = dict(t.__cuda_array_interface__, version=3,
                                                 stream=stream.cuda_stream)

    n = 1 << 22
    p = torch.zeros(n, device="cuda")
    g = torch.zeros(n, device="cuda")
    g_src = torch.full((n,), 2.0, device="cuda")
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(s2):
        torch.cuda._sleep(1 << 28)
        g.copy_(g_src)
    functional.sgd(CAI(p, s1), CAI(g, s2), step=1, lr=0.5)
    torch.cuda.synchronize()
    assert torch.equal(p, torch.full_like(p, -1.0))


@requires_gpu
def test_cupy_current_stream(lib):
    if lib.name != "cupy":
        pytest.skip("the CuPy variant of the stream test")
    cp = lib.mod
    spin = cp.RawKernel(
        r'''extern "C" __global__ void spin(long long cycles) {
              long long t0 = clock64(); while (clock64() - t0 < cycles) {} }''', "spin")
    n = 1 << 22
    p = cp.zeros(n, cp.float32)
    g = cp.zeros(n, cp.float32)
    cp.cuda.runtime.deviceSynchronize()
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        spin((1,), (1,), (np.int64(1 << 28),))
        g.fill(2.0)
        functional.sgd(p, g, step=1, lr=0.5)
        busy = not s.done
        out = p.copy()
    s.synchronize()
    assert busy, "the call synchronized with the stream"
    assert bool((out == -1.0).all())


@requires_gpu
def test_current_device_is_restored(torch_lib):
    torch = torch_lib.mod
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    p = torch.ones(10, device="cuda:1")
    g = torch.ones(10, device="cuda:1")
    with torch.cuda.device(0):
        functional.sgd(p, g, step=1, lr=1.0)
        assert torch.cuda.current_device() == 0
    assert torch.equal(p.cpu(), torch.zeros(10))


@requires_gpu
@pytest.mark.parametrize("cls, kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                     ("AdamW", dict(lr=0.01, amsgrad=True)),
                                     ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
                                     ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1))])
def test_optimizer_classes_keep_state_on_the_device(lib, cls, kw):
    rng = np.random.default_rng(7)
    host = [rng.standard_normal(s).astype(np.float32) for s in ((5, 3), (1000,))]
    dev = [lib.to_device(a) for a in host]
    opt_h, opt_d = getattr(fusedopt, cls)(host, **kw), getattr(fusedopt, cls)(dev, **kw)
    for _ in range(3):
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in host]
        opt_h.step(grads)
        opt_d.step([lib.to_device(g) for g in grads])
    for h, d in zip(host, dev):
        np.testing.assert_allclose(lib.to_host(d), h, rtol=2e-5, atol=2e-6)
    sd = opt_d.state_dict()
    for i, entry in sd["state"].items():
        for name, value in entry.items():
            if name != "step" and not isinstance(value, (int, float)):
                assert type(value) is type(dev[0]), (name, type(value))
                live = opt_d.state[i][name]
                assert value.data_ptr() != live.data_ptr() if lib.name == "torch" \
                    else value.data.ptr != live.data.ptr, (i, name)
    # the device's state dict resumes on the host, and the host's on the device
    opt_h2 = getattr(fusedopt, cls)([a.copy() for a in host], **kw)
    opt_h2.load_state_dict(sd)
    opt_d.load_state_dict(opt_h.state_dict())
    host2 = [p for g in opt_h2.param_groups for p in g["params"]]
    for _ in range(2):
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in host]
        opt_h.step(grads)
        opt_h2.step(grads)
        opt_d.step([lib.to_device(g) for g in grads])
    for h, h2, d in zip(host, host2, dev):
        np.testing.assert_allclose(h2, h, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(lib.to_host(d), h, rtol=2e-5, atol=2e-6)
    for entry in opt_d.state.values():
        for name, value in entry.items():
            if name != "step" and not isinstance(value, (int, float)):
                assert type(value) is type(dev[0]), (name, type(value))


@requires_gpu
def test_a_step_of_two_groups_refused_by_the_second_changes_nothing(lib):
    """Note [Every call checked before the first] on a real device: group 1's grad is its own
    param, which only the pointer check refuses (_core.Calls), before group 0's launch."""
    rng = np.random.default_rng(9)
    host = [rng.standard_normal(n).astype(np.float32) for n in (7, 300)]
    dev = [lib.to_device(a) for a in host]
    opt = fusedopt.Adam([{"params": [dev[0]]}, {"params": [dev[1]], "lr": 0.1}], lr=0.01)
    opt.step([lib.to_device(np.ones_like(a)) for a in host])
    before = [lib.to_host(d).copy() for d in dev]
    steps = [opt.state[i]["step"] for i in range(2)]
    with pytest.raises(ValueError, match=r"^adam: grads\[1\] overlaps params\[1\]$"):
        opt.step([lib.to_device(np.ones_like(host[0])), dev[1]])
    for d, b in zip(dev, before):
        np.testing.assert_array_equal(lib.to_host(d), b)
    assert [opt.state[i]["step"] for i in range(2)] == steps


@requires_gpu
def test_ema_keeps_averages_on_the_device(lib):
    rng = np.random.default_rng(8)
    host = [rng.standard_normal(s).astype(np.float32) for s in ((5, 3), (1000,))]
    dev = [lib.to_device(a) for a in host]
    ema_h, ema_d = fusedopt.EMA(host, decay=0.9), fusedopt.EMA(dev, decay=0.9)
    for _ in range(3):
        for h, d in zip(host, dev):
            h[...] = rng.standard_normal(h.shape)
            d[...] = lib.to_device(h)
        ema_h.update()
        ema_d.update()
    outs = ema_d.averages()
    assert all(type(o) is type(dev[0]) for o in outs)
    for o, h in zip(outs, ema_h.averages()):
        np.testing.assert_allclose(lib.to_host(o), h, rtol=1e-6, atol=1e-7)
    ema_d.copy_to()
    for d, h in zip(dev, ema_h.averages()):
        np.testing.assert_allclose(lib.to_host(d), h, rtol=1e-6, atol=1e-7)


@requires_gpu
@pytest.mark.slow
def test_more_than_2_31_elements(lib):
    """int64 indexing: SGD with momentum over one tensor of 2^31 + 4099 float32 elements (three
    buffers, 26 GB); step 1 makes p = -g and buf = g exactly, so every element can be checked,
    those past 2^31 and the scalar tail included."""
    n = (1 << 31) + 4099
    need = 3 * 4 * n + (1 << 30)
    if lib.name == "torch":
        free, _ = lib.mod.cuda.mem_get_info()
    else:
        free, _ = lib.mod.cuda.runtime.memGetInfo()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free device memory, {free / 2**30:.0f} free")
    xp = lib.mod
    if lib.name == "torch":
        pattern = xp.arange(1021, dtype=xp.float32, device="cuda") - 510.0
        g = pattern.repeat(n // 1021 + 1)[:n]
        p = xp.zeros(n, dtype=xp.float32, device="cuda")
        buf = xp.full((n,), float("nan"), dtype=xp.float32, device="cuda")
    else:
        pattern = xp.arange(1021, dtype=xp.float32) - 510.0
        g = xp.tile(pattern, n // 1021 + 1)[:n]
        p = xp.zeros(n, dtype=xp.float32)
        buf = xp.full((n,), float("nan"), dtype=xp.float32)
    functional.sgd(p, g, buf, step=1, lr=1.0, momentum=0.9)
    lib.synchronize()
    piece = 1 << 28
    for lo in range(0, n, piece):
        hi = min(n, lo + piece)
        assert bool((p[lo:hi] == -g[lo:hi]).all()), f"p wrong in [{lo}, {hi})"
        assert bool((buf[lo:hi] == g[lo:hi]).all()), f"momentum_buffer wrong in [{lo}, {hi})"


@needs_build
@pytest.mark.parametrize("n", [3, 40])
def test_an_overlap_at_one_address_names_the_later_slot(n):
    """Two arrays at one address: the later slot's is named as the overlapping one, however many
    spans the call sorts (Note [Sorting spans]; 40 tensors: 160 spans, the radix sort), even when
    the later slot's array comes first in the call (exp_avgs[0] is params[n - 1])."""
    ptrs = [[0x10000000 * (k + 1) + 0x1000 * i for i in range(n)] for k in range(4)]
    ptrs[0][n - 1] = ptrs[2][0]
    with pytest.raises(ValueError, match=rf"^adam: exp_avgs\[0\] overlaps params\[{n - 1}\]$"):
        _core.cuda.bind("adam", (*ptrs, None), [10] * n, "float32", ADAM_HYPER)


@requires_gpu
@pytest.mark.parametrize("clip", [True, False], ids=["clip_grad_norm_", "global_norm"])
def test_clipping_on_device_matches_host(lib, clip):
    """fusedopt.clip_grad_norm_ / global_norm over device arrays (the CUDA reduction and scaling
    passes) against the same over host arrays (the CPU's): the norms to 1e-12 relative (the same
    order of additions; the device may contract a square and an add), the grads to 1e-6."""
    rng = np.random.default_rng(seed_of("clip", str(lib), str(clip)))
    host = [(rng.standard_normal(n) * 3).astype(dt)
            for n, dt in ((7, np.float64), (200003, np.float32), (1, np.float32))]
    dev = [lib.to_device(h) for h in host]
    fn = fusedopt.clip_grad_norm_ if clip else fusedopt.global_norm
    kw = {"max_norm": 1.0} if clip else {}
    want, got = fn(host, **kw), fn(dev, **kw)
    lib.synchronize()
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    for d, h in zip(dev, host):
        np.testing.assert_allclose(lib.to_host(d), h, rtol=1e-6, atol=0)
