"""The experiment: one MLP trained on Fashion-MNIST by every optimizer, every update a fusedopt kernel.

The experiments, each a list of runs that start from the same He-initialised weights and see the
same mini-batches in the same order (both drawn from ``--seed``), so the curves differ only by what
the experiment varies:

``optimizers``
    SGD, SGD+momentum, Nesterov, Adagrad, Adadelta, RMSprop, Adam, AdamW, NAdam and Adamax, each a
    ``fusedopt`` optimizer with the whole model in one param group, mini-batches of 64.
``regimes``
    plain SGD as batch gradient descent (the whole subset per step), mini-batch (64) and stochastic
    (one sample per step) gradient descent, on a subset small enough for one-sample steps.
``decay``
    SGD+momentum with a constant learning rate and with exponential, inverse-time and step decay
    (:mod:`fusedopt.schedules`), each decaying to about a tenth of the initial rate by the end.
``precision``
    the same network with its params stored in bfloat16 (the products computed in float32 from
    them, the grads rounded to bfloat16): plain rounding to nearest, stochastic rounding, Kahan
    summation and float32 master weights, against float32 params (:data:`PRECISION_RUNS`).
``trajectories``
    no network and no data: optimizer paths drawn on two-parameter loss surfaces (batch,
    mini-batch and stochastic descent; the elongated bowl; Rosenbrock's valley with every
    optimizer; learning-rate decays), :mod:`fusedopt.demo.trajectories`.

Every run reports its final training loss (over the whole training set it used, after the last
step), test accuracy, the wall time of its training loop (evaluations excluded) and the share of
that time spent in ``opt.step``. The results go to a Markdown table on stdout, PNG plots and a JSON
file of every curve in ``--out``. tqdm (progress bars), matplotlib (plots) and threadpoolctl (BLAS
threads) are the ``demo`` extra; each is imported only when used, and the run goes on with a note
when one is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .. import schedules
from . import trajectories
from .data import DataError, load_fashion_mnist
from .mlp import MLP

__all__ = ["FULL", "QUICK", "Plan", "RunSpec", "main", "run_demo"]

EXPERIMENTS = ("optimizers", "regimes", "decay", "precision", "trajectories")
MLP_EXPERIMENTS = EXPERIMENTS[:4]  # those that train the network (and need the data)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to train. Sizes count samples; ``None`` means the whole training set."""

    epochs: int = 10  # optimizers and decay
    train_size: int | None = None  # optimizers and decay
    batch_size: int = 64
    points_per_epoch: int = 10  # curve points per epoch: means of the mini-batch losses between them
    regime_size: int = 2000  # the subset of the regimes experiment
    regime_epochs: int = 25
    regime_points: int = 4  # curve points per epoch of the regimes: losses over the whole subset
    hidden: tuple = (256, 128)
    experiments: tuple = EXPERIMENTS


