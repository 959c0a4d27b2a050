"""Optimizer paths drawn on two-parameter loss surfaces, every step a fusedopt kernel.

Four figures, each a set of paths from one start on one surface whose exact loss is drawn as
log-spaced contour lines of ``f - f*``:

``regimes``
    least squares on 100 generated points ``y = 2 x - 1 + noise`` (``x`` around 1, so the slope
    and the intercept are correlated and the contours are tilted ellipses); the params are the
    slope and the intercept. Plain SGD at one rate as batch gradient descent (all 100 points per
    step), mini-batch (10) and stochastic (1): 200 updates each at lr 0.25, the noisy ones
    wandering.
``bowl``
    the long, narrow bowl ``f = (x^2 + 25 y^2) / 2``; SGD zig-zags down the steep side, momentum
    and Nesterov overshoot along the long axis, Adagrad, RMSprop and Adam turn toward the minimum
    early because they scale each coordinate by its own gradient history. 100 steps each.
``nonconvex``
    Rosenbrock's valley ``f = (1 - x)^2 + 100 (y - x^2)^2`` from (-1.5, 2), every optimizer class
    of fusedopt, 2,000 steps each; the minimum (1, 1) lies at the end of a curved, nearly flat
    valley that the plain gradient methods reach but barely move along. Schedule-Free AdamW's
    path is its params, the interpolation ``y`` at which it takes its grads.
``decay``
    the least-squares problem of ``regimes`` with stochastic steps: a constant learning rate
    against exponential, inverse-time and step decay to about a twentieth of it, 400 steps each;
    the constant rate keeps wandering in a noise ball around the optimum, the decays settle.

Everything is deterministic for a seed (the data, the sample order) and takes well under a second
of fusedopt steps in all. :func:`trajectories` computes the paths (``results.json`` holds every
point); :func:`plot_trajectories` and :func:`animate` draw them (matplotlib, the ``demo`` extra).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import optim, schedules

__all__ = ["FIGURES", "Problem", "PathSpec", "trajectories", "plot_trajectories", "animate"]

FIGURES = ("regimes", "bowl", "nonconvex", "decay")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A two-parameter loss, ``loss(w)`` exact (``w`` of shape (2, ...), for the contours); the
    gradient each path takes is its :class:`PathSpec`'s, possibly of a sample of the data."""

    title: str
    loss: Callable[[np.ndarray], Any]
    start: tuple
    optimum: tuple
    extent: tuple  # (x0, x1, y0, y1) of the contour plot
    axes: tuple = ("w[0]", "w[1]")


@dataclasses.dataclass(frozen=True)
class PathSpec:
    """One path: ``fusedopt.<optimizer>(**hyper)`` for ``steps`` steps of ``grad``."""

    label: str
    optimizer: str
    hyper: dict
    steps: int
    grad: Callable[[np.ndarray, int], np.ndarray]


def run_path(problem: Problem, spec: PathSpec) -> np.ndarray:
    """The params after each step, from the start: an array of shape (steps + 1, 2)."""
    w = np.array(problem.start, dtype=np.float64)
    opt = getattr(optim, spec.optimizer)([w], **spec.hyper)
    if hasattr(opt, "train"):  # Schedule-Free steps in train mode (its params hold y)
        opt.train()
    points = np.empty((spec.steps + 1, 2))
    points[0] = w
    for t in range(spec.steps):
        opt.step([spec.grad(w, t)])
        points[t + 1] = w
    return points


# ---- the problems ----------------------------------------------------------------------------


LS_POINTS = 100


