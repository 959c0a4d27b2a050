"""The optimizer classes: ``torch.optim``'s constructors, param groups and state names, over NumPy
arrays updated in place by one fused multi-tensor call per param group and step.

Each class is a thin layer over :mod:`fusedopt.functional`: it owns the params, the per-parameter
state (allocated at the first step), the step counts and the learning rate (a float or a
:mod:`fusedopt.schedules` schedule), and hands every group to one functional call. ``grads`` are
passed to :meth:`~fusedopt.optim.optimizer.Optimizer.step` (there is no ``.grad`` to zero).
"""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .ema import EMA
from .nadam import NAdam
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "NAdam", "Adamax", "EMA"]
