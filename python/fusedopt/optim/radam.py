"""RAdam, ``torch.optim.RAdam``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["RAdam"]


class RAdam(Optimizer, algorithm="radam"):
    r"""RAdam (rectified Adam) as ``torch.optim.RAdam`` (same arguments, defaults, state names and
    error messages): Adam's moments, with the update switched off the adaptive rate while the
    variance of that rate is not yet bounded.

    .. math::
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\eta}{1 - \beta_1^t} m_t \,
            r_t \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}
            \quad \text{if } \rho_t > 5, \qquad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\eta}{1 - \beta_1^t} m_t
            \quad \text{otherwise}

    where :math:`g_t = \pm \nabla f + \lambda \theta` (L2), or the weights are first multiplied by
    :math:`1 - \eta\lambda` (``decoupled_weight_decay``). :math:`\epsilon` is added to the
    uncorrected :math:`\sqrt{v_t}` (unlike Adam). The test is per step: for :math:`\beta_2` in
    [0.9, 0.9999] steps 1-5 are momentum steps and step 6 is the first rectified one; with
    :math:`\beta_2 \le 2/3` no step is rectified. :math:`v` is updated on every step. Liu et al.,
    "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-3).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        decoupled_weight_decay (bool): decay the weights directly, as AdamW (default: False).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.RAdam([w], lr=0.1)
    >>> opt.step([2 * w])  # step 1 is not rectified: w - lr * g
    >>> w
    array([ 0.8, -1.6])
    """
