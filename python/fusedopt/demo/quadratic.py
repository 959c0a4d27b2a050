"""``python -m fusedopt example``: a few seconds' check that every fused update rule minimises the
same ill-conditioned quadratic, with the result compared with the float64 reference."""

from __future__ import annotations

import sys
import time

import numpy as np

from .. import build_info, functional, reference

# name, functional name, hyper-parameters, state buffers (name, initial value)
_RUNS = [
    ("SGD", "sgd", dict(lr=0.009), []),
    ("SGD+momentum", "sgd", dict(lr=0.009, momentum=0.9), [("momentum_buffers", 0.0)]),
    ("Nesterov", "sgd", dict(lr=0.009, momentum=0.9, nesterov=True), [("momentum_buffers", 0.0)]),
    ("Adagrad", "adagrad", dict(lr=0.5), [("state_sums", 0.0)]),
    ("Adadelta", "adadelta", dict(lr=1.0, eps=1e-4), [("square_avgs", 0.0), ("acc_deltas", 0.0)]),
    ("RMSprop", "rmsprop", dict(lr=0.01), [("square_avgs", 0.0)]),
    ("Adam", "adam", dict(lr=0.05), [("exp_avgs", 0.0), ("exp_avg_sqs", 0.0)]),
    ("AdamW", "adamw", dict(lr=0.05, weight_decay=1e-4), [("exp_avgs", 0.0), ("exp_avg_sqs", 0.0)]),
    ("NAdam", "nadam", dict(lr=0.05), [("exp_avgs", 0.0), ("exp_avg_sqs", 0.0)]),
    ("Adamax", "adamax", dict(lr=0.1), [("exp_avgs", 0.0), ("exp_infs", 0.0)]),
]


def _run(module, fn, hyper, states, curvature, steps):
    x = np.ones_like(curvature)
    bufs = {name: np.full_like(x, init) for name, init in states}
    mu = 1.0
    for t in range(1, steps + 1):
        out = getattr(module, fn)([x], [curvature * x], *[[b] for b in bufs.values()], step=t,
                                  **({"mu_product": mu} if fn == "nadam" else {}), **hyper)
        if fn == "nadam":
            mu = out
    return x


def main(argv=None):
    """Print, per update rule, the final value, the distance to the reference and the time per step."""
    if argv:
        print(f"python -m fusedopt example: error: takes no arguments, got {' '.join(argv)}", file=sys.stderr)
        return 2
    steps = 300
    curvature = np.logspace(0, 2, 64)  # condition number 100
    f = lambda x: 0.5 * float(np.sum(curvature * x * x))  # noqa: E731
    info = build_info()
    print(f"fusedopt {info['version']}  simd={info['simd_active']}  openmp={info['openmp']}")
    print(f"minimising 0.5*sum(d*x^2), d in [1, 100], {steps} steps from f0 = {f(np.ones(64)):.3g}")
    print(f"{'optimizer':<14}{'final f':>12}{'vs reference':>16}{'us/step':>10}")
    for label, fn, hyper, states in _RUNS:
        t0 = time.perf_counter()
        x = _run(functional, fn, hyper, states, curvature, steps)
        us = (time.perf_counter() - t0) / steps * 1e6
        ref = _run(reference, fn, hyper, states, curvature, steps)
        err = float(np.max(np.abs(x - ref)))
        print(f"{label:<14}{f(x):>12.3e}{err:>16.1e}{us:>10.1f}")
    return 0
