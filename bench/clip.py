"""Global-norm gradient clipping on the CPU: fusedopt.torch.clip_grad_norm_ (CPU tensors),
fusedopt.clip_grad_norm_ (NumPy arrays) and torch.nn.utils.clip_grad_norm_ (its default, and
foreach=True), against the memory wall, round by round.

A clip reads every grad once for the norm and, when it clips, reads and writes it once more: 12
bytes per float32 element. The ceiling is ``_core.cpu.rmw`` moving the same 12 bytes per element
in one pass (reads two lists, writes one). Every implementation clips its own grads (same sizes
and values) to ``max_norm=1``, so every call scales (the norm stays just above 1). Ratios are
time / fusedopt.torch's, taken within each round (bench/torch_front.py's rounds).

    python bench/clip.py --rounds 11 --json bench/results/<machine>-clip.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt import _core  # noqa: E402
from torch_front import main  # noqa: E402

BYTES_PER_ELEMENT = 12  # the norm reads g; the scaling reads and writes it


def implementations(sizes):
    def params(seed):
        g = torch.Generator().manual_seed(seed)
        ps = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
        for p in ps:
            p.grad = torch.randn(p.numel(), generator=g)
        return ps

    out = {}
    ps = params(0)
    grads = [p.grad.numpy() for p in ps]
    other = [torch.randn(p.numel()).numpy() for p in ps]
    out["ceiling"] = lambda: _core.cpu.rmw(grads, other, [])
    ps1 = params(0)
    out["fusedopt.torch"] = lambda: ft.clip_grad_norm_(ps1, 1.0)
    np_grads = [p.grad.numpy() for p in params(0)]
    out["fusedopt (NumPy)"] = lambda: fusedopt.clip_grad_norm_(np_grads, 1.0)
    ps2 = params(0)
    out["torch (default)"] = lambda: torch.nn.utils.clip_grad_norm_(ps2, 1.0)
    ps3 = params(0)
    out["torch foreach"] = lambda: torch.nn.utils.clip_grad_norm_(ps3, 1.0, foreach=True)
    return out


if __name__ == "__main__":
    main(implementations, BYTES_PER_ELEMENT, __doc__)
