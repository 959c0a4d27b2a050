"""Adam and AdamW, ``torch.optim.Adam`` and ``torch.optim.AdamW``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer, algorithm="adam"):
    r"""Adam, with optional AMSGrad and decoupled weight decay, as ``torch.optim.Adam`` (same
    arguments, defaults, state names and error messages).

    .. math::
        g_t &\leftarrow \pm \nabla f(\theta_{t-1}) + \lambda \theta_{t-1} \ \text{(L2)}, \qquad
        \theta_{t-1} \leftarrow \theta_{t-1} (1 - \eta \lambda) \ \text{(decoupled)} \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        \hat v_t = \max(\hat v_{t-1}, v_t) \ \text{(AMSGrad; else } \hat v_t = v_t) \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    ``eps`` is added outside the square root, after bias correction (torch); Keras' "epsilon hat"
    is ``eps * sqrt(1 - beta2**t)`` in these terms. Kingma & Ba, "Adam: A Method for Stochastic
    Optimization", ICLR 2015; AMSGrad: Reddi, Kale & Kumar, "On the Convergence of Adam and
    Beyond", ICLR 2018.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-3).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        amsgrad (bool): use the maximum of the second moments (default: False).
        maximize (bool): ascend instead of descend (default: False).
        decoupled_weight_decay (bool): decay the weights directly, as AdamW (default: False).

    State per param: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`),
    ``max_exp_avg_sq`` (:math:`\hat v`) when ``amsgrad``.

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.Adam([w], lr=0.1)
    >>> opt.step([2 * w])  # the first Adam step moves each weight by about lr
    >>> w.round(6)
    array([ 0.9, -1.9])
    """


class AdamW(Adam, algorithm="adamw"):
    r"""AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW`` (same arguments,
    defaults, state names and error messages).

    .. math::
        \theta_{t-1} &\leftarrow \theta_{t-1} (1 - \eta \lambda) \\
        m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &\leftarrow \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    with :math:`g_t = \pm \nabla f(\theta_{t-1})` and :math:`\hat v_t` as in :class:`Adam`. The decay
    is multiplied by ``lr`` (torch's form; the paper's schedule multiplier is ``lr`` itself here).
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-3).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 1e-2).
        amsgrad (bool): use the maximum of the second moments (default: False).
        maximize (bool): ascend instead of descend (default: False).

    Its groups carry ``decoupled_weight_decay=True``, as torch's AdamW (a subclass of Adam) does, so
    the state dicts of Adam and AdamW load into each other.

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> opt.step([np.zeros(2)])  # no gradient: only the decay, w * (1 - 0.1 * 0.5)
    >>> w
    array([ 0.95, -1.9 ])
    """
