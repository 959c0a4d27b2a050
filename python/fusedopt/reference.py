"""The test oracle: every update rule of :mod:`fusedopt.functional`, in plain float64 NumPy.

Written from the papers and the ``torch.optim`` 2.x documentation and single-tensor sources, not
from the C++ kernels, and sharing no code with them or with :mod:`fusedopt.functional`: it imports
NumPy only, so a bug in the kernels cannot hide here by being copied.
``tests/test_reference_vs_torch.py`` checks it against ``torch.optim`` where PyTorch is installed.

Each function has exactly the signature of its twin in :mod:`fusedopt.functional` (lists of arrays
or a bare array, keyword-only hyper-parameters, the 1-based ``step``), so a test swaps one for the
other by changing one name. Every array is read into a float64 copy, the update is computed in
float64 with the operations written out as in the formula, and the results are stored back into
the given arrays with ``arr[...] = result`` (rounded once to the array's own dtype). It is slow and
simple on purpose; it does not check dtypes, memory order, alignment or overlap (the kernels' job),
only what changes the meaning of the call: list lengths and shapes, ``step``, and the
hyper-parameter combinations that :mod:`fusedopt.functional` refuses.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "sgd",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "nadam",
    "adamax",
    "radam",
    "lion",
    "adopt",
    "adamw_schedulefree",
    "lamb",
    "lerp",
    "ewa",
    "ewa_readout",
    "scale",
    "global_norm",
    "clip_grad_norm_",
    "adafactor",
    "kahan",
]


def _arrays(fn, name, x, n=None):
    """``x`` as a list of arrays (a bare array is a list of one), checked against ``n`` entries."""
    if isinstance(x, np.ndarray):
        x = [x]
    if not isinstance(x, (list, tuple)):
        raise TypeError(
            f"{fn}: {name} must be a list or tuple of numpy arrays, got {type(x).__name__}"
        )
    for i, a in enumerate(x):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}: {name}[{i}] is a {type(a).__name__}, expected a numpy.ndarray")
    if n is not None and len(x) != n:
        raise ValueError(f"{fn}: {name} has {len(x)} arrays, expected {n} (one per param)")
    return list(x)


def _check_shapes(fn, first, lists):
    for name, arrays in lists.items():
        for i, (a, p) in enumerate(zip(arrays, first)):
            if a.shape != p.shape:
                raise ValueError(
                    f"{fn}: {name}[{i}] has shape {a.shape}, expected {p.shape} "
                    f"(the shape of params[{i}])"
                )


def _check_step(fn, step):
    if step < 1:
        raise ValueError(f"{fn}: step must be >= 1, got {step}")


def _lists(fn, params, step, **named):
    """Normalise ``params`` and the other named lists (``None`` entries stay ``None``)."""
    if step is not None:
        _check_step(fn, step)
    params = _arrays(fn, "params", params)
    out = {}
    for name, x in named.items():
        out[name] = None if x is None else _arrays(fn, name, x, len(params))
    _check_shapes(fn, params, {k: v for k, v in out.items() if v is not None})
    return params, out


def _f64(a):
    """A float64 copy of ``a`` (never a view: the inputs are written only at the end)."""
    return np.array(a, dtype=np.float64, copy=True)



def _decayed(param, grad, maximize, weight_decay, decoupled_lr=None):
    """float64 ``(p, g)`` after the first lines every rule shares, in torch's order: ``g = -g``
    for maximize, then weight decay, coupled ``g + wd * p`` or, given ``decoupled_lr``,
    decoupled ``p * (1 - lr * wd)``. A zero decay leaves both untouched (0 * inf would be NaN)."""
    p = _f64(param)
    g = _f64(grad)
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_lr is not None:
            p = p * (1.0 - decoupled_lr * weight_decay)
        else:
            g = g + weight_decay * p
    return p, g

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
    """SGD with (Nesterov) momentum, ``torch.optim.SGD``: ``g += wd*p``; ``buf = g`` at step 1,
    else ``buf = momentum*buf + (1-dampening)*g``; ``g = g + momentum*buf`` (Nesterov) or ``buf``;
    ``p -= lr*g``. Sutskever et al. (2013) for the momentum form torch uses."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd: Nesterov momentum requires a momentum and zero dampening")
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("sgd: momentum_buffers are required when momentum != 0")
    params, s = _lists(
        "sgd", params, step, grads=grads,
        momentum_buffers=momentum_buffers if momentum != 0 else None,
    )
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay)
        if momentum != 0:
            if step == 1:
                buf = g.copy()
            else:
                buf = momentum * _f64(s["momentum_buffers"][i]) + (1.0 - dampening) * g
            s["momentum_buffers"][i][...] = buf
            g = g + momentum * buf if nesterov else buf
        param[...] = p - lr * g


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
    """Adagrad (Duchi, Hazan & Singer, 2011), ``torch.optim.Adagrad``: ``g += wd*p``;
    ``clr = lr / (1 + (t-1)*lr_decay)``; ``sum += g*g``; ``p -= clr*g/(sqrt(sum) + eps)``."""
    params, s = _lists("adagrad", params, step, grads=grads, state_sums=state_sums)
    clr = lr / (1.0 + (step - 1) * lr_decay)
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay)
        acc = _f64(s["state_sums"][i]) + g * g
        s["state_sums"][i][...] = acc
        param[...] = p - clr * g / (np.sqrt(acc) + eps)


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
    """Adadelta (Zeiler, 2012), ``torch.optim.Adadelta``: ``g += wd*p``;
    ``v = rho*v + (1-rho)*g^2``; ``d = sqrt(u + eps)/sqrt(v + eps)*g``;
    ``u = rho*u + (1-rho)*d^2``; ``p -= lr*d``."""
    params, s = _lists(
        "adadelta", params, step, grads=grads, square_avgs=square_avgs, acc_deltas=acc_deltas
    )
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay)
        v = rho * _f64(s["square_avgs"][i]) + (1.0 - rho) * g * g
        u = _f64(s["acc_deltas"][i])
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u = rho * u + (1.0 - rho) * delta * delta
        s["square_avgs"][i][...] = v
        s["acc_deltas"][i][...] = u
        param[...] = p - lr * delta


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
    """RMSprop (Hinton, 2012; centered form from Graves, 2013), ``torch.optim.RMSprop``:
    ``g += wd*p``; ``v = alpha*v + (1-alpha)*g^2``; centered: ``gbar = alpha*gbar + (1-alpha)*g``,
    ``d = sqrt(v - gbar^2) + eps``, else ``d = sqrt(v) + eps``; momentum:
    ``buf = momentum*buf + g/d``, ``p -= lr*buf``, else ``p -= lr*g/d``."""
    if momentum > 0 and momentum_buffers is None:
        raise ValueError("rmsprop: momentum_buffers are required when momentum > 0")
    if centered and grad_avgs is None:
        raise ValueError("rmsprop: grad_avgs are required when centered=True")
    params, s = _lists(
        "rmsprop", params, step, grads=grads, square_avgs=square_avgs,
        momentum_buffers=momentum_buffers if momentum > 0 else None,
        grad_avgs=grad_avgs if centered else None,
    )
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay)
        v = alpha * _f64(s["square_avgs"][i]) + (1.0 - alpha) * g * g
        s["square_avgs"][i][...] = v
        if centered:
            gbar = alpha * _f64(s["grad_avgs"][i]) + (1.0 - alpha) * g
            s["grad_avgs"][i][...] = gbar
            avg = np.sqrt(v - gbar * gbar) + eps
        else:
            avg = np.sqrt(v) + eps
        if momentum > 0:
            buf = momentum * _f64(s["momentum_buffers"][i]) + g / avg
            s["momentum_buffers"][i][...] = buf
            param[...] = p - lr * buf
        else:
            param[...] = p - lr * g / avg


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
    """Adam (Kingma & Ba, 2015), AMSGrad (Reddi et al., 2018), ``torch.optim.Adam``:
    ``g += wd*p`` (L2) or ``p *= 1 - lr*wd`` (decoupled, AdamW); ``m = b1*m + (1-b1)*g``;
    ``v = b2*v + (1-b2)*g^2``; AMSGrad: ``vmax = max(vmax, v)`` (NaN-propagating) used for ``v``;
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``."""
    _adam("adam", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, decoupled_weight_decay)


