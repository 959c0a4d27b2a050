"""SGD with optional (Nesterov) momentum, ``torch.optim.SGD``."""

from __future__ import annotations

import itertools
import operator

from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer, algorithm="sgd"):
    r"""Stochastic gradient descent with optional momentum and Nesterov momentum, as
    ``torch.optim.SGD`` (same arguments, defaults, state names and error messages).

    .. math::
        g_t &\leftarrow \pm \nabla f(\theta_{t-1}) + \lambda \theta_{t-1} \\
        b_t &\leftarrow g_t \ (t = 1), \qquad b_t \leftarrow \mu b_{t-1} + (1 - \tau) g_t \ (t > 1) \\
        g_t &\leftarrow g_t + \mu b_t \ \text{(Nesterov)}, \qquad g_t \leftarrow b_t \ \text{(otherwise)} \\
        \theta_t &\leftarrow \theta_{t-1} - \eta\, g_t

    (the momentum lines only when :math:`\mu \ne 0`; a fresh momentum buffer takes the gradient
    undamped, as in torch). This is the momentum form of Sutskever et al., "On the importance of
    initialization and momentum in deep learning" (ICML 2013), with ``lr`` outside the buffer, so
    changing ``lr`` mid-run does not rescale the accumulated momentum (Keras folds it in).

    Args:
        params: an array, a list of arrays, or a list of param-group dicts
            (``{"params": [...], "lr": ..., ...}``). Float32 or float64, contiguous, updated in place.
        lr (float or schedule): learning rate :math:`\eta` (default: 1e-3). A schedule
            (:mod:`fusedopt.schedules`) is evaluated at the number of completed steps.
        momentum (float): momentum factor :math:`\mu` (default: 0).
        dampening (float): dampening :math:`\tau` for momentum (default: 0).
        weight_decay (float): L2 penalty :math:`\lambda` added to the gradient (default: 0).
        nesterov (bool): Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``
            (default: False).
        maximize (bool): ascend instead of descend, :math:`g = -\nabla f` (default: False).

    State per param: ``step``, and ``momentum_buffer`` when ``momentum != 0``. Unlike torch, SGD
    counts ``step`` too, so a schedule knows where it is; a state dict of ``torch.optim.SGD``
    (which has none) loads with ``step`` 0 and its momentum buffers continue.

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.step([2 * w])  # the gradient of sum(w**2)
    >>> w.round(6)
    array([ 0.46, -0.92])
    >>> opt.state[0]["momentum_buffer"].round(6)
    array([ 3.4, -6.8])
    """

    # torch.optim.SGD's state dicts have no step count: a loaded entry without one counts 0
    # completed steps (a schedule in lr starts again at t=0), and its momentum buffer continues.
    _step_optional = True

    def _call_keys(self, group, states):
        # Whether the momentum buffer is new (momentum just turned on, or a fresh param) decides
        # how the call starts it, so fresh and running buffers go to separate calls.
        on = group["momentum"] != 0
        return [(0, on) if s is None else (s["step"], on and "momentum_buffer" not in s) for s in states]

    def _full_key(self, group, states, key):
        if group["momentum"] == 0:
            return (*key, False)
        have = list(map(operator.contains, states, itertools.repeat("momentum_buffer")))
        if have.count(have[0]) != len(have):
            return None
        return (*key, not have[0])

    def _kernel_step(self, group, key, step):
        # The kernel's step only tells a fresh buffer (step 1: buf = g) from a running one, which
        # may also be a loaded buffer with a step count of 0.
        if key[1]:
            return 1
        return max(step, 2) if group["momentum"] != 0 else step
