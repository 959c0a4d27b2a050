"""``torch.optim``'s optimizers, run by fusedopt's fused kernels: ``from fusedopt.torch import
AdamW`` in place of ``from torch.optim import AdamW``.

Each class here is a :class:`torch.optim.Optimizer` made from the NumPy class of the same name
(:mod:`fusedopt.optim`), which is made from its algorithm's spec (``csrc/algorithms/<algo>.h``):
the same constructor arguments, defaults, checks, state names and update, whose rule is written
once, in the NumPy class's docstring (repeated below each class's own lines). What is torch's own
(param groups with names, hooks, ``state_dict`` and ``load_state_dict``, ``zero_grad``, schedulers,
``GradScaler``) is torch's base class at work. See :class:`fusedopt.torch.optimizer.Optimizer`.

Importing this module imports torch; ``import fusedopt`` does not.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - only without torch
    raise ImportError("fusedopt.torch needs PyTorch (pip install torch)") from e

from .. import optim as _optim
from .adafactor import Adafactor
from .clip import clip_grad_norm_
from .optimizer import Optimizer, make_class
from .zero import ZeroRedundancyOptimizer

_CLASSES = [make_class(getattr(_optim, name)) for name in _optim.__all__
            if name not in ("Optimizer", "EMA", "Adafactor")]
globals().update({cls.__name__: cls for cls in _CLASSES})
__all__ = ["Optimizer", *(cls.__name__ for cls in _CLASSES), "Adafactor", "clip_grad_norm_",
           "ZeroRedundancyOptimizer"]
