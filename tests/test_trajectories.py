"""The demo's trajectories (``python -m fusedopt demo --only trajectories``): optimizer paths on
two-parameter surfaces, each step a fusedopt kernel. They are deterministic, every path on a
convex problem ends within a stated distance of the optimum after its step budget, the pictures
and the animation are written, and results.json holds every point."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from fusedopt.demo import trajectories as T
from fusedopt.demo.run import main

# The largest distance from the optimum at which each path of a convex problem may end. The values
# the seed-0 run gives are in the comments; a bound is about twice that, so that a wrong step, a
# lost state or a broken option fails while a rounding difference does not.
BOUNDS = {
    "regimes": {"batch (100)": 0.05, "mini-batch (10)": 0.15, "stochastic (1)": 0.5},
    # 0.025, 0.075, 0.25: the noisy paths wander in a ball whose size the constant rate sets
    "bowl": {"SGD": 0.01, "SGD+momentum": 0.04, "Nesterov": 0.02, "Adagrad": 1e-5,
             "RMSprop": 0.015, "Adam": 0.04},
    # 0.0028, 0.017, 0.0072, 2.3e-7, 0.006, 0.017
    "decay": {"constant lr 0.3": 0.25, "exponential to 0.015": 0.15,
              "inverse-time to 0.015": 1.3, "step (x0.37 every 100) to 0.015": 0.03},
    # 0.107, 0.068, 0.63 (its rate falls to half within 21 steps: it is still on its way), 0.012
}


@pytest.fixture(scope="module")
def results():
    return T.trajectories(seed=0)


def test_every_convex_path_ends_near_the_optimum(results):
    for figure, bounds in BOUNDS.items():
        paths = {r["label"]: r for r in results[figure]["paths"]}
        assert set(paths) == set(bounds), figure
        for label, bound in bounds.items():
            r = paths[label]
            assert len(r["points"]) == r["steps"] + 1
            assert r["final_distance"] <= bound, (figure, label, r["final_distance"])


@pytest.mark.parametrize("seed", range(5))
def test_the_decays_beat_the_constant_rate_near_the_optimum(seed):
    """What the decay figure shows: over the last 50 steps, an exponentially or stepwise decayed
    rate sits lower in the loss than the constant one, which keeps wandering in a noise ball
    (inverse-time decay, still on its way, is not compared). For any seed, not only the
    README's 0: the tail mean, not the last point, which is one draw of the noise."""
    result = T.trajectories(seed=seed, figures=("decay",))["decay"]
    loss = {r["label"].split()[0]: r["tail_loss"] for r in result["paths"]}
    assert loss["exponential"] < loss["constant"] / 10
    assert loss["step"] < loss["constant"] / 10


def test_the_decay_labels_are_the_schedules_end():
    specs = dict((s.label, s) for s in T.figure_specs(0)["decay"][1])
    for label, spec in specs.items():
        lr = spec.hyper["lr"]
        end = lr(T.DECAY_STEPS - 1)  # the rate of the last step (0-based count of steps before)
        if label.startswith("constant"):
            assert end == T.DECAY_LR
        else:
            assert label.endswith("to 0.015") and end == pytest.approx(0.015, rel=0.02), label


@pytest.mark.parametrize("problem, grad", [(T.BOWL, T._bowl_grad),
                                           (T.ROSENBROCK, T._rosenbrock_grad)],
                         ids=["bowl", "rosenbrock"])