def _adam(fn, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, decoupled_weight_decay):
    """Adam and AdamW; ``fn`` names the function in messages."""
    if amsgrad and max_exp_avg_sqs is None:
        raise ValueError(f"{fn}: max_exp_avg_sqs are required when amsgrad=True")
    params, s = _lists(
        fn, params, step, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
        max_exp_avg_sqs=max_exp_avg_sqs if amsgrad else None,
    )
    beta1, beta2 = betas
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay,
                        lr if decoupled_weight_decay else None)
        m = beta1 * _f64(s["exp_avgs"][i]) + (1.0 - beta1) * g
        v = beta2 * _f64(s["exp_avg_sqs"][i]) + (1.0 - beta2) * g * g
        s["exp_avgs"][i][...] = m
        s["exp_avg_sqs"][i][...] = v
        if amsgrad:
            v = np.maximum(_f64(s["max_exp_avg_sqs"][i]), v)
            s["max_exp_avg_sqs"][i][...] = v
        denom = np.sqrt(v) / np.sqrt(bias_correction2) + eps
        param[...] = p - (lr / bias_correction1) * m / denom


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
    """AdamW (Loshchilov & Hutter, 2019), ``torch.optim.AdamW``: :func:`adam` with the decoupled
    decay ``p *= 1 - lr*wd`` applied before the Adam step."""
    _adam("adamw", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, True)


