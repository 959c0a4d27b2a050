"""RMSprop, ``torch.optim.RMSprop``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer, algorithm="rmsprop"):
    r"""RMSprop, as ``torch.optim.RMSprop`` (same arguments, defaults, state names and error
    messages), with the centered variant and momentum.

    .. math::
        g_t &\leftarrow \pm \nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \qquad
        v_t \leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t &\leftarrow \alpha \bar g_{t-1} + (1 - \alpha) g_t, \quad
        d_t = \sqrt{v_t - \bar g_t^2} + \epsilon \ \text{(centered)}, \qquad
        d_t = \sqrt{v_t} + \epsilon \ \text{(otherwise)} \\
        b_t &\leftarrow \mu b_{t-1} + g_t / d_t, \quad \theta_t \leftarrow \theta_{t-1} - \eta b_t
        \ (\mu > 0), \qquad \theta_t \leftarrow \theta_{t-1} - \eta\, g_t / d_t \ \text{(otherwise)}

    ``eps`` is outside the square root (torch; Keras puts it inside, keeps ``lr`` in the momentum
    buffer and defaults ``rho=0.9``). Hinton, Srivastava & Swersky, "Neural Networks for Machine
    Learning", lecture 6e (2012); the centered form is from Graves, "Generating Sequences With
    Recurrent Neural Networks", arXiv:1308.0850 (2013).

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-2).
        alpha (float): smoothing constant :math:`\alpha` (default: 0.99).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        momentum (float): :math:`\mu` (default: 0).
        centered (bool): normalise by the estimated variance of the gradient (default: False).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``square_avg`` (:math:`v`), ``momentum_buffer`` when
    ``momentum > 0``, ``grad_avg`` (:math:`\bar g`) when ``centered``.

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.RMSprop([w], lr=0.01)
    >>> opt.step([2 * w])
    >>> w.round(6)
    array([ 0.9, -1.9])
    """
