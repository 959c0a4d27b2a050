"""Schedule-Free AdamW, the ``schedulefree`` package's ``AdamWScheduleFree``; ``ScheduleFreeModes``,
its ``train()`` and ``eval()``, shared with :class:`fusedopt.torch.AdamWScheduleFree`."""

from __future__ import annotations

from typing import Any, ClassVar

from .. import functional
from .optimizer import Optimizer, StepsPerGroup

__all__ = ["AdamWScheduleFree", "ScheduleFreeModes"]


class ScheduleFreeModes:
    """``train()`` and ``eval()``: the params hold y in train mode and x in eval mode, and a step is
    refused outside train mode. One fused ``lerp`` pass over the params that have a ``z`` (those
    stepped at least once) per group and place (:func:`fusedopt.functional.lerp`), by the front
    end's ``_params_with_state``."""

    param_groups: list
    # The peer keeps these per group; here they are per-param state (the step count and the
    # scalar state). A state dict carries them in its groups as well, for the peer to load, and a
    # state dict of the peer has its entries completed from them.
    _group_state: ClassVar[dict] = {"k": "step", "weight_sum": "weight_sum", "lr_max": "lr_max"}
    _group_defaults: ClassVar[dict] = {"train_mode": False}

    _params_with_state: Any  # the front end's: (params, state lists) of a group, per place

    def train(self) -> None:
        """Put the params at y, where the grads are to be taken (``p = lerp(p, z, 1 - beta1)``);
        a group already in train mode is left as it is."""
        self._set_mode(True)

    def eval(self) -> None:
        """Put the params at x, the average to evaluate and to save
        (``p = lerp(p, z, 1 - 1/beta1)``); a group already in eval mode is left as it is."""
        self._set_mode(False)

    def _set_mode(self, train: bool) -> None:
        cls = type(self).__name__
        moves = []
        for gi, group in enumerate(self.param_groups):
            if bool(group.get("train_mode", False)) == train:
                continue
            beta1 = float(group["betas"][0])
            if not train and beta1 == 0.0:
                raise ValueError(
                    f"{cls}.eval: param_groups[{gi}] has betas[0] = 0: its params hold y = z, "
                    "from which x cannot be recovered")
            moves.append((gi, group, 1.0 - beta1 if train else 1.0 - 1.0 / beta1))
        for gi, group, weight in moves:
            for params, zs in self._params_with_state(gi, "z"):
                functional.lerp(params, zs, weight=weight)
            group["train_mode"] = train

    def _before_step(self) -> None:
        for gi, group in enumerate(self.param_groups):
            if not group.get("train_mode", False):
                raise RuntimeError(
                    f"{type(self).__name__}.step: param_groups[{gi}] is not in train mode: call "
                    "opt.train() before the first step and after eval() (the params must hold y)")


class AdamWScheduleFree(ScheduleFreeModes, StepsPerGroup, Optimizer,
                        algorithm="adamw_schedulefree"):
    r"""Schedule-Free AdamW as the ``schedulefree`` package's ``AdamWScheduleFree`` (1.4.1: the same
    arguments, defaults, state names, modes and update): no learning-rate schedule; the weights
    evaluated are an average :math:`x` of the iterates :math:`z`, and the grads are taken at an
    interpolation :math:`y` of the two.

    .. math::
        c_t &= \frac{w_t}{\sum_{i \le t} w_i}, \qquad
        w_t = t^r \, (\max_{i \le t} \eta_i)^{p}, \qquad
        \eta_t = \eta \min(1, t / \text{warmup\_steps}) \\
        v &\leftarrow \beta_2 v + (1 - \beta_2) g^2, \qquad
        u = \frac{g}{\sqrt{v / (1 - \beta_2^t)} + \epsilon} + \lambda y \\
        y &\leftarrow (1 - c_t) y + c_t z + \eta_t (\beta_1 (1 - c_t) - 1) u, \qquad
        z \leftarrow z - \eta_t u

    The params hold :math:`y = (1 - \beta_1) z + \beta_1 x` in train mode and :math:`x` in eval
    mode; :math:`x` is never stored: :meth:`train` sets :math:`y = \operatorname{lerp}(x, z,
    1 - \beta_1)`, :meth:`eval` :math:`x = \operatorname{lerp}(y, z, 1 - 1/\beta_1)`, each with
    ``torch.lerp``'s two forms (:func:`fusedopt.functional.lerp`: :math:`a + w (b - a)` for
    :math:`|w| < 0.5`, else :math:`b - (b - a)(1 - w)`). Call :meth:`train` before the first step (a step outside
    train mode raises ``RuntimeError``) and :meth:`eval` before evaluating or saving. :math:`z`
    starts as a copy of the param, at its first step; :math:`t` counts steps from 1; the first
    step has :math:`c_1 = 1`. The decay :math:`\lambda` is taken at :math:`y` and scaled by
    :math:`\eta_t` through :math:`u`. There is no first moment and no bias correction of the
    update beyond :math:`v`'s. Defazio et al., "The Road Less Scheduled", NeurIPS 2024.

    Differences from the package: the grads are only read (the package overwrites ``p.grad`` with
    :math:`u`, which breaks gradient accumulation across steps); every group must be in train
    mode to step (the package looks at the first). The package keeps ``k``, ``weight_sum`` and
    ``lr_max`` in each group; here they are per-param state (``step`` and the scalar state), and a
    state dict carries them in its groups too, so that state dicts move both ways. A param steps
    with its group's most advanced count, as in the package, also after steps on which it had no
    grad; but a step on which no param of a group has a grad does not count here, where the
    package counts it.

    Args:
        params: an array, a list of arrays, or a list of param-group dicts. Float32 or float64,
            contiguous, updated in place.
        lr (float or schedule): :math:`\eta` (default: 0.0025).
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1)
            (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        warmup_steps (float): linear warmup of the lr over this many steps (default: 0).
        r (float): the power of :math:`t` in the weights (default: 0).
        weight_lr_power (float): :math:`p`, the power of the largest lr so far in the weights
            (default: 2).

    State per param: ``step``, ``weight_sum``, ``lr_max`` (the running sum of the weights and the
    largest lr so far, floats), ``z``, ``exp_avg_sq`` (:math:`v`). Each group has ``train_mode``.

    >>> import numpy as np, fusedopt
    >>> w = np.array([1.0, -2.0])
    >>> opt = fusedopt.AdamWScheduleFree([w], lr=0.1)
    >>> opt.train()
    >>> opt.step([np.array([2.0, -0.5])])  # step 1: y = z = z0 - lr * g / (|g| + eps)
    >>> np.round(w, 6)
    array([ 0.9, -1.9])
    >>> opt.eval()  # x = y after one step
    >>> np.round(w, 6)
    array([ 0.9, -1.9])
    """

    _algorithms = ("lerp",)  # the call train() and eval() make, whose rule the docstring holds
    # the package's torch class takes foreach (default True where torch has _foreach_mul_)
    _peer_flags = {"foreach": True}
    _front_mixins = (ScheduleFreeModes,)  # fusedopt.torch's class has train() and eval() too
