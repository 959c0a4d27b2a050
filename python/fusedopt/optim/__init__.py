"""The optimizer classes: ``torch.optim``'s constructors, param groups and state names, over NumPy
arrays updated in place by one fused multi-tensor call per param group and step.

Each class is declared by its algorithm's spec (``csrc/algorithms/<algo>.h``) and owns the params,
the per-parameter state (allocated at the first step), the step counts and the learning rate (a
float or a :mod:`fusedopt.schedules` schedule); each step runs one bound call per group (and place
its params live in). ``grads`` are passed to :meth:`~fusedopt.optim.optimizer.Optimizer.step`
(there is no ``.grad`` to zero). An algorithm's class is registered here: its import and its name
in ``__all__``.
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