FULL = Plan()
QUICK = Plan(epochs=2, regime_size=1000, regime_epochs=10)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: ``fusedopt.<optimizer>`` built with ``hyper`` on one param group."""

    label: str
    optimizer: str
    hyper: dict
    batch_size: int
    # the params' storage ("bfloat16": the model computes in float32 from bfloat16 params, its
    # grads rounded to bfloat16), and the optimizer's low-precision keywords
    storage: str = "float32"
    options: dict = dataclasses.field(default_factory=dict)


# The SGD family shares one rate, so their curves show what momentum adds at the same step size; the
# adaptive methods use torch's default rates, except RMSprop at Keras' 1e-3: with torch's 1e-2 the
# loss of this network jumps to ~5 in the first epoch and ends about 50 % higher.
OPTIMIZER_RUNS = (
    ("SGD", "SGD", dict(lr=0.01)),
    ("SGD+momentum", "SGD", dict(lr=0.01, momentum=0.9)),
    ("Nesterov", "SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
    ("Adagrad", "Adagrad", dict(lr=0.01)),
    ("Adadelta", "Adadelta", dict(lr=1.0)),
    ("RMSprop", "RMSprop", dict(lr=1e-3)),
    ("Adam", "Adam", dict(lr=1e-3)),
    ("AdamW", "AdamW", dict(lr=1e-3, weight_decay=1e-2)),
    ("NAdam", "NAdam", dict(lr=2e-3)),
    ("Adamax", "Adamax", dict(lr=2e-3)),
)
REGIME_LR = 0.02  # one rate for the three regimes: they differ only in the batch size
DECAY_LR = 0.05  # SGD+momentum 0.9: high enough that a constant rate leaves noise to decay away


# The precision experiment: one optimizer and rate, the params in float32 or bfloat16 with each
# remedy for bfloat16's 8-bit mantissa. SGD+momentum at 0.01: its updates (~1e-3 of weights of
# ~0.05, whose bfloat16 ulp is ~2.4e-4) are a few ulps early on and fractions of an ulp as the
# training settles, where plain rounding loses them.
PRECISION_OPTIMIZER = ("SGD", dict(lr=0.01, momentum=0.9))
PRECISION_RUNS: tuple[tuple[str, str, dict], ...] = (
    ("float32", "float32", {}),
    ("bfloat16", "bfloat16", {}),
    ("bf16 + stochastic rounding", "bfloat16", dict(stochastic_rounding=True, seed=0)),
    ("bf16 + Kahan summation", "bfloat16", dict(kahan_summation=True)),
    ("bf16 + fp32 master weights", "bfloat16", dict(master_weights=True)),
)


def precision_specs(plan):
    opt, hyper = PRECISION_OPTIMIZER
    return [RunSpec(label, opt, hyper, plan.batch_size, storage, options)
            for label, storage, options in PRECISION_RUNS]


def optimizer_specs(plan):
    return [RunSpec(label, opt, hyper, plan.batch_size) for label, opt, hyper in OPTIMIZER_RUNS]


def regime_specs(plan, n):
    hyper = dict(lr=REGIME_LR)
    return [
        RunSpec(f"batch ({n})", "SGD", hyper, n),
        RunSpec(f"mini-batch ({plan.batch_size})", "SGD", hyper, plan.batch_size),
        RunSpec("stochastic (1)", "SGD", hyper, 1),
    ]


def decay_specs(plan, n):
    total = plan.epochs * math.ceil(n / plan.batch_size)
    sgd = dict(momentum=0.9)
    lr = DECAY_LR
    return [
        RunSpec("constant", "SGD", dict(lr=schedules.Constant(lr), **sgd), plan.batch_size),
        RunSpec("exponential", "SGD",
                dict(lr=schedules.ExponentialDecay(lr, decay_rate=0.1, decay_steps=total), **sgd),
                plan.batch_size),
        RunSpec("inverse-time", "SGD",
                dict(lr=schedules.InverseTimeDecay(lr, decay_rate=9.0, decay_steps=total), **sgd),
                plan.batch_size),
        RunSpec("step", "SGD",
                dict(lr=schedules.StepDecay(lr, step_size=max(1, total // 4), gamma=0.5), **sgd),
                plan.batch_size),
    ]


# ---- training ------------------------------------------------------------------------------------


def _describe_lr(lr):
    if isinstance(lr, schedules.Schedule):
        return repr(lr)
    return f"{lr:g}"


def _hyper_json(hyper):
    return {k: (_describe_lr(v) if k == "lr" else v) for k, v in hyper.items()}


class _Bar:
    """A tqdm bar, or nothing when tqdm is missing or bars are off."""

    def __init__(self, enabled, total, desc):
        self._bar = None
        if enabled is False:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        # enabled=None: bars only on a terminal (tqdm's disable=None), not in logs or CI.
        self._bar = tqdm(total=total, desc=f"{desc:<16}", unit="step", dynamic_ncols=True, mininterval=0.25,
                         disable=None if enabled is None else False)

    def update(self, n=1):
        if self._bar is not None:
            self._bar.update(n)

    def loss(self, value):
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {value:.4f}", refresh=False)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def train(spec, x, y, x_test, y_test, *, sizes, seed, epochs, points_per_epoch, exact_curve=False,
          progress=None):
    """Train a fresh ``MLP(sizes, seed=seed)`` on ``(x, y)`` as ``spec`` says; return its record.

    The batches are a fresh permutation of ``(x, y)`` each epoch, from ``seed``: every run of an
    experiment sees the same ones. The curve has a point every ``1 / points_per_epoch`` epoch: the
    mean loss of the mini-batches since the previous point, or with ``exact_curve`` the loss over
    all of ``(x, y)`` (an evaluation, not counted in the wall time).
    """
    import fusedopt

    model = MLP(sizes, seed=seed)
    params = model.params
    if spec.storage != "float32":  # the stored params; the model's float32 ones mirror them
        dtype = _storage_dtype(spec.storage)
        params = [p.astype(dtype) for p in model.params]
        _mirror(model.params, params)
    opt = getattr(fusedopt, spec.optimizer)([{"params": params, **spec.hyper}], **spec.options)
    n, bs = len(x), min(spec.batch_size, len(x))
    steps_per_epoch = math.ceil(n / bs)
    # Points at evenly spaced steps of each epoch, so every mean covers (nearly) as many batches.
    marks = {round(steps_per_epoch * j / points_per_epoch) for j in range(1, points_per_epoch + 1)} - {0}
    rng = np.random.default_rng([seed, 1])
    lr = spec.hyper["lr"]
    curve: dict[str, list] = {"step": [0], "epoch": [0.0], "loss": [model.loss(x, y)],
                              "lr": [lr(0) if callable(lr) else lr]}
    bar = _Bar(progress, epochs * steps_per_epoch, spec.label)
    bar.loss(curve["loss"][0])

    update_s = eval_s = 0.0
    step, running, counted = 0, 0.0, 0
    clock = time.perf_counter
    start = clock()
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            loss = model.loss_and_grad(x[idx], y[idx])
            if params is model.params:
                t0 = clock()
                opt.step(model.grads)
                update_s += clock() - t0
            else:
                grads = [g.astype(params[0].dtype) for g in model.grads]
                t0 = clock()
                opt.step(grads)
                update_s += clock() - t0
                _mirror(model.params, params)
            step += 1
            running += loss
            counted += 1
            bar.update()
            if (step - 1) % steps_per_epoch + 1 in marks:
                t0 = clock()
                point = model.loss(x, y) if exact_curve else running / counted
                eval_s += clock() - t0
                running, counted = 0.0, 0
                curve["step"].append(step)
                curve["epoch"].append(step / steps_per_epoch)
                curve["loss"].append(point)
                curve["lr"].append(lr(step - 1) if callable(lr) else lr)  # the last update's rate
                bar.loss(point)
    wall_s = clock() - start - eval_s
    bar.close()
    return {
        "label": spec.label,
        "optimizer": spec.optimizer,
        "hyper": _hyper_json(spec.hyper),
        "storage": spec.storage,
        "options": spec.options,
        "batch_size": bs,
        "epochs": epochs,
        "steps": step,
        "train_size": n,
        "curve": curve,
        "final_train_loss": model.loss(x, y),
        "test_loss": model.loss(x_test, y_test),
        "test_accuracy": model.accuracy(x_test, y_test),
        "wall_s": wall_s,
        "update_s": update_s,
        "update_share": update_s / wall_s if wall_s > 0 else float("nan"),
        "us_per_update": 1e6 * update_s / max(step, 1),
    }


def _storage_dtype(name):
    """The NumPy dtype of a storage name: bfloat16 is ml_dtypes' (the demo extra installs it)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _mirror(wide, stored):
    """The model's float32 params set to the stored ones (exact: every 16-bit value is a float32)."""
    for w, s in zip(wide, stored):
        w[...] = s


