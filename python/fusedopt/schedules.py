r"""Learning-rate schedules: pure callables ``schedule(t) -> float``.

``t`` is the number of optimizer steps already completed, so the first update uses ``schedule(0)``.
That is the count optax passes to its schedules and ``last_epoch`` in a ``torch.optim.lr_scheduler``
stepped once after every ``optimizer.step()``. A schedule keeps no state: the same ``t`` always gives
the same value, so a run resumed from a state dict sees exactly the rates of an unbroken run.

Give a schedule wherever an optimizer takes ``lr``, for the whole optimizer or for one param group;
each group evaluates its schedule at its own step count::

    opt = fusedopt.Adam(params, lr=WarmupThen(100, CosineDecay(1e-3, decay_steps=900)))

Arguments are checked when the schedule is built; a bad one raises ``TypeError`` (not a number, not
an int where a step count is meant) or ``ValueError`` (out of range), naming the class and the
argument: ``ExponentialDecay: decay_steps must be > 0, got decay_steps=0``. Step counts are ints;
rates are finite, non-negative floats.

Boundary conventions (where libraries disagree, each class says which one it follows):

- Decays with ``staircase`` take ``floor(t / decay_steps)`` (optax, Keras).
- :class:`StepDecay` is ``torch.optim.lr_scheduler.StepLR``: the rate drops *at* ``t == step_size``.
- :class:`PiecewiseConstant`, :class:`Join` and :class:`WarmupThen` switch *at* the boundary, i.e.
  for ``t >= boundary`` (optax). Keras' ``PiecewiseConstantDecay`` switches one step later
  (``t > boundary``).
- :class:`CosineDecay` follows Keras, whose ``decay_steps`` excludes the warm-up (optax's
  ``warmup_cosine_decay_schedule`` counts the warm-up in ``decay_steps``).

Argument names follow optax (``init_value``, ``end_value``, ``transition_steps``, ``boundaries``),
except where the shape of the formula is Keras' or torch's (``decay_steps``, ``decay_rate``,
``alpha``, ``step_size``, ``gamma``).
"""

from __future__ import annotations

import bisect
import math
import numbers
import operator

__all__ = [
    "Schedule",
    "Constant",
    "Linear",
    "ExponentialDecay",
    "InverseTimeDecay",
    "InverseSqrtDecay",
    "StepDecay",
    "PiecewiseConstant",
    "PolynomialDecay",
    "CosineDecay",
    "Join",
    "WarmupThen",
]


def _count(cls, name, value, *, positive):
    """A step count: an int, > 0 or >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{cls}: {name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < (1 if positive else 0):
        raise ValueError(f"{cls}: {name} must be {'> 0' if positive else '>= 0'}, got {name}={value}")
    return value


def _real(cls, name, value, *, low=0.0, low_open=False, high=None):
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``); ``high`` may be None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{cls}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{cls}: {name} must be finite, got {name}={value!r}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{cls}: {name} must be in [{low:g}, {high:g}], got {name}={value!r}")
    if value < low or (low_open and value == low):
        raise ValueError(f"{cls}: {name} must be {'>' if low_open else '>='} {low:g}, got {name}={value!r}")
    return value


def _boundaries(cls, boundaries):
    """Strictly increasing step counts > 0, as a tuple."""
    if not isinstance(boundaries, (list, tuple)):
        raise TypeError(f"{cls}: boundaries must be a list or tuple of ints, got {type(boundaries).__name__}")
    out = tuple(_count(cls, f"boundaries[{i}]", b, positive=True) for i, b in enumerate(boundaries))
    if any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"{cls}: boundaries must be strictly increasing, got boundaries={list(out)}")
    return out


def _schedule(cls, name, value):
    """A schedule, or a plain number taken as :class:`Constant`."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return Constant(value)
    if not callable(value):
        raise TypeError(f"{cls}: {name} must be a schedule (a callable t -> float) or a number, "
                        f"got {type(value).__name__}")
    return value


def _scaled_pow(scale, base, exponent):
    """``scale * base**exponent`` in IEEE arithmetic: inf where the power overflows (Python's
    float power raises OverflowError instead), 0 for a zero scale whatever the power."""
    if scale == 0:
        return 0.0
    try:
        return scale * base**exponent
    except OverflowError:
        return math.copysign(math.inf, scale)


