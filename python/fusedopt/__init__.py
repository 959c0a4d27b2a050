"""fusedopt: fused, multi-tensor optimizer update kernels for people who write their own loops."""

from . import functional, optim, reference, schedules
from .clip import clip_grad_norm_, global_norm
from .optim import *  # noqa: F403  (every optimizer class, and EMA)
from ._arrays import state_like
from ._backend import cuda_available
from ._core import build_info as _build_info

__version__ = _build_info()["version"]


def build_info():
    """How the compiled core was built: ``version``, ``openmp``, ``cuda``, ``simd`` (compiled CPU
    paths), ``simd_supported`` (those this CPU can run), ``simd_active``, ``compiler``."""
    return _build_info()


def get_num_threads():
    """Threads the CPU kernels use (OMP_NUM_THREADS or the core count unless set)."""
    from ._core import cpu

    return cpu.get_num_threads()


def set_num_threads(n):
    """Use ``n`` threads in the CPU kernels; 0 restores the default. Results do not depend on it."""
    from ._core import cpu

    cpu.set_num_threads(n)


__all__ = [
    *(name for name in optim.__all__ if name != "Optimizer"),
    "functional", "optim", "reference", "schedules",
    "build_info", "clip_grad_norm_", "cuda_available", "get_num_threads", "global_norm",
    "set_num_threads", "state_like",
    "__version__",
]