def _subset(x, y, size, seed, stream):
    if size is None or size >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng([seed, stream]).choice(len(x), size, replace=False))
    return x[idx], y[idx]


def run_demo(data, plan=FULL, *, seed=0, progress=None, log=print):
    """Run the experiments of ``plan`` on ``data`` (a :class:`~fusedopt.demo.data.Dataset`; None
    when ``plan`` has only the trajectories); return ``{experiment: [run record, ...]}`` (the
    trajectories: :func:`fusedopt.demo.trajectories.trajectories`' dict). ``log`` gets one line
    as each experiment starts."""
    results: dict = {}
    if data is None and any(name in MLP_EXPERIMENTS for name in plan.experiments):
        raise ValueError("run_demo: the MLP experiments need data")
    common = {}
    if data is not None:
        sizes = (data.x_train.shape[1], *plan.hidden, data.n_classes)
        common = dict(sizes=sizes, seed=seed, progress=progress)
    for name in plan.experiments:
        if name == "trajectories":  # two-parameter surfaces: no data, a fraction of a second
            log("trajectories: optimizer paths on four 2-D loss surfaces")
            results[name] = trajectories.trajectories(seed)
            continue
        if name == "precision" and not _importable("ml_dtypes"):
            log("precision: skipped: bfloat16 arrays need ml_dtypes (pip install 'fusedopt[demo]')")
            continue
        if name in ("optimizers", "decay", "precision"):
            x, y = _subset(data.x_train, data.y_train, plan.train_size, seed, 2)
            specs = (optimizer_specs(plan) if name == "optimizers" else
                     precision_specs(plan) if name == "precision" else decay_specs(plan, len(x)))
            epochs, exact, points = plan.epochs, False, plan.points_per_epoch
        elif name == "regimes":
            x, y = _subset(data.x_train, data.y_train, plan.regime_size, seed, 3)
            specs = regime_specs(plan, len(x))
            epochs, exact, points = plan.regime_epochs, True, plan.regime_points
        else:
            raise ValueError(f"run_demo: unknown experiment {name!r}, expected one of {EXPERIMENTS}")
        log(f"{name}: {len(specs)} runs x {epochs} epoch{'s' * (epochs != 1)} on {len(x)} samples")
        results[name] = [
            train(spec, x, y, data.x_test, data.y_test, epochs=epochs, exact_curve=exact,
                  points_per_epoch=points, **common)
            for spec in specs
        ]
    return results


