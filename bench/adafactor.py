"""Adafactor on the CPU: fusedopt.torch.Adafactor (CPU tensors), fusedopt.Adafactor (NumPy arrays)
and torch.optim.Adafactor (its default single-tensor loop, and foreach=True), against the memory
wall of the passes fusedopt makes, round by round.

Workloads (float32, or bfloat16 params and grads with ``--dtype bfloat16``: fusedopt's states are
then float32, torch's bfloat16):
  ``gpt6x768``  the matrices and vectors of 6 transformer blocks of width 768 (per block 4 of
                768 x 768, 768 x 3072 and 3072 x 768, 8 vectors of 768, 2 of 3072): 42.5M
                elements, nearly all factored;
  ``m4096``     one 4096 x 4096 matrix (16.8M elements);
  ``vec16M``    one vector of 16Mi elements (unfactored);
  ``small1024`` 1,024 matrices of 64 x 64 (the per-tensor host overhead).
Bytes per element (Note [Adafactor's passes] in csrc/algorithms/adafactor.h): 24 for a factored
param (pass A reads p and g, B reads g, C reads p and g and writes p), 32 for an unfactored one
(A reads p, g, v and writes v; C reads p, g, v and writes p). The ceiling is the same passes with
trivial math through the same driver, timed in the same round: ``_core.cpu.rmw`` over (p, g)
reading only (A), a sum of squares of g (B, ``fusedopt.global_norm``) and a read-modify-write of
p reading g (C); for unfactored params ``rmw`` over (p, g, v) writing v, then p. GB/s = those bytes /
time. Ratios (time / fusedopt.torch's time) are taken within each round. With bfloat16 params and
grads the bytes are 12 per factored element and 22 per unfactored one (float32 v), and the
ceiling moves the same arrays (its pass A over an unfactored param is staged: float32 v written,
bfloat16 p and g read). With bfloat16 the NumPy class also runs with each 16-bit remedy, at its
own bytes per element (factored / unfactored) against that ceiling's GB/s in the same round:
``stochastic_rounding=True`` (12 / 22, the same arrays), ``kahan_summation=True`` (16 / 26: the
bfloat16 compensation read in pass C and written) and ``master_weights=True`` (20 / 30: the
float32 master read in A and C and written in C, with the bfloat16 param written as its copy).

    python bench/adafactor.py --rounds 7 --json bench/results/<machine>-adafactor.json
    python bench/adafactor.py --dtype bfloat16 --json bench/results/<machine>-adafactor-bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt import _core  # noqa: E402
import torch_front  # noqa: E402
from report import machine_info  # noqa: E402


def shapes_of(workload: str, quick: bool) -> list[tuple]:
    if workload == "gpt6x768":
        w, blocks = (64, 2) if quick else (768, 6)
        block = [(w, w)] * 4 + [(w, 4 * w), (4 * w, w)] + [(w,)] * 8 + [(4 * w,)] * 2
        return block * blocks
    if workload == "m4096":
        return [(256, 256)] if quick else [(4096, 4096)]
    if workload == "vec16M":
        return [(1 << 12,)] if quick else [(1 << 24,)]
    if workload == "small1024":
        return [(64, 64)] * (16 if quick else 1024)
    raise SystemExit(f"unknown workload {workload!r}")


# bytes per element (factored, unfactored) of each way of stepping (the module's docstring)
BYTES = {"float32": (24, 32), "bfloat16": (12, 22), "SR": (12, 22), "Kahan": (16, 26),
         "master": (20, 30)}


def bytes_of(shapes: list[tuple], dtype: torch.dtype = torch.float32, remedy: str = "") -> int:
    factored, plain = BYTES[remedy or str(dtype).removeprefix("torch.")]
    return sum(int(np.prod(s)) * (factored if len(s) >= 2 else plain) for s in shapes)


REMEDIES = {"SR": {"stochastic_rounding": True, "seed": 0}, "Kahan": {"kahan_summation": True},
            "master": {"master_weights": True}}


def _tensors(shapes, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(dtype)
    return ps


def _array(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (bfloat16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def implementations(shapes: list[tuple], dtype: torch.dtype = torch.float32) -> dict:
    """name -> one step, each over its own tensors (same shapes and values)."""
    out = {}
    ps = _tensors(shapes, 0, dtype)
    flat_p = [_array(p).reshape(-1) for p in ps]
    flat_g = [_array(p.grad).reshape(-1) for p in ps]
    mat = [i for i, s in enumerate(shapes) if len(s) >= 2]
    vec = [i for i, s in enumerate(shapes) if len(s) < 2]
    mp, mg = [flat_p[i] for i in mat], [flat_g[i] for i in mat]
    vp, vg = [flat_p[i] for i in vec], [flat_g[i] for i in vec]
    vv = [np.zeros(x.shape, np.float32 if dtype != torch.float64 else x.dtype) for x in vp]

    def ceiling():
        if mat:
            _core.cpu.rmw(mp, mg, [], writes=0)  # A: reads p, g
            fusedopt.global_norm(mg)  # B: reads g
            _core.cpu.rmw(mp, mg, [], writes=1)  # C: reads p, g; writes p
        if vec:
            _core.cpu.rmw(vv, vg, [vp], writes=1)  # A: reads v, g, p; writes v
            _core.cpu.rmw(vp, vg, [vv], writes=1)  # C: reads p, g, v; writes p

    out["ceiling"] = ceiling
    opt = ft.Adafactor(_tensors(shapes, 0, dtype))
    out["fusedopt.torch"] = opt.step
    ps = _tensors(shapes, 0, dtype)
    arrays = [_array(p) for p in ps]
    np_grads = [_array(p.grad) for p in ps]
    np_opt = fusedopt.Adafactor(arrays)
    out["fusedopt (NumPy)"] = lambda: np_opt.step(np_grads)
    if dtype == torch.bfloat16:
        for remedy, options in REMEDIES.items():
            rps = _tensors(shapes, 0, dtype)
            ropt = fusedopt.Adafactor([_array(p) for p in rps], **options)
            rgrads = [_array(p.grad) for p in rps]
            out[f"fusedopt (NumPy) {remedy}"] = lambda o=ropt, g=rgrads: o.step(g)
    out["torch (default loop)"] = torch.optim.Adafactor(_tensors(shapes, 0, dtype)).step
    out["torch foreach"] = torch.optim.Adafactor(_tensors(shapes, 0, dtype), foreach=True).step
    return out


def run_workload(name, shapes, rounds, reps, skip=(), dtype=torch.float32):
    impls = {k: v for k, v in implementations(shapes, dtype).items() if k not in skip}
    nbytes = {k: bytes_of(shapes, dtype, next((r for r in REMEDIES if k.endswith(" " + r)), ""))
              for k in impls}
    return torch_front.run_workload(name, [], rounds, reps, 1, impls=impls, nbytes=nbytes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="gpt6x768,m4096,vec16M,small1024")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip", default="", help="implementations left out, comma-separated")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the smoke test)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="of the params and grads")
    ap.add_argument("--json")
    args = ap.parse_args()
    info = machine_info()
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                fusedopt_threads=fusedopt.get_num_threads())
    print(f"# {info.get('cpu_model', info)}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), fusedopt {fusedopt.get_num_threads()} threads")
    rows = []
    skip = tuple(s for s in args.skip.split(",") if s)
    for w in args.workloads.split(","):
        rows += run_workload(w, shapes_of(w, args.quick), args.rounds, args.reps, skip,
                             getattr(torch, args.dtype))
    torch_front.print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
