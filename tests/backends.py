"""Stand-ins for :mod:`fusedopt._backend`, which binds the calls of the optimizer classes and of
``EMA`` (``opt._backend = ...``; Note [A bound call] in csrc/bindings/bound.h).

``Oracle(fusedopt.reference)`` runs each call through a module with the signatures of
:mod:`fusedopt.functional` (the float64 oracle), so the same class bookkeeping runs over the oracle.
``CallLog(inner)`` records every call it binds and every run, then makes them through ``inner``
(the real backend by default).
"""

from __future__ import annotations

from fusedopt import _backend
from fusedopt._spec import SPECS


class Oracle:
    def __init__(self, module):
        self.module = module

    def bind(self, algo, lists, hyper, *, name, index=None, grads_later=False, aliases=None):
        return _ModuleCall(getattr(self.module, algo), SPECS[algo], lists, hyper)


class _ModuleCall:
    def __init__(self, fn, spec, lists, hyper):
        self.fn, self.spec, self.lists, self.hyper = fn, spec, list(lists), hyper
        roles = [b.role for b in spec.buffers]
        self.grad_at = roles.index("grad") if "grad" in roles else None

    def check(self, grads):  # the module checks what it checks when it runs
        pass

    def run(self, grads=None, *, step=None, lr=None, scalars=None, **run):
        spec = self.spec
        lists = list(self.lists)
        if grads is not None:
            lists[self.grad_at] = grads
        kw = dict(zip(spec.call_hypers, self.hyper))
        if lr is not None:
            kw["lr"] = lr
        if spec.step:
            kw["step"] = step
        if len(spec.scalars) == 1:
            kw[spec.scalars[0][0]] = scalars
        elif spec.scalars:
            kw.update(zip((n for n, _ in spec.scalars), scalars or (None,) * len(spec.scalars)))
        return self.fn(*lists, **kw, **run)  # LAMB's grad_norm


class CallLog:
    """``calls``: one ``(algo, tensors, step, lr)`` per run; ``binds``: one algo per bind."""

    def __init__(self, inner=_backend):
        self.inner = inner
        self.calls = []
        self.binds = []

    def bind(self, algo, lists, hyper, **kw):
        self.binds.append(algo)
        spec = SPECS[algo]
        lr = dict(zip(spec.call_hypers, hyper)).get("lr")
        return _Logged(self, algo, self.inner.bind(algo, lists, hyper, **kw), len(lists[0]), lr)


class _Logged:
    def __init__(self, log, algo, bound, n, lr):
        self.log, self.algo, self.bound, self.n, self.lr = log, algo, bound, n, lr

    @property
    def core(self):
        return getattr(self.bound, "core", self.bound)

    def grads_arg(self, grads):
        return getattr(self.bound, "grads_arg", lambda g: g)(grads)

    def check(self, grads):
        return self.bound.check(grads)

    def run(self, grads=None, **kw):
        lr = kw.get("lr")
        self.log.calls.append((self.algo, self.n, kw.get("step"), self.lr if lr is None else lr))
        return self.bound.run(grads, **kw)
