"""Timing: every implementation of one (workload, algorithm) pair on the same buffers, interleaved.

A *group* is one workload and one algorithm. Its implementations (the ceiling, fusedopt, the NumPy
peer, the torch peers) share one set of buffers, so they move the same bytes through the same
pages. After warm-up, each round runs every implementation once in a fresh random order. Medians
and quartiles of the times are taken per implementation over the rounds, and each ratio (% of the
ceiling, speedup over a peer) round by round, between two calls timed a fraction of a second
apart: drift on a shared, noisy machine hits both sides of such a ratio alike.

Gradients are positive (uniform in [1e-4, 1e-3]). The ceiling adds the gradient to every state
buffer, and a positive gradient keeps every variance positive whatever the interleaving, so no
implementation ever computes on NaN (each group records whether its buffers stayed finite).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from algorithms import torch_kwargs

# Implementations, in table order. "ceiling" is the memory wall the others are measured against.
IMPLS = ("ceiling", "fusedopt", "numpy", "torch-loop", "torch-foreach", "torch-fused")
PEERS = IMPLS[2:]
TORCH_MODES = {
    "torch-loop": {"foreach": False},
    "torch-foreach": {"foreach": True},
    "torch-fused": {"fused": True},
}


@dataclass
class Impl:
    name: str
    step: Callable[[], None]
    calls: int = 1  # calls of the implementation per step() (Python-overhead blocks)
    before: Callable[[], None] | None = None  # untimed, before every timed call


@dataclass
class Policy:
    """How long to time a group: ``warmup`` calls of each implementation, then at least
    ``min_rounds`` rounds, then more until ``budget_s`` seconds were measured or ``max_rounds``."""

    warmup: int = 2
    min_rounds: int = 5
    max_rounds: int = 200
    budget_s: float = 5.0


@dataclass
class Group:
    impls: list
    buffers: list  # every buffer of the group, for the finiteness check
    notes: list = field(default_factory=list)


def import_torch():
    """torch, or None when it is not installed (an optional peer)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------------------------
# Buffers and implementations


def make_arrays(sizes, algo, rng, plain_state=False):
    """params (standard normal), grads (positive, see the module doc) and states at their initial
    value, as NumPy fp32. Every page is written here, so no implementation pays first-touch page
    faults inside the timed region.

    The states are allocated as fusedopt's optimizer classes allocate them (each large buffer at
    its own 4 KiB page offset, Note [State at its own 4 KiB offset] in ``fusedopt/_arrays.py``);
    ``plain_state`` gives plain ``np.empty`` buffers instead, which all share the params' page
    offset. Either way every implementation of the group works on these same buffers."""
    import fusedopt

    params = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    grads = [rng.uniform(1e-4, 1e-3, size=n).astype(np.float32) for n in sizes]
    states = {}
    for slot, s in enumerate(algo.states):
        fill = algo.init.get(s, 0.0)
        copy = fill == "params"  # Schedule-Free's z starts at the params
        fill = 0.0 if copy else fill
        if plain_state:
            bufs = [np.full(n, fill, np.float32) for n in sizes]
        else:
            bufs = [fusedopt.state_like(p, fill, slot) for p in params]
        if copy:
            for b, p in zip(bufs, params):
                b[...] = p
        states[s] = bufs
    return params, grads, states


class Stepper:
    """Calls ``fn(params, grads, states, step, carry)`` with a 1-based step count of its own and
    threads the carry (NAdam's ``mu_product``)."""

    def __init__(self, fn, params, grads, states):
        self.fn, self.params, self.grads, self.states = fn, params, grads, states
        self.t, self.carry = 0, None

    def __call__(self):
        self.t += 1
        self.carry = self.fn(self.params, self.grads, self.states, self.t, self.carry)


