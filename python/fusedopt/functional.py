"""Stateless fused update steps: one call updates a whole list of tensors in place.

Every function here takes lists of arrays (a bare array counts as a list of one), keyword-only
hyper-parameters named as in ``torch.optim``, and the 1-based ``step`` shared by every tensor of the
call. One call is one C++ call: the arrays are checked there (dtype, shape, memory order,
writeability, alignment, overlap) before anything is written, the GIL is released, and one OpenMP
parallel region updates every element of every tensor.

The state buffers are the caller's: allocate them once (zeros, except Adagrad's ``state_sums``, which
start at ``initial_accumulator_value``) and pass the same arrays at every step. The optimizer classes
in :mod:`fusedopt.optim` do this for you.

Each function has a twin of the same signature in :mod:`fusedopt.reference` (plain float64 NumPy),
which the tests use as the oracle; swapping one for the other is a one-name change.
The update rules, with the convention for ``eps`` and bias correction, are in each docstring and in
the header ``csrc/algorithms/<name>.h`` that implements them.
"""

from __future__ import annotations

from . import _buffers

__all__ = [
    "sgd",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "nadam",
    "adamax",
    "ewa",
    "ewa_readout",
]

_listify = _buffers.as_list


def _backend(arrays):
    return _buffers.backend(arrays)


def sgd(
    params,
    grads,
    momentum_buffers=None,
    *,
    step,
    lr=1e-3,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    maximize=False,
):
    r"""Stochastic gradient descent, with optional (Nesterov) momentum; ``torch.optim.SGD``.

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        b &\leftarrow g \ \text{(step 1)}, \quad b \leftarrow \mu b + (1-\tau) g \ \text{(later)} \\
        g &\leftarrow g + \mu b \ \text{(Nesterov)}, \quad g \leftarrow b \ \text{(otherwise)} \\
        p &\leftarrow p - \eta g

    ``momentum_buffers`` is needed when ``momentum != 0`` (ignored otherwise); at ``step == 1`` it is
    overwritten with the gradient (no dampening then), as torch does for a fresh buffer.
    Nesterov needs ``momentum > 0`` and ``dampening == 0``.
    """
    params = _listify(params)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd: Nesterov momentum requires a momentum and zero dampening")
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("sgd: momentum_buffers are required when momentum != 0")
    bufs = _listify(momentum_buffers) if momentum != 0 else None
    _backend(params).sgd(
        params, _listify(grads), bufs,
        step=step, lr=lr, momentum=momentum, dampening=dampening,
        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
    )


def adagrad(
    params,
    grads,
    state_sums,
    *,
    step,
    lr=1e-2,
    lr_decay=0.0,
    weight_decay=0.0,
    eps=1e-10,
    maximize=False,
):
    r"""Adagrad (Duchi et al., 2011); ``torch.optim.Adagrad``.

    .. math::
        g &\leftarrow \pm g + \lambda p, \qquad
        \tilde\eta = \eta / (1 + (t-1)\,\text{lr\_decay}) \\
        s &\leftarrow s + g^2, \qquad
        p \leftarrow p - \tilde\eta\, g / (\sqrt{s} + \epsilon)

    ``eps`` is added outside the square root (torch; Keras and optax put it inside).
    ``state_sums`` start at ``initial_accumulator_value`` (the caller fills them).
    """
    params = _listify(params)
    _backend(params).adagrad(
        params, _listify(grads), _listify(state_sums),
        step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
    )


def adadelta(
    params,
    grads,
    square_avgs,
    acc_deltas,
    *,
    step,
    lr=1.0,
    rho=0.9,
    eps=1e-6,
    weight_decay=0.0,
    maximize=False,
):
    r"""Adadelta (Zeiler, 2012); ``torch.optim.Adadelta``.

    .. math::
        g &\leftarrow \pm g + \lambda p \\
        v &\leftarrow \rho v + (1-\rho) g^2, \qquad
        \Delta = \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g \\
        u &\leftarrow \rho u + (1-\rho) \Delta^2, \qquad p \leftarrow p - \eta \Delta

    ``eps`` is inside both square roots; ``lr`` is a plain multiplier (1.0 is the paper's rule).
    ``step`` does not enter the rule; it is taken for a uniform signature.
    """
    params = _listify(params)
    _backend(params).adadelta(
        params, _listify(grads), _listify(square_avgs), _listify(acc_deltas),
        step=step, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
    )


def rmsprop(
    params,
    grads,
    square_avgs,
    momentum_buffers=None,
    grad_avgs=None,
    *,
    step,
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    maximize=False,
):
    r"""RMSprop (Hinton, 2012); ``torch.optim.RMSprop``.

    .. math::
        g &\leftarrow \pm g + \lambda p, \qquad v \leftarrow \alpha v + (1-\alpha) g^2 \\
        \bar g &\leftarrow \alpha \bar g + (1-\alpha) g \ \text{(centered)}, \qquad
        d = \sqrt{v - \bar g^2} + \epsilon \ \text{(centered)}, \quad d = \sqrt{v} + \epsilon \\
        b &\leftarrow \mu b + g / d,\ p \leftarrow p - \eta b \ \text{(momentum)}, \qquad
        p \leftarrow p - \eta g / d \ \text{(otherwise)}

    ``eps`` is outside the square root (torch; Keras puts it inside, and keeps ``lr`` in the
    momentum buffer). ``momentum_buffers`` are needed when ``momentum > 0``, ``grad_avgs`` when
    ``centered``; both start at zero.
    """
    params = _listify(params)
    if momentum > 0 and momentum_buffers is None:
        raise ValueError("rmsprop: momentum_buffers are required when momentum > 0")
    if centered and grad_avgs is None:
        raise ValueError("rmsprop: grad_avgs are required when centered=True")
    _backend(params).rmsprop(
        params, _listify(grads), _listify(square_avgs),
        _listify(momentum_buffers) if momentum > 0 else None,
        _listify(grad_avgs) if centered else None,
        step=step, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
        momentum=momentum, centered=centered, maximize=maximize,
    )


