r"""A multi-layer perceptron in plain NumPy: ReLU hidden layers, softmax cross-entropy, hand-written
backward pass. Enough network to compare optimizers on Fashion-MNIST without a framework.

For layers :math:`l = 1..L` with :math:`h_0 = x` (a batch of rows):

.. math::
    z_l = h_{l-1} W_l + b_l, \qquad h_l = \max(z_l, 0) \ (l < L), \qquad
    \ell = \frac1n \sum_i \Big(\log \sum_k e^{z_{L,ik}} - z_{L,i y_i}\Big)

and backwards, with :math:`\delta_L = (\mathrm{softmax}(z_L) - \mathrm{onehot}(y)) / n`:

.. math::
    \nabla W_l = h_{l-1}^\top \delta_l, \qquad \nabla b_l = \textstyle\sum_i \delta_{l,i}, \qquad
    \delta_{l-1} = (\delta_l W_l^\top) \odot [z_{l-1} > 0]

Weights are stored ``(fan_in, fan_out)`` so a layer is one matrix product with the batch, the
gradients are written into preallocated arrays (``model.grads``, in the order of
``model.params``), and every array has the model's dtype (float32 by default), so the optimizer
updates them in place with no conversion.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MLP"]

_EVAL_BATCH = 8192  # rows per forward pass when evaluating: bounds the activations' memory (~8 MB)


class MLP:
    """A ReLU MLP with He-initialised weights and zero biases.

    Args:
        sizes: layer widths, input first, classes last (default ``(784, 256, 128, 10)``).
        seed: seed of the initialisation (NumPy's ``default_rng``); the same seed gives the same
            weights.
        dtype: float32 (default) or float64 (the gradient check uses float64).

    Attributes:
        params: ``[W1, b1, W2, b2, ...]``, ``W`` of shape ``(fan_in, fan_out)``.
        grads: arrays of the same shapes that :meth:`loss_and_grad` fills.

    >>> import numpy as np
    >>> net = MLP((4, 8, 3), seed=0)
    >>> loss = net.loss_and_grad(np.ones((2, 4), np.float32), np.array([0, 2]))
    >>> [g.shape for g in net.grads]
    [(4, 8), (8,), (8, 3), (3,)]
    """

    def __init__(self, sizes=(784, 256, 128, 10), *, seed=0, dtype=np.float32):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"MLP: sizes must be at least two positive widths, got {sizes!r}")
        self.sizes = tuple(int(s) for s in sizes)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            # He et al. 2015: N(0, 2 / fan_in) keeps the activations' scale through ReLU layers.
            w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            self.params += [w.astype(self.dtype), np.zeros(fan_out, self.dtype)]
        self.grads = [np.zeros_like(p) for p in self.params]

    @property
    def n_params(self):
        return sum(p.size for p in self.params)

    def logits(self, x):
        """Class scores ``z_L`` for a batch ``x`` of shape ``(n, sizes[0])``."""
        h = x
        last = len(self.params) // 2 - 1
        for layer in range(last + 1):
            h = h @ self.params[2 * layer]
            h += self.params[2 * layer + 1]
            if layer < last:
                np.maximum(h, 0, out=h)
        return h

    @staticmethod
    def _log_softmax(z):
        """``z - logsumexp(z)`` row by row, in place (the max is subtracted first, so no overflow)."""
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z

    def loss_and_grad(self, x, y):
        """Mean cross-entropy of the batch ``(x, y)`` (a Python float); fills :attr:`grads`."""
        n = len(x)
        n_layers = len(self.params) // 2
        hs = [x]  # the input of each layer
        h = x
        for layer in range(n_layers):
            h = h @ self.params[2 * layer]
            h += self.params[2 * layer + 1]
            if layer < n_layers - 1:
                np.maximum(h, 0, out=h)
                hs.append(h)
        logp = self._log_softmax(h)
        rows = np.arange(n)
        loss = -float(logp[rows, y].mean(dtype=np.float64))
        delta = np.exp(logp, out=logp)  # softmax
        delta[rows, y] -= 1
        delta *= self.dtype.type(1.0 / n)
        for layer in range(n_layers - 1, -1, -1):
            w = self.params[2 * layer]
            np.matmul(hs[layer].T, delta, out=self.grads[2 * layer])
            np.sum(delta, axis=0, out=self.grads[2 * layer + 1])
            if layer:
                delta = delta @ w.T
                delta *= hs[layer] > 0
        return loss

    def loss(self, x, y):
        """Mean cross-entropy over all of ``(x, y)``, evaluated in batches (a Python float)."""
        total = 0.0
        for s in range(0, len(x), _EVAL_BATCH):
            logp = self._log_softmax(self.logits(x[s : s + _EVAL_BATCH]))
            total -= float(logp[np.arange(len(logp)), y[s : s + _EVAL_BATCH]].sum(dtype=np.float64))
        return total / max(len(x), 1)

    def accuracy(self, x, y):
        """Fraction of rows of ``x`` whose highest score is the label."""
        hits = 0
        for s in range(0, len(x), _EVAL_BATCH):
            hits += int((self.logits(x[s : s + _EVAL_BATCH]).argmax(axis=1) == y[s : s + _EVAL_BATCH]).sum())
        return hits / max(len(x), 1)
