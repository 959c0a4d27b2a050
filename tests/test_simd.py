"""Run-time instruction-set dispatch: the compiled paths, the one chosen, forcing one with
FUSEDOPT_SIMD, refusing one the build or CPU lacks, and bitwise-equal results on every path
(Note [No FMA contraction]: every operation is rounded as written, whatever the vector width)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, functional

from algos import ALGOS

INFO = fusedopt.build_info()
SUPPORTED = list(INFO["simd_supported"])


def test_build_info_lists_paths():
    assert INFO["simd_active"] in INFO["simd_supported"]
    assert set(INFO["simd_supported"]) <= set(INFO["simd"])
    if platform.machine() in ("x86_64", "AMD64"):
        assert INFO["simd"] == ["baseline", "avx2", "avx512"]
    else:
        assert INFO["simd"] == ["baseline"]
    # the best supported path is chosen by default (unless the environment forced one)
    if not os.environ.get("FUSEDOPT_SIMD"):
        assert INFO["simd_active"] == SUPPORTED[-1]


def _active_in_subprocess(value):
    env = dict(os.environ, FUSEDOPT_SIMD=value)
    return subprocess.run(
        [sys.executable, "-c", "import fusedopt; print(fusedopt.build_info()['simd_active'])"],
        env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("isa", SUPPORTED)
def test_env_forces_a_path(isa):
    r = _active_in_subprocess(isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa


@pytest.mark.parametrize("isa", ["sse9", "neon"] + [i for i in INFO["simd"] if i not in SUPPORTED])
def test_env_refuses_unavailable_path(isa):
    r = _active_in_subprocess(isa)
    assert r.returncode != 0
    assert f"FUSEDOPT_SIMD={isa} is not available" in r.stderr


def test_set_simd_refuses_unknown():
    with pytest.raises(ValueError, match="set_simd: 'sse9'"):
        _core.cpu.set_simd("sse9")
    assert fusedopt.build_info()["simd_active"] == INFO["simd_active"]


def _run_all(isa, dtype):
    """Every algorithm's fullest config, 5 steps on a ragged list, on one instruction set."""
    _core.cpu.set_simd(isa)
    out = {}
    try:
        for algo in ALGOS:
            cfg = algo.config(algo.full)
            rng = np.random.default_rng(7)
            params = [rng.standard_normal(n).astype(dtype) for n in (1, 15, 100, 70001)]
            states = algo.new_states(params, cfg)
            carry = None
            for t in range(cfg.start, cfg.start + 5):
                grads = [rng.standard_normal(p.size).astype(dtype) for p in params]
                carry = algo.step(functional, params, grads, states, t, cfg.hp, carry)
            out[algo.name] = [params] + [states[k] for k in sorted(states)]
    finally:
        _core.cpu.set_simd(INFO["simd_active"])
    return out


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="one instruction set on this CPU: nothing to compare")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
def test_every_path_gives_bitwise_equal_results(dtype):
    results = {isa: _run_all(isa, dtype) for isa in SUPPORTED}
    base = results[SUPPORTED[0]]
    for isa in SUPPORTED[1:]:
        for name, lists in results[isa].items():
            for k, (got_list, want_list) in enumerate(zip(lists, base[name])):
                for got, want in zip(got_list, want_list):
                    assert got.tobytes() == want.tobytes(), f"{name} buffer {k}: {isa} != {SUPPORTED[0]}"
