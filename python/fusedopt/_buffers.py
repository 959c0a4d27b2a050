"""The one place that decides which backend a list of buffers goes to.

NumPy arrays go to ``_core.cpu``, which checks every array itself (dtype, shape, memory order,
writeability, alignment, overlap) in C++, where checking a few thousand arrays costs microseconds.
Anything else is refused here with a ``TypeError`` that names what was given.
"""

from __future__ import annotations

import numpy as np

from . import _core


def as_list(x):
    """A bare array is a list of one; lists and tuples pass through; anything else is left for the
    backend to refuse with a message that names the argument."""
    if isinstance(x, np.ndarray):
        return [x]
    return x


def backend(arrays):
    """The ``_core`` submodule that updates ``arrays`` (a list or tuple, already normalised)."""
    return _core.cpu