def torch_impls(torch, algo, tp, tg, tstates, wanted, notes):
    """The torch peers of ``algo`` on the torch tensors ``tp``, ``tg``, ``tstates`` (which view
    the group's buffers). A torch optimizer creates its state at its first step: that step runs
    here, as warm-up; then each state tensor is copied into the group's buffer of the same name
    and replaced by it, so torch reads and writes the same memory as everyone else.

    Each optimizer gets parameter tensors of its own (views of the same memory) so that its
    ``.grad`` is its own. An optimizer that writes into ``.grad`` (torch 2.13's foreach SGD with
    Nesterov adds the momentum into it) would corrupt the shared gradients: it is given a private
    copy instead, refreshed from the shared gradients before every call, outside the timing."""
    out = []
    if algo.torch_cls is None:
        for name, fn in (("torch-loop", algo.torch_loop), ("torch-foreach", algo.torch_foreach)):
            if name in wanted and fn is not None:
                if getattr(fn, "writes_grads", False):  # a private copy, refreshed untimed
                    private = [g.clone() for g in tg]
                    out.append(Impl(name, (lambda fn=fn, pg=private: fn(tp, pg, tstates)),
                                    before=(lambda pg=private: torch._foreach_copy_(pg, tg))))
                else:
                    out.append(Impl(name, (lambda fn=fn: fn(tp, tg, tstates))))
        if "torch-fused" in wanted:
            notes.append(f"{algo.name}: torch has no fused implementation")
        return out
    cls = getattr(torch.optim, algo.torch_cls)
    for name, mode in TORCH_MODES.items():
        if name not in wanted:
            continue
        params = [t.detach() for t in tp]
        for p, g in zip(params, tg):
            p.grad = g
        before = [g.clone() for g in tg]
        try:
            opt = cls(params, **torch_kwargs(algo), **mode)
            opt.step()
        except (TypeError, RuntimeError, ValueError) as e:
            msg = str(e).splitlines()[0][:100]
            notes.append(f"{algo.name}: torch.optim.{algo.torch_cls}(**{mode}) unavailable: {msg}")
            continue
        refresh = None
        with torch.no_grad():
            if not all(torch.equal(a, b) for a, b in zip(before, tg)):
                for a, b in zip(tg, before):
                    a.copy_(b)
                private = [g.clone() for g in tg]
                for p, g in zip(params, private):
                    p.grad = g
                notes.append(f"{algo.name}: torch.optim.{algo.torch_cls}(**{mode}) writes into "
                             "p.grad; it runs on a private copy of the gradients, refreshed "
                             "before every call outside the timing")
                def refresh(private=private):
                    torch._foreach_copy_(private, tg)
            for i, p in enumerate(params):
                st = opt.state[p]
                for s in algo.states:
                    if isinstance(st.get(s), torch.Tensor) and st[s].shape == p.shape:
                        tstates[s][i].copy_(st[s])
                        st[s] = tstates[s][i]
        del before
        out.append(Impl(name, opt.step, before=refresh))
    return out


def cpu_group(algo, sizes, rng, torch, wanted, plain_state=False):
    """The implementations of one CPU group, on one set of NumPy buffers."""
    from fusedopt import _core

    params, grads, states = make_arrays(sizes, algo, rng, plain_state)
    g = Group([], params + grads + [b for v in states.values() for b in v])
    if "ceiling" in wanted:
        lists = [states[s] for s in algo.states]

        def ceiling():
            for k, w in algo.passes:  # a pass reading the first k buffers, writing w of them
                _core.cpu.rmw(params, grads, lists[: k - 2], w)

        g.impls.append(Impl("ceiling", ceiling))
    if "fusedopt" in wanted:
        g.impls.append(Impl("fusedopt", Stepper(algo.fusedopt, params, grads, states)))
    if "fusedopt-class" in wanted:
        g.impls.append(Impl("fusedopt-class", class_step(algo, params, grads)))
    if "numpy" in wanted:
        g.impls.append(Impl("numpy", Stepper(algo.numpy, params, grads, states)))
    torch_wanted = [w for w in wanted if w.startswith("torch")]
    if torch is not None and torch_wanted:
        tp = [torch.from_numpy(p) for p in params]
        tg = [torch.from_numpy(x) for x in grads]
        ts = {s: [torch.from_numpy(b) for b in v] for s, v in states.items()}
        g.impls += torch_impls(torch, algo, tp, tg, ts, torch_wanted, g.notes)
    return g


def class_step(algo, params, grads):
    """A step of fusedopt's optimizer class for ``algo`` (``EMA.update`` for EWA, averaging the
    grads) on these params and grads, with the state the class allocates itself: what a training
    loop calls, bookkeeping included."""
    import fusedopt.optim as O

    if algo.class_name is None:
        return O.EMA(grads, decay=algo.hp["beta"]).update
    opt = getattr(O, algo.class_name)(params, **torch_kwargs(algo))
    if hasattr(opt, "train"):  # Schedule-Free steps in train mode
        opt.train()
    return lambda: opt.step(grads)


