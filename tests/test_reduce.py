"""The reduction pass (Note [Deterministic reductions] in csrc/cpu/driver.h), through the spec that
declares one: ``sumsq``, each tensor's sum of squares in double.

The order of the additions is fixed by the data alone, so the sums are compared bit for bit with a
NumPy transcription of that order (lanes of 512, a pairwise tree, chunks in order), across thread
counts and SIMD paths, and against ``math.fsum`` within the error bound of a double sum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fusedopt
from fusedopt import _core

LANES = 512
CHUNK = 1 << 16
SIZES = [0, 1, 3, 511, 512, 513, 4097, 65536, 65537, 200_003]


def sumsq(tensors):
    return _core.cpu.call("sumsq", (tensors,), (), None, None, "sumsq")


def in_order(x):
    """The sum of squares of ``x`` in the order the drivers add them: per chunk, lane j adds the
    squares of elements j, j + 512, ... in turn; the lanes meet in a pairwise tree; the chunk sums
    are added in order, from zero."""
    total = 0.0
    sq = x.astype(np.float64).ravel(order="K") ** 2
    for begin in range(0, sq.size, CHUNK):
        chunk = sq[begin:begin + CHUNK]
        acc = np.zeros(LANES)
        for row in range(0, chunk.size, LANES):
            part = chunk[row:row + LANES]
            acc[: part.size] = acc[: part.size] + part
        s = LANES // 2
        while s:
            acc[:s] = acc[:s] + acc[s:2 * s]
            s //= 2
        total = total + acc[0]
    return total


def tensors(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(dtype) for n in SIZES]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sums_are_the_fixed_order_bit_for_bit(dtype):
    ts = tensors(1, dtype)
    got = sumsq(ts)
    assert got.dtype == np.float64 and got.shape == (len(ts),)
    for t, g in zip(ts, got):
        assert g == in_order(t), t.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sums_are_within_a_double_sums_error_of_the_exact_sum(dtype):
    ts = tensors(2, dtype)
    for t, g in zip(ts, sumsq(ts)):
        exact = math.fsum((t.astype(np.float64) ** 2).tolist())
        # a double sum of n positive terms errs by at most about (log2(512) + n / 512) ulp of it
        bound = (9 + t.size / LANES + 2) * np.finfo(np.float64).eps * exact
        assert abs(g - exact) <= bound, (t.size, g, exact)


def test_the_same_bits_for_any_thread_count_and_simd_path():
    ts = tensors(3) + [np.random.default_rng(4).standard_normal((700, 1100))]  # 770,000: parallel
    before = fusedopt.get_num_threads(), fusedopt.build_info()["simd_active"]
    want = sumsq(ts)
    try:
        for threads in (1, 2, 3):
            fusedopt.set_num_threads(threads)
            for isa in fusedopt.build_info()["simd_supported"]:
                _core.cpu.set_simd(isa)
                assert sumsq(ts).tobytes() == want.tobytes(), (threads, isa)
    finally:
        fusedopt.set_num_threads(0)
        _core.cpu.set_simd(before[1])


def test_rows_follow_the_call_across_dtypes_and_empty_tensors():
    rng = np.random.default_rng(5)
    ts = [rng.standard_normal(9).astype(np.float32), np.zeros(0), rng.standard_normal(70000),
          np.full((3, 2), 2.0, np.float32, order="F"), np.zeros((0, 4), np.float32)]
    got = sumsq(ts)
    assert got.tolist() == [in_order(t) for t in ts]
    assert got[3] == 24.0 and got[1] == 0.0 and got[4] == 0.0


def test_nan_and_inf_propagate():
    got = sumsq([np.array([1.0, np.nan]), np.array([np.inf, 1.0], np.float32), np.ones(3)])
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 3.0


def test_a_bound_reduction_holds_its_tensors_and_reads_them_anew():
    t = np.ones(1000, np.float32)
    bound = _core.cpu.bind("sumsq", ([t],), ())
    assert bound.run().tolist() == [1000.0]
    t[:10] = 3.0
    assert bound.run().tolist() == [1080.0]


@pytest.mark.parametrize(
    "lists, exc, message",
    [
        ((5,), TypeError, r"^sumsq: tensors must be a list or tuple of numpy arrays, got int$"),
        (([np.ones(3, np.int32)],), TypeError,
         r"^sumsq: tensors\[0\] has dtype int32, expected float32, float64, bfloat16 or "
         r"float16$"),
        (([np.ones(4)[::2]],), ValueError, r"^sumsq: tensors\[0\] is not contiguous"),
        ((), TypeError, r"^sumsq: lists must be a tuple of the 1 lists of sumsq"),
    ],
)
def test_refused_by_name(lists, exc, message):
    with pytest.raises(exc, match=message):
        _core.cpu.call("sumsq", lists, (), None, None, "sumsq")


def test_read_only_and_shared_tensors_are_fine():
    a = np.arange(6.0)
    a.setflags(write=False)
    assert sumsq([a, a, a[2:]]).tolist() == [55.0, 55.0, 54.0]