def _nadam_mu(beta1, momentum_decay, t):
    """torch's momentum schedule ``mu_t = beta1*(1 - 0.5*0.96^(t*momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


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
    """NAdam (Dozat, 2016) in ``torch.optim.NAdam``'s form: ``mu_t``, ``mu_{t+1}`` from the
    schedule; ``Pi_t = Pi_{t-1}*mu_t``; ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g^2``;
    ``d = sqrt(v/(1-b2^t)) + eps``;
    ``p -= lr*(1-mu_t)/(1-Pi_t)*g/d + lr*mu_{t+1}/(1-Pi_t*mu_{t+1})*m/d``.
    ``mu_product`` is ``Pi_{t-1}`` (``None``: the product over steps ``1..t-1``);
    returns ``Pi_t``."""
    params, s = _lists(
        "nadam", params, step, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs
    )
    beta1, beta2 = betas
    if mu_product is None:
        mu_product = 1.0
        for k in range(1, step):
            mu_product *= _nadam_mu(beta1, momentum_decay, k)
    mu = _nadam_mu(beta1, momentum_decay, step)
    mu_next = _nadam_mu(beta1, momentum_decay, step + 1)
    mu_product = float(mu_product) * mu
    bias_correction2 = 1.0 - beta2**step
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay,
                        lr if decoupled_weight_decay else None)
        m = beta1 * _f64(s["exp_avgs"][i]) + (1.0 - beta1) * g
        v = beta2 * _f64(s["exp_avg_sqs"][i]) + (1.0 - beta2) * g * g
        s["exp_avgs"][i][...] = m
        s["exp_avg_sqs"][i][...] = v
        denom = np.sqrt(v / bias_correction2) + eps
        p = p - lr * (1.0 - mu) / (1.0 - mu_product) * g / denom
        p = p - lr * mu_next / (1.0 - mu_product * mu_next) * m / denom
        param[...] = p
    return mu_product


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
    """Adamax (Kingma & Ba, 2015, sec. 7.1), ``torch.optim.Adamax``: ``g += wd*p``;
    ``m = b1*m + (1-b1)*g``; ``u = max(b2*u, |g| + eps)`` (NaN-propagating, eps inside);
    ``p -= lr/(1-b1^t) * m/u``."""
    params, s = _lists("adamax", params, step, grads=grads, exp_avgs=exp_avgs, exp_infs=exp_infs)
    beta1, beta2 = betas
    clr = lr / (1.0 - beta1**step)
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay)
        m = beta1 * _f64(s["exp_avgs"][i]) + (1.0 - beta1) * g
        u = np.maximum(beta2 * _f64(s["exp_infs"][i]), np.abs(g) + eps)
        s["exp_avgs"][i][...] = m
        s["exp_infs"][i][...] = u
        param[...] = p - clr * m / u


def radam(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    maximize=False,
):
    """RAdam (Liu et al., 2020), ``torch.optim.RAdam``: ``g += wd*p`` (L2) or
    ``p *= 1 - lr*wd`` (decoupled); ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g^2``;
    ``rho_inf = 2/(1-b2) - 1``; ``rho_t = rho_inf - 2*t*b2^t/(1-b2^t)``; if ``rho_t > 5``:
    ``p -= lr/(1-b1^t) * m * r * sqrt(1-b2^t)/(sqrt(v) + eps)`` with
    ``r = sqrt((rho_t-4)(rho_t-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho_t))``; else
    ``p -= lr/(1-b1^t) * m``."""
    params, s = _lists(
        "radam", params, step, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs
    )
    beta1, beta2 = betas
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bias_correction2
    for i, param in enumerate(params):
        p, g = _decayed(param, s["grads"][i], maximize, weight_decay,
                        lr if decoupled_weight_decay else None)
        m = beta1 * _f64(s["exp_avgs"][i]) + (1.0 - beta1) * g
        v = beta2 * _f64(s["exp_avg_sqs"][i]) + (1.0 - beta2) * g * g
        s["exp_avgs"][i][...] = m
        s["exp_avg_sqs"][i][...] = v
        if rho_t > 5.0:
            rect = np.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                           / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            param[...] = p - (lr / bias_correction1) * m * rect * np.sqrt(bias_correction2) \
                / (np.sqrt(v) + eps)
        else:
            param[...] = p - (lr / bias_correction1) * m


def _quarter_power(n):
    """ADOPT's default clip: the reference's ``lambda step: step**0.25``."""
    return n**0.25


def adopt(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr=1e-3,
    betas=(0.9, 0.9999),
    eps=1e-6,
    clip_lambda=_quarter_power,
    weight_decay=0.0,
    decouple=False,
    maximize=False,
):
    """ADOPT (Taniguchi et al., 2024), the authors' ``adopt.ADOPT``. ``n = step - 1``;
    ``g = -g`` if maximize; ``g += wd*p`` unless ``decouple``. ``n == 0``: ``v += g^2``, nothing
    else. Otherwise ``p *= 1 - lr*wd`` if ``decouple``; ``u = clamp(g / max(sqrt(v), eps), -c,
    c)`` with ``c = clip_lambda(float(n))`` (a callable, a number, or None: no clamp);
    ``m += (1-b1)*(u - m)``; ``p -= lr*m``; ``v = b2*v + (1-b2)*g^2``."""
    params, s = _lists(
        "adopt", params, step, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs
    )
    beta1, beta2 = betas
    n = step - 1
    clip = None  # the first step does not clip (nor call clip_lambda)
    if n > 0:
        clip = clip_lambda(float(n)) if callable(clip_lambda) else clip_lambda
    for i, param in enumerate(params):
        p = _f64(param)
        g = _f64(s["grads"][i])
        if maximize:
            g = -g
        if weight_decay != 0 and not decouple:
            g = g + weight_decay * p
        v = _f64(s["exp_avg_sqs"][i])
        if n == 0:
            s["exp_avg_sqs"][i][...] = v + g * g
            continue
        if weight_decay != 0 and decouple:
            p = p - lr * weight_decay * p
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.sqrt(v)
            u = g / np.where(root < eps, eps, root)  # NaN stays NaN, as torch.clamp keeps it
        if clip is not None:
            u = np.where(u < -clip, -clip, np.where(u > clip, clip, u))
        m = _f64(s["exp_avgs"][i])
        m = m + (1.0 - beta1) * (u - m)
        param[...] = p - lr * m
        s["exp_avgs"][i][...] = m
        s["exp_avg_sqs"][i][...] = beta2 * v + (1.0 - beta2) * g * g


def _torch_lerp(a, b, w):
    """``torch.lerp``: ``a + w (b - a)`` for ``|w| < 0.5``, else ``b - (b - a)(1 - w)``."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1.0 - w)


