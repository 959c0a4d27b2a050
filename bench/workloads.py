"""The benchmark's workloads: lists of fp32 tensor sizes.

``quick`` shrinks every workload (each tensor to 1/1024 of its size, at least 8 elements, and at
most 64 tensors) so the whole harness runs in seconds: the smoke test's and CI's mode. The sizes a
run actually used are recorded in its JSON.
"""

from __future__ import annotations

import numpy as np

KIB, MIB = 1 << 10, 1 << 20


def _model200():
    """200 tensors, sizes log-uniform in [1e3, 1e6] (seed 0): a model's parameter list."""
    rng = np.random.default_rng(0)
    return [int(round(s)) for s in np.exp(rng.uniform(np.log(1e3), np.log(1e6), size=200))]


WORKLOADS = {
    "flat16M": (lambda: [16 * MIB], "one tensor of 16Mi elements (64 MiB per buffer)"),
    "flat64M": (lambda: [64 * MIB], "one tensor of 64Mi elements (256 MiB per buffer)"),
    "model200": (_model200, "200 tensors, sizes log-uniform in [1e3, 1e6], seed 0"),
    "small4096": (lambda: [4096] * 4096, "4,096 tensors of 4,096 elements"),
    "incache256K": (lambda: [256 * KIB], "one tensor of 256Ki elements (1 MiB per buffer: "
                                         "the working set stays in cache)"),
    # GPU only: large enough for an H100/H200's bandwidth, and many small tensors.
    "flat256M": (lambda: [256 * MIB], "one tensor of 256Mi elements (1 GiB per buffer)"),
    "small20k": (lambda: [4096] * 20000, "20,000 tensors of 4,096 elements"),
}

DEFAULT = {
    "cpu": ["flat16M", "flat64M", "model200", "small4096", "incache256K"],
    "cuda": ["flat16M", "flat64M", "flat256M", "model200", "small4096", "small20k",
             "incache256K"],
}

# Python overhead: a step over many tiny tensors costs almost nothing but the call itself.
OVERHEAD_TENSORS, OVERHEAD_SIZE = 200, 8


def sizes(name, quick=False):
    """The tensor sizes of workload ``name``."""
    out = WORKLOADS[name][0]()
    if quick:
        out = [max(8, s // 1024) for s in out[:64]]
    return out


def describe(name):
    return WORKLOADS[name][1]
