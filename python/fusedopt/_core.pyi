"""Types of fusedopt's compiled module (csrc/bindings/). Use fusedopt.functional instead: it takes
bare arrays, checks optional state lists and picks the backend from the buffers."""

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import numpy as np

_Arrays = Sequence[np.ndarray]
_Betas = tuple[float, float]

class _BuildInfo(TypedDict):
    version: str
    openmp: bool
    cuda: bool
    simd: list[str]
    simd_supported: list[str]
    simd_active: str
    compiler: str
    chunk_size: int

def build_info() -> _BuildInfo: ...

class cpu:
    """Fused multi-tensor update kernels for NumPy arrays (validated in C++, GIL released)."""

    @staticmethod
    def sgd(params: _Arrays, grads: _Arrays, momentum_buffers: _Arrays | None = None, *, step: int,
            lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool,
            maximize: bool) -> None: ...
    @staticmethod
    def adagrad(params: _Arrays, grads: _Arrays, state_sums: _Arrays, *, step: int, lr: float,
                lr_decay: float, weight_decay: float, eps: float, maximize: bool) -> None: ...
    @staticmethod
    def adadelta(params: _Arrays, grads: _Arrays, square_avgs: _Arrays, acc_deltas: _Arrays, *,
                 step: int, lr: float, rho: float, eps: float, weight_decay: float,
                 maximize: bool) -> None: ...
    @staticmethod
    def rmsprop(params: _Arrays, grads: _Arrays, square_avgs: _Arrays,
                momentum_buffers: _Arrays | None = None, grad_avgs: _Arrays | None = None, *,
                step: int, lr: float, alpha: float, eps: float, weight_decay: float,
                momentum: float, centered: bool, maximize: bool) -> None: ...
    @staticmethod
    def adam(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays,
             max_exp_avg_sqs: _Arrays | None = None, *, step: int, lr: float, betas: _Betas,
             eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
             decoupled_weight_decay: bool) -> None: ...
    @staticmethod
    def nadam(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, *,
              step: int, mu_product: float | None = None, lr: float, betas: _Betas, eps: float,
              weight_decay: float, momentum_decay: float, decoupled_weight_decay: bool,
              maximize: bool) -> float: ...
    @staticmethod
    def adamax(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_infs: _Arrays, *,
               step: int, lr: float, betas: _Betas, eps: float, weight_decay: float,
               maximize: bool) -> None: ...
    @staticmethod
    def ewa(averages: _Arrays, values: _Arrays, *, beta: float) -> None: ...
    @staticmethod
    def ewa_readout(averages: _Arrays, outs: _Arrays, *, beta: float, step: int) -> None: ...
    @staticmethod
    def rmw(params: _Arrays, grads: _Arrays, states: Sequence[_Arrays]) -> None:
        """Benchmark ceiling: the memory traffic of an algorithm with len(states) state lists."""
    @staticmethod
    def set_num_threads(n: int) -> None: ...
    @staticmethod
    def get_num_threads() -> int: ...
    @staticmethod
    def set_simd(name: Literal["baseline", "avx2", "avx512"]) -> None: ...
    @staticmethod
    def chunk_size() -> int: ...

class cuda:
    """Present when built with CUDA. Same kernels and keyword names as ``cpu``, on device pointers:
    each list holds ints (device addresses), plus keyword-only ``sizes`` (elements per tensor),
    ``dtype`` ('float32'/'float64', or one per tensor), ``stream`` (a cudaStream_t as int; 0 is the
    legacy default stream) and ``wait_streams`` (streams the update must follow, or None)."""

    @staticmethod
    def device_count() -> int: ...
    @staticmethod
    def is_available() -> bool: ...
    @staticmethod
    def info() -> dict[str, Any]: ...
    def __getattr__(self, name: str) -> Any: ...
