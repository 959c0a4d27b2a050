"""The kernels release the GIL: two Python threads stepping different optimizers at the same time
must get exactly (bitwise) what running them one after the other gives."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

import fusedopt
from fusedopt import functional

N = 1 << 20  # large enough that each call runs long with the GIL released
STEPS = 12


def _adam_job(p, g, m, v):
    for t in range(1, STEPS + 1):
        functional.adam([p], [g], [m], [v], step=t, lr=1e-2, weight_decay=0.01,
                        decoupled_weight_decay=True)


def _rmsprop_job(p, g, sq, buf, gavg):
    for t in range(1, STEPS + 1):
        functional.rmsprop([p], [g], [sq], [buf], [gavg], step=t, lr=1e-2, momentum=0.9,
                           centered=True)


def _fresh(seed, count):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(N).astype(np.float32)
    g = rng.standard_normal(N).astype(np.float32)
    return [p, g] + [np.zeros(N, np.float32) for _ in range(count)]


def test_two_threads_equal_sequential():
    seq_a, seq_b = _fresh(1, 2), _fresh(2, 3)
    _adam_job(*seq_a)
    _rmsprop_job(*seq_b)

    par_a, par_b = _fresh(1, 2), _fresh(2, 3)
    errors = []

    def guard(job, bufs):
        try:
            job(*bufs)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(_adam_job, par_a)),
               threading.Thread(target=guard, args=(_rmsprop_job, par_b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for want, got in zip(seq_a + seq_b, par_a + par_b):
        assert np.array_equal(want, got)
    # and the run did something
    assert not np.array_equal(par_a[0], _fresh(1, 0)[0])


def test_gil_is_released_during_a_kernel():
    """The main thread keeps running Python while a worker sits in long kernel calls.

    Were the GIL held in the kernel, the main thread would stop for the whole compute part of each
    call: its longest pause inside a call's window would be most of the window. With the GIL
    released it only pauses for the OS scheduler and the brief hand-overs of the GIL. The median
    over the calls keeps one pause of a loaded machine from deciding the test."""
    n = 1 << 24
    rng = np.random.default_rng(3)
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    windows = []

    def work():
        for t in range(1, 8):
            t0 = time.perf_counter()
            functional.adam([p], [g], [m], [v], step=t)
            windows.append((t0, time.perf_counter()))

    fusedopt.set_num_threads(1)  # leave the other core to the main thread
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5e-4)  # quick GIL hand-overs: the pauses they cause stay short
    try:
        th = threading.Thread(target=work)
        stamps = []
        th.start()
        while th.is_alive():
            stamps.append(time.perf_counter())
        th.join()
    finally:
        fusedopt.set_num_threads(0)
        sys.setswitchinterval(interval)
    stamps = np.asarray(stamps)
    ratios = []
    for a, b in windows[:-1]:  # the main loop may end inside the last window
        inside = np.concatenate([[a], stamps[(stamps > a) & (stamps < b)], [b]])
        ratios.append(np.diff(inside).max() / (b - a))
    assert float(np.median(ratios)) < 0.5, ratios