def _schedulefree_scalars(lr, warmup_steps, r, weight_lr_power, step, weight_sum, lr_max):
    """``(lr, lr_max, weight_sum, c)`` of step ``step`` (1-based) from the state before it, as
    ``schedulefree.AdamWScheduleFree.step`` computes them (``k = step - 1``)."""
    k = step - 1
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr = lr * sched
    lr_max = max(lr, lr_max)
    weight = ((k + 1) ** r) * (lr_max**weight_lr_power)
    weight_sum = weight_sum + weight
    c = weight / weight_sum if weight_sum != 0 else 0.0
    return lr, lr_max, weight_sum, c


def adamw_schedulefree(
    params,
    grads,
    zs,
    exp_avg_sqs,
    *,
    step,
    weight_sum=None,
    lr_max=None,
    lr=0.0025,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    warmup_steps=0.0,
    r=0.0,
    weight_lr_power=2.0,
):
    """Schedule-Free AdamW (Defazio et al., 2024), ``schedulefree.AdamWScheduleFree``: the params
    hold ``y``. With the step's ``lr`` (warmed up), ``c`` (``_schedulefree_scalars``):
    ``v = b2*v + (1-b2)*g^2``; ``u = g / (sqrt(v/(1-b2^t)) + eps) + wd*y``;
    ``y = lerp(y, z, c) + lr*(b1*(1-c) - 1)*u``; ``z -= lr*u``. ``weight_sum`` and ``lr_max``
    are the state before the step (None: a run from step 1 at this lr); returns them after it."""
    params, s = _lists(
        "adamw_schedulefree", params, step, grads=grads, zs=zs, exp_avg_sqs=exp_avg_sqs
    )
    if weight_sum is None or lr_max is None:
        weight_sum, lr_max = 0.0, -1.0
        for t in range(1, step):
            _, lr_max, weight_sum, _ = _schedulefree_scalars(
                lr, warmup_steps, r, weight_lr_power, t, weight_sum, lr_max)
    beta1, beta2 = betas
    lr_t, lr_max, weight_sum, c = _schedulefree_scalars(
        lr, warmup_steps, r, weight_lr_power, step, weight_sum, lr_max)
    bias_correction2 = 1.0 - beta2**step
    for i, param in enumerate(params):
        y = _f64(param)
        g = _f64(s["grads"][i])
        z = _f64(s["zs"][i])
        v = beta2 * _f64(s["exp_avg_sqs"][i]) + (1.0 - beta2) * g * g
        u = g / (np.sqrt(v / bias_correction2) + eps)
        if weight_decay != 0:
            u = u + weight_decay * y
        param[...] = _torch_lerp(y, z, c) + lr_t * (beta1 * (1.0 - c) - 1.0) * u
        s["zs"][i][...] = z - lr_t * u
        s["exp_avg_sqs"][i][...] = v
    return weight_sum, lr_max