class Schedule:
    """Base class of the schedules: ``schedule(t)`` checks ``t`` (an int >= 0) and returns a float.

    Subclasses list their constructor arguments in ``_fields`` (for ``repr`` and ``==``) and
    implement ``_value(t)``. Any callable ``t -> float`` works as an ``lr`` too; this class only
    adds the checks, a readable ``repr`` and value equality.
    """

    _fields: tuple = ()

    def __call__(self, t):
        try:
            t = operator.index(t)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__}: t must be an int (the number of completed steps), "
                f"got {type(t).__name__}"
            ) from None
        if t < 0:
            raise ValueError(f"{type(self).__name__}: t must be >= 0, got t={t}")
        try:
            return float(self._value(t))
        except OverflowError:  # a rate past the largest float is inf, which a step then refuses
            return math.inf

    def _value(self, t):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self._fields)

    def __hash__(self):
        return hash((type(self).__name__, *(getattr(self, k) for k in self._fields)))


class Constant(Schedule):
    r"""The same rate at every step: :math:`\eta_t = v`.

    >>> Constant(0.1)(0), Constant(0.1)(10_000)
    (0.1, 0.1)
    """

    _fields = ("value",)

    def __init__(self, value):
        self.value = _real("Constant", "value", value)

    def _value(self, t):
        return self.value


