"""Lion, the lion-pytorch package's ``Lion``."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["Lion"]


class Lion(Optimizer, algorithm="lion"):
    r"""Lion (evolved sign momentum) as the ``lion-pytorch`` package's ``Lion`` (0.2.5: the same
    arguments, defaults, state name and update).

    .. math::
        \theta &\leftarrow \theta (1 - \eta \lambda), \qquad
        c = \beta_1 m + (1 - \beta_1) g \\
        \theta &\leftarrow \theta - \eta \operatorname{sgn}(c), \qquad
        m \leftarrow \beta_2 m + (1 - \beta_2) g

    with :math:`\operatorname{sgn}(0) = \operatorname{sgn}(\text{NaN}) = 0` (``torch.sgn``): a
    coordinate whose momentum and grad are zero does not move. With
    ``decoupled_weight_decay=True`` the decay is :math:`\lambda / \eta_0` in place of
    :math:`\lambda`, :math:`\eta_0` being the lr given to the constructor (the group key
    ``init_lr``; a schedule's lr before the first step), so the decay per step follows the
    schedule's ratio :math:`\eta / \eta_0`. No step count, no bias correction, no eps; the update
    of every coordinate is :math:`\pm\eta` or 0, so Lion's lr is usually 3-10x smaller than
    AdamW's and its weight decay as much larger. Chen et al., "Symbolic Discovery of Optimization
    Algorithms", NeurIPS 2023.

    Elsewhere: optax's ``lion`` is this rule (sign(0) = 0, the decay times lr) with
    ``weight_decay=1e-3`` by default. DeepSpeed's CPU Lion takes ``copysign(lr, c)``, which moves
    a coordinate with ``c = 0`` by lr, and its CUDA Lion moves it by +lr; their defaults are
    ``lr=1e-3, betas=(0.9, 0.999)``.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-4).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1]
            (default: (0.9, 0.99)).
        weight_decay (float): :math:`\lambda` (default: 0).
        use_triton (bool): lion-pytorch's switch to its Triton kernel; accepted, changes nothing
            (default: False).
        decoupled_weight_decay (bool): divide the decay by the initial lr (default: False).

    State per param: ``step`` (not used by the rule; lion-pytorch keeps none), ``exp_avg``
    (:math:`m`).

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0, 3.0])
    >>> opt = fusedopt.Lion([w], lr=0.1)
    >>> opt.step([np.array([0.5, -4.0, 0.0])])  # each weight moves by lr against sgn(g), or not
    >>> w
    array([ 0.9, -1.9,  3. ])
    """

    _step_optional = True  # a lion-pytorch state dict has no step count
    # lion-pytorch keeps these on the optimizer (its _init_lr, decoupled_wd), not in its groups:
    # loading one of its state dicts keeps this optimizer's own values, as lion-pytorch does
    _kept_on_load = ("use_triton", "decoupled_weight_decay", "init_lr")