def lamb(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr=1e-3,
    bias_correction=True,
    betas=(0.9, 0.999),
    eps=1e-6,
    weight_decay=1e-2,
    adam_w_mode=True,
    grad_averaging=True,
    max_grad_norm=1.0,
    use_nvlamb=False,
    grad_norm=None,
):
    """LAMB as apex's ``FusedLAMB``: ``G`` = ``grad_norm``, or the 2-norm of all ``grads``;
    ``g = g / (G / max_grad_norm)`` if ``G > max_grad_norm``; ``g += wd*p`` unless
    ``adam_w_mode``; ``m = b1*m + b3*g`` (``b3 = 1-b1`` with ``grad_averaging``, else 1);
    ``v = b2*v + (1-b2)*g^2``; ``u = (m/bc1) / (sqrt(v/bc2) + eps)`` (``bc = 1 - b^step`` with
    ``bias_correction``, else 1); ``u += wd*p`` if ``adam_w_mode``; per tensor
    ``r = lr*||p||/||u||`` (``lr`` if either norm is 0, or if ``wd == 0`` and not
    ``use_nvlamb``); ``p -= r*u``."""
    params, s = _lists(
        "lamb", params, step, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs
    )
    beta1, beta2 = betas
    if grad_norm is None:
        grad_norm = math.sqrt(math.fsum(
            float(v) * float(v) for g in s["grads"] for v in _f64(g).ravel()))
    clip = 1.0
    if grad_norm > max_grad_norm:  # max_grad_norm 0 zeroes every grad (g / inf)
        clip = grad_norm / max_grad_norm if max_grad_norm else math.inf
    bc1 = 1.0 - beta1**step if bias_correction else 1.0
    bc2 = 1.0 - beta2**step if bias_correction else 1.0
    beta3 = 1.0 - beta1 if grad_averaging else 1.0
    for i, param in enumerate(params):
        p = _f64(param)
        with np.errstate(all="ignore"):
            g = _f64(s["grads"][i]) / clip
            if weight_decay != 0 and not adam_w_mode:
                g = g + weight_decay * p
            m = beta1 * _f64(s["exp_avgs"][i]) + beta3 * g
            v = beta2 * _f64(s["exp_avg_sqs"][i]) + (1.0 - beta2) * g * g
            u = (m / bc1) / (np.sqrt(v / bc2) + eps)
            if weight_decay != 0 and adam_w_mode:
                u = u + weight_decay * p
            ratio = lr
            if use_nvlamb or weight_decay != 0:
                p_norm = math.sqrt(float(np.sum(p * p)))
                u_norm = math.sqrt(float(np.sum(u * u)))
                if p_norm != 0 and u_norm != 0:
                    ratio = lr * (p_norm / u_norm)
            param[...] = p - ratio * u
        s["exp_avgs"][i][...] = m
        s["exp_avg_sqs"][i][...] = v


