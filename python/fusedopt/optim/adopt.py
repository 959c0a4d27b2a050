"""ADOPT, the authors' reference implementation (``torch-adopt``'s ``adopt.ADOPT``)."""

from __future__ import annotations

from .optimizer import Optimizer

__all__ = ["ADOPT"]


class ADOPT(Optimizer, algorithm="adopt"):
    r"""ADOPT (adaptive gradient method with the optimal rate) as the authors' reference
    implementation (``iShohei220/adopt``, package ``torch-adopt`` 0.1.0: the same arguments,
    defaults, state names and update): the grad is normalized by the second moment of the
    *previous* steps, clipped, and only then averaged into the momentum.

    .. math::
        n &= \text{the steps completed before this one} \\
        n = 0{:}\quad v &\leftarrow v + g^2 \quad \text{(nothing else: the first step only sets } v) \\
        n \ge 1{:}\quad u &= \operatorname{clamp}\!\left(\frac{g}{\max(\sqrt{v}, \epsilon)},
            -c_n, c_n\right), \qquad c_n = \texttt{clip\_lambda}(n) \\
        m &\leftarrow m + (1 - \beta_1)(u - m), \qquad
        \theta \leftarrow \theta - \eta m, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2

    where :math:`g = \pm \nabla f + \lambda \theta` (L2), or, with ``decouple=True``, the weights
    are first multiplied by :math:`1 - \eta\lambda` (from the second step on). :math:`\epsilon` is
    a floor under :math:`\sqrt{v}`, not added to it; no bias correction. A coordinate whose first
    grad is 0 is divided by :math:`\epsilon` later, which the clip bounds. ``clip_lambda`` is a
    callable of :math:`n` (a float; default :math:`n^{1/4}`, so :math:`c_1 = 1`), a number, or
    ``None`` for no clip; each step but the first calls it once per param group, and its value
    must be a real :math:`\ge 0`. NaN propagates through the floor and the clip (``torch.clamp``). Taniguchi et
    al., "ADOPT: Modified Adam Can Converge with Any :math:`\beta_2` with the Optimal Rate",
    NeurIPS 2024.

    Elsewhere: ``pytorch-optimizer``'s ``ADOPT`` counts the step before it uses it, so its clip
    is :math:`(n + 1)^{1/4}` (:math:`2^{1/4}` where the reference has 1 on the second step), and
    it applies the decoupled decay on the first step too. The reference keeps ``clip_lambda`` on
    the optimizer, not in its groups; here each group has it (so groups may differ), state dicts
    leave it out as the reference's do (a lambda would stop ``torch.save``), and loading one keeps
    this optimizer's own. It is first called at the second step (:math:`n = 1`), as the
    reference calls it. The default here is :class:`fusedopt._spec.StepPower` ``(0.25)``, the
    same function as the reference's lambda, which pickles.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-3).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.9999)).
        eps (float): :math:`\epsilon`, the floor under :math:`\sqrt{v}` (default: 1e-6).
        clip_lambda (callable, float or None): :math:`c_n` as a function of :math:`n`
            (default: ``StepPower(0.25)``, :math:`n^{1/4}`).
        weight_decay (float): :math:`\lambda` (default: 0).
        decouple (bool): decay the weights directly, as AdamW (default: False).
        maximize (bool): ascend instead of descend (default: False).

    State per param: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.ADOPT([w], lr=0.1)
    >>> opt.step([np.array([2.0, 0.5])])  # the first step sets v = g^2 and leaves w alone
    >>> w
    array([ 1., -2.])
    >>> opt.step([np.array([2.0, 0.5])])  # u = g / |g| = sign(g), m = 0.1 u: w -= 0.1 * m
    >>> w
    array([ 0.99, -2.01])
    """

    _peer_flags = {"foreach": None, "capturable": False, "differentiable": False, "fused": None}