def least_squares(seed: int) -> tuple[Problem, Callable]:
    """The problem of ``regimes`` and ``decay`` (``LS_POINTS`` points), and ``grad_of(indices)``:
    the gradient of the mean loss over the samples ``indices(t)`` picks at step ``t``."""
    rng = np.random.default_rng(seed)
    n = LS_POINTS
    x = rng.normal(1.0, 0.5, n)
    y = 2.0 * x - 1.0 + rng.normal(0.0, 0.5, n)
    features = np.stack([x, np.ones(n)], axis=1)
    w_star = np.linalg.lstsq(features, y, rcond=None)[0]

    def loss(w):
        w = np.asarray(w, dtype=np.float64)
        r = np.tensordot(features, w, axes=1) - y.reshape((n,) + (1,) * (w.ndim - 1))
        return 0.5 * np.mean(r * r, axis=0)

    def grad_of(indices: Callable[[int], np.ndarray]) -> Callable:
        def grad(w, t):
            i = indices(t)
            r = features[i] @ w - y[i]
            return features[i].T @ r / len(i)
        return grad

    problem = Problem("least squares on 100 points, y = 2x - 1 + noise",
                      loss, (-1.0, 3.0), tuple(w_star), (-1.8, 3.5, -3.0, 3.5),
                      ("slope", "intercept"))
    return problem, grad_of


BOWL_CURVATURE = np.array([1.0, 25.0])


def _bowl_loss(w):
    w = np.asarray(w, dtype=np.float64)
    return 0.5 * (BOWL_CURVATURE[0] * w[0] ** 2 + BOWL_CURVATURE[1] * w[1] ** 2)


def _bowl_grad(w, t):
    return BOWL_CURVATURE * w


def _rosenbrock_loss(w):
    w = np.asarray(w, dtype=np.float64)
    return (1.0 - w[0]) ** 2 + 100.0 * (w[1] - w[0] ** 2) ** 2


def _rosenbrock_grad(w, t):
    x, y = w
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


BOWL = Problem("the elongated bowl f = (x² + 25 y²) / 2", _bowl_loss, (-4.0, 1.0),
               (0.0, 0.0), (-4.5, 1.5, -1.3, 1.3), ("x", "y"))
ROSENBROCK = Problem("Rosenbrock's valley f = (1 - x)² + 100 (y - x²)²",
                     _rosenbrock_loss, (-1.5, 2.0), (1.0, 1.0), (-2.0, 2.0, -1.0, 3.0),
                     ("x", "y"))

# Rosenbrock: a rate per optimizer that shows its path within the budget (the plain gradient
# methods are near their stability limit: the valley's walls have curvature ~1000)
NONCONVEX_RUNS = (
    ("SGD", "SGD", dict(lr=1e-3)),
    ("SGD+momentum", "SGD", dict(lr=1e-4, momentum=0.9)),
    ("Nesterov", "SGD", dict(lr=1e-4, momentum=0.9, nesterov=True)),
    ("Adagrad", "Adagrad", dict(lr=1.0)),
    ("Adadelta", "Adadelta", dict(lr=1.0)),
    ("RMSprop", "RMSprop", dict(lr=1e-2)),
    ("Adam", "Adam", dict(lr=0.05)),
    ("AdamW", "AdamW", dict(lr=0.05)),
    ("NAdam", "NAdam", dict(lr=0.03)),
    ("Adamax", "Adamax", dict(lr=0.1)),
    ("RAdam", "RAdam", dict(lr=8e-3)),  # its first 5 steps are momentum steps of lr * grad
    ("Lion", "Lion", dict(lr=3e-3)),
    ("ADOPT", "ADOPT", dict(lr=0.2)),
    ("AdamWScheduleFree", "AdamWScheduleFree", dict(lr=0.05)),
    # its trust ratio makes each step lr ||w|| long, whatever the gradient (it ends 0.17 away)
    ("LAMB", "LAMB", dict(lr=0.02)),
    ("Adafactor", "Adafactor", dict(lr=0.05)),  # steps of about lr rms(w), 1/sqrt(t) rms(w) after t = 400
)
NONCONVEX_STEPS = 2000

BOWL_RUNS = (
    ("SGD", "SGD", dict(lr=0.07)),
    ("SGD+momentum", "SGD", dict(lr=0.02, momentum=0.9)),
    ("Nesterov", "SGD", dict(lr=0.02, momentum=0.9, nesterov=True)),
    ("Adagrad", "Adagrad", dict(lr=1.0)),
    ("RMSprop", "RMSprop", dict(lr=0.05)),
    ("Adam", "Adam", dict(lr=0.2)),
)
BOWL_STEPS = 100
REGIME_LR = 0.25
REGIME_STEPS = 200
DECAY_LR = 0.3
DECAY_STEPS = 400
TAIL = 50  # the last points over which tail_loss averages


