"""A sharded AdamW step in 2 processes on this machine (gloo, one thread each):
fusedopt.torch.ZeroRedundancyOptimizer against torch.distributed.optim.ZeroRedundancyOptimizer
over torch.optim.AdamW(fused=True), and against the unsharded optimizers, round by round; with the
bytes each rank sends and receives per step (computed from the partitions), the time of the
communication alone, and each rank's optimizer state.

Contenders, each on its own params (same sizes and values; every process holds the same fixed
grads, as after DDP's averaging, uniform in [1e-4, 1e-3]; AdamW with lr 1e-3, weight decay 1e-2):

- ``ours-view`` / ``ours``: ``fusedopt.torch.ZeroRedundancyOptimizer(params, fusedopt.torch.AdamW,
  parameters_as_bucket_view=True / False)``: each rank steps an element-balanced contiguous slice
  of each (device, dtype) bucket in one fused call, then the params are gathered: on gloo by W
  broadcasts per bucket, rank q's of its slice (the bytes of an all-gather; gloo's all-gather is
  slower), on NCCL by one all-gather (and one all-reduce of W + 1 float64s, Note [A sharded step]
  in ``python/fusedopt/torch/zero.py``).
- ``torch-zero`` / ``torch-zero-view``: ``torch.distributed.optim.ZeroRedundancyOptimizer(params,
  torch.optim.AdamW, parameters_as_bucket_view=False / True, fused=True)``: whole params per rank,
  assigned greedily (largest first, to the rank with the fewest elements so far), then every rank
  broadcasts its params (one broadcast per param; with bucket views one per rank).
- ``fusedopt`` / ``torch-fused``: ``fusedopt.torch.AdamW`` / ``torch.optim.AdamW(fused=True)`` over
  all the params on each rank, no communication: the unsharded baselines (both ranks step at the
  same time, so they share the memory bandwidth as in a data-parallel run).
- ``comm-*``: the communication of a sharded step alone: ``comm-ours`` is the all-reduce of W + 1
  float64s and the W broadcasts per bucket, on buffers of our buckets' sizes (what the class does
  on gloo); ``comm-ours-allgather`` moves the same slices of the same buffer by one all-gather
  (what it does on NCCL; here a diagnostic of gloo's all-gather); ``comm-torch-zero*`` calls
  torch's class' own broadcasts (``_sync_params``, private) without a step.

Timing: warm-up steps first; then rounds, each running every contender for ``--steps`` steps in a
rotated order. Before every step both ranks meet at a barrier; the time is rank 0's wall clock of
``opt.step()``. A contender's time in a round is the median of its steps there; reported are the
median and quartiles over the rounds, and the ratios (time / torch ZeRO's, time / unsharded
fusedopt's) taken round by round, then their median and quartiles. The garbage collector is off
while the rounds run.

    python bench/zero.py --out bench/results --machine "AMD EPYC 2-vCPU KVM"   # ~2-3 min here
    python bench/zero.py --smoke                                               # seconds
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from workloads import describe as workload_description  # noqa: E402
from workloads import WORKLOADS  # noqa: E402
from workloads import sizes as workload_sizes  # noqa: E402

WORLD = 2
HYPER = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

# key -> label, in table order
STEPS = {
    "ours-view": "fusedopt ZeRO, bucket view",
    "ours": "fusedopt ZeRO",
    "torch-zero": "torch ZeRO (AdamW fused)",
    "torch-zero-view": "torch ZeRO (AdamW fused), bucket view",
    "fusedopt": "fusedopt AdamW, unsharded",
    "torch-fused": "torch AdamW(fused=True), unsharded",
}
COMMS = {
    "comm-ours": "all-reduce + W broadcasts alone (ours on gloo)",
    "comm-ours-allgather": "our slices by one all-gather instead (ours on NCCL; diagnostic)",
    "comm-torch-zero": "torch ZeRO's broadcasts alone",
    "comm-torch-zero-view": "torch ZeRO's broadcasts alone, bucket view",
}
COMM_OF = {"comm-ours": ("ours-view", "ours"), "comm-ours-allgather": ("ours-view", "ours"),
           "comm-torch-zero": ("torch-zero",),
           "comm-torch-zero-view": ("torch-zero-view",)}
BASES = ("torch-zero", "torch-zero-view", "fusedopt")  # the ratios' denominators

# as zero.py resolves it: torch 2.13 names it all_gather_single, older releases only *_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# --------------------------------------------------------------------------------------------
# The partitions and the bytes they move (computed, not measured)


def our_partition(sizes, world, elem=4):
    """fusedopt's partition of one fp32 bucket (Note [A sharded step]): N elements padded to
    S * W, rank r owns [r S, (r + 1) S). Per step each rank sends its slice to the W - 1 others
    and receives theirs (W broadcasts, or a ring all-gather: (W - 1) S elements each way), plus
    one all-reduce of W + 1 float64s (whether a rank failed its checks; its payload counted once
    each way)."""
    n = sum(sizes)
    s = -(-n // world)
    owned = [max(0, min((r + 1) * s, n) - r * s) for r in range(world)]
    tiny = (world + 1) * 8
    return {
        "elements": n, "slice": s, "padding": s * world - n, "owned_elements": owned,
        "sent_bytes": [(world - 1) * s * elem + tiny] * world,
        "received_bytes": [(world - 1) * s * elem + tiny] * world,
        "collectives": {"broadcast": world, "all_reduce": 1},  # on gloo (NCCL: 1 all_gather)
    }


def torch_partition(sizes, world):
    """torch's ZeroRedundancyOptimizer's partition of one param group (its
    ``_partition_parameters``): params sorted by size, largest first, each to the rank with the
    fewest elements so far (the lowest rank on a tie). Returns each rank's param indices."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True)  # stable, as torch's
    load, ranks = [0] * world, [[] for _ in range(world)]
    for i in order:
        r = load.index(min(load))
        ranks[r].append(i)
        load[r] += sizes[i]
    return ranks


