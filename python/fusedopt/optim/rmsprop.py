"""RMSprop, ``torch.optim.RMSprop``."""

from __future__ import annotations

from .optimizer import Optimizer, check_lr, check_nonnegative

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
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

    _hyper_checks = (
        ("lr", check_lr),
        ("eps", check_nonnegative("epsilon")),
        ("momentum", check_nonnegative("momentum")),
        ("weight_decay", check_nonnegative("weight_decay")),
        ("alpha", check_nonnegative("alpha")),
    )
    _state_names = ("square_avg", "momentum_buffer", "grad_avg")
    _always = ("square_avg",)

    def __init__(
        self,
        params,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        *,
        maximize=False,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                alpha=alpha,
                eps=eps,
                centered=centered,
                weight_decay=weight_decay,
                maximize=maximize,
            ),
        )

    def _buffer_names(self, group):
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return tuple(names)

    def _update(self, fn, group, params, grads, buffers, *, step, lr, key):
        fn.rmsprop(
            params,
            grads,
            buffers["square_avg"],
            buffers.get("momentum_buffer"),
            buffers.get("grad_avg"),
            step=step,
            lr=lr,
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=bool(group["centered"]),
            maximize=bool(group["maximize"]),
        )
