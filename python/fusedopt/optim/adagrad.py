"""Adagrad, ``torch.optim.Adagrad``."""

from __future__ import annotations

import numpy as np

from .. import _arrays
from .optimizer import Optimizer, check_lr, check_nonnegative

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad, as ``torch.optim.Adagrad`` (same arguments, defaults, state names and error
    messages).

    .. math::
        g_t &\leftarrow \pm \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        \tilde\eta_t = \frac{\eta}{1 + (t - 1)\,\delta} \\
        s_t &\leftarrow s_{t-1} + g_t^2, \qquad
        \theta_t \leftarrow \theta_{t-1} - \tilde\eta_t \frac{g_t}{\sqrt{s_t} + \epsilon}

    with :math:`s_0` = ``initial_accumulator_value``. ``eps`` is outside the square root (torch;
    Keras and optax put it inside). Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", JMLR 12 (2011).

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): learning rate :math:`\eta` (default: 1e-2).
        lr_decay (float): :math:`\delta` (default: 0).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        initial_accumulator_value (float): :math:`s_0` (default: 0).
        eps (float): :math:`\epsilon` (default: 1e-10).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``sum`` (allocated at the first step, from the group's
    ``initial_accumulator_value``; torch fills it in the constructor).

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.Adagrad([w], lr=0.5)
    >>> opt.step([2 * w])
    >>> w.round(6)
    array([ 0.5, -1.5])
    >>> opt.state[0]["sum"]
    array([ 4., 16.])
    """

    _hyper_checks = (
        ("lr", check_lr),
        ("lr_decay", check_nonnegative("lr_decay")),
        ("weight_decay", check_nonnegative("weight_decay")),
        ("initial_accumulator_value", check_nonnegative("initial_accumulator_value")),
        ("eps", check_nonnegative("epsilon")),
    )
    _state_names = ("sum",)
    _always = ("sum",)

    def __init__(
        self,
        params,
        lr=1e-2,
        lr_decay=0.0,
        weight_decay=0.0,
        initial_accumulator_value=0.0,
        eps=1e-10,
        *,
        maximize=False,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                lr_decay=lr_decay,
                eps=eps,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                maximize=maximize,
            ),
        )

    def _new_buffer(self, name, p, group):
        return _arrays.state_like(p, group["initial_accumulator_value"], 0)

    def _update(self, fn, group, params, grads, buffers, *, step, lr, key):
        fn.adagrad(
            params,
            grads,
            buffers["sum"],
            step=step,
            lr=lr,
            lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=bool(group["maximize"]),
        )
