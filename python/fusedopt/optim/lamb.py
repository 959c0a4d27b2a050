"""LAMB, apex's ``FusedLAMB``."""

from __future__ import annotations

from typing import ClassVar

from .optimizer import Optimizer, StepsPerGroup

__all__ = ["LAMB"]


class LAMB(StepsPerGroup, Optimizer, algorithm="lamb"):
    r"""LAMB (layer-wise adaptive moments for batch training) as apex's ``FusedLAMB`` (the same
    arguments, defaults, state names and update): Adam's direction, then a step per tensor
    scaled to the tensor's own norm.

    .. math::
        G &= \lVert (g_1, \dots, g_n) \rVert_2 \text{ over every grad of the step}, \qquad
        g \leftarrow g / \max(1, G / \texttt{max\_grad\_norm}) \\
        g &\leftarrow g + \lambda \theta \quad \text{(only with adam\_w\_mode=False)} \\
        m &\leftarrow \beta_1 m + \beta_3 g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        u &= \frac{m / b_1}{\sqrt{v / b_2} + \epsilon} + \lambda \theta
            \quad (\lambda \theta \text{ only with adam\_w\_mode=True}) \\
        r &= \eta \, \lVert \theta \rVert_2 / \lVert u \rVert_2 \text{ per tensor}, \qquad
        \theta \leftarrow \theta - r u

    with :math:`\beta_3 = 1 - \beta_1` (``grad_averaging``, else 1), :math:`b_i = 1 - \beta_i^t`
    (``bias_correction``, else 1), and :math:`r = \eta` where either norm is 0, and for every
    tensor when :math:`\lambda = 0` and ``use_nvlamb`` is off (apex's rule: with no decay there
    is no trust ratio unless NVLAMB is asked for). :math:`\lVert \theta \rVert` is the norm before
    the step. The clip uses the norm of every grad of the step, across param groups (apex's);
    ``max_grad_norm=0`` zeroes the grads (apex divides by an infinite factor): to turn clipping
    off, pass ``float("inf")``. You et al., "Large Batch Optimization for Deep Learning: Training
    BERT in 76 Minutes", ICLR 2020.

    One step makes three passes over memory where apex makes five (48 bytes per fp32 element
    against 52; two passes, 32 bytes, without a trust ratio): Note [LAMB's passes] in
    ``csrc/algorithms/lamb.h``. A step of several calls (several groups) first computes the
    grads' norm over all of them, one more read of the grads (of device grads by their library,
    torch or CuPy, with one synchronization). On CUDA the passes and the work between them
    (Note [Passes] in ``csrc/spec.h``) are all queued on the stream.

    Elsewhere: optax's ``lamb`` has no clipping (chain ``clip_by_global_norm``), always uses
    bias correction, grad averaging, decoupled decay and the trust ratio (as ``use_nvlamb``),
    with ``weight_decay=0`` by default. timm's ``Lamb`` is this rule with decoupled decay (it
    has no L2 mode), and clips ``p.grad`` in place. ``pytorch_optimizer``'s ``Lamb`` clamps the
    trust ratio and has other defaults.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 1e-3).
        bias_correction (bool): divide the moments by :math:`1 - \beta_i^t` (default: True).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon`, outside the square root (default: 1e-6).
        weight_decay (float): :math:`\lambda` (default: 0.01).
        amsgrad (bool): apex's argument; True is refused, as apex refuses it (default: False).
        adam_w_mode (bool): decoupled decay, added to :math:`u`; False: L2, added to the grad
            (default: True).
        grad_averaging (bool): :math:`\beta_3 = 1 - \beta_1`; False: 1 (default: True).
        set_grad_none (bool): apex's ``zero_grad`` switch; the NumPy classes hold no grads, and
            ``fusedopt.torch.LAMB.zero_grad`` takes torch's ``set_to_none`` (default: True).
        max_grad_norm (float): the norm the grads are clipped to (default: 1.0).
        use_nvlamb (bool): the trust ratio for tensors without weight decay too
            (default: False).

    apex reads ``max_grad_norm`` from the constructor's defaults only; here each group's value
    clips its own grads (by the same global norm). ``adam_w_mode``, ``use_nvlamb``,
    ``set_grad_none`` and ``amsgrad`` are kept on apex's optimizer, not in its groups: loading
    its state dict keeps this optimizer's values.

    State per param: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`); a state dict
    also carries each group's ``step``, where apex (and timm) keep the count. Steps are counted
    per group, as apex counts them: a param that had no grad on some steps takes the group's
    count when it steps again (its bias correction is the group's).

    >>> import numpy as np, fusedopt
    >>> w = np.array([3.0, 4.0])
    >>> opt = fusedopt.LAMB([w], lr=0.1, weight_decay=0.0, use_nvlamb=True)
    >>> opt.step([np.array([1.0, 0.0])])  # the step has norm lr * ||w|| = 0.5
    >>> np.round(w, 6)
    array([2.5, 4. ])
    """

    # apex keeps these on its optimizer, not in its groups: a loaded state dict keeps ours
    _kept_on_load = ("amsgrad", "adam_w_mode", "set_grad_none", "use_nvlamb")
    _group_state: ClassVar[dict] = {"step": "step"}  # apex's (and timm's) group["step"]