class Linear(Schedule):
    r"""Linear interpolation from ``init_value`` to ``end_value`` over ``transition_steps``, then
    ``end_value`` (optax ``linear_schedule``):

    .. math::
        \eta_t = v_0 + (v_1 - v_0)\, \min(t, T) / T

    Args:
        init_value: the rate at ``t = 0`` (>= 0).
        end_value: the rate from ``t = transition_steps`` on (>= 0); may be above ``init_value``
            (a warm-up) or below it (a decay).
        transition_steps: ``T``, an int > 0.

    >>> s = Linear(0.0, 1.0, transition_steps=4)
    >>> [s(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    _fields = ("init_value", "end_value", "transition_steps")

    def __init__(self, init_value, end_value, transition_steps):
        self.init_value = _real("Linear", "init_value", init_value)
        self.end_value = _real("Linear", "end_value", end_value)
        self.transition_steps = _count("Linear", "transition_steps", transition_steps, positive=True)

    def _value(self, t):
        frac = min(t, self.transition_steps) / self.transition_steps
        return self.init_value + (self.end_value - self.init_value) * frac


class ExponentialDecay(Schedule):
    r"""Exponential decay (optax ``exponential_decay``, Keras ``ExponentialDecay``):

    .. math::
        \eta_t = \eta_0 \, r^{t / T} \qquad \text{or, with staircase,} \qquad
        \eta_t = \eta_0 \, r^{\lfloor t / T \rfloor}

    Args:
        init_value: :math:`\eta_0` (>= 0).
        decay_rate: :math:`r` (> 0); the rate is multiplied by ``r`` every ``decay_steps`` steps.
        decay_steps: :math:`T`, an int > 0.
        staircase: decay in discrete jumps at ``t = T, 2T, ...`` (default ``False``).

    >>> s = ExponentialDecay(0.1, decay_rate=0.5, decay_steps=10)
    >>> s(0), s(10), round(s(5), 6)
    (0.1, 0.05, 0.070711)
    >>> ExponentialDecay(0.1, 0.5, 10, staircase=True)(19)
    0.05
    """

    _fields = ("init_value", "decay_rate", "decay_steps", "staircase")

    def __init__(self, init_value, decay_rate, decay_steps, staircase=False):
        cls = "ExponentialDecay"
        self.init_value = _real(cls, "init_value", init_value)
        self.decay_rate = _real(cls, "decay_rate", decay_rate, low_open=True)
        self.decay_steps = _count(cls, "decay_steps", decay_steps, positive=True)
        self.staircase = bool(staircase)

    def _value(self, t):
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        return _scaled_pow(self.init_value, self.decay_rate, p)


class InverseTimeDecay(Schedule):
    r"""Inverse-time decay (Keras ``InverseTimeDecay``):

    .. math::
        \eta_t = \frac{\eta_0}{1 + r\, t / T} \qquad \text{or, with staircase,} \qquad
        \eta_t = \frac{\eta_0}{1 + r \lfloor t / T \rfloor}

    Args:
        init_value: :math:`\eta_0` (>= 0).
        decay_rate: :math:`r` (>= 0).
        decay_steps: :math:`T`, an int > 0.
        staircase: decay in discrete jumps at ``t = T, 2T, ...`` (default ``False``).

    >>> s = InverseTimeDecay(1.0, decay_rate=1.0, decay_steps=10)
    >>> s(0), s(10), s(30)
    (1.0, 0.5, 0.25)
    """

    _fields = ("init_value", "decay_rate", "decay_steps", "staircase")

    def __init__(self, init_value, decay_rate, decay_steps, staircase=False):
        cls = "InverseTimeDecay"
        self.init_value = _real(cls, "init_value", init_value)
        self.decay_rate = _real(cls, "decay_rate", decay_rate)
        self.decay_steps = _count(cls, "decay_steps", decay_steps, positive=True)
        self.staircase = bool(staircase)

    def _value(self, t):
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        return self.init_value / (1.0 + self.decay_rate * p)


class InverseSqrtDecay(Schedule):
    r"""Inverse square-root decay (the "rsqrt" rule of the Transformer, with the ``timescale`` of
    Hugging Face's ``get_inverse_sqrt_schedule``):

    .. math::
        \eta_t = \eta_0 \sqrt{\frac{k}{t + k}}

    so :math:`\eta_0` at ``t = 0`` and a halving every time ``t + k`` quadruples. With ``k = 1``
    this is :math:`\eta_0 / \sqrt{s}` in the 1-based step :math:`s = t + 1`, the classic
    :math:`c/\sqrt{s}` step size of online convex optimization. For a warm-up, wrap it in
    :class:`WarmupThen`.

    Args:
        init_value: :math:`\eta_0` (>= 0).
        timescale: :math:`k`, an int > 0 (default 1).

    >>> s = InverseSqrtDecay(1.0, timescale=10)
    >>> s(0), s(30)
    (1.0, 0.5)
    """

    _fields = ("init_value", "timescale")

    def __init__(self, init_value, timescale=1):
        self.init_value = _real("InverseSqrtDecay", "init_value", init_value)
        self.timescale = _count("InverseSqrtDecay", "timescale", timescale, positive=True)

    def _value(self, t):
        return self.init_value * math.sqrt(self.timescale / (t + self.timescale))


class StepDecay(Schedule):
    r"""Multiply the rate by ``gamma`` every ``step_size`` steps (``torch.optim.lr_scheduler.StepLR``
    stepped once per optimizer step):

    .. math::
        \eta_t = \eta_0 \, \gamma^{\lfloor t / n \rfloor}

    The first drop is at ``t == step_size``: the ``step_size``-th update is the last at
    :math:`\eta_0`. ``gamma=0.5`` gives the discrete halving schedule.

    Args:
        init_value: :math:`\eta_0` (>= 0).
        step_size: :math:`n`, an int > 0.
        gamma: :math:`\gamma` (> 0, default 0.1 as in torch).

    >>> s = StepDecay(0.1, step_size=3, gamma=0.5)
    >>> [s(t) for t in range(7)]
    [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    """

    _fields = ("init_value", "step_size", "gamma")

    def __init__(self, init_value, step_size, gamma=0.1):
        self.init_value = _real("StepDecay", "init_value", init_value)
        self.step_size = _count("StepDecay", "step_size", step_size, positive=True)
        self.gamma = _real("StepDecay", "gamma", gamma, low_open=True)

    def _value(self, t):
        return _scaled_pow(self.init_value, self.gamma, t // self.step_size)


class PiecewiseConstant(Schedule):
    r"""Constant pieces: ``values[i]`` where ``i`` is the number of boundaries ``<= t``.

    .. math::
        \eta_t = v_i \quad \text{for} \quad b_{i-1} \le t < b_i \qquad (b_{-1} = 0,\ b_n = \infty)

    The value changes *at* ``t == boundaries[i]`` (optax ``piecewise_constant_schedule``; Keras'
    ``PiecewiseConstantDecay`` changes one step later). Unlike optax, the values are absolute
    rates, not multiplicative scales.

    Args:
        boundaries: strictly increasing ints > 0.
        values: one more rate than there are boundaries (each >= 0).

    >>> s = PiecewiseConstant([10, 20], [1.0, 0.5, 0.1])
    >>> s(9), s(10), s(19), s(20)
    (1.0, 0.5, 0.5, 0.1)
    """

    _fields = ("boundaries", "values")

    def __init__(self, boundaries, values):
        cls = "PiecewiseConstant"
        self.boundaries = _boundaries(cls, boundaries)
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"{cls}: values must be a list or tuple of numbers, got {type(values).__name__}")
        if len(values) != len(self.boundaries) + 1:
            raise ValueError(
                f"{cls}: values must have one more entry than boundaries, "
                f"got {len(values)} values for {len(self.boundaries)} boundaries"
            )
        self.values = tuple(_real(cls, f"values[{i}]", v) for i, v in enumerate(values))

    def _value(self, t):
        return self.values[bisect.bisect_right(self.boundaries, t)]


class PolynomialDecay(Schedule):
    r"""Polynomial decay from ``init_value`` to ``end_value`` over ``decay_steps``, then
    ``end_value`` (optax ``polynomial_schedule``; ``torch.optim.lr_scheduler.PolynomialLR`` with
    ``end_value=0``; Keras ``PolynomialDecay`` without ``cycle``):

    .. math::
        \eta_t = (\eta_0 - \eta_\infty) \left(1 - \frac{\min(t, T)}{T}\right)^{p} + \eta_\infty

    Args:
        init_value: :math:`\eta_0` (>= 0).
        decay_steps: :math:`T`, an int > 0; ``end_value`` is reached at ``t == T``.
        end_value: :math:`\eta_\infty` (>= 0, default 0).
        power: :math:`p` (> 0, default 1: linear decay).

    >>> s = PolynomialDecay(1.0, decay_steps=4, end_value=0.2, power=2.0)
    >>> [round(s(t), 6) for t in (0, 2, 4, 9)]
    [1.0, 0.4, 0.2, 0.2]
    """

    _fields = ("init_value", "decay_steps", "end_value", "power")

    def __init__(self, init_value, decay_steps, end_value=0.0, power=1.0):
        cls = "PolynomialDecay"
        self.init_value = _real(cls, "init_value", init_value)
        self.decay_steps = _count(cls, "decay_steps", decay_steps, positive=True)
        self.end_value = _real(cls, "end_value", end_value)
        self.power = _real(cls, "power", power, low_open=True)

    def _value(self, t):
        frac = 1.0 - min(t, self.decay_steps) / self.decay_steps
        return (self.init_value - self.end_value) * frac**self.power + self.end_value


class CosineDecay(Schedule):
    r"""Cosine decay (Loshchilov & Hutter, 2017, "SGDR", without restarts), with an optional linear
    warm-up, exactly as Keras ``CosineDecay``:

    .. math::
        \eta_t &= \eta_0 + (\hat\eta - \eta_0)\, t / W
            \quad \text{for} \quad t < W \quad \text{(warm-up)} \\
        \eta_t &= \hat\eta \left((1 - \alpha)\, \tfrac12
            \left(1 + \cos\frac{\pi \min(t - W, T)}{T}\right) + \alpha\right)
            \quad \text{for} \quad t \ge W

    where :math:`\hat\eta` is ``warmup_target`` when given, else ``init_value`` (and :math:`W = 0`).
    The decay ends at ``alpha * peak`` at ``t == warmup_steps + decay_steps`` and stays there.
    ``decay_steps`` does not include the warm-up (Keras; optax's ``warmup_cosine_decay_schedule``
    counts it in). With ``warmup_steps=0`` and a ``warmup_target``, the decay starts from
    ``warmup_target`` (Keras).

    Args:
        init_value: :math:`\eta_0` (>= 0): the start of the warm-up, or of the decay without one.
        decay_steps: :math:`T`, an int > 0.
        alpha: :math:`\alpha`, the final rate as a fraction of the peak (in [0, 1], default 0).
        warmup_steps: :math:`W`, an int >= 0 (default 0); needs ``warmup_target`` when > 0 (Keras
            would silently skip the warm-up).
        warmup_target: :math:`\hat\eta`, the rate the warm-up reaches (>= 0, default ``None``).

    >>> s = CosineDecay(1.0, decay_steps=10, alpha=0.1)
    >>> s(0), round(s(5), 6), s(10), s(50)
    (1.0, 0.55, 0.1, 0.1)
    >>> w = CosineDecay(0.0, decay_steps=10, warmup_steps=5, warmup_target=1.0)
    >>> w(0), w(1), w(5), round(w(10), 6)
    (0.0, 0.2, 1.0, 0.5)
    """

    _fields = ("init_value", "decay_steps", "alpha", "warmup_steps", "warmup_target")

    def __init__(self, init_value, decay_steps, alpha=0.0, warmup_steps=0, warmup_target=None):
        cls = "CosineDecay"
        self.init_value = _real(cls, "init_value", init_value)
        self.decay_steps = _count(cls, "decay_steps", decay_steps, positive=True)
        self.alpha = _real(cls, "alpha", alpha, high=1.0)
        self.warmup_steps = _count(cls, "warmup_steps", warmup_steps, positive=False)
        if warmup_target is None:
            if self.warmup_steps > 0:
                raise ValueError(
                    f"{cls}: warmup_steps={self.warmup_steps} needs warmup_target "
                    "(the rate the warm-up reaches), got warmup_target=None"
                )
            self.warmup_target = None
        else:
            self.warmup_target = _real(cls, "warmup_target", warmup_target)

    def _value(self, t):
        peak = self.init_value if self.warmup_target is None else self.warmup_target
        if t < self.warmup_steps:
            return self.init_value + (peak - self.init_value) * (t / self.warmup_steps)
        frac = min(t - self.warmup_steps, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * frac))
        return peak * ((1.0 - self.alpha) * cosine + self.alpha)


class Join(Schedule):
    r"""Schedules one after another (optax ``join_schedules``): from ``t == boundaries[i]`` on,
    ``schedules[i + 1]`` runs on a clock restarted at that boundary.

    .. math::
        \eta_t = s_i(t - b_{i-1}) \quad \text{for} \quad b_{i-1} \le t < b_i
        \qquad (b_{-1} = 0,\ b_n = \infty)

    Args:
        schedules: schedules (callables ``t -> float``) or numbers (taken as :class:`Constant`),
            one more than ``boundaries``.
        boundaries: strictly increasing ints > 0, on the joined clock.

    >>> s = Join([Linear(0.0, 1.0, 2), StepDecay(1.0, step_size=2, gamma=0.5)], boundaries=[2])
    >>> [s(t) for t in range(7)]
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.5, 0.25]
    """

    _fields = ("schedules", "boundaries")

    def __init__(self, schedules, boundaries):
        cls = "Join"
        self.boundaries = _boundaries(cls, boundaries)
        if not isinstance(schedules, (list, tuple)):
            raise TypeError(f"{cls}: schedules must be a list or tuple, got {type(schedules).__name__}")
        if len(schedules) != len(self.boundaries) + 1:
            raise ValueError(
                f"{cls}: schedules must have one more entry than boundaries, "
                f"got {len(schedules)} schedules for {len(self.boundaries)} boundaries"
            )
        self.schedules = tuple(_schedule(cls, f"schedules[{i}]", s) for i, s in enumerate(schedules))

    def _value(self, t):
        i = bisect.bisect_right(self.boundaries, t)
        start = self.boundaries[i - 1] if i > 0 else 0
        return self.schedules[i](t - start)


class WarmupThen(Schedule):
    r"""A linear warm-up from ``init_value`` to ``schedule(0)`` over ``warmup_steps`` steps, then
    ``schedule`` on a clock that starts when the warm-up ends:

    .. math::
        \eta_t = v_0 + (s(0) - v_0)\, t / W \quad (t < W), \qquad \eta_t = s(t - W) \quad (t \ge W)

    The switch is *at* ``t == warmup_steps`` (optax ``join_schedules``), and ``schedule`` then
    runs its full course: ``WarmupThen(W, CosineDecay(lr, T))`` reaches the end of the decay at
    ``t == W + T``. With the default ``init_value=0`` the first update uses rate 0 (as optax's and
    Hugging Face's linear warm-ups do); ``warmup_steps=0`` is ``schedule`` itself.

    Args:
        warmup_steps: :math:`W`, an int >= 0.
        schedule: a schedule, or a number (a constant rate after the warm-up).
        init_value: :math:`v_0`, the rate at ``t = 0`` (>= 0, default 0).

    >>> s = WarmupThen(4, ExponentialDecay(1.0, decay_rate=0.5, decay_steps=1))
    >>> [s(t) for t in range(7)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.25]
    """

    _fields = ("warmup_steps", "schedule", "init_value")

    def __init__(self, warmup_steps, schedule, init_value=0.0):
        cls = "WarmupThen"
        self.warmup_steps = _count(cls, "warmup_steps", warmup_steps, positive=False)
        self.schedule = _schedule(cls, "schedule", schedule)
        self.init_value = _real(cls, "init_value", init_value)

    def _value(self, t):
        if t >= self.warmup_steps:
            return self.schedule(t - self.warmup_steps)
        peak = self.schedule(0)
        return self.init_value + (peak - self.init_value) * (t / self.warmup_steps)
