"""Results do not depend on the number of threads: the same 8 steps run in fresh interpreters with
OMP_NUM_THREADS=1, 2 and 3 give bitwise-equal parameters and states, on every SIMD path.

The work is one large tensor of 300,007 elements (five 65536-element chunks and a ragged tail, so
the static schedule hands different chunks to different threads) plus 200 small ones, in float32
and float64 in the same call.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fusedopt

TESTS_DIR = pathlib.Path(__file__).resolve().parent
PACKAGE_PARENT = pathlib.Path(fusedopt.__file__).resolve().parent.parent
ISAS = list(fusedopt.build_info()["simd_supported"])
THREADS = (1, 2, 3)  # 3 on a 2-core machine: more threads than cores, and an odd split

# (algorithm, config id) from the table in algos.py
CASES = [
    ("adam", "amsgrad"),
    ("adam", "wd"),
    ("adamw", "amsgrad"),
    ("nadam", "decoupled"),
    ("nadam", "t1000"),
    ("rmsprop", "centered-momentum"),
    ("sgd", "nesterov"),
    ("sgd", "dampening"),
    ("adagrad", "lr_decay"),
    ("adadelta", "plain"),
    ("adamax", "plain"),
    ("ewa", "beta0.9"),
]

SCRIPT = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
import fusedopt
from fusedopt import functional
from algos import ALGO_BY_NAME

cases = [c.split(":") for c in sys.argv[3].split(",")]
# -1: this build does not report its thread count
out = {"threads": np.array(getattr(fusedopt, "get_num_threads", lambda: -1)()),
       "simd": np.array(fusedopt.build_info()["simd_active"])}
for name, cid in cases:
    algo = ALGO_BY_NAME[name]
    cfg = algo.config(cid)
    rng = np.random.default_rng(12345)
    shapes = [(300007,)] + [(int(s),) for s in rng.integers(1, 3000, 200)]
    dtypes = [np.float32 if k % 2 else np.float64 for k in range(len(shapes))]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    states = algo.new_states(params, cfg)
    carry = None
    for t in range(cfg.start, cfg.start + 8):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        carry = algo.step(functional, params, grads, states, t, cfg.hp, carry)
    for key, arrays in dict(params=params, **states).items():
        for dt in (np.float32, np.float64):
            out[f"{name}:{cid}:{key}:{dt.__name__}"] = np.concatenate(
                [a.ravel() for a in arrays if a.dtype == dt])
    if carry is not None:
        out[f"{name}:{cid}:mu_product"] = np.array(carry)
np.savez(sys.argv[1], **out)
"""


def run_in_subprocess(tmp_path, threads, isa):
    out = tmp_path / f"threads{threads}-{isa}.npz"
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["FUSEDOPT_SIMD"] = isa
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    cases = ",".join(f"{a}:{c}" for a, c in CASES)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(TESTS_DIR), cases],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("isa", ISAS)
def test_bitwise_equal_across_thread_counts(tmp_path, isa):
    runs = {t: run_in_subprocess(tmp_path, t, isa) for t in THREADS}
    openmp = fusedopt.build_info()["openmp"]
    for t, res in runs.items():
        assert str(res.pop("simd")) == isa
        reported = int(res.pop("threads"))
        if reported != -1:  # the package reports the thread count OMP_NUM_THREADS gave it
            assert reported == (t if openmp else 1)
    base = runs[THREADS[0]]
    assert len(base) > 50
    for t in THREADS[1:]:
        assert runs[t].keys() == base.keys()
        for key in base:
            a, b = base[key], runs[t][key]
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert a.tobytes() == b.tobytes(), (
                f"{key}: {THREADS[0]} and {t} threads differ in "
                f"{int(np.sum(a != b))} of {a.size} elements"
            )


def test_set_num_threads_is_reported_and_does_not_change_results():
    if not hasattr(fusedopt, "get_num_threads"):
        pytest.skip("this build has no fusedopt.get_num_threads")
    from algos import ALGO_BY_NAME
    from fusedopt import functional

    default = fusedopt.get_num_threads()
    assert default >= 1
    algo = ALGO_BY_NAME["adam"]
    cfg = algo.config("amsgrad")
    results = []
    try:
        for n in (1, 2, 3):
            fusedopt.set_num_threads(n)
            assert fusedopt.get_num_threads() == (n if fusedopt.build_info()["openmp"] else 1)
            rng = np.random.default_rng(7)
            params = [rng.standard_normal(200003).astype(np.float32), rng.standard_normal(77)]
            states = algo.new_states(params, cfg)
            for t in range(1, 4):
                grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
                algo.step(functional, params, grads, states, t, cfg.hp)
            results.append([a.tobytes() for a in params + [s for v in states.values() for s in v]])
    finally:
        fusedopt.set_num_threads(0)
    assert fusedopt.get_num_threads() == default
    assert results[0] == results[1] == results[2]
    with pytest.raises(ValueError, match="n must be >= 0"):
        fusedopt.set_num_threads(-1)
