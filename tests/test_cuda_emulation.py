"""The CUDA driver, checked without a GPU (Note [The emulated CUDA driver] in csrc/cuda/emulate.h).

``_core._cuda_emulation.call`` runs a call through the CUDA launcher's plan and the CUDA kernels'
per-block bodies, compiled by the host compiler, every block and thread on the host. Both drivers
are built without FMA contraction and use the same math, so every algorithm, option, storage type
and pass kind must give the CPU driver's bits, on tensors of sizes that put the chunk and vector
boundaries everywhere, in lists long enough to take several launches, aligned (the 16-byte vector
path) and misaligned (the scalar path), with empty tensors among them. ``plan`` shows how the
launcher cuts a call: under the 4 KiB argument limit and the per-launch block limit, a tensor going
on into the next launch, and the index arithmetic of a tensor past 2^31 elements, which needs no
memory to check. The built module's device code is listed with cuobjdump where both are there.

The same tests run first in bench/gpu_check.sh, so that a first GPU run tells a launcher bug (red
here) from a device bug (red only in tests/test_cuda.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedopt
from fusedopt import _core
from fusedopt._spec import SPECS

from algos import ALGO_CONFIG_IDS, ALGO_CONFIGS, ALGO_BY_NAME, DTYPE_IDS, DTYPES

EMU = _core._cuda_emulation
SIZES = (1, 3, 4, 5, 4097, 65536, 65537)
CHUNK = 1 << 16
BLOCKS = 320  # kMaxBlocks
STEPS = 3


class Via:
    """fusedopt.functional's signatures over one driver's one-shot call (``_core.cpu.call`` or the
    emulation's), so that algos.py's table drives both."""

    def __init__(self, call):
        self._call = call

    def __getattr__(self, name):
        spec = SPECS[name]

        def fn(*lists, step=None, mu_product=None, **hp):
            values = {h.name: h.default for h in spec.hypers}
            values.update(hp)
            hyper = tuple(values[n] for n in spec.call_hypers)
            lists = lists + (None,) * (len(spec.buffers) - len(lists))
            return self._call(name, lists, hyper, step, mu_product)

        return fn


CPU = Via(lambda *a: _core.cpu.call(*a, ""))
GPU = Via(EMU.call)


def make(sizes, dtype, seed, misaligned=()):
    """Params of ``sizes`` (those at the indices in ``misaligned`` start 4 or 8 bytes past a
    16-byte boundary, as do their grads and states) and grads."""
    rng = np.random.default_rng(seed)

    def array(n, i, fill=None):
        if i in misaligned:
            base = np.empty(n + 1, dtype)
            a = base[1:] if base.ctypes.data % 16 == 0 else base[:-1]
        else:
            a = np.empty(n, dtype)
            assert a.ctypes.data % 16 == 0 or n == 0
        a[...] = rng.standard_normal(n) if fill is None else fill
        return a

    params = [array(n, i) for i, n in enumerate(sizes)]
    grads = [[array(n, i) for i, n in enumerate(sizes)] for _ in range(STEPS)]
    return params, grads, array


def twins(algo, cfg, sizes, dtype, seed, misaligned=()):
    """The same params, states and grads twice: for the CPU and for the emulated CUDA driver."""
    out = []
    for _ in range(2):
        params, grads, array = make(sizes, dtype, seed, misaligned)
        states = {s: [array(n, i, cfg.init.get(s, 0.0)) for i, n in enumerate(sizes)]
                  for s in algo.states if algo.uses(s, cfg.hp)}
        out.append((params, grads, states))
    return out


def bits(params, states):
    return [a.tobytes() for a in params] + [a.tobytes() for v in states.values() for a in v]


def run_both(algo, cfg, sizes, dtype, seed=0, misaligned=()):
    (p1, g1, s1), (p2, g2, s2) = twins(algo, cfg, sizes, dtype, seed, misaligned)
    c1 = c2 = None
    for k in range(STEPS):
        t = cfg.start + k
        c1 = algo.step(CPU, p1, g1[k], s1, t, cfg.hp, c1)
        c2 = algo.step(GPU, p2, g2[k], s2, t, cfg.hp, c2)
        assert c1 == c2, f"scalar state at step {t}"
        assert bits(p1, s1) == bits(p2, s2), f"step {t}"


@pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[d] for d in DTYPES])
@pytest.mark.parametrize("algo, cfg", ALGO_CONFIGS, ids=ALGO_CONFIG_IDS)
def test_every_algorithm_and_option_gives_the_cpu_bits(algo, cfg, dtype):
    """Every size of SIZES and an empty tensor in one list; the odd tensors misaligned."""
    sizes = (*SIZES, 0)
    run_both(algo, cfg, sizes, dtype, misaligned={1, 3, 5})


@pytest.mark.parametrize("n, dtype", [(73, np.float32), (2000, np.float64)])
@pytest.mark.parametrize("name, cid", [("adam", "amsgrad"), ("sgd", "plain"),
                                       ("rmsprop", "centered-momentum"), ("nadam", "wd")])
def test_long_lists_take_several_launches(name, cid, n, dtype):
    rng = np.random.default_rng(n)
    sizes = tuple(int(s) for s in rng.integers(0, 3000, n))
    sizes = sizes[:10] + (70000,) + sizes[10:]  # one tensor of two chunks among them
    algo = ALGO_BY_NAME[name]
    nbuf = 2 + len([s for s in algo.states if algo.uses(s, algo.config(cid).hp)])
    plan = EMU.plan([s for s in sizes if s], nbuf)
    assert len(plan) > 1 or len([s for s in sizes if s]) <= plan[0]["max_tensors"]
    run_both(algo, algo.config(cid), sizes, dtype, seed=n, misaligned=set(range(0, n, 7)))


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
def test_a_tensor_goes_on_into_the_next_launch(misaligned):
    """40 one-chunk tensors, then one of 300 chunks: the first launch holds the 40 and 280 chunks
    of the long one (the block limit), which goes on as the next launch's first tensor; then one
    more short tensor."""
    sizes = (1000,) * 40 + (300 * CHUNK - 3, 77)
    plan = EMU.plan(list(sizes), 3)
    assert [len(launch["blocks"]) for launch in plan] == [320, 21]
    algo = ALGO_BY_NAME["sgd"]
    run_both(algo, algo.config("momentum"), sizes, np.float32,
             misaligned={40} if misaligned else set())
    tensors = make(sizes, np.float32, 9, {40} if misaligned else set())[0]
    assert EMU.call("sumsq", (tensors,), ()).tobytes() == \
        _core.cpu.call("sumsq", (tensors,), (), None, None, "").tobytes()


@pytest.mark.parametrize("name, cid", [("adam", "amsgrad-decoupled-maximize"), ("nadam", "t1000"),
                                       ("adagrad", "lr_decay")])
def test_a_million_elements(name, cid):
    algo = ALGO_BY_NAME[name]
    run_both(algo, algo.config(cid), (1_000_003, 5), np.float32, misaligned={1})


@pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[d] for d in DTYPES])
def test_reductions_give_the_cpu_bits(dtype):
    rng = np.random.default_rng(3)
    sizes = [*SIZES, 0, 1_000_003] + [int(s) for s in rng.integers(0, 5000, 300)]
    tensors = []
    for i, n in enumerate(sizes):
        base = np.empty(n + 1, dtype)
        t = base[i % 2: i % 2 + n]
        t[...] = rng.standard_normal(n) * (i + 1)
        tensors.append(t)
    want = _core.cpu.call("sumsq", (tensors,), (), None, None, "")
    got = EMU.call("sumsq", (tensors,), ())
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[d] for d in DTYPES])
def test_the_clipping_scale_gives_the_cpu_bits(dtype):
    """The scaling pass of clip_grad_norm_ (spec "scale"), misaligned tensors included."""
    sizes = [*SIZES, 0, 70_001]
    outs = []
    for run in (0, 1):
        tensors = []
        for i, n in enumerate(sizes):
            base = np.empty(n + 1, dtype)
            t = base[i % 2: i % 2 + n]
            t[...] = np.random.default_rng(i).standard_normal(n)
            tensors.append(t)
        if run == 0:
            _core.cpu.call("scale", (tensors,), (0.37,), None, None, "")
        else:
            EMU.call("scale", (tensors,), (0.37,))
        outs.append(b"".join(t.tobytes() for t in tensors))
    assert outs[0] == outs[1]


# ---- the plan ---------------------------------------------------------------------------------


def chunks(numels):
    """(tensor, chunk) of every chunk of a call, in order."""
    return [(i, c) for i, n in enumerate(numels) for c in range(-(-n // CHUNK))]


def walk(plan, numels):
    """The (tensor, chunk, begin, len) the plan's blocks cover, in order, with the tensor as the
    call's index (a launch's tensor t is the call's tensor by where the launch starts)."""
    out = []
    call = 0  # the call's index of the launch's tensor 0
    for launch in plan:
        blocks = launch["blocks"]
        assert 0 < len(blocks) <= BLOCKS
        assert len(launch["numel"]) <= launch["max_tensors"] <= 255
        for t, chunk, begin, length, row in blocks:
            out.append((call + t, chunk, begin, length, row))
        last_t, last_chunk = blocks[-1][0], blocks[-1][1]
        # the next launch starts with this launch's last tensor if it has chunks left
        n = launch["numel"][last_t]
        call += last_t + (1 if (last_chunk + 1) * CHUNK >= n else 0)
    return out


@pytest.mark.parametrize("nbuf, reduce", [(1, True), (2, False), (3, True), (4, False), (5, False)])
def test_every_chunk_once_in_order_under_the_limits(nbuf, reduce):
    rng = np.random.default_rng(nbuf)
    numels = [int(n) for n in rng.integers(1, 3 * CHUNK, 400)] + [25 * BLOCKS * CHUNK // 10]
    plan = EMU.plan(numels, nbuf, reduce)
    covered = walk(plan, numels)
    assert [(t, c) for t, c, *_ in covered] == chunks(numels)
    for t, c, begin, length, row in covered:
        assert begin == c * CHUNK
        assert length == min(CHUNK, numels[t] - begin)
        assert row == (t if reduce else -1)
    for launch in plan:
        assert launch["param_bytes"] + 128 + 16 <= 4096  # + the algorithm object and padding
    if reduce:
        assert [launch["first_chunk"] for launch in plan] == list(
            np.cumsum([0] + [len(launch["blocks"]) for launch in plan[:-1]]))


def test_a_launch_fills_its_tensors_then_a_tensor_goes_on_into_the_next():
    plan = EMU.plan([10] * 200, 4)  # 58 tensors of 4 buffers fit one launch's arguments
    assert [len(launch["blocks"]) for launch in plan] == [58, 58, 58, 26]
    plan = EMU.plan([BLOCKS * CHUNK + 7, 5], 2)
    assert [len(launch["blocks"]) for launch in plan] == [320, 2]
    assert plan[1]["numel"] == [BLOCKS * CHUNK + 7, 5]  # the first tensor, continued
    assert plan[1]["blocks"][0][:4] == (0, 320, BLOCKS * CHUNK, 7)


def test_a_tensor_past_two_to_the_31_elements():
    n = 2**31 + 5
    plan = EMU.plan([3, n, 4], 5)
    covered = walk(plan, [3, n, 4])
    assert len(covered) == 1 + 32769 + 1
    t, chunk, begin, length, _ = covered[-2]
    assert (t, chunk, begin, length) == (1, 32768, 2**31, 5)
    assert covered[-1][:4] == (2, 0, 0, 4)
    plan = EMU.plan([2**40], 1, True)
    assert walk(plan, [2**40])[-1][:4] == (0, 2**24 - 1, 2**40 - CHUNK, CHUNK)


def test_plan_refuses_a_buffer_count_it_has_no_kernel_for():
    with pytest.raises(ValueError, match="nbuf must be 1..5"):
        EMU.plan([1], 6)


# ---- the device code in the module ------------------------------------------------------------


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    for entry in sys.path:  # the nvidia-cuda-cuobjdump wheel of the test extra
        for sub in ("cu13", "cu12", "cuda_cuobjdump"):
            path = Path(entry) / "nvidia" / sub / "bin" / "cuobjdump"
            if path.is_file():
                return str(path)
    return None


CUOBJDUMP = _cuobjdump()


def _global_function(line):
    """Whether a line of ``cuobjdump --dump-elf-symbols`` is a global function: its type and
    binding come first, as ``STT_FUNC STB_GLOBAL`` (cuobjdump 13.2) or ``FUNC GLOBAL`` (13.5)."""
    fields = line.split()
    return len(fields) >= 3 and fields[0] in ("STT_FUNC", "FUNC") and fields[1] in ("STB_GLOBAL", "GLOBAL")


def _kernel_struct(kernel):
    """The algorithm object's name, by the registry's convention: the spec's name in CamelCase."""
    return "".join(part.capitalize() for part in kernel.split("_")) + "Algo"


@pytest.mark.skipif(not fusedopt.build_info()["cuda"], reason="fusedopt was built without CUDA")
@pytest.mark.skipif(CUOBJDUMP is None, reason="no cuobjdump (pip install nvidia-cuda-cuobjdump)")
def test_the_module_holds_every_kernel_for_sm80_sm90_and_ptx():
    so = _core.__file__
    run = lambda *a: subprocess.run([CUOBJDUMP, *a, so], capture_output=True, text=True,  # noqa: E731
                                    check=True, timeout=300).stdout
    elf, ptx = run("--list-elf"), run("--list-ptx")
    assert ".sm_80.cubin" in elf and ".sm_90.cubin" in elf, elf
    assert ".sm_90.ptx" in ptx, ptx
    # the kernels of each cubin (mangled names), and the PTX's entries
    per_arch = {}
    arch = None
    for line in run("--dump-elf-symbols").splitlines():
        if line.startswith("arch = "):
            arch = line.split("=")[1].strip()
            per_arch[arch] = set()
        elif _global_function(line) and "kernel" in line:
            per_arch[arch].add(line.split()[-1])
    entries = {line.split()[-1].rstrip("(") for line in run("--dump-ptx").splitlines()
               if line.startswith(".visible .entry") or line.startswith(".entry")}
    assert set(per_arch) >= {"sm_80", "sm_90"}
    assert per_arch["sm_80"] == per_arch["sm_90"] == entries
    names = subprocess.run(["c++filt"], input="\n".join(sorted(entries)), capture_output=True,
                           text=True, check=True).stdout if shutil.which("c++filt") else ""
    kernels = {SPECS[s].kernel for s in SPECS}
    for kernel in kernels:
        for storage in ("Storage<float, float, float>", "Storage<double, double, double>"):
            if SPECS[kernel].passes > 1:  # an object per pass, <Name><Pass>Algo (LAMB's)
                base = _kernel_struct(kernel)[: -len("Algo")]
                found = set(re.findall(rf"{base}(\w+)Algo<fusedopt::{re.escape(storage)}", names))
                assert len(found) >= SPECS[kernel].passes, f"{kernel} over {storage}: {found}"
                continue
            algo = f"{_kernel_struct(kernel)}<fusedopt::{storage}"
            assert algo in names, f"no device code for {kernel} over {storage}"