def figure_specs(seed: int = 0) -> dict:
    """``{figure: (problem, [PathSpec, ...])}`` for the four figures."""
    ls, grad_of = least_squares(seed)
    n = LS_POINTS
    rng = np.random.default_rng([seed, 1])
    # the sample order: a fresh permutation per epoch, enough for every path
    epochs = 1 + max(DECAY_STEPS, 10 * REGIME_STEPS) // n
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    every = np.arange(n)
    regimes = [
        PathSpec("batch (100)", "SGD", dict(lr=REGIME_LR), REGIME_STEPS, grad_of(lambda t: every)),
        PathSpec("mini-batch (10)", "SGD", dict(lr=REGIME_LR), REGIME_STEPS,
                 grad_of(lambda t: order[10 * t: 10 * t + 10])),
        PathSpec("stochastic (1)", "SGD", dict(lr=REGIME_LR), REGIME_STEPS,
                 grad_of(lambda t: order[t: t + 1])),
    ]
    one = grad_of(lambda t: order[t: t + 1])
    decays = [
        ("constant lr 0.3", schedules.Constant(DECAY_LR)),
        ("exponential to 0.015", schedules.ExponentialDecay(DECAY_LR, decay_rate=0.05,
                                                   decay_steps=DECAY_STEPS)),
        ("inverse-time to 0.015", schedules.InverseTimeDecay(DECAY_LR, decay_rate=19.0,
                                                    decay_steps=DECAY_STEPS)),
        ("step (x0.37 every 100) to 0.015", schedules.StepDecay(DECAY_LR, step_size=DECAY_STEPS // 4, gamma=0.37)),
    ]
    return {
        "regimes": (ls, regimes),
        "bowl": (BOWL, [PathSpec(label, cls, hp, BOWL_STEPS, _bowl_grad)
                        for label, cls, hp in BOWL_RUNS]),
        "nonconvex": (ROSENBROCK, [PathSpec(label, cls, hp, NONCONVEX_STEPS, _rosenbrock_grad)
                                   for label, cls, hp in NONCONVEX_RUNS]),
        "decay": (ls, [PathSpec(label, "SGD", dict(lr=lr), DECAY_STEPS, one)
                       for label, lr in decays]),
    }


def _hyper_json(hyper: dict) -> dict:
    return {k: repr(v) if isinstance(v, schedules.Schedule) else v for k, v in hyper.items()}


def trajectories(seed: int = 0, figures: tuple = FIGURES) -> dict:
    """Every path of ``figures``: ``{figure: {"problem": {...}, "paths": [{"label", "optimizer",
    "hyper", "steps", "points" (steps + 1 pairs), "final_distance", "final_loss", "tail_loss"
    (the mean loss above the minimum over the last ``TAIL`` points)}, ...]}}``."""
    specs = figure_specs(seed)
    out = {}
    for name in figures:
        problem, paths = specs[name]
        optimum = np.array(problem.optimum)
        f_star = float(problem.loss(optimum))
        runs = []
        for spec in paths:
            points = run_path(problem, spec)
            runs.append({
                "label": spec.label, "optimizer": spec.optimizer,
                "hyper": _hyper_json(spec.hyper), "steps": spec.steps,
                "points": points.tolist(),
                "final_distance": float(np.linalg.norm(points[-1] - optimum)),
                "final_loss": float(problem.loss(points[-1])) - f_star,
                # a noisy path's last point is one draw: the mean over its last steps says more
                "tail_loss": float(np.mean(problem.loss(points[-TAIL:].T))) - f_star,
            })
        out[name] = {"problem": {"title": problem.title, "seed": seed,
                                 "start": list(problem.start),
                                 "optimum": list(map(float, problem.optimum)),
                                 "extent": list(problem.extent), "axes": list(problem.axes),
                                 "min_loss": f_star},
                     "paths": runs}
    return out


# ---- drawing ---------------------------------------------------------------------------------


def _surface(ax: Any, problem: Problem, f_star: float) -> None:
    x0, x1, y0, y1 = problem.extent
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    z = problem.loss(np.stack([gx, gy])) - f_star
    lo = max(float(z.min()), float(z.max()) * 1e-7, 1e-12)
    levels = np.logspace(np.log10(lo), np.log10(float(z.max())), 18)
    ax.contour(gx, gy, z, levels=levels, colors="0.6", linewidths=0.6)
    ax.plot(*problem.start, "o", color="black", markersize=6, label="start", zorder=5)
    ax.plot(*problem.optimum, "*", color="gold", markeredgecolor="black", markersize=14,
            label="optimum", zorder=5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(problem.axes[0])
    ax.set_ylabel(problem.axes[1])


def _draw(name: str, result: dict, problem: Problem) -> Any:
    """The figure of one result: every path on one surface, or one small panel per path on the
    same surface (the non-convex figure's every optimizer; the decays, whose paths share their
    start and samples and would hide each other)."""
    from matplotlib.figure import Figure

    runs = result["paths"]
    f_star = result["problem"]["min_loss"]
    steps = {run["steps"] for run in runs}
    title = f"{name}: {problem.title}" + (f", {steps.pop()} steps" if len(steps) == 1 else "")
    colors = _colors(len(runs))
    if len(runs) > 8 or name == "decay":
        cols = 4 if len(runs) > 8 else 2
        rows = -(-len(runs) // cols)
        fig = Figure(figsize=(3.2 * cols if cols > 2 else 9.0, 2.9 * rows if cols > 2 else 7.0),
                     layout="constrained")
        axes = fig.subplots(rows, cols, sharex=True, sharey=True).ravel()
        for ax, run in zip(axes, runs):
            color = "tab:red"  # one panel per path: one strong colour reads best
            _surface(ax, problem, f_star)
            p = np.asarray(run["points"])
            ax.plot(p[:, 0], p[:, 1], "-", color=color, linewidth=1.2)
            lr = run["hyper"].get("lr")
            rate = f", lr {lr:g}" if isinstance(lr, (int, float)) else ""
            ax.set_title(f"{run['label']}{rate}: ends {run['final_distance']:.2g} away",
                         fontsize=8)
            ax.label_outer()
        for ax in axes[len(runs):]:
            ax.set_axis_off()
        handles = [h for h in axes[0].get_lines() if h.get_label() in ("start", "optimum")]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9)
        fig.suptitle(title, fontsize=11)
        return fig
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    _surface(ax, problem, f_star)
    for color, run in zip(colors, runs):
        p = np.asarray(run["points"])
        ax.plot(p[:, 0], p[:, 1], "-", color=color, linewidth=1.2, marker=".", markersize=2.5,
                label=f"{run['label']} ({run['steps']} steps)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return fig


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i) for i in range(n)]


def _problem(name: str, result: dict) -> Problem:
    """The surface a result was computed on (its seed's)."""
    return figure_specs(result["problem"]["seed"])[name][0]


def plot_trajectories(results: dict, out_dir: Any) -> list:
    """One PNG per figure of ``results`` (:func:`trajectories`) in ``out_dir``:
    ``trajectories-<figure>.png``; returns their paths. Needs matplotlib."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for name, result in results.items():
        fig = _draw(name, result, _problem(name, result))
        path = Path(out_dir) / f"trajectories-{name}.png"
        fig.savefig(path, dpi=80 if len(fig.axes) > 4 else 110)  # the 16 panels: a smaller file
        written.append(path)
    return written


def animate(results: dict, out_dir: Any, name: str = "bowl") -> Path:
    """``trajectories-<name>.gif``: the paths of one figure drawn step by step, at most 51 frames
    (matplotlib's Pillow writer)."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    result = results[name]
    fig = _draw(name, result, _problem(name, result))
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() not in ("start", "optimum")]
    paths = [np.asarray(run["points"]) for run in result["paths"]]
    steps = max(len(p) for p in paths) - 1
    every = max(1, -(-steps // 50))
    frames = list(range(0, steps, every)) + [steps]

    def show(k: int) -> list:
        for line, p in zip(lines, paths):
            line.set_data(p[: k + 1, 0], p[: k + 1, 1])
        return lines

    anim = FuncAnimation(fig, show, frames=frames, interval=120, blit=False)
    path = Path(out_dir) / f"trajectories-{name}.gif"
    anim.save(path, writer=PillowWriter(fps=8), dpi=80)
    return path