def all_finite(buffers):
    return all(bool(np.isfinite(np.asarray(b)).all()) for b in buffers)


# --------------------------------------------------------------------------------------------
# Timing


def perf_timer(fn):
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) * 1e-9


def time_group(impls, policy, rng, timer=perf_timer):
    """Warm-up, then rounds of every implementation once in a fresh random order; returns the
    seconds per call of each implementation, one entry per round."""
    for impl in impls:
        for _ in range(policy.warmup):
            if impl.before is not None:
                impl.before()
            impl.step()
    times = {impl.name: [] for impl in impls}
    was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise that lands on one implementation
    try:
        spent, rounds = 0.0, 0
        while rounds < policy.min_rounds or (
            rounds < policy.max_rounds and spent < policy.budget_s
        ):
            for k in rng.permutation(len(impls)):
                if impls[k].before is not None:
                    impls[k].before()
                dt = timer(impls[k].step)
                times[impls[k].name].append(dt / impls[k].calls)
                spent += dt
            rounds += 1
    finally:
        if was_enabled:
            gc.enable()
    return times


def stats(ts):
    a = np.asarray(ts, dtype=np.float64)
    return {
        "median_s": float(np.median(a)),
        "p25_s": float(np.percentile(a, 25)),
        "p75_s": float(np.percentile(a, 75)),
        "min_s": float(a.min()),
        "rounds": int(a.size),
    }