def torch_bytes(sizes, world, view, elem=4):
    """Per step, every rank broadcasts its params to the others (gloo: the root sends its data to
    each other rank): rank r sends (W - 1) B_r and receives the sum of the others' B_q. One
    broadcast per param; with bucket views one per rank (a rank without params broadcasts a
    1-element dummy bucket)."""
    ranks = torch_partition(sizes, world)
    owned = [sum(sizes[i] for i in rk) for rk in ranks]
    if view:
        owned_b = [(o if o else 1) * elem for o in owned]
        count = world
    else:
        owned_b = [o * elem for o in owned]
        count = len(sizes)
    return {
        "elements": sum(sizes), "owned_elements": owned, "params_per_rank": [len(r) for r in ranks],
        "sent_bytes": [(world - 1) * b for b in owned_b],
        "received_bytes": [sum(owned_b) - b for b in owned_b],
        "collectives": {"broadcast": count},
    }


def extra_bytes(key, sizes, world, elem=4):
    """Memory a rank holds besides the params, their grads and the optimizer state: our flat
    bucket (S x W elements) beside the params without bucket views, its padding with them (the
    params live in it); torch's bucket views replace the params' memory (a rank without params
    holds a 1-element dummy bucket)."""
    if key == "ours":
        return [our_partition(sizes, world)["slice"] * world * elem] * world
    if key == "ours-view":
        return [our_partition(sizes, world)["padding"] * elem] * world
    if key == "torch-zero-view":
        return [0 if o else elem for o in torch_bytes(sizes, world, True)["owned_elements"]]
    return [0] * world


def comm_model(key, sizes, world):
    if key.startswith("ours"):
        return our_partition(sizes, world)
    if key.startswith("torch-zero"):
        return torch_bytes(sizes, world, key.endswith("view"))
    n = sum(sizes)
    return {"elements": n, "owned_elements": [n] * world, "sent_bytes": [0] * world,
            "received_bytes": [0] * world, "collectives": {}}


# --------------------------------------------------------------------------------------------
# The processes


def _make(key, params):
    if key == "ours-view":
        return ft.ZeroRedundancyOptimizer(params, ft.AdamW, parameters_as_bucket_view=True, **HYPER)
    if key == "ours":
        return ft.ZeroRedundancyOptimizer(params, ft.AdamW, parameters_as_bucket_view=False, **HYPER)
    if key.startswith("torch-zero"):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, torch.optim.AdamW,
                                       parameters_as_bucket_view=key.endswith("view"), fused=True,
                                       **HYPER)
    if key == "fusedopt":
        return ft.AdamW(params, **HYPER)
    if key == "torch-fused":
        return torch.optim.AdamW(params, fused=True, **HYPER)
    raise ValueError(key)