def kahan(update, params, kahan_comps):
    """A step of 16-bit params with Kahan compensation (``kahan_comps=`` of the functional
    calls; the optimizers' ``kahan_summation=True``). ``update(wide)`` runs one rule of this
    module on ``wide``, float64 copies of ``params`` (its other lists as usual), so each new value
    ``q`` is not rounded; then, with ``p`` the old value and ``c`` its compensation,
    ``u = c + (q - p)``, ``p = u + p`` rounded to the param's dtype and ``c = u - (p_new - p)``
    rounded to the compensation's (Kahan, 1965; the optimi library's bf16 form). A param that is
    not finite is stored as ``q``, and ``c`` is 0 where the old or new param is not finite. A list
    entry of ``kahan_comps`` may be None: that param is stored rounded, without compensation."""
    params = _arrays("kahan", "params", params)
    comps = list(kahan_comps) if isinstance(kahan_comps, (list, tuple)) else [kahan_comps]
    if len(comps) != len(params):
        raise ValueError(f"kahan: {len(comps)} kahan_comps, expected {len(params)}")
    wide = [_f64(p) for p in params]
    update(wide)
    for param, comp, q in zip(params, comps, wide):
        if comp is None:
            param[...] = q
            continue
        old = _f64(param)
        was = np.isfinite(old)  # an inf or NaN param is stored as without compensation
        with np.errstate(invalid="ignore", over="ignore"):
            u = _f64(comp) + (q - old)
            param[...] = np.where(was, old + u, q)
            now = _f64(param)
            comp[...] = np.where(was & np.isfinite(now), u - (now - old), 0.0)


def lerp(params, ends, *, weight):
    """``params = torch.lerp(params, ends, weight)``, in place (Schedule-Free's train/eval)."""
    params, s = _lists("lerp", params, None, ends=ends)
    for i, param in enumerate(params):
        param[...] = _torch_lerp(_f64(param), _f64(s["ends"][i]), weight)


