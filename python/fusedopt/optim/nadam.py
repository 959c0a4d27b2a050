"""NAdam, ``torch.optim.NAdam``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["NAdam"]


class NAdam(Optimizer, algorithm="nadam"):
    r"""NAdam (Adam with Nesterov momentum) in torch's form, with the momentum schedule
    :math:`\mu_t`, as ``torch.optim.NAdam`` (same arguments, defaults, state names and error
    messages).

    .. math::
        \mu_t &= \beta_1 \left(1 - \tfrac12\, 0.96^{t \psi}\right), \qquad
        \Pi_t = \Pi_{t-1} \mu_t \ (\Pi_0 = 1) \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        d_t = \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        \theta_t &\leftarrow \theta_{t-1} - \eta \frac{1 - \mu_t}{1 - \Pi_t} \frac{g_t}{d_t}
            - \eta \frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}} \frac{m_t}{d_t}

    where :math:`g_t = \pm \nabla f + \lambda \theta` (L2), or the weights are first multiplied by
    :math:`1 - \eta\lambda` (``decoupled_weight_decay``, "NAdamW"). Keras uses :math:`0.96^t`
    without :math:`\psi` and one product for the whole model: not this. Dozat, "Incorporating
    Nesterov Momentum into Adam", ICLR 2016 workshop.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 2e-3).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        momentum_decay (float): :math:`\psi` (default: 4e-3).
        decoupled_weight_decay (bool): decay the weights directly, as AdamW (default: False).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``mu_product`` (:math:`\Pi_t`, a float), ``exp_avg``,
    ``exp_avg_sq``.

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.NAdam([w], lr=0.1)
    >>> opt.step([2 * w])
    >>> w.round(4)
    array([ 0.8944, -1.8944])
    >>> round(opt.state[0]["mu_product"], 6)  # mu_1 = 0.9 * (1 - 0.5 * 0.96**0.004)
    0.450073
    """
