"""Real training with ``fusedopt.torch.AdamW`` against ``torch.optim.AdamW(fused=True)``.

    python bench/train_torch.py                                    # both models, default sizes
    python bench/train_torch.py --steps 3 --layers 1 --width 64   # smoke run: seconds

A client of the library, not a kernel benchmark: each model is trained twice from the same seed,
on the same batches, with the same hyper-parameters, once per optimizer:

- ``torch-fused``: ``torch.optim.AdamW(params, lr=LR, fused=True)``;
- ``fusedopt``: ``fusedopt.torch.AdamW(params, lr=LR)`` (a drop-in ``torch.optim.Optimizer``).

Models: ``cnn``, a small CNN (2 conv + 2 linear layers) on Fashion-MNIST (a synthetic data set of
the same shape, labelled as such everywhere, when the data are missing); ``lm``, a pre-norm causal
transformer language model (``torch.nn.TransformerEncoder`` with a causal mask, no dropout) on a
byte-level stream: this repository's tracked ``*.md`` and ``*.py`` files, concatenated in path
order.

How it is measured. Both runs are built first (same seed, so the same initial weights); each
optimizer is first warmed up for ``--warmup`` steps on a throwaway copy of the model. Then the two
runs advance in lockstep, one training step each, the order alternating from step to step, so
drifting load on a shared machine hits both alike. A training step is ``zero_grad`` + forward +
backward + ``optimizer.step()`` + reading the loss, timed with ``time.perf_counter``, and
``optimizer.step()`` alone is timed inside it. The first measured step (which creates the
optimizer state) is left out of the means. Reported per run: the loss every ``--every`` steps,
mean step time, mean ``optimizer.step()`` time, the optimizer's share of the step, and between the
two runs the max abs and relative difference of the loss curves (every step). torch and fusedopt
use ``--threads`` threads each. ``--pair`` compares two others: ``torch-fused,torch-fused`` shows
whether the training itself is deterministic, ``torch-fused,torch-foreach`` how far two correct
implementations that round differently drift apart. Nothing is asserted: the script prints tables
(markdown) and, with ``--json``, writes every number and the machine it ran on.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fusedopt
import fusedopt.torch as fot
from fusedopt.demo.data import DataError, load_fashion_mnist, resolve_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (machine, versions and commit, as bench/run.py records them)

REPO = Path(__file__).resolve().parent.parent
OPTIMIZERS = {
    "torch-fused": lambda params, lr: torch.optim.AdamW(params, lr=lr, fused=True),
    "fusedopt": lambda params, lr: fot.AdamW(params, lr=lr),
    "torch-foreach": lambda params, lr: torch.optim.AdamW(params, lr=lr, foreach=True),
}


class CNN(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                                  nn.Linear(128, n_classes))

    def forward(self, x):
        return self.head(self.features(x))


class CausalLM(nn.Module):
    mask: torch.Tensor

    def __init__(self, vocab, context, width, layers, heads):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, idx):
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.out(self.norm(h))


def cnn_task(args, rng):
    """(model factory, batches, loss, description) for the CNN."""
    try:
        ds = load_fashion_mnist(args.data)
        x, y = ds.x_train.reshape(-1, 1, *ds.image_shape), ds.y_train
        data = f"Fashion-MNIST, {len(x)} training images from {ds.directory}"
    except DataError as e:
        # Learnable stand-in: noise images, labels from a fixed random projection.
        x = rng.random((60000, 1, 28, 28), dtype=np.float32)
        y = (x.reshape(len(x), -1) @ rng.standard_normal((784, 10), dtype=np.float32)).argmax(1)
        data = (f"SYNTHETIC data (Fashion-MNIST missing: {str(e).splitlines()[0]}): 60000 "
                "random 28x28 images, labels = argmax of a fixed random projection")
    x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    steps = args.warmup + args.steps
    idx = [torch.from_numpy(rng.integers(0, len(x), args.batch)) for _ in range(steps)]
    batches = [(x[i], y[i]) for i in idx]
    return CNN, batches, nn.functional.cross_entropy, data


def lm_task(args, rng):
    """(model factory, batches, loss, description) for the language model."""
    files = subprocess.run(["git", "ls-files", "*.md", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    stream = b"".join((REPO / f).read_bytes() for f in sorted(files))
    data = (f"bytes of this repo's {len(files)} tracked *.md and *.py files as in the working "
            f"tree, in path order ({len(stream)} B, sha256 {hashlib.sha256(stream).hexdigest()[:12]})")
    tokens = torch.frombuffer(bytearray(stream), dtype=torch.uint8).long()
    heads = args.heads or max(1, args.width // 64)
    ctx = args.context

    def batch():
        starts = rng.integers(0, len(tokens) - ctx - 1, args.batch)
        seq = torch.stack([tokens[s:s + ctx + 1] for s in starts])
        return seq[:, :-1], seq[:, 1:]

    batches = [batch() for _ in range(args.warmup + args.steps)]
    make = functools.partial(CausalLM, 256, ctx, args.width, args.layers, heads)

    def loss(logits, target):
        return nn.functional.cross_entropy(logits.reshape(-1, 256), target.reshape(-1))

    data += f"; {args.layers} layers, width {args.width}, {heads} heads, context {ctx}"
    return make, batches, loss, data


class Run:
    """One model and its optimizer; ``step`` trains one batch and records loss and times."""

    def __init__(self, name, make_opt, make_model, loss_fn, lr, seed):
        torch.manual_seed(seed)
        self.model = make_model()
        self.opt = make_opt(self.model.parameters(), lr)
        self.name, self.loss_fn = name, loss_fn
        self.losses, self.step_s, self.opt_s = [], [], []

    def step(self, x, y):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        t1 = time.perf_counter()
        self.opt.step()
        t2 = time.perf_counter()
        value = loss.item()
        t3 = time.perf_counter()
        self.losses.append(value)
        self.step_s.append(t3 - t0)
        self.opt_s.append(t2 - t1)


def train(task, optimizers, args, lr):
    make_model, batches, loss_fn, data = task
    warm, batches = batches[:args.warmup], batches[args.warmup:]
    for name, make_opt in optimizers.items():  # warm-up on throwaway models
        throwaway = Run(name, make_opt, make_model, loss_fn, lr, args.seed)
        for x, y in warm:
            throwaway.step(x, y)
    runs = [Run(name, make_opt, make_model, loss_fn, lr, args.seed)
            for name, make_opt in optimizers.items()]
    for i, (x, y) in enumerate(batches):
        for run in (runs if i % 2 == 0 else runs[::-1]):
            run.step(x, y)
    a, b = (np.array(r.losses) for r in runs)
    abs_diff = np.abs(a - b)
    rel_diff = abs_diff / np.maximum(np.abs(a), 1e-30)
    params = sum(p.numel() for p in runs[0].model.parameters())
    param_diff = max(float((p.detach() - q.detach()).abs().max()) for p, q in
                     zip(runs[0].model.parameters(), runs[1].model.parameters()))
    out = {"data": data, "params": params, "tensors": len(list(runs[0].model.parameters())),
           "lr": lr, "runs": {}, "final_max_abs_param_diff": param_diff,
           "max_abs_diff": float(abs_diff.max()), "max_rel_diff": float(rel_diff.max()),
           "final_rel_diff": float(rel_diff[-1]),
           "first_step_differing": int(np.argmax(abs_diff > 0)) + 1 if abs_diff.any() else None}
    for r in runs:
        step, opt = np.array(r.step_s[1:] or r.step_s), np.array(r.opt_s[1:] or r.opt_s)
        out["runs"][r.name] = {
            "losses": r.losses, "step_s": r.step_s, "opt_step_s": r.opt_s,
            "mean_step_s": float(step.mean()), "mean_opt_step_s": float(opt.mean()),
            "median_step_s": float(np.median(step)), "median_opt_step_s": float(np.median(opt)),
            "opt_share": float(opt.mean() / step.mean())}
    return out


def busy_s():
    """CPU seconds all processes have spent busy since boot (None without /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def tables(name, res, every):
    runs = res["runs"]
    lines = [f"### {name}: {res['params']:,} parameters in {res['tensors']} tensors, lr {res['lr']}",
             "", f"Data: {res['data']}", "",
             "| optimizer | step ms: mean (median) | optimizer.step() ms: mean (median) "
             "| optimizer share of the mean step | final loss |", "|---|---:|---:|---:|---:|"]
    for opt, r in runs.items():
        lines.append(f"| {opt} | {r['mean_step_s'] * 1e3:.2f} ({r['median_step_s'] * 1e3:.2f}) "
                     f"| {r['mean_opt_step_s'] * 1e3:.3f} ({r['median_opt_step_s'] * 1e3:.3f}) "
                     f"| {r['opt_share'] * 100:.1f}% | {r['losses'][-1]:.6f} |")
    (tn, t), (fn, f) = runs.items()
    lines += ["", f"{fn} / {tn}: step time {f['mean_step_s'] / t['mean_step_s']:.3f}, "
              f"optimizer.step() time {f['mean_opt_step_s'] / t['mean_opt_step_s']:.3f} "
              f"(medians: {f['median_step_s'] / t['median_step_s']:.3f}, "
              f"{f['median_opt_step_s'] / t['median_opt_step_s']:.3f})", "",
              f"| step | loss {tn} | loss {fn} | abs diff | rel diff |",
              "|---:|---:|---:|---:|---:|"]
    n = len(t["losses"])
    for i in sorted({*range(0, n, every), n - 1}):
        a, b = t["losses"][i], f["losses"][i]
        lines.append(f"| {i + 1} | {a:.6f} | {b:.6f} | {abs(a - b):.2e} "
                     f"| {abs(a - b) / max(abs(a), 1e-30):.2e} |")
    lines += ["", f"Loss curves over all {n} steps: max abs diff {res['max_abs_diff']:.3e}, "
              f"max rel diff {res['max_rel_diff']:.3e}, final rel diff {res['final_rel_diff']:.3e}; "
              + (f"first differing step {d}" if (d := res["first_step_differing"]) else "identical at every step")
              + f"; max abs param diff after the last step {res['final_max_abs_param_diff']:.3e}.",
              ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("cnn", "lm", "both"), default="both")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: cnn 200, lm 150)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: cnn 64, lm 8)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per optimizer (default 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--layers", type=int, default=6, help="LM layers (default 6)")
    p.add_argument("--width", type=int, default=384, help="LM width (default 384)")
    p.add_argument("--heads", type=int, default=None, help="LM heads (default width // 64)")
    p.add_argument("--context", type=int, default=128, help="LM context (default 128)")
    p.add_argument("--lr-cnn", type=float, default=1e-3)
    p.add_argument("--lr-lm", type=float, default=3e-4)
    p.add_argument("--every", type=int, default=None, help="loss row every k steps (steps // 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: see resolve_dir)")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--pair", default="torch-fused,fusedopt",
                   help=f"the two optimizers compared, of {','.join(OPTIMIZERS)} (default: %(default)s)")
    args = p.parse_args(argv)

    a, b = args.pair.split(",")
    pair = {a: OPTIMIZERS[a], (b if b != a else b + "-again"): OPTIMIZERS[b]}
    torch.set_num_threads(args.threads)
    fusedopt.set_num_threads(args.threads)
    info = {"command": " ".join(["python", *sys.argv]), "machine": report.machine_info(),
            "versions": report.versions(torch), "commit": report.commit_info(),
            "threads": {"torch": torch.get_num_threads(), "fusedopt": fusedopt.get_num_threads()},
            "fashion_mnist_dir": str(resolve_dir(args.data)[0]), "loadavg_start": report.loadavg(),
            "args": vars(args), "results": {}}
    m, v = info["machine"], info["versions"]
    print(f"# Training with {a} and {b}\n\n"
          f"Machine: {m['cpu_model']} ({m['logical_cpus']} logical CPUs, family/model/stepping "
          f"{m['cpu_family_model']}, hypervisor {m['hypervisor']}); torch {v['torch']} "
          f"({v.get('torch_cpu_capability')}); fusedopt SIMD {v['fusedopt_build']['simd_active']}; "
          f"threads {info['threads']}; commit {(info['commit']['sha'] or '?')[:7]}"
          f"{' (dirty)' if info['commit']['dirty'] else ''}\n")
    defaults = {"cnn": (200, 64, args.lr_cnn, cnn_task), "lm": (150, 8, args.lr_lm, lm_task)}
    for name in (("cnn", "lm") if args.model == "both" else (args.model,)):
        steps, batch, lr, task = defaults[name]
        sub = argparse.Namespace(**{**vars(args), "steps": args.steps or steps,
                                    "batch": args.batch or batch})
        rng = np.random.default_rng(args.seed)
        t0, busy0, own0 = time.perf_counter(), busy_s(), time.process_time()
        res = train(task(sub, rng), pair, sub, lr)
        wall, busy1, own = time.perf_counter() - t0, busy_s(), time.process_time() - own0
        others = None if busy0 is None else max(0.0, (busy1 - busy0 - own) / (wall * (os.cpu_count() or 1)))
        res.update(steps=sub.steps, batch=sub.batch, wall_s=wall, other_processes_cpu_share=others)
        info["results"][name] = res
        print(tables(f"{name}: {sub.steps} steps, batch {sub.batch}", res,
                     args.every or max(1, sub.steps // 10)))
        print(f"({name} took {wall:.1f} s of wall time; other processes kept "
              f"{'?' if others is None else f'{others:.0%}'} of the CPUs busy)\n", flush=True)
    info["loadavg_end"] = report.loadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