def _state_bytes(opt):
    """Bytes of the tensors in this rank's optimizer state (the local optimizer of a sharded one)."""
    state = opt.optim.state if hasattr(opt, "optim") else opt.state
    seen, total = set(), 0
    for entry in state.values():
        for v in entry.values():
            if isinstance(v, torch.Tensor) and v.numel():
                key = (v.data_ptr(), v.numel())
                if key not in seen:
                    seen.add(key)
                    total += v.numel() * v.element_size()
    return total


def _gathered(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _busy_s():
    """All CPUs' busy seconds so far (/proc/stat: user, nice, system and steal; not irq and
    softirq, where the kernel carries gloo's loopback TCP without charging it to our processes),
    or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
        return (vals[0] + vals[1] + vals[2] + vals[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def _own_cpu_s():
    t = os.times()
    return t.user + t.system


def run_workload(rank, world, name, cfg):
    sizes = workload_sizes(name, cfg["smoke"])
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(n, generator=gen) for n in sizes]
    grads = [torch.rand(n, generator=gen) * 9e-4 + 1e-4 for n in sizes]  # the same on every rank
    grad_sum = sum(float(g.double().sum()) for g in grads)
    notes, built = [], {}
    for key in cfg["contenders"]:
        params = [torch.nn.Parameter(b.clone()) for b in base]
        for p, g in zip(params, grads):
            p.grad = g  # shared by every contender: AdamW only reads it
        err = None
        try:
            opt = _make(key, params)
        except Exception as e:  # noqa: BLE001  (reported, the others still run)
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        errs = _gathered(err)
        if any(errs):
            notes.append(f"{STEPS[key]}: unavailable ({'; '.join(e for e in errs if e)})")
            continue
        built[key] = (opt, params)
    del base

    fns = {k: opt.step for k, (opt, _) in built.items()}
    if cfg["comm"]:
        if any(k in built for k in COMM_OF["comm-ours"]):
            m = our_partition(sizes, world)
            flat = torch.zeros(m["slice"] * world)
            mine = flat[rank * m["slice"]:(rank + 1) * m["slice"]]
            flag = torch.zeros(world + 1, dtype=torch.float64)

            slices = [flat[q * m["slice"]:(q + 1) * m["slice"]] for q in range(world)]

            def comm_ours(slices=slices, flag=flag):
                dist.all_reduce(flag)
                for q, x in enumerate(slices):
                    dist.broadcast(x, src=q)

            fns["comm-ours"] = comm_ours

            def comm_ours_allgather(flat=flat, mine=mine, flag=flag):
                dist.all_reduce(flag)
                _all_gather(flat, mine)

            fns["comm-ours-allgather"] = comm_ours_allgather
        for key in ("comm-torch-zero", "comm-torch-zero-view"):
            src = COMM_OF[key][0]
            if src in built and hasattr(built[src][0], "_sync_params"):
                fns[key] = built[src][0]._sync_params

    names = list(fns)
    for k in names:  # warm-up: state allocated, pages touched
        for _ in range(cfg["warmup"]):
            dist.barrier()
            fns[k]()

    per_round = {k: [] for k in names}
    raw = {k: [] for k in names}
    busy0, own0, wall0 = _busy_s(), _own_cpu_s(), time.monotonic()
    gc.disable()
    try:
        for r in range(cfg["rounds"]):
            order = names[r % len(names):] + names[: r % len(names)]
            for k in order:
                fn, ts = fns[k], []
                for _ in range(cfg["steps"]):
                    dist.barrier()
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                raw[k].append(ts)
                per_round[k].append(statistics.median(ts))
    finally:
        gc.enable()
    busy1, own1, wall1 = _busy_s(), _own_cpu_s(), time.monotonic()
    own = _gathered(own1 - own0)
    others = None
    if busy0 is not None and busy1 is not None and wall1 - wall0 > 1.0:  # 10 ms ticks
        others = max(0.0, (busy1 - busy0 - sum(own)) / ((wall1 - wall0) * (os.cpu_count() or 1)))

    # Agreement: every stepping contender made the same number of steps from the same start.
    agreement = {}
    if "fusedopt" in built:
        ref = built["fusedopt"][1]
        for k, (_, params) in built.items():
            err = 0.0
            for p, q in zip(params, ref):
                scale = max(float(q.detach().abs().max()), 1e-30)
                err = max(err, float((p.detach() - q.detach()).abs().max()) / scale)
            agreement[k] = err
    grads_unchanged = sum(float(g.double().sum()) for g in grads) == grad_sum

    state = {k: _state_bytes(opt) for k, (opt, _) in built.items()}
    checks = {}
    if "torch-zero" in built and hasattr(built["torch-zero"][0], "_partition_parameters"):
        index = {id(p): i for i, p in enumerate(built["torch-zero"][1])}
        theirs = [sorted(index[id(p)] for g in groups for p in g["params"])
                  for groups in built["torch-zero"][0]._partition_parameters()]
        checks["torch_partition_matches"] = theirs == [sorted(r) for r in torch_partition(sizes, world)]
    if "ours-view" in built and hasattr(built["ours-view"][0], "_buckets"):
        b = built["ours-view"][0]._buckets
        checks["our_partition_matches"] = (
            len(b) == 1 and b[0].size == our_partition(sizes, world)["slice"])
    mine = {"per_round": per_round, "state": state, "agreement": agreement,
            "grads_unchanged": grads_unchanged}
    everyone = _gathered(mine)
    out = {
        "workload": name, "description": workload_description(name), "smoke": cfg["smoke"],
        "tensors": len(sizes), "elements": sum(sizes), "notes": notes,
        "others_cpu_share": others, "checks": checks, "rows": {},
    }
    for k in names:
        pr = per_round[k]
        row = {
            "label": STEPS.get(k) or COMMS[k],
            "per_round_s": pr, "per_round_s_rank1": everyone[1]["per_round"][k] if world > 1 else None,
            "steps_s": raw[k],
            "median_s": float(np.median(pr)), "p25_s": float(np.percentile(pr, 25)),
            "p75_s": float(np.percentile(pr, 75)), "ratios": {},
        }
        for base in BASES:
            if base in per_round and base != k:
                row["ratios"][base] = _quartiles(np.divide(pr, per_round[base]))
        if k in STEPS:
            row["state_bytes"] = [e["state"][k] for e in everyone]
            row["agreement"] = [e["agreement"].get(k) for e in everyone]
            row["grads_unchanged"] = all(e["grads_unchanged"] for e in everyone)
            row["comm"] = comm_model(k, sizes, world)
            row["extra_bytes"] = extra_bytes(k, sizes, world)
        else:
            steps_of = [s for s in COMM_OF[k] if s in per_round]
            row["share_of_step"] = {s: _quartiles(np.divide(pr, per_round[s])) for s in steps_of}
        out["rows"][k] = row
    return out


def _quartiles(x):
    x = np.asarray(x, dtype=np.float64)
    return [float(np.median(x)), float(np.percentile(x, 25)), float(np.percentile(x, 75))]


def worker(rank, world, init, out, cfg):
    torch.set_num_threads(1)
    fusedopt.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=cfg["timeout"]))
    try:
        results = [run_workload(rank, world, w, cfg) for w in cfg["workloads"]]
        threads = {"torch": torch.get_num_threads(), "fusedopt": fusedopt.get_num_threads()}
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out, "result.json").write_text(json.dumps({"threads": threads, "workloads": results}))


def spawn(cfg, timeout):
    """Runs ``worker`` in WORLD processes; returns rank 0's results, or exits after killing them
    when they take over ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="fusedopt-zero-") as tmp:
        ctx = torch.multiprocessing.start_processes(
            worker, args=(WORLD, os.path.join(tmp, "init"), tmp, cfg), nprocs=WORLD, join=False,
            start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                sys.exit(f"bench/zero.py: the {WORLD} processes did not end within {timeout:.0f} s")
        return json.loads(Path(tmp, "result.json").read_text())


# --------------------------------------------------------------------------------------------
# Report


def machine(name):
    from report import machine_info  # bench/report.py: lscpu's model name, or the platform's

    model = machine_info()["cpu_model"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"name": name, "cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "fusedopt": fusedopt.__version__, "simd": fusedopt.build_info().get("simd_active"),
            "commit": commit, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _t(s):
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def _b(n):
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _r(q):
    return f"{q[0]:.2f} [{q[1]:.2f}, {q[2]:.2f}]" if q else "-"


def tables(result):
    lines = [
        "Step time (rank 0, median [p25, p75] over the rounds of each round's median step) and "
        "time / another contender's, taken round by round (median [p25, p75]):",
        "",
        "| workload | contender | step time | / torch ZeRO | / torch ZeRO, view | / fusedopt unsharded |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for w in result["workloads"]:
        for k, row in w["rows"].items():
            if k not in STEPS:
                continue
            rt = row["ratios"]
            lines.append(
                f"| {w['workload']} | {row['label']} | {_t(row['median_s'])} "
                f"[{_t(row['p25_s'])}, {_t(row['p75_s'])}] | {_r(rt.get('torch-zero'))} | "
                f"{_r(rt.get('torch-zero-view'))} | {_r(rt.get('fusedopt'))} |")
    lines += [
        "",
        "Per rank and step: bytes sent / received (computed from the partition; rank 0, rank 1), "
        "collectives, elements each rank updates, optimizer state (tensors in the rank's state), other "
        "buffers the class keeps (computed):",
        "",
        "| workload | contender | sent r0 / r1 | received r0 / r1 | collectives | elements r0 / r1 "
        "| state r0 / r1 | other buffers r0 / r1 |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for w in result["workloads"]:
        for k, row in w["rows"].items():
            if k not in STEPS:
                continue
            c = row["comm"]
            coll = ", ".join(f"{n} x {v}" for v, n in c["collectives"].items()) or "none"
            lines.append(
                f"| {w['workload']} | {row['label']} | {' / '.join(_b(x) for x in c['sent_bytes'])} | "
                f"{' / '.join(_b(x) for x in c['received_bytes'])} | {coll} | "
                f"{' / '.join(f'{x:,}' for x in c['owned_elements'])} | "
                f"{' / '.join(_b(x) for x in row['state_bytes'])} | "
                f"{' / '.join(_b(x) for x in row['extra_bytes'])} |")
    if not any(k not in STEPS for w in result["workloads"] for k in w["rows"]):
        return "\n".join(lines)
    lines += [
        "",
        "Communication alone (rank 0, same buffer sizes, no step) and its share of the step, "
        "round by round:",
        "",
        "| workload | communication | time | share of the step |",
        "|---|---|---:|---|",
    ]
    for w in result["workloads"]:
        for k, row in w["rows"].items():
            if k in STEPS:
                continue
            share = "; ".join(f"{_r(q)} of {STEPS[s]}" for s, q in row["share_of_step"].items())
            lines.append(f"| {w['workload']} | {row['label']} | {_t(row['median_s'])} "
                         f"[{_t(row['p25_s'])}, {_t(row['p75_s'])}] | {share} |")
    return "\n".join(lines)


def notes(result, cfg):
    out = []
    for w in result["workloads"]:
        share = w["others_cpu_share"]
        out.append(f"- {w['workload']}: {w['description']}"
                   f"{' (shrunk: --smoke)' if w['smoke'] else ''}; {w['tensors']} tensors, "
                   f"{w['elements']:,} elements; other processes used "
                   f"{'?' if share is None else f'{100 * share:.0f}%'} of the CPUs during the "
                   "rounds.")
        for n in w["notes"]:
            out.append(f"  - {n}")
        agree = {k: row["agreement"][0] for k, row in w["rows"].items()
                 if k in STEPS and row["agreement"][0] is not None}
        if agree:
            out.append("  - final params against unsharded fusedopt (max |x - ref| / max |ref|, "
                       "rank 0): " + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()))
        bad = [k for k, row in w["rows"].items() if k in STEPS and not row["grads_unchanged"]]
        if bad:
            out.append(f"  - the grads changed during the run: {', '.join(bad)}")
        for c, ok in w["checks"].items():
            if not ok:
                out.append(f"  - check failed: {c}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="model200,flat16M",
                    help="names from bench/workloads.py (default: model200,flat16M)")
    ap.add_argument("--contenders", default=",".join(STEPS), help=f"of {','.join(STEPS)}")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per contender and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    ap.add_argument("--no-comm", action="store_true", help="skip the communication-alone rows")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (workloads.py's quick), 1 round of 2 steps: seconds")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds for the processes, imports included (default 600; 120 with --smoke)")
    ap.add_argument("--machine", default="", help="the machine's description, for the report")
    ap.add_argument("--out", help="write DIR/zero.md and DIR/zero.json")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.steps, args.warmup = 1, 2, 1
    timeout = args.timeout or (120.0 if args.smoke else 600.0)
    cfg = {"workloads": args.workloads.split(","), "contenders": args.contenders.split(","),
           "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
           "comm": not args.no_comm, "smoke": args.smoke, "timeout": timeout}
    for w in cfg["workloads"]:
        if w not in WORKLOADS:  # fail here, not in the processes
            ap.error(f"unknown workload {w!r} (of {', '.join(WORKLOADS)})")
    for k in cfg["contenders"]:
        if k not in STEPS:
            ap.error(f"unknown contender {k!r} (of {', '.join(STEPS)})")
    info = machine(args.machine)
    t0 = time.monotonic()
    result = spawn(cfg, timeout)
    wall = time.monotonic() - t0
    head = (f"{WORLD} processes x 1 thread (torch {result['threads']['torch']}, fusedopt "
            f"{result['threads']['fusedopt']}), gloo; {args.rounds} rounds x {args.steps} steps "
            f"after {args.warmup} warm-up steps; {wall:.0f} s")
    print(f"# {info['name'] or info['cpu']}: {info['cpu']}, {info['cpus']} CPUs, torch "
          f"{info['torch']}, fusedopt {info['fusedopt']} @ {info['commit'] or '?'}")
    print(f"# {head}")
    body = tables(result)
    note = notes(result, cfg)
    print(body)
    print()
    print(note)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md = [
            "# ZeRO: a sharded AdamW step in 2 processes",
            "",
            f"Machine: {info['name'] or '(not given)'} (`lscpu`: \"{info['cpu']}\", {info['cpus']} "
            f"CPUs); {info['date']}; torch {info['torch']}; fusedopt {info['fusedopt']} at commit "
            f"`{info['commit'] or '?'}` (SIMD path {info['simd']}); Python {info['python']}.",
            "",
            "Command:",
            "",
            "    python bench/zero.py " + shlex.join(sys.argv[1:]),
            "",
            f"{head}. Each process: `torch.set_num_threads(1)`, `fusedopt.set_num_threads(1)`. "
            "fp32 params, AdamW (lr 1e-3, weight decay 1e-2), fixed grads the same on both "
            "ranks (as after DDP's averaging). A barrier before every step; the time is rank 0's "
            "`opt.step()`. See the docstring of `bench/zero.py` for the contenders.",
            "",
            body,
            "",
            "Notes:",
            "",
            note,
            "- Bytes are computed, not measured. Ours: per (device, dtype) bucket, each rank's "
            "slice of S = ceil(N / W) elements to every other rank (on gloo W broadcasts, on NCCL "
            "one all-gather: (W - 1) S elements sent and received by each rank), plus one "
            "all-reduce of W + 1 float64s. torch's: whole params "
            "per rank, greedy by size (largest first, to the least loaded rank); each rank "
            "broadcasts what it owns: (W - 1) x its bytes sent, the others' bytes received (one "
            "broadcast per param, or per rank with bucket views). With W = 2, (W - 1) S = S.",
            "- The state counts the tensors of the rank's (local) optimizer state: exp_avg, "
            "exp_avg_sq and the step counters. Ours without bucket views also keeps one flat "
            "buffer of the whole bucket per rank (S x W elements) besides the params; with bucket "
            "views the params live in that buffer.",
            "- \"our slices by one all-gather instead\" moves the same bytes as our broadcasts "
            "(rank q broadcasts flat[q S : (q + 1) S] into every rank's flat buffer): what the "
            "class does on NCCL; on gloo a diagnostic of its all-gather against its broadcast.",
        ]
        (out / "zero.md").write_text("\n".join(md) + "\n")
        (out / "zero.json").write_text(json.dumps(
            {"machine": info, "args": vars(args), "cfg": cfg, "wall_s": wall, **result},
            indent=1))


if __name__ == "__main__":
    main()
