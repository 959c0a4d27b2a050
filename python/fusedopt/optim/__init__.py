"""The optimizer classes: ``torch.optim``'s constructors, param groups and state names, over NumPy
arrays updated in place by one fused multi-tensor call per param group and step.

Each class is declared by its algorithm's spec (``csrc/algorithms/<algo>.h``) and owns the params,
the per-parameter state (allocated at the first step), the step counts and the learning rate (a
float or a :mod:`fusedopt.schedules` schedule); each step runs one bound call per group (and place
its params live in). ``grads`` are passed to :meth:`~fusedopt.optim.optimizer.Optimizer.step`
(there is no ``.grad`` to zero).

An algorithm's class needs no registration here: every module of this package but the shared ones
is imported, and the classes they declare (``class NAdam(Optimizer, algorithm="nadam")``) are
exported in the order of the algorithm registry (``csrc/algorithms/registry.h``).
"""

from __future__ import annotations

import importlib
import pkgutil

from .._spec import SPECS
from .adafactor import Adafactor
from .ema import EMA
from .optimizer import Optimizer

# modules that declare no class made from a spec (Adafactor's is its own: optim/adafactor.py)
_SHARED = {"optimizer", "ema", "adafactor"}


def _classes() -> list[type[Optimizer]]:
    """The classes declared by the algorithm modules of this package, in the registry's order."""
    found: list[type[Optimizer]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in _SHARED:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and issubclass(obj, Optimizer)
                  and obj.__module__ == module.__name__]
    order = list(SPECS)
    return sorted(found, key=lambda cls: order.index(cls._spec.name))


_CLASSES = _classes()
globals().update({cls.__name__: cls for cls in _CLASSES})
__all__ = ["Optimizer", *(cls.__name__ for cls in _CLASSES), "Adafactor", "EMA"]