def test_gradients_are_the_losses_derivatives(problem, grad):
    rng = np.random.default_rng(0)
    for w in rng.uniform(-1.5, 1.5, (5, 2)):
        h = 1e-6
        fd = [(problem.loss(w + h * e) - problem.loss(w - h * e)) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(grad(w, 0), fd, rtol=1e-6, atol=1e-6)


def test_the_least_squares_gradient_is_its_losss_derivative():
    problem, grad_of = T.least_squares(0)
    grad = grad_of(lambda t: np.arange(T.LS_POINTS))
    for w in ((0.0, 0.0), (1.5, -2.0), problem.start):
        w = np.asarray(w)
        h = 1e-6
        fd = [(problem.loss(w + h * e) - problem.loss(w - h * e)) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(grad(w, 0), fd, rtol=1e-6, atol=1e-8)


def test_adam_reaches_rosenbrocks_minimum(results):
    adam = next(r for r in results["nonconvex"]["paths"] if r["label"] == "Adam")
    assert adam["final_distance"] < 1e-4  # 2.9e-6 with seed 0 (the surface has no randomness)


def test_the_nonconvex_figure_has_every_optimizer(results):
    import fusedopt

    classes = {r["optimizer"] for r in results["nonconvex"]["paths"]}
    every = {n for n in fusedopt.optim.__all__ if n not in ("Optimizer", "EMA")}
    assert classes == every
    assert all(np.isfinite(np.asarray(r["points"])).all() for r in results["nonconvex"]["paths"])


def test_paths_are_deterministic_and_the_seed_matters(results):
    again = T.trajectories(seed=0)
    other = T.trajectories(seed=1, figures=("regimes",))
    for figure in results:
        for a, b in zip(results[figure]["paths"], again[figure]["paths"]):
            assert a["points"] == b["points"], (figure, a["label"])
    assert other["regimes"]["paths"][2]["points"] != results["regimes"]["paths"][2]["points"]


def test_batch_descent_on_the_bowl_is_the_closed_form(results):
    """Plain SGD on f = (x^2 + 25 y^2) / 2 multiplies each coordinate by 1 - lr * curvature per
    step: the kernel's path is that product (float64, to rounding)."""
    sgd = next(r for r in results["bowl"]["paths"] if r["label"] == "SGD")
    lr = sgd["hyper"]["lr"]
    t = np.arange(sgd["steps"] + 1)[:, None]
    want = np.asarray(T.BOWL.start) * (1.0 - lr * T.BOWL_CURVATURE) ** t
    np.testing.assert_allclose(np.asarray(sgd["points"]), want, rtol=1e-12, atol=1e-15)


def test_the_least_squares_optimum_is_the_minimum_of_its_loss(results):
    problem, _ = T.least_squares(0)
    w = np.asarray(problem.optimum)
    f = problem.loss(w)
    for d in ((1e-3, 0), (0, 1e-3), (-1e-3, 1e-3)):
        assert problem.loss(w + np.asarray(d)) > f


def test_another_seed_draws_its_own_surface(tmp_path):
    """The least-squares data come from the seed: a figure of seed 5 marks seed 5's optimum."""
    pytest.importorskip("matplotlib")
    result = T.trajectories(seed=5, figures=("regimes",))
    optimum = result["regimes"]["problem"]["optimum"]
    assert optimum != T.trajectories(seed=0, figures=("regimes",))["regimes"]["problem"]["optimum"]
    fig = T._draw("regimes", result["regimes"], T._problem("regimes", result["regimes"]))
    star = next(line for line in fig.axes[0].get_lines() if line.get_label() == "optimum")
    np.testing.assert_allclose(np.ravel(star.get_data()), optimum)


def test_cli_refuses_a_negative_seed(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["--only", "trajectories", "--seed", "-1", "--out", str(tmp_path)]) == 2
    assert "--seed must be >= 0" in err.getvalue()


def test_cli_writes_pictures_animation_and_every_point_without_the_dataset(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")  # the demo extra; the test extra installs it
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "no-data-here"))
    out = tmp_path / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["--only", "trajectories,trajectories", "--quick", "--gif", "--out", str(out)])
    assert rc == 0
    for figure in T.FIGURES:
        assert (out / f"trajectories-{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "trajectories-bowl.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    record = json.loads((out / "results.json").read_text())
    saved = record["results"]["trajectories"]
    mine = T.trajectories(seed=0)
    for figure in T.FIGURES:
        for a, b in zip(saved[figure]["paths"], mine[figure]["paths"]):
            assert a["points"] == b["points"] and len(a["points"]) == a["steps"] + 1
    rows = [line for line in stdout.getvalue().splitlines() if line.startswith("| bowl |")]
    assert len(rows) == len(T.BOWL_RUNS)  # once: a repeated --only name runs once
