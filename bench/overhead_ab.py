"""Python overhead of a step, two builds of fusedopt side by side: ``python bench/overhead_ab.py
OLD NEW [--rounds 5]``, where OLD and NEW are folders that each hold a ``fusedopt`` package with its
``_core`` (``pip install --target DIR .`` at two commits, or a copy of ``python/fusedopt`` with a
``_core`` built from it). Each round runs OLD, NEW, NEW, OLD in fresh interpreters, one after the
other, so that a drift of the machine within the round hits both alike; a time is the median over
the processes of each process's median of 9 blocks of 400 steps, and the ratio is taken round by
round (the two NEW processes' sum over the two OLD's), then its median and range over the rounds.
Adam over 200 tensors of 8 float32 elements: the optimizer class in one group, in two groups of
100 (NAdam too), AdamW in four groups of 50, and the functional call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, time
import numpy as np
import fusedopt

ps = [np.zeros(8, np.float32) for _ in range(200)]
gs = [np.ones(8, np.float32) for _ in range(200)]
steps = {
    "class, 1 group": fusedopt.Adam(ps, lr=1e-3).step,
    "class, 2 groups": fusedopt.Adam([{"params": ps[:100]}, {"params": ps[100:]}], lr=1e-3).step,
    "NAdam class, 2 groups": fusedopt.NAdam(
        [{"params": ps[:100]}, {"params": ps[100:], "weight_decay": 0.1}], lr=1e-3).step,
    "AdamW class, 4 groups": fusedopt.AdamW(
        [{"params": ps[i * 50:(i + 1) * 50]} for i in range(4)], lr=1e-3).step,
}
ms = [np.zeros_like(p) for p in ps]
vs = [np.zeros_like(p) for p in ps]
out = {name: (lambda step=step: step(gs)) for name, step in steps.items()}
out["functional call"] = lambda: fusedopt.functional.adam(ps, gs, ms, vs, step=3, lr=1e-3)
res = {}
for name, call in out.items():
    for _ in range(300):
        call()
    blocks = []
    for _ in range(9):
        t = time.perf_counter()
        for _ in range(400):
            call()
        blocks.append((time.perf_counter() - t) / 400 * 1e6)
    res[name] = sorted(blocks)[4]
print(json.dumps(res))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    runs = {"old": [], "new": []}
    ratios = []  # per round: new / old, each side the mean of its two processes
    for _ in range(args.rounds):
        got = {"old": [], "new": []}
        for side in ("old", "new", "new", "old"):  # ABBA: a drift within the round hits both alike
            env = dict(os.environ, PYTHONPATH=os.path.abspath(getattr(args, side)))
            out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                                 capture_output=True, text=True, cwd="/").stdout
            got[side].append(json.loads(out))
        for side in got:
            runs[side] += got[side]
        ratios.append({name: sum(r[name] for r in got["new"]) / sum(r[name] for r in got["old"])
                       for name in got["old"][0]})
    print(f"| step ({args.rounds} rounds, us) | old | new | new / old, round by round: median [min-max] |")
    print("|---|---|---|---|")
    for name in runs["old"][0]:
        o = statistics.median(r[name] for r in runs["old"])
        n = statistics.median(r[name] for r in runs["new"])
        rs = sorted(r[name] for r in ratios)
        print(f"| {name} | {o:.1f} | {n:.1f} | {statistics.median(rs):.2f} [{rs[0]:.2f}-{rs[-1]:.2f}] |")

if __name__ == "__main__":
    main()
