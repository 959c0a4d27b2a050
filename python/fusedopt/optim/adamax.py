"""Adamax, ``torch.optim.Adamax``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["Adamax"]


class Adamax(Optimizer, algorithm="adamax"):
    r"""Adamax, the infinity-norm variant of Adam, as ``torch.optim.Adamax`` (same arguments,
    defaults, state names and error messages).

    .. math::
        g_t &\leftarrow \pm \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        u_t &\leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad
        \theta_t \leftarrow \theta_{t-1} - \frac{\eta}{1 - \beta_1^t} \frac{m_t}{u_t}

    ``eps`` is inside the max (torch); a NaN on either side of the max propagates. Kingma & Ba,
    "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 2e-3).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``exp_avg`` (:math:`m`), ``exp_inf`` (:math:`u`).

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.Adamax([w], lr=0.1)
    >>> opt.step([2 * w])
    >>> w.round(6)
    array([ 0.9, -1.9])
    >>> opt.state[0]["exp_inf"].round(6)
    array([2., 4.])
    """
