"""A/B of builds: several compiled ``_core`` modules timed side by side in one process.

A compiler flag or a driver change moves a memory-bound kernel by a few percent, which is the size
of the noise between two runs on a shared machine; only a comparison inside one run, on the same
buffers, can see it. This loads each build's ``_core`` shared object under its own name and, per
(workload, algorithm) group, times every build's ``fusedopt.functional`` step and every build's
ceiling (``rmw``) on one set of buffers, interleaved in a fresh random order each round
(``harness.time_group``). Each group gets fresh buffers; ``--groups`` repeats it, so effects of one
allocation (page placement) show up as spread between groups rather than as a difference between
builds.

    # build the variants you want to compare (any build directory's _core*.so will do)
    cmake -S . -B /tmp/tuned -G Ninja -DFUSEDOPT_CUDA=OFF -DCMAKE_CXX_FLAGS=-mtune=icelake-server \\
        -Dpybind11_DIR=$(python -m pybind11 --cmakedir) && ninja -C /tmp/tuned
    python bench/ab.py --build base=build/dev/_core.*.so --build tuned=/tmp/tuned/_core.*.so \\
        --workloads flat16M,incache256K --algos sgd,adam --groups 3

Every figure is a percentage of the *first* build's ceiling measured in the same group (above 100:
faster than that ceiling). The installed ``fusedopt`` package provides the Python side
(``functional``); only the compiled module differs between builds. A build from before the bound
calls (one ``_core.cpu.<algorithm>`` function per algorithm) is driven through ``OldCore``, so that
the redesign's kernels can be compared with the kernels before it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import workloads as W  # noqa: E402
from algorithms import ALGOS  # noqa: E402


def load_build(name, pattern):
    """The ``_core`` module in the shared object matching ``pattern``, imported as ``<name>._core``
    (the init function is found by the last component of the name, so several builds coexist)."""
    paths = sorted(glob.glob(pattern))
    if len(paths) != 1:
        raise SystemExit(f"ab: --build {name}={pattern} must match one file, matched {paths}")
    spec = importlib.util.spec_from_file_location(f"ab_{name}._core", paths[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class OldCore:
    """A ``_core`` of one function per algorithm (before the bound calls), behind the one-shot
    ``cpu.call`` that ``fusedopt.functional`` makes."""

    def __init__(self, core):
        self.core = core
        self.cpu = self
        self.rmw = core.cpu.rmw

    def call(self, algo, lists, hyper, step, scalars, name):
        from fusedopt._spec import SPECS

        spec = SPECS[algo]
        kw = dict(zip(spec.call_hypers, hyper))
        if spec.name == "adamw":
            kw["decoupled_weight_decay"] = True
        if spec.step:
            kw["step"] = step
        if spec.scalars:
            kw[spec.scalars[0][0]] = scalars
        return getattr(self.core.cpu, spec.kernel)(*lists, **kw)


def adapted(core):
    """``core`` as fusedopt's Python side calls it now."""
    return core if hasattr(core.cpu, "call") else OldCore(core)


@contextlib.contextmanager
def using(core):
    """Route ``fusedopt.functional`` to ``core`` for the duration (one attribute swap)."""
    from fusedopt import _backend

    saved = _backend._core
    _backend._core = adapted(core)
    try:
        yield
    finally:
        _backend._core = saved


def group_impls(algo, sizes, rng, builds, plain_state):
    params, grads, states = harness.make_arrays(sizes, algo, rng, plain_state)
    lists = [states[s] for s in algo.states]
    impls = []
    for name, core in builds.items():
        stepper = harness.Stepper(algo.fusedopt, params, grads, states)

        def step(stepper=stepper, core=core):
            with using(core):
                stepper()

        impls.append(harness.Impl(f"ceiling:{name}",
                                  lambda core=core: core.cpu.rmw(params, grads, lists)))
        impls.append(harness.Impl(name, step))
    return impls


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="append", required=True, metavar="NAME=PATH",
                   help="a build to compare: a name and the path (glob) of its _core*.so; "
                        "give two or more, the first is the reference")
    p.add_argument("--algos", default="all")
    p.add_argument("--workloads", default="flat16M,incache256K")
    p.add_argument("--groups", type=int, default=3, help="fresh buffers this many times")
    p.add_argument("--rounds", type=int, default=0,
                   help="rounds per group (default: the workload's minimum in run.py, x3)")
    p.add_argument("--plain-state", action="store_true",
                   help="state buffers from np.full rather than as the optimizer classes allocate")
    p.add_argument("--simd", help="force this SIMD path in every build (as FUSEDOPT_SIMD)")
    p.add_argument("--json", type=Path, help="write every group's figures here")
    args = p.parse_args(argv)
    if len(args.build) < 2:
        p.error("give at least two --build")
    return args


def main(argv=None):
    args = parse_args(argv)
    from run import CPU_POLICY

    builds = {}
    for spec in args.build:
        name, _, pattern = spec.partition("=")
        builds[name] = load_build(name, pattern)
        if args.simd:
            builds[name].cpu.set_simd(args.simd)
    names = list(builds)
    ref = names[0]
    algos = list(ALGOS.values()) if args.algos == "all" else [
        ALGOS[a] for a in args.algos.split(",")]
    rng = np.random.default_rng(1)
    out = {"builds": {n: s.partition("=")[2] for n, s in zip(names, args.build)},
           "simd": {n: b.build_info()["simd_active"] for n, b in builds.items()}, "groups": []}
    print("SIMD path:", out["simd"])
    for wl in args.workloads.split(","):
        sizes = W.sizes(wl)
        lo, _, _ = CPU_POLICY.get(wl, (7, 60, 4.0))
        rounds = args.rounds or 3 * lo
        policy = harness.Policy(warmup=2, min_rounds=rounds, max_rounds=rounds, budget_s=0.0)
        print(f"\n== {wl}: % of {ref}'s ceiling in the same group, median over "
              f"{args.groups} groups of {rounds} rounds [min-max]")
        print(f"{'algorithm':18s}" + "".join(f"{n:>22s}" for n in names)
              + "".join(f"{'ceiling:' + n:>22s}" for n in names[1:]))
        for algo in algos:
            pct = {k: [] for k in names + [f"ceiling:{n}" for n in names[1:]]}
            for _ in range(args.groups):
                impls = group_impls(algo, sizes, rng, builds, args.plain_state)
                times = harness.time_group(impls, policy, rng)
                med = {k: statistics.median(v) for k, v in times.items()}
                base = med[f"ceiling:{ref}"]
                for k in pct:
                    pct[k].append(100.0 * base / med[k])
                out["groups"].append({"workload": wl, "algo": algo.name, "median_s": med})
            cells = "".join(
                f"{statistics.median(v):9.1f} [{min(v):5.1f}-{max(v):5.1f}]" for v in pct.values())
            print(f"{algo.name:18s}{cells}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