def adam(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs=None,
    *,
    step,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    maximize=False,
    decoupled_weight_decay=False,
):
    r"""Adam (Kingma & Ba, 2015) and, with ``decoupled_weight_decay``, AdamW; ``torch.optim.Adam``.

    .. math::
        g &\leftarrow \pm g + \lambda p \ \text{(L2)}, \qquad
        p \leftarrow p (1 - \eta\lambda) \ \text{(decoupled)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad \hat v = \max(\hat v, v) \ \text{(AMSGrad)} \\
        p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,
             \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``eps`` is outside the square root and added after bias correction (torch). Keras' "epsilon
    hat" is ``eps * sqrt(1 - beta2**t)`` in these terms. With AMSGrad the maximum is taken over the
    uncorrected ``v`` and ``max_exp_avg_sqs`` is required.
    """
    params = _listify(params)
    if amsgrad and max_exp_avg_sqs is None:
        raise ValueError("adam: max_exp_avg_sqs are required when amsgrad=True")
    _backend(params).adam(
        params, _listify(grads), _listify(exp_avgs), _listify(exp_avg_sqs),
        _listify(max_exp_avg_sqs) if amsgrad else None,
        step=step, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
        amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
    )


def adamw(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs=None,
    *,
    step,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=1e-2,
    amsgrad=False,
    maximize=False,
):
    r"""AdamW (Loshchilov & Hutter, 2019): :func:`adam` with decoupled weight decay,
    ``p <- p * (1 - lr * weight_decay)`` before the Adam step; default ``weight_decay=1e-2``."""
    try:
        adam(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
            step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
        )
    except (TypeError, ValueError, RuntimeError) as e:  # the kernels' messages name adam
        text = str(e)
        if type(e) in (TypeError, ValueError, RuntimeError) and text.startswith("adam: "):
            raise type(e)("adamw: " + text[len("adam: "):]) from None
        raise


def nadam(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    mu_product=None,
    lr=2e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    momentum_decay=4e-3,
    decoupled_weight_decay=False,
    maximize=False,
):
    r"""NAdam (Dozat, 2016) in torch's form, with the momentum schedule ``mu_t``; ``torch.optim.NAdam``.

    .. math::
        \mu_t &= \beta_1 (1 - \tfrac12 0.96^{t\,\psi}), \qquad
        \mu_{t+1} = \beta_1 (1 - \tfrac12 0.96^{(t+1)\psi}), \qquad
        \Pi_t = \Pi_{t-1} \mu_t \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad d = \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        p &\leftarrow p - \eta \frac{1-\mu_t}{1-\Pi_t} \frac{g}{d}
                      - \eta \frac{\mu_{t+1}}{1-\Pi_t \mu_{t+1}} \frac{m}{d}

    ``psi`` is ``momentum_decay``. Weight decay is L2 (``g += wd * p``) or, with
    ``decoupled_weight_decay``, ``p *= 1 - lr * wd`` (NAdamW). ``mu_product`` is the product
    :math:`\Pi_{t-1}` over the earlier steps (1.0 before the first); ``None`` computes it in closed
    form from ``step``. Returns :math:`\Pi_t`, the value to pass at the next step.
    Keras uses ``0.96**t`` without ``momentum_decay`` and one global product: not this.
    """
    params = _listify(params)
    return _backend(params).nadam(
        params, _listify(grads), _listify(exp_avgs), _listify(exp_avg_sqs),
        step=step, mu_product=mu_product, lr=lr, betas=tuple(betas), eps=eps,
        weight_decay=weight_decay, momentum_decay=momentum_decay,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
    )


def adamax(
    params,
    grads,
    exp_avgs,
    exp_infs,
    *,
    step,
    lr=2e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    maximize=False,
):
    r"""Adamax, the infinity-norm Adam (Kingma & Ba, 2015, sec. 7); ``torch.optim.Adamax``.

    .. math::
        g &\leftarrow \pm g + \lambda p, \qquad m \leftarrow \beta_1 m + (1-\beta_1) g \\
        u &\leftarrow \max(\beta_2 u, |g| + \epsilon), \qquad
        p \leftarrow p - \frac{\eta}{1-\beta_1^t} \frac{m}{u}

    ``eps`` is inside the max (torch). A NaN on either side of the max propagates.
    """
    params = _listify(params)
    _backend(params).adamax(
        params, _listify(grads), _listify(exp_avgs), _listify(exp_infs),
        step=step, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize,
    )


def ewa(averages, values, *, beta):
    r"""Exponentially weighted average, in place: ``avg <- beta * avg + (1 - beta) * x``.

    Used for weight EMA (``values`` are the parameters). ``averages`` start at zero; read them out
    with :func:`ewa_readout`, which divides by the bias correction ``1 - beta**t``.
    """
    averages = _listify(averages)
    _backend(averages).ewa(averages, _listify(values), beta=beta)


def ewa_readout(averages, outs, *, beta, step):
    r"""Bias-corrected read-out of an EWA started at zero: ``out <- avg / (1 - beta**step)``."""
    averages = _listify(averages)
    _backend(averages).ewa_readout(averages, _listify(outs), beta=beta, step=step)
