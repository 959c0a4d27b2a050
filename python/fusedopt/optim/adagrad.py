"""Adagrad, ``torch.optim.Adagrad``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer, algorithm="adagrad"):
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
