"""Adadelta, ``torch.optim.Adadelta``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer, algorithm="adadelta"):
    r"""Adadelta, as ``torch.optim.Adadelta`` (same arguments, defaults, state names and error
    messages).

    .. math::
        g_t &\leftarrow \pm \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        v_t \leftarrow \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \qquad
        u_t \leftarrow \rho u_{t-1} + (1 - \rho) \Delta_t^2, \qquad
        \theta_t \leftarrow \theta_{t-1} - \eta \Delta_t

    ``eps`` is inside both square roots; ``lr`` is a plain multiplier, and 1.0 is the paper's rule.
    Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701 (2012).

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta`, scales the delta (default: 1.0).
        rho (float): decay :math:`\rho` of both running averages, in [0, 1] (default: 0.9).
        eps (float): :math:`\epsilon` (default: 1e-6).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`).

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.Adadelta([w], lr=1.0, eps=1e-2)
    >>> opt.step([2 * w])
    >>> w.round(4)
    array([ 0.6877, -1.6848])
    """
