"""``torch.nn.utils.clip_grad_norm_`` over the grads of CPU or CUDA tensors, by fusedopt's
reduction and scaling passes (:func:`fusedopt.clip_grad_norm_`)."""

from __future__ import annotations

from typing import Any

import torch

from .. import clip as _clip

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: Any = None) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (same arguments and result) for params on the CPU
    or on one CUDA device: the grads of ``parameters`` (a tensor or an iterable of them; params
    without a grad are skipped) scaled in place so that their global 2-norm is at most
    ``max_norm``; returns that norm before clipping, a 0-d tensor of the grads' dtype on their
    device (``tensor(0.)`` without grads).
    ``foreach`` is accepted and changes nothing (the passes are fused). The rule, accuracy and
    checks are :func:`fusedopt.clip_grad_norm_`'s."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return _clip.clip_grad_norm_(grads, max_norm, norm_type, error_if_nonfinite)