def ewa(averages, values, *, beta):
    """Exponentially weighted (moving) average, in place: ``avg = beta*avg + (1-beta)*x``
    (the weight EMA of Polyak & Juditsky, 1992, in its exponential form)."""
    averages = _arrays("ewa", "averages", averages)
    values = _arrays("ewa", "values", values, len(averages))
    for i, (avg, x) in enumerate(zip(averages, values)):
        if x.shape != avg.shape:
            raise ValueError(
                f"ewa: values[{i}] has shape {x.shape}, expected {avg.shape} "
                f"(the shape of averages[{i}])"
            )
        avg[...] = beta * _f64(avg) + (1.0 - beta) * _f64(x)


def ewa_readout(averages, outs, *, beta, step):
    """Bias-corrected read-out of an EWA that started at zero (Kingma & Ba, 2015, sec. 3):
    ``out = avg / (1 - beta^t)``."""
    _check_step("ewa_readout", step)
    averages = _arrays("ewa_readout", "averages", averages)
    outs = _arrays("ewa_readout", "outs", outs, len(averages))
    for i, (avg, out) in enumerate(zip(averages, outs)):
        if out.shape != avg.shape:
            raise ValueError(
                f"ewa_readout: outs[{i}] has shape {out.shape}, expected {avg.shape} "
                f"(the shape of averages[{i}])"
            )
        out[...] = _f64(avg) / (1.0 - beta**step)


def scale(tensors, *, factor):
    """``x = x * factor`` for every tensor (the product rounded once to the tensor's dtype)."""
    for x in _arrays("scale", "tensors", tensors):
        x[...] = _f64(x) * factor


def global_norm(tensors, norm_type=2.0):
    """The 2-norm of all of ``tensors`` together: the square root of the exactly rounded sum
    (``math.fsum``) of every element's square in float64; 0.0 for no tensors. A float."""
    if norm_type != 2.0:
        raise ValueError(f"global_norm: norm_type={norm_type!r}: only the 2-norm")
    arrays = [] if isinstance(tensors, (list, tuple)) and not tensors \
        else _arrays("global_norm", "tensors", tensors)
    return math.sqrt(math.fsum(float(v) * float(v) for x in arrays for v in _f64(x).ravel()))


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """``torch.nn.utils.clip_grad_norm_`` in float64: ``n = global_norm(grads)``; every grad
    times ``min(1, max_norm / (n + 1e-6))``; returns ``n`` (a float). A non-finite ``n`` raises
    ``RuntimeError`` if ``error_if_nonfinite``."""
    n = global_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(n):
        raise RuntimeError(f"clip_grad_norm_: the total norm is {n}")
    with np.errstate(all="ignore"):
        coef = min(1.0, max_norm / (n + 1e-6)) if not math.isnan(n) else math.nan
    if grads is not None and (not isinstance(grads, (list, tuple)) or grads):
        scale(grads, factor=coef)
    return n


def lion(
    params,
    grads,
    exp_avgs,
    *,
    step,
    lr=1e-4,
    betas=(0.9, 0.99),
    weight_decay=0.0,
    decoupled_weight_decay=False,
    init_lr=0.0,
):
    """Lion (Chen et al., 2023), ``lion_pytorch.Lion``: ``p *= 1 - lr*wd`` (``wd / init_lr``
    if decoupled; ``init_lr`` 0: ``lr``; both 0: no decay); ``c = b1*m + (1-b1)*g``; ``p -= lr*sgn(c)`` with
    ``sgn(0) = sgn(NaN) = 0``; ``m = b2*m + (1-b2)*g``. ``step`` is not used."""
    params, s = _lists("lion", params, step, grads=grads, exp_avgs=exp_avgs)
    beta1, beta2 = betas
    init = init_lr or lr
    if not decoupled_weight_decay:
        factor = 1.0 - lr * weight_decay
    else:  # lr = init_lr = 0: nothing moves, no decay either
        factor = 1.0 - lr * (weight_decay / init) if init else 1.0
    for i, param in enumerate(params):
        p = _f64(param) * factor
        g = _f64(s["grads"][i])
        m = _f64(s["exp_avgs"][i])
        c = beta1 * m + (1.0 - beta1) * g
        sign = (c > 0).astype(np.float64) - (c < 0).astype(np.float64)
        param[...] = p - lr * sign
        s["exp_avgs"][i][...] = beta2 * m + (1.0 - beta2) * g


