"""fusedopt.schedules against closed forms written out here, at many t and at every boundary.

The closed forms below are vectorised NumPy transcriptions of the formulas in the docstrings (and of
the library each class follows), independent of the scalar code in ``schedules.py``. Values must
agree to 1e-12 relative (both sides are float64; the only differences are rounding order).
"""

import math
import pickle

import numpy as np
import pytest

from fusedopt import schedules as S

RTOL = 1e-12
T = np.arange(0, 400)


def _closed_cosine(t, init, decay_steps, alpha=0.0, warmup_steps=0, target=None):
    peak = init if target is None else target
    warm = init + (peak - init) * t / max(warmup_steps, 1)
    frac = np.minimum(t - warmup_steps, decay_steps) / decay_steps
    decay = peak * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * frac)) + alpha)
    return np.where(t < warmup_steps, warm, decay)


# (id, schedule, closed form f(t: int array) -> float array, t values that are boundaries)
CASES = [
    ("constant", S.Constant(0.3), lambda t: np.full(t.shape, 0.3), [0, 1]),
    ("linear-up", S.Linear(0.0, 2.0, 8), lambda t: 2.0 * np.minimum(t, 8) / 8, [7, 8, 9]),
    ("linear-down", S.Linear(1.0, 0.25, 5), lambda t: 1.0 - 0.75 * np.minimum(t, 5) / 5, [4, 5, 6]),
    (
        "exponential",
        S.ExponentialDecay(0.1, decay_rate=0.9, decay_steps=7),
        lambda t: 0.1 * 0.9 ** (t / 7),
        [6, 7, 8],
    ),
    (
        "exponential-staircase",
        S.ExponentialDecay(0.1, decay_rate=0.5, decay_steps=10, staircase=True),
        lambda t: 0.1 * 0.5 ** np.floor(t / 10),
        [9, 10, 11, 19, 20],
    ),
    (
        "inverse-time",
        S.InverseTimeDecay(0.5, decay_rate=2.0, decay_steps=25),
        lambda t: 0.5 / (1 + 2.0 * t / 25),
        [24, 25],
    ),
    (
        "inverse-time-staircase",
        S.InverseTimeDecay(0.5, decay_rate=2.0, decay_steps=25, staircase=True),
        lambda t: 0.5 / (1 + 2.0 * np.floor(t / 25)),
        [24, 25, 26, 49, 50],
    ),
    (
        # k = 1 is c / sqrt(s) in the 1-based step s = t + 1
        "inverse-sqrt-k1",
        S.InverseSqrtDecay(0.2),
        lambda t: 0.2 / np.sqrt(t + 1),
        [0, 1, 3],
    ),
    (
        "inverse-sqrt-k16",
        S.InverseSqrtDecay(0.2, timescale=16),
        lambda t: 0.2 * 4 / np.sqrt(t + 16),
        [0, 48],
    ),
    (
        "step-halving",
        S.StepDecay(0.1, step_size=30, gamma=0.5),
        lambda t: 0.1 * 0.5 ** (t // 30),
        [29, 30, 31, 59, 60],
    ),
    ("step-default-gamma", S.StepDecay(1.0, step_size=100), lambda t: 0.1 ** (t // 100), [99, 100]),
    (
        "piecewise",
        S.PiecewiseConstant([10, 100, 200], [1.0, 0.5, 0.25, 0.0]),
        lambda t: np.select([t < 10, t < 100, t < 200], [1.0, 0.5, 0.25], 0.0),
        [9, 10, 11, 99, 100, 199, 200],
    ),
    ("piecewise-no-boundaries", S.PiecewiseConstant([], [0.7]), lambda t: np.full(t.shape, 0.7), [0]),
    (
        "polynomial-linear",
        S.PolynomialDecay(1.0, decay_steps=50),
        lambda t: 1.0 - np.minimum(t, 50) / 50,
        [49, 50, 51],
    ),
    (
        "polynomial-power-end",
        S.PolynomialDecay(1.0, decay_steps=64, end_value=0.1, power=0.5),
        lambda t: 0.9 * (1 - np.minimum(t, 64) / 64) ** 0.5 + 0.1,
        [63, 64, 65],
    ),
    (
        "cosine",
        S.CosineDecay(0.4, decay_steps=100),
        lambda t: _closed_cosine(t, 0.4, 100),
        [0, 50, 99, 100, 101],
    ),
    (
        "cosine-alpha",
        S.CosineDecay(0.4, decay_steps=100, alpha=0.05),
        lambda t: _closed_cosine(t, 0.4, 100, alpha=0.05),
        [100, 101],
    ),
    (
        "cosine-warmup",
        S.CosineDecay(0.01, decay_steps=200, alpha=0.1, warmup_steps=40, warmup_target=1.0),
        lambda t: _closed_cosine(t, 0.01, 200, 0.1, 40, 1.0),
        [0, 39, 40, 41, 239, 240, 241],
    ),
    (
        "cosine-target-no-warmup",
        S.CosineDecay(0.01, decay_steps=200, warmup_target=1.0),
        lambda t: _closed_cosine(t, 1.0, 200),
        [0, 200],
    ),
    (
        "join",
        S.Join([S.Linear(0.0, 1.0, 10), 1.0, S.StepDecay(1.0, 20, 0.5)], boundaries=[10, 50]),
        lambda t: np.select([t < 10, t < 50], [t / 10, 1.0], 0.5 ** ((t - 50) // 20)),
        [9, 10, 49, 50, 69, 70],
    ),
    (
        "warmup-then-cosine",
        S.WarmupThen(20, S.CosineDecay(1.0, decay_steps=100)),
        lambda t: np.where(t < 20, t / 20, _closed_cosine(t - 20, 1.0, 100)),
        [0, 19, 20, 21, 119, 120, 121],
    ),
    (
        "warmup-then-inverse-sqrt-from-init",
        S.WarmupThen(10, S.InverseSqrtDecay(1.0, timescale=10), init_value=0.1),
        lambda t: np.where(t < 10, 0.1 + 0.9 * t / 10, np.sqrt(10 / (np.maximum(t - 10, 0) + 10))),
        [0, 9, 10, 11],
    ),
    (
        "warmup-zero-steps",
        S.WarmupThen(0, S.ExponentialDecay(1.0, 0.5, 4)),
        lambda t: 0.5 ** (t / 4),
        [0, 4],
    ),
    (
        "warmup-then-constant",
        S.WarmupThen(3, 0.6),
        lambda t: np.where(t < 3, 0.6 * t / 3, 0.6),
        [2, 3],
    ),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,schedule,closed,boundaries", CASES, ids=IDS)
def test_matches_closed_form(name, schedule, closed, boundaries):
    got = np.array([schedule(int(t)) for t in T])
    np.testing.assert_allclose(got, closed(T), rtol=RTOL, atol=0)
    for t in boundaries:
        assert schedule(t) == pytest.approx(float(closed(np.array(t))), rel=RTOL, abs=0)
    assert all(type(v) is float for v in got[:3].tolist())


@pytest.mark.parametrize("name,schedule,closed,boundaries", CASES, ids=IDS)
def test_pure_repr_pickle(name, schedule, closed, boundaries):
    """The same t gives the same value whatever was evaluated before; repr rebuilds it; it pickles."""
    first = schedule(37)
    for t in (0, 1000, 5):
        schedule(t)
    assert schedule(37) == first
    assert eval(repr(schedule), vars(S)) == schedule
    assert pickle.loads(pickle.dumps(schedule)) == schedule
    assert schedule(np.int64(37)) == first


BOUNDARY_VALUES = [
    # the value changes AT the boundary (optax); Keras' PiecewiseConstantDecay would switch at 11
    ("piecewise-switches-at-boundary", S.PiecewiseConstant([10], [1.0, 2.0]), {9: 1.0, 10: 2.0}),
    # torch StepLR: the first drop is at t == step_size
    ("steplr-first-drop", S.StepDecay(1.0, step_size=5, gamma=0.5), {4: 1.0, 5: 0.5, 10: 0.25}),
    ("staircase-floor", S.ExponentialDecay(1.0, 0.5, 3, staircase=True), {2: 1.0, 3: 0.5, 5: 0.5, 6: 0.25}),
    ("warmup-peak-at-W", S.WarmupThen(4, S.Constant(2.0)), {0: 0.0, 3: 1.5, 4: 2.0}),
    ("cosine-end", S.CosineDecay(2.0, 10, alpha=0.25), {0: 2.0, 10: 0.5, 11: 0.5, 10**9: 0.5}),
    ("polynomial-end", S.PolynomialDecay(2.0, 10, end_value=0.5), {10: 0.5, 10**9: 0.5}),
    ("join-restarts-clock", S.Join([0.1, S.Linear(1.0, 0.0, 4)], [3]), {2: 0.1, 3: 1.0, 5: 0.5, 7: 0.0}),
]


@pytest.mark.parametrize("name,schedule,expected", BOUNDARY_VALUES, ids=[c[0] for c in BOUNDARY_VALUES])
def test_boundary_convention(name, schedule, expected):
    for t, value in expected.items():
        assert schedule(t) == pytest.approx(value, rel=1e-15, abs=1e-15), t


BAD = [
    # (id, constructor call, exception type, exact message)
    ("constant-negative", lambda: S.Constant(-0.1), ValueError, "Constant: value must be >= 0, got value=-0.1"),
    ("constant-nan", lambda: S.Constant(float("nan")), ValueError, "Constant: value must be finite, got value=nan"),
    ("constant-str", lambda: S.Constant("0.1"), TypeError, "Constant: value must be a real number, got str"),
    ("linear-steps-0", lambda: S.Linear(0.0, 1.0, 0), ValueError,
     "Linear: transition_steps must be > 0, got transition_steps=0"),
    ("exp-steps-0", lambda: S.ExponentialDecay(0.1, 0.5, 0), ValueError,
     "ExponentialDecay: decay_steps must be > 0, got decay_steps=0"),
    ("exp-steps-float", lambda: S.ExponentialDecay(0.1, 0.5, 10.0), TypeError,
     "ExponentialDecay: decay_steps must be an int, got float"),
    ("exp-rate-0", lambda: S.ExponentialDecay(0.1, 0.0, 10), ValueError,
     "ExponentialDecay: decay_rate must be > 0, got decay_rate=0.0"),
    ("exp-init-inf", lambda: S.ExponentialDecay(float("inf"), 0.5, 10), ValueError,
     "ExponentialDecay: init_value must be finite, got init_value=inf"),
    ("invtime-rate-neg", lambda: S.InverseTimeDecay(0.1, -1.0, 10), ValueError,
     "InverseTimeDecay: decay_rate must be >= 0, got decay_rate=-1.0"),
    ("invtime-steps-neg", lambda: S.InverseTimeDecay(0.1, 1.0, -5), ValueError,
     "InverseTimeDecay: decay_steps must be > 0, got decay_steps=-5"),
    ("invsqrt-timescale-0", lambda: S.InverseSqrtDecay(0.1, timescale=0), ValueError,
     "InverseSqrtDecay: timescale must be > 0, got timescale=0"),
    ("step-size-0", lambda: S.StepDecay(0.1, 0), ValueError, "StepDecay: step_size must be > 0, got step_size=0"),
    ("step-gamma-0", lambda: S.StepDecay(0.1, 10, gamma=0.0), ValueError,
     "StepDecay: gamma must be > 0, got gamma=0.0"),
    ("step-size-bool", lambda: S.StepDecay(0.1, True), TypeError, "StepDecay: step_size must be an int, got bool"),
    ("piecewise-lengths", lambda: S.PiecewiseConstant([10, 20], [1.0, 0.5]), ValueError,
     "PiecewiseConstant: values must have one more entry than boundaries, got 2 values for 2 boundaries"),
    ("piecewise-unsorted", lambda: S.PiecewiseConstant([20, 10], [1.0, 0.5, 0.1]), ValueError,
     "PiecewiseConstant: boundaries must be strictly increasing, got boundaries=[20, 10]"),
    ("piecewise-repeated", lambda: S.PiecewiseConstant([10, 10], [1.0, 0.5, 0.1]), ValueError,
     "PiecewiseConstant: boundaries must be strictly increasing, got boundaries=[10, 10]"),
    ("piecewise-boundary-0", lambda: S.PiecewiseConstant([0], [1.0, 0.5]), ValueError,
     "PiecewiseConstant: boundaries[0] must be > 0, got boundaries[0]=0"),
    ("piecewise-value-neg", lambda: S.PiecewiseConstant([5], [1.0, -0.5]), ValueError,
     "PiecewiseConstant: values[1] must be >= 0, got values[1]=-0.5"),
    ("piecewise-boundaries-set", lambda: S.PiecewiseConstant({5}, [1.0, 0.5]), TypeError,
     "PiecewiseConstant: boundaries must be a list or tuple of ints, got set"),
    ("poly-power-0", lambda: S.PolynomialDecay(1.0, 10, power=0.0), ValueError,
     "PolynomialDecay: power must be > 0, got power=0.0"),
    ("poly-end-neg", lambda: S.PolynomialDecay(1.0, 10, end_value=-1.0), ValueError,
     "PolynomialDecay: end_value must be >= 0, got end_value=-1.0"),
    ("cosine-alpha-above-1", lambda: S.CosineDecay(1.0, 10, alpha=1.5), ValueError,
     "CosineDecay: alpha must be in [0, 1], got alpha=1.5"),
    ("cosine-steps-0", lambda: S.CosineDecay(1.0, 0), ValueError,
     "CosineDecay: decay_steps must be > 0, got decay_steps=0"),
    ("cosine-warmup-neg", lambda: S.CosineDecay(1.0, 10, warmup_steps=-1, warmup_target=1.0), ValueError,
     "CosineDecay: warmup_steps must be >= 0, got warmup_steps=-1"),
    ("cosine-warmup-no-target", lambda: S.CosineDecay(1.0, 10, warmup_steps=5), ValueError,
     "CosineDecay: warmup_steps=5 needs warmup_target (the rate the warm-up reaches), got warmup_target=None"),
    ("join-lengths", lambda: S.Join([0.1, 0.2], [5, 10]), ValueError,
     "Join: schedules must have one more entry than boundaries, got 2 schedules for 2 boundaries"),
    ("join-not-callable", lambda: S.Join([0.1, "x"], [5]), TypeError,
     "Join: schedules[1] must be a schedule (a callable t -> float) or a number, got str"),
    ("warmup-neg", lambda: S.WarmupThen(-1, 0.1), ValueError,
     "WarmupThen: warmup_steps must be >= 0, got warmup_steps=-1"),
    ("warmup-schedule-none", lambda: S.WarmupThen(5, None), TypeError,
     "WarmupThen: schedule must be a schedule (a callable t -> float) or a number, got NoneType"),
    ("warmup-init-neg", lambda: S.WarmupThen(5, 0.1, init_value=-0.1), ValueError,
     "WarmupThen: init_value must be >= 0, got init_value=-0.1"),
]


@pytest.mark.parametrize("name,make,exc,message", BAD, ids=[c[0] for c in BAD])
def test_bad_arguments(name, make, exc, message):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "t,exc,message",
    [
        (-1, ValueError, "ExponentialDecay: t must be >= 0, got t=-1"),
        (1.5, TypeError, "ExponentialDecay: t must be an int (the number of completed steps), got float"),
        ("3", TypeError, "ExponentialDecay: t must be an int (the number of completed steps), got str"),
    ],
    ids=["negative", "float", "str"],
)
def test_bad_t(t, exc, message):
    with pytest.raises(exc) as info:
        S.ExponentialDecay(0.1, 0.5, 10)(t)
    assert str(info.value) == message


def test_every_public_schedule_is_covered():
    covered = {type(c[1]).__name__ for c in CASES}
    assert covered == set(S.__all__) - {"Schedule"}


def test_huge_t_stays_finite():
    for name, schedule, _, _ in CASES:
        v = schedule(10**12)
        assert math.isfinite(v) and v >= 0, name