def paired(num, den):
    """Median and quartiles of the per-round ratios num[r] / den[r]: both were timed in the same
    round, a fraction of a second apart, so a change of the machine's bandwidth between rounds
    cancels out of each ratio."""
    r = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def group_rows(workload, algo, elements, times):
    """One row per implementation: time statistics, GB/s by the algorithm's minimum bytes, % of
    this group's ceiling and fusedopt's speedup over it.

    Two estimates of each ratio are given. The *paired* one (``pct_ceiling``,
    ``fusedopt_speedup``) is the median of the ratios taken round by round: ceiling time / time,
    time / fusedopt's time, each pair timed in the same round. It is the one the targets use. The
    ratio of the two medians (``pct_ceiling_medians``, ``fusedopt_speedup_medians``) is given
    beside it: on a quiet machine both agree, but where the machine's bandwidth changes during a
    group (see bench/README.md) the two medians can come from different rounds, and the ratio of
    medians then measures the machine rather than the kernel."""
    nbytes = algo.bytes_per_elem * elements
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for impl in IMPLS:
        if impl not in times:
            continue
        st = stats(times[impl])
        row = {
            "workload": workload,
            "algo": algo.name,
            "impl": impl,
            "bytes_per_elem": algo.bytes_per_elem,
            "bytes": nbytes,
            **st,
            "gbps": nbytes / st["median_s"] / 1e9,
            "pct_ceiling": None, "pct_ceiling_p25": None, "pct_ceiling_p75": None,
            "pct_ceiling_medians": None,
            "fusedopt_speedup": None, "fusedopt_speedup_medians": None,
        }
        if "ceiling" in times:
            m, lo, hi = paired(times["ceiling"], times[impl])
            row.update(pct_ceiling=100.0 * m, pct_ceiling_p25=100.0 * lo,
                       pct_ceiling_p75=100.0 * hi,
                       pct_ceiling_medians=100.0 * med["ceiling"] / st["median_s"])
        if "fusedopt" in times:
            row.update(fusedopt_speedup=paired(times[impl], times["fusedopt"])[0],
                       fusedopt_speedup_medians=st["median_s"] / med["fusedopt"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Agreement: the peers must compute the same update, or the comparison is meaningless.

AGREE_SIZES = (33, 1000, 4097, 65539)  # 65539: a 64Ki-element chunk and a tail
AGREE_STEPS = 7  # RAdam's first rectified step is the 6th


def agreement(algo, torch, rng, wanted):
    """Runs each implementation ``AGREE_STEPS`` steps from the same start and reports, per peer,
    its largest difference from fusedopt relative to the scale of the buffer (max |x - ref| /
    max |ref|, the worst over params, grads and states; the grads must come back untouched).
    Recorded, never asserted: the tests assert on fusedopt itself."""
    seed = int(rng.integers(1 << 31))
    final = {}
    for impl in ("fusedopt",) + tuple(w for w in PEERS if w in wanted):
        group = cpu_group(algo, AGREE_SIZES, np.random.default_rng(seed), torch,
                          ["fusedopt" if impl == "fusedopt" else impl])
        if not group.impls:
            continue
        done = 1 if impl.startswith("torch") and algo.torch_cls is not None else 0
        for _ in range(AGREE_STEPS - done):
            if group.impls[0].before is not None:
                group.impls[0].before()
            group.impls[0].step()
        final[impl] = [np.array(b, np.float64) for b in group.buffers]
    ref = final.pop("fusedopt")
    out = {}
    for impl, bufs in final.items():
        err = 0.0
        for x, r in zip(bufs, ref):
            scale = max(float(np.abs(r).max()), 1e-30)
            err = max(err, float(np.abs(x - r).max()) / scale)
        out[impl] = err if np.isfinite(err) else float("nan")
    return out


# --------------------------------------------------------------------------------------------
# Python overhead: a step over many tiny tensors costs almost nothing but the call itself.


def overhead(algos, torch, rng, sizes, quick, make_group=None, sync=None):
    """Per-step seconds over ``sizes`` (many tiny tensors), timed in blocks of calls so the timer
    does not dominate. fusedopt (the functional call), fusedopt's optimizer class
    (``fusedopt-class``: the step a training loop makes, with its bookkeeping) and the ceiling
    (``rmw``: the bindings' floor, validating and dispatching the same lists) for every algorithm;
    every peer for Adam.

    On the GPU (``make_group=gpu.cuda_group``, ``sync`` = ``torch.cuda.synchronize``) a block ends
    with one synchronisation, so a step's time is its host cost (Python, checks, launches) unless
    the device is the slower side; the ceiling is then one copy launch."""
    rows = []
    rounds = 3 if quick else 30
    make_group = make_group or cpu_group
    for algo in algos:
        wanted = list(IMPLS) if algo.name == "adam" else ["ceiling", "fusedopt"]
        wanted.insert(2, "fusedopt-class")
        group = make_group(algo, sizes, rng, torch, wanted)
        blocks = []
        for impl in group.impls:
            # Sized by a warm call: the first steps allocate state (the classes) and find cold
            # caches, and a block sized by them held 2 calls where it should hold 70, so that one
            # cold call after another implementation's round weighed half the block.
            impl.step()
            once = min(perf_timer(impl.step) for _ in range(3))
            # About 2 ms per block, between 2 and 200 calls.
            n = max(2, min(200, int(2e-3 / max(once, 1e-7))))

            def block(s=impl.step, n=n):
                for _ in range(n):
                    s()
                if sync is not None:
                    sync()

            blocks.append(Impl(impl.name, block, n))
        policy = Policy(warmup=1, min_rounds=rounds, max_rounds=rounds, budget_s=0.0)
        times = time_group(blocks, policy, rng)
        for b in blocks:
            rows.append({"algo": algo.name, "impl": b.name, "tensors": len(sizes),
                         "elements_each": sizes[0], "calls_per_block": b.calls,
                         **stats(times[b.name])})
    return rows


# --------------------------------------------------------------------------------------------
# Other processes: the machine is shared. Measure how much CPU the rest of it used while a group
# was timed, and optionally wait for a quiet moment before timing.


class CpuMonitor:
    """CPU time used by *other* processes (all CPUs' busy time from /proc/stat minus this
    process's), as a share of the machine's capacity over an interval. None where /proc/stat
    does not exist."""

    def __init__(self):
        import os

        self.os = os
        self.ncpu = os.cpu_count() or 1
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self.sample()

    def sample(self):
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(vals) - vals[3] - vals[4]) / self.tick  # minus idle and iowait
        t = self.os.times()
        return busy, t.user + t.system, time.monotonic()

    def others_share(self, since=None):
        """Share of the machine's CPU capacity other processes used since ``since`` (a sample;
        default: this monitor's last reset)."""
        a, b = since or self.start, self.sample()
        if a is None or b is None or b[2] <= a[2]:
            return None
        return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / ((b[2] - a[2]) * self.ncpu))

    def reset(self):
        self.start = self.sample()

    def wait_quiet(self, max_wait_s, threshold=0.1, window_s=0.5):
        """Waits (up to ``max_wait_s``) for a ``window_s`` in which other processes used less
        than ``threshold`` of the machine; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_wait_s:
            s = self.sample()
            time.sleep(window_s)
            share = self.others_share(s)
            if share is None or share < threshold:
                break
        return time.monotonic() - t0