# ---- output --------------------------------------------------------------------------------------


def table(results):
    """The results as a Markdown table, one row per run."""
    lines = [
        "| experiment | run | lr (start) | batch | final train loss | test acc | wall s | update share "
        "| us/update |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, runs in results.items():
        if name == "trajectories":
            continue
        for r in runs:
            lines.append(
                f"| {name} | {r['label']} | {r['curve']['lr'][0]:g} | {r['batch_size']} | "
                f"{r['final_train_loss']:.4f} | {100 * r['test_accuracy']:.2f} % | {r['wall_s']:.1f} | "
                f"{100 * r['update_share']:.1f} % | {r['us_per_update']:.0f} |"
            )
    return "\n".join(lines)


def trajectory_table(results):
    """The trajectories as a Markdown table: where each path ends after its step budget."""
    lines = ["| figure | path | optimizer | steps | distance to the optimum | loss above the minimum "
             "| mean of the last 50 |",
             "|---|---|---|--:|--:|--:|--:|"]
    for name, result in results.items():
        for r in result["paths"]:
            lines.append(f"| {name} | {r['label']} | {r['optimizer']} | {r['steps']} | "
                         f"{r['final_distance']:.3g} | {r['final_loss']:.3g} | "
                         f"{r['tail_loss']:.3g} |")
    return "\n".join(lines)


_TITLES = {
    "optimizers": "Optimizers on Fashion-MNIST (MLP {arch}, mini-batch {bs})",
    "regimes": "Batch vs mini-batch vs stochastic SGD ({n} samples, lr {lr:g})",
    "decay": "Learning-rate decay, SGD+momentum 0.9 (lr0 {lr:g})",
    "precision": "bfloat16 params and its remedies, SGD+momentum 0.9 (lr {lr:g}, MLP {arch})",
}


def plot(results, out_dir, *, arch):
    """One PNG per experiment in ``out_dir``; returns their paths. Needs matplotlib (the pyplot-free
    API: no display, no global state)."""
    from matplotlib.figure import Figure

    paths = []
    for name, runs in results.items():
        if name == "trajectories":
            paths += trajectories.plot_trajectories(runs, out_dir)
            continue
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        left, right = fig.subplots(1, 2)
        for i, r in enumerate(runs):
            left.plot(r["curve"]["epoch"], r["curve"]["loss"], color=f"C{i % 10}", lw=1.6, label=r["label"])
        left.set_yscale("log")
        left.set_xlabel("epoch")
        left.set_ylabel("training loss" + (" (full subset)" if name == "regimes" else " (mini-batch mean)"))
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=8, ncol=2 if len(runs) > 5 else 1)
        if name in ("optimizers", "precision"):
            labels = [r["label"] for r in runs][::-1]
            acc = [100 * r["test_accuracy"] for r in runs][::-1]
            bars = right.barh(labels, acc, color=[f"C{i % 10}" for i in range(len(runs))][::-1])
            right.bar_label(bars, fmt="%.1f %%", fontsize=8, padding=2)
            right.set_xlim(max(0.0, min(acc) - 10), 100)
            right.set_xlabel("test accuracy (%)")
            right.grid(True, axis="x", alpha=0.3)
        elif name == "regimes":
            for i, r in enumerate(runs):
                c = r["curve"]
                # Wall time at each point, taking the steps of a run as equally long; log scale, as
                # the regimes' times differ by orders of magnitude (so the start, t = 0, is left out).
                t = np.asarray(c["step"][1:], float) * (r["wall_s"] / max(r["steps"], 1))
                right.plot(t, c["loss"][1:], color=f"C{i}", lw=1.6, label=r["label"])
            right.set_xscale("log")
            right.set_yscale("log")
            right.set_xlabel("training time (s)")
            right.set_ylabel("training loss (full subset)")
            right.grid(True, which="both", alpha=0.3)
        else:
            for i, r in enumerate(runs):
                c = r["curve"]
                right.plot(c["epoch"], c["lr"], color=f"C{i}", lw=1.6, label=r["label"])
            right.set_xlabel("epoch")
            right.set_ylabel("learning rate")
            right.grid(True, alpha=0.3)
        first = runs[0]
        fig.suptitle(_TITLES[name].format(arch=arch, bs=first["batch_size"], n=first["train_size"],
                                          lr=REGIME_LR if name == "regimes" else
                                          PRECISION_OPTIMIZER[1]["lr"] if name == "precision" else
                                          DECAY_LR))
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _blas_limit(n):
    """A context in which the BLAS behind NumPy uses ``n`` threads, and ``n``; a context that changes
    nothing, and None, when threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), None
    return threadpool_limits(limits=n, user_api="blas"), n


def _importable(name):
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _finite(obj):
    """``obj`` with NaN and infinities (a diverged run) as None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _meta(data, plan, seed, threads, blas_threads):
    import fusedopt

    info = fusedopt.build_info()
    return {
        "fusedopt": info["version"],
        "simd": info["simd_active"],
        "threads": threads,
        "blas_threads": blas_threads,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seed": seed,
        "plan": dataclasses.asdict(plan),
        **({} if data is None else {
            "data": str(data.directory),
            "verified": data.verified,
            "train_samples": len(data.x_train),
            "test_samples": len(data.x_test),
            "image_shape": list(data.image_shape),
        }),
    }