def adafactor(
    params,
    grads,
    row_vars,
    col_vars,
    variances,
    *,
    steps,
    lr=1e-2,
    beta2_decay=-0.8,
    eps=(None, 1e-3),
    d=1.0,
    weight_decay=0.0,
    maximize=False,
):
    """Adafactor as ``torch.optim.Adafactor``, per param at its own 1-based step ``t``:
    ``w = t**beta2_decay``, ``rho = min(lr, 1/sqrt(t))``, ``alpha = max(eps2, rms(p)) * rho``
    (``p`` before the decay); ``p *= 1 - lr*wd``; for a param of 2 or more dims
    ``row_var = lerp(row_var, mean(g^2, -1), w)``, ``col_var = lerp(col_var, mean(g^2, -2), w)``,
    ``vhat = row_var col_var / max(mean(row_var, -2), eps1)``; else
    ``variance = lerp(variance, g^2, w)``, ``vhat = variance``;
    ``U = g / sqrt(max(vhat, eps1^2))``, ``den = max(1, rms(U) / d)``, ``p -= alpha/den * U``.
    ``eps1`` None is the machine epsilon of ``params[0]``'s dtype. Python's ``max`` keeps
    ``eps2`` (or 1) against a NaN norm. ``lerp`` is torch's (exact in float64). Computed in
    float64; each array is written back in its own dtype (a 16-bit param rounded once)."""
    params = _arrays("adafactor", "params", params)
    n = len(params)
    grads = _arrays("adafactor", "grads", grads, n)
    steps = list(steps) if isinstance(steps, (list, tuple)) else [steps] * n
    eps1, eps2 = eps
    if eps1 is None and n:
        eps1 = float(np.finfo(params[0].dtype).eps)
    for i, param in enumerate(params):
        t = float(steps[i])
        _check_step("adafactor", t)
        p = _f64(param)
        g = _f64(grads[i])
        if maximize:
            g = -g
        w = t**beta2_decay
        rho = min(lr, 1.0 / math.sqrt(t))
        numel = p.size
        with np.errstate(all="ignore"):
            # an empty param has no rms (torch divides 0.0 by 0.0 and raises): its update is empty
            root_n = math.sqrt(numel) if numel else math.nan
            rms = math.sqrt(math.fsum(float(x) * float(x) for x in p.ravel())) / root_n
            alpha = max(eps2, rms) * rho
            if weight_decay != 0:
                p = p * (1.0 - lr * weight_decay)
            if p.ndim >= 2:
                # a mean over an empty dim is 0/0 = NaN, as torch's
                row_mean = np.sum(g * g, axis=-1, keepdims=True) / g.shape[-1]
                col_mean = np.sum(g * g, axis=-2, keepdims=True) / g.shape[-2]
                row = _torch_lerp(_f64(row_vars[i]), row_mean, w)
                col = _torch_lerp(_f64(col_vars[i]), col_mean, w)
                row_var_mean = np.sum(row, axis=-2, keepdims=True) / row.shape[-2]
                vhat = row * col / np.maximum(row_var_mean, eps1)  # (NaN stays NaN)
            else:
                var = _torch_lerp(_f64(variances[i]), g * g, w)
                vhat = var
            u = g / np.sqrt(np.maximum(vhat, eps1 * eps1))
            u_rms = math.sqrt(math.fsum(float(x) * float(x) for x in u.ravel())) / root_n
            den = max(1.0, u_rms / d)
            param[...] = p - (alpha / den) * u
        if p.ndim >= 2:
            row_vars[i][...] = row
            col_vars[i][...] = col
        else:
            variances[i][...] = var
