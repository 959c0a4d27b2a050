"""fusedopt.torch on CPU tensors against torch.optim's fused and foreach Adam, the NumPy path
(fusedopt.Adam over NumPy arrays) and the memory wall, round by round.

Workloads: ``tiny200`` (200 params of 8 float32 elements: the per-step host overhead, all of it
Python and bindings), ``flat16M`` and ``small4096`` (bench/workloads.py). Each implementation owns
its own params, grads and state (same sizes, same values), so none reads another's cache lines.
One round times every implementation once, in a rotated order, each as the median of ``--reps``
calls of ``--steps`` steps; the ratios (time / fusedopt.torch's time) are taken within each round
and their median and range over the rounds are reported, with GB/s against the ceiling measured
in the same round (``_core.cpu.rmw``: one read-modify-write pass over the same bytes as an fp32
Adam step, 28 bytes per element).

    python bench/torch_front.py --rounds 11 --json bench/results/<machine>-torch-front.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt import _core  # noqa: E402
from workloads import sizes as workload_sizes  # noqa: E402

BYTES_PER_ELEMENT = 28  # fp32 Adam: reads p, g, m, v; writes p, m, v


def _tensors(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(n, generator=g).requires_grad_() for n in sizes]
    for p in ps:  # small positive grads: thousands of steps stay finite
        p.grad = torch.rand(p.shape, generator=g) * 1e-3 + 1e-4
    return ps


def implementations(sizes):
    """name -> a function doing one step, each over its own tensors."""
    out = {}
    ps = _tensors(sizes, 0)
    views = [p.detach().numpy() for p in ps]
    grads = [p.grad.numpy() for p in ps]
    states = [[np.zeros_like(v) for v in views] for _ in range(2)]
    out["ceiling"] = lambda: _core.cpu.rmw(views, grads, states)
    ps = _tensors(sizes, 0)
    opt = ft.Adam(ps, lr=1e-3)
    out["fusedopt.torch"] = opt.step
    ps = _tensors(sizes, 0)
    arrays = [p.detach().numpy() for p in ps]
    np_grads = [p.grad.numpy() for p in ps]
    np_opt = fusedopt.Adam(arrays, lr=1e-3)
    out["fusedopt (NumPy)"] = lambda: np_opt.step(np_grads)
    ps = _tensors(sizes, 0)
    out["torch fused"] = torch.optim.Adam(ps, lr=1e-3, fused=True).step
    ps = _tensors(sizes, 0)
    out["torch foreach"] = torch.optim.Adam(ps, lr=1e-3, foreach=True).step
    return out


def time_once(fn, steps, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        ts.append((time.perf_counter() - t0) / steps)
    return statistics.median(ts)


def run_workload(name, sizes, rounds, reps, steps, impls=None, base="fusedopt.torch",
                 bytes_per_element=BYTES_PER_ELEMENT, nbytes=None):
    """Rows of one workload: each implementation of ``impls`` (default: the Adam steps above)
    timed once per round in a rotated order; ratios to ``base``'s time in the same round. GB/s
    counts ``nbytes`` per step (default: ``bytes_per_element`` per element of ``sizes``), or
    ``nbytes[name]`` where it is a dict (an implementation that moves other bytes: its % of the
    ceiling is then its GB/s over the ceiling's in the same round)."""
    impls = implementations(sizes) if impls is None else impls
    names = list(impls)
    for fn in impls.values():  # warm-up: state allocated, pages touched, calls bound
        for _ in range(3):
            fn()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            times[n].append(time_once(impls[n], steps, reps))
    nbytes = sum(sizes) * bytes_per_element if nbytes is None else nbytes
    moved = nbytes if isinstance(nbytes, dict) else dict.fromkeys(names, nbytes)
    rows = []
    base_times = times[base]
    for n in names:
        ratio = [a / b for a, b in zip(times[n], base_times)]
        scale = moved[n] / moved["ceiling"]
        ceil = [scale * c / a for c, a in zip(times["ceiling"], times[n])]
        t = statistics.median(times[n])
        rows.append({
            "workload": name, "impl": n, "median_us": t * 1e6, "bytes": moved[n],
            "gb_s": moved[n] / t / 1e9,
            "time_vs_fusedopt_torch": statistics.median(ratio),
            "range": [min(ratio), max(ratio)],
            "pct_ceiling": 100 * statistics.median(ceil),
            "pct_ceiling_range": [100 * min(ceil), 100 * max(ceil)],
        })
    return rows


def print_rows(rows):
    """The rows of run_workload as a Markdown table."""
    print("| workload | implementation | median time | GB/s | % of ceiling [range] | "
          "time / fusedopt.torch's [range over rounds] |")
    print("|---|---|---:|---:|---|---|")
    for r in rows:
        t = r["median_us"]
        shown = f"{t:.1f} us" if t < 1e4 else f"{t / 1e3:.2f} ms"
        lo, hi = r["pct_ceiling_range"]
        print(f"| {r['workload']} | {r['impl']} | {shown} | {r['gb_s']:.2f} | "
              f"{r['pct_ceiling']:.0f} [{lo:.0f}-{hi:.0f}] | {r['time_vs_fusedopt_torch']:.2f} "
              f"[{r['range'][0]:.2f}-{r['range'][1]:.2f}] |")


def machine():
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "fusedopt": fusedopt.__version__, "threads": torch.get_num_threads(),
            "fusedopt_threads": fusedopt.get_num_threads(), "commit": commit,
            "python": platform.python_version()}


def main(impls=None, bytes_per_element=BYTES_PER_ELEMENT, description=__doc__):
    """The command line; ``impls`` (sizes -> implementations) and ``bytes_per_element`` let
    another bench (bench/clip.py) time its own implementations the same way."""
    ap = argparse.ArgumentParser(description=description.split("\n\n")[0])
    ap.add_argument("--workloads", default="tiny200,flat16M,small4096")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="shrunken workloads (smoke test)")
    ap.add_argument("--json")
    args = ap.parse_args()
    info = machine()
    print(f"# {info['cpu']}, {info['cpus']} CPUs, torch {info['torch']} "
          f"({info['threads']} threads), fusedopt {info['fusedopt']} @ {info['commit']}")
    rows = []
    for w in args.workloads.split(","):
        sizes = [8] * 200 if w == "tiny200" else workload_sizes(w, args.quick)
        steps = 200 if w == "tiny200" else 1
        rows += run_workload(w, sizes, args.rounds, args.reps, steps,
                             impls=None if impls is None else impls(sizes),
                             bytes_per_element=bytes_per_element)
    print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