def _parser(prog):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train one MLP on Fashion-MNIST with every fusedopt optimizer, and draw the "
        "optimizers' paths on 2-D loss surfaces; write tables, PNG plots and a JSON of every "
        "curve and path.",
    )
    p.add_argument("--quick", action="store_true", help="a short run (about a minute on 2 cores)")
    p.add_argument("--data", metavar="DIR", help="folder with the four Fashion-MNIST idx files "
                   "(.gz or plain); default $FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist")
    p.add_argument("--out", metavar="DIR", default="fusedopt-demo",
                   help="where the PNGs and results.json go (default ./fusedopt-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and subsets (default 0)")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="epochs of the optimizer and decay experiments (default 10, --quick 2)")
    p.add_argument("--only", metavar="LIST",
                   help=f"comma-separated experiments among {','.join(EXPERIMENTS)} (default all)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="threads of the fusedopt kernels (default 1; 0: all cores); BLAS always uses 1")
    p.add_argument("--no-verify", action="store_true",
                   help="accept idx files that are not the published Fashion-MNIST (other data, test "
                   "data); the output then says UNVERIFIED")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--gif", action="store_true",
                   help="also an animation of the trajectories' elongated bowl "
                   "(trajectories-bowl.gif)")
    return p


def main(argv=None, prog="python -m fusedopt demo"):
    """The command line; returns the exit status."""
    import fusedopt

    args = _parser(prog).parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.epochs is not None:
        if args.epochs < 1:
            print(f"{prog}: error: --epochs must be >= 1, got {args.epochs}", file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, epochs=args.epochs)
    if args.only:
        chosen = tuple(dict.fromkeys(e.strip() for e in args.only.split(",") if e.strip()))
        unknown = [e for e in chosen if e not in EXPERIMENTS]
        if unknown or not chosen:
            print(f"{prog}: error: --only takes experiments among {','.join(EXPERIMENTS)}, got {args.only!r}",
                  file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, experiments=chosen)
    if args.threads < 0:
        print(f"{prog}: error: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"{prog}: error: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2

    data = None
    if any(name in MLP_EXPERIMENTS for name in plan.experiments):  # trajectories need no data
        try:
            data = load_fashion_mnist(args.data, verify=not args.no_verify)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the output folder {out}: {e.strerror or e}", file=sys.stderr)
        return 1

    # Note [One BLAS thread]: a batch of 64 is too small a product to share between threads, and
    # BLAS threads that spin while the fusedopt kernels run (or while another process holds the
    # other cores) slow each step by orders of magnitude; one thread also keeps the products, and
    # so the curves, the same on any machine. The fusedopt kernels default to one thread for the
    # same reason: the model's 235k parameters are a ~0.1 ms update, too little to split.
    blas_limit, blas = _blas_limit(1)
    previous_threads = fusedopt.get_num_threads()
    fusedopt.set_num_threads(args.threads)
    try:
        with blas_limit:
            threads = fusedopt.get_num_threads()
            arch = ""
            if data is not None:
                arch = "-".join(str(s) for s in (data.x_train.shape[1], *plan.hidden, data.n_classes))
                verified = ("verified Fashion-MNIST" if data.verified
                            else "UNVERIFIED idx data (--no-verify)")
                print(f"fusedopt {fusedopt.__version__} demo: MLP {arch}, {len(data.x_train)} "
                      f"training / {len(data.x_test)} test images, {verified} from {data.directory}")
            else:
                print(f"fusedopt {fusedopt.__version__} demo: {', '.join(plan.experiments)}")
            blas_text = "BLAS on 1 thread" if blas else "BLAS threads not limited (no threadpoolctl)"
            print(f"seed {args.seed}; fusedopt kernels on {threads} thread(s), {blas_text}", flush=True)
            start = time.perf_counter()
            results = run_demo(data, plan, seed=args.seed, progress=False if args.no_progress else None)
            total = time.perf_counter() - start
    finally:
        fusedopt.set_num_threads(previous_threads)

    print()
    if any(name in MLP_EXPERIMENTS for name in results):
        print(table(results))
    if "trajectories" in results:
        print(trajectory_table(results["trajectories"]))
    notes = []
    if not args.no_progress and not _importable("tqdm"):
        notes.append("no progress bars: tqdm is not installed (pip install 'fusedopt[demo]')")
    record = {"meta": _meta(data, plan, args.seed, threads, blas), "total_s": total, "results": results}
    written = []
    try:
        written += plot(results, out, arch=arch)
        if args.gif and "trajectories" in results:
            written.append(trajectories.animate(results["trajectories"], out))
        elif args.gif:
            notes.append("no animation: --gif draws the trajectories, which --only left out")
    except ImportError:
        notes.append("no plots: matplotlib is not installed (pip install 'fusedopt[demo]')")
    json_path = out / "results.json"
    json_path.write_text(json.dumps(_finite(record), indent=1) + "\n")
    written.append(json_path)
    print()
    print(f"total {total:.1f} s; wrote " + ", ".join(map(str, written)))
    for note in notes:
        print(f"note: {note}")
    return 0
