"""fusedopt's benchmark: every update rule against the memory wall and against its peers.

    python bench/run.py --device cpu --algos all --workloads all
    python bench/run.py --quick                       # seconds: tiny sizes, CI's smoke mode

Times the installed ``fusedopt`` (it builds nothing). For each workload and algorithm it
interleaves, in rounds of fresh random order on the same buffers: fusedopt, a NumPy in-place peer, torch.optim's
for-loop, foreach and fused implementations where torch is installed, and the ceiling (a plain
read-modify-write pass over the same buffers, compiled into fusedopt: ``_core.cpu.rmw``; on a GPU a
device-to-device copy of the same bytes). It prints a table per workload and writes
``<out>/<machine>-<device>.json``, ``.md`` and ``.png``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness's modules, when imported

import algorithms  # noqa: E402
import harness  # noqa: E402
import report  # noqa: E402
import workloads as W  # noqa: E402

# How long each CPU group is timed: (min rounds, max rounds, seconds of measured time). Chosen so a
# full `--workloads all --algos all` run takes 10-15 minutes on a 2-core machine; the slow peers
# (NumPy, torch's for-loop) dominate it.
CPU_POLICY = {
    "flat16M": (7, 60, 4.0),
    "flat64M": (5, 30, 8.0),
    "model200": (7, 60, 4.0),
    "small4096": (7, 60, 4.0),
    "incache256K": (21, 400, 1.5),
}
GPU_POLICY = (10, 200, 2.0)
QUICK_POLICY = (3, 3, 0.0)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--algos", default="all", help=f"comma list of {', '.join(algorithms.ALGOS)}")
    p.add_argument("--workloads", default="all", help=f"comma list of {', '.join(W.WORKLOADS)}")
    p.add_argument("--impls", default="all",
                   help=f"comma list of {', '.join(harness.IMPLS)} (fusedopt is always timed)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and 3 rounds: checks that everything runs, in seconds")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for fusedopt and torch (default: fusedopt's default)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every group's time budget (longer runs, tighter quartiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--machine", default=None, help="file-name stem (default: from the CPU model)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each group, wait up to S seconds for other processes to use "
                        "less than --noisy of the CPUs (a shared machine)")
    p.add_argument("--retries", type=int, default=0,
                   help="time a group again, up to this many times, when other processes used "
                        "more than --noisy of the CPUs meanwhile; the quietest attempt is kept")
    p.add_argument("--noisy", type=float, default=0.1,
                   help="share of the CPUs used by other processes that makes a group noisy")
    p.add_argument("--plain-state", action="store_true",
                   help="CPU: allocate the state buffers with np.full (all at the params' page "
                        "offset) instead of as fusedopt's optimizer classes do (4K-staggered)")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--no-overhead", action="store_true")
    return p.parse_args(argv)


def pick(arg, known, default):
    if arg == "all":
        return list(default)
    names = [a.strip() for a in arg.split(",") if a.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"unknown: {', '.join(bad)} (known: {', '.join(known)})")
    return names


def time_one(algo, sizes, rng, torch, impls, policy, timer, make_group, monitor, args, notes):
    """Times one group; on a shared machine, optionally waits for a quiet moment first and times
    again (up to ``--retries`` times) when other processes used more than ``--noisy`` of the CPUs
    meanwhile, keeping the quietest attempt. Returns its times and what the machine was doing."""
    best = None
    for attempt in range(1, args.retries + 2):
        waited = monitor.wait_quiet(args.wait_quiet, args.noisy) if args.wait_quiet else 0.0
        group = make_group(algo, sizes, rng, torch, impls)
        for n in group.notes:
            if n not in notes:
                notes.append(n)
        monitor.reset()
        times = harness.time_group(group.impls, policy, rng, timer)
        share = monitor.others_share()
        info = {"others_cpu": share, "attempts": attempt, "waited_s": round(waited, 1),
                "finite": harness.all_finite(group.buffers)}
        del group
        gc.collect()  # free this group's buffers before the next one allocates its own
        if best is None or (share is not None and share < best[1]["others_cpu"]):
            best = (times, info)
        best[1]["attempts"] = attempt
        if share is None or share <= args.noisy:
            break
    return best


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import fusedopt

    torch = harness.import_torch()
    algos = [algorithms.ALGOS[a] for a in pick(args.algos, algorithms.ALGOS, algorithms.ALGOS)]
    wls = pick(args.workloads, W.WORKLOADS, W.DEFAULT[args.device])
    impls = pick(args.impls, harness.IMPLS, harness.IMPLS)
    if "fusedopt" not in impls:
        impls.append("fusedopt")
    rng = np.random.default_rng(args.seed)
    notes = []
    if torch is not None:
        torch.optim.SGD([torch.zeros(1)])  # imports the rest of torch.optim (torch._dynamo)
    # The interpreter's objects so far (torch's are many) never become garbage: keep the
    # collections between groups from walking them again.
    gc.collect()
    gc.freeze()

    if args.threads:
        fusedopt.set_num_threads(args.threads)
    threads = {"fusedopt": fusedopt.get_num_threads(), "numpy": 1}
    if torch is None:
        notes.append("torch is not installed: the torch peers are skipped "
                      "(pip install -r bench/requirements.txt)")
    else:
        torch.set_num_threads(threads["fusedopt"])
        threads["torch"] = torch.get_num_threads()
    notes.append("NumPy's ufuncs run on one thread; fusedopt and torch on "
                 f"{threads['fusedopt']}")

    gpu = None
    if args.device == "cuda":
        import gpu as G

        why = G.available(torch)
        if why is not None:
            print(f"--device cuda: {why}; nothing to time", file=sys.stderr)
            return 0
        gpu = f"{torch.cuda.get_device_name()} (torch {torch.version.cuda})"
        timer = G.event_timer(torch)
        make_group = G.cuda_group
    else:
        timer = harness.perf_timer
        make_group = functools.partial(harness.cpu_group, plain_state=args.plain_state)

    machine = report.machine_info()
    stem = f"{args.machine or report.machine_slug(machine)}-{args.device}"
    started = time.time()
    print(f"fusedopt {fusedopt.__version__} [{fusedopt.build_info()['simd_active']}], "
          f"torch {torch.__version__ if torch else '-'}, threads {threads}, "
          f"{machine['cpu_model']}" + (f", {gpu}" if gpu else ""), flush=True)

    rows, workloads, groups = [], {}, {}
    run_start = None
    monitor = harness.CpuMonitor()
    load_start = report.loadavg()
    run_start = monitor.sample()
    for wl in wls:
        sizes = W.sizes(wl, quick=args.quick)
        workloads[wl] = {"description": W.describe(wl), "tensors": len(sizes),
                         "elements": int(sum(sizes)), "min_size": min(sizes),
                         "max_size": max(sizes)}
        if args.quick:
            lo, hi, budget = QUICK_POLICY
        else:
            lo, hi, budget = GPU_POLICY if gpu else CPU_POLICY.get(wl, (7, 60, 4.0))
        policy = harness.Policy(warmup=1 if args.quick else 2, min_rounds=lo, max_rounds=hi,
                                budget_s=budget * args.time_scale)
        print(f"\n== {wl}: {W.describe(wl)}  [{len(sizes)} tensors, {sum(sizes):,} elements]",
              flush=True)
        for algo in algos:
            t0 = time.time()
            times, info = time_one(algo, sizes, rng, torch, impls, policy, timer, make_group,
                                   monitor, args, notes)
            groups[f"{wl}/{algo.name}"] = info
            new = harness.group_rows(wl, algo, workloads[wl]["elements"], times)
            rows += new
            fo = next(r for r in new if r["impl"] == "fusedopt")
            share = info["others_cpu"]
            print(f"  {algo.name:18s} fusedopt {fo['median_s'] * 1e3:9.3f} ms "
                  f"{fo['gbps']:7.1f} GB/s "
                  + (f"{fo['pct_ceiling']:6.1f}% of ceiling" if fo["pct_ceiling"] else "")
                  + "".join(f"  x{r['fusedopt_speedup']:.2f} {r['impl']}" for r in new
                            if r["impl"] in harness.PEERS)
                  + f"  ({fo['rounds']} rounds, {time.time() - t0:.0f} s"
                  + (f", others used {100 * share:.0f}% of the CPUs" if share is not None else "")
                  + (f", {info['attempts']} attempts" if info["attempts"] > 1 else "") + ")",
                  flush=True)
        print("\n" + report.detail_table(rows, wl), flush=True)

    overhead_rows = []
    if not args.no_overhead:
        sizes = [W.OVERHEAD_SIZE] * (W.OVERHEAD_TENSORS if not args.quick else 20)
        if gpu:  # host cost per step: Python, checks and launches (Note in harness.overhead)
            overhead_rows = harness.overhead(algos, torch, rng, sizes, args.quick,
                                             make_group=G.cuda_group,
                                             sync=torch.cuda.synchronize)
        else:
            overhead_rows = harness.overhead(algos, torch, rng, sizes, args.quick)
        print("\n" + report.overhead_table(overhead_rows), flush=True)

    others_whole = monitor.others_share(run_start)
    agree = {}
    if not gpu:
        for algo in algos:
            agree[algo.name] = harness.agreement(algo, torch, rng, impls)

    bad = [k for k, g in groups.items() if not g["finite"]]
    if bad:
        notes.append(f"non-finite values after timing in: {', '.join(bad)}")
    result = {
        "schema": 1,
        "device": args.device,
        "quick": args.quick,
        "machine": machine,
        "gpu": gpu,
        "threads": threads,
        "versions": report.versions(torch),
        "commit": report.commit_info(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "config": {"algos": [a.name for a in algos], "workloads": wls, "impls": impls,
                   "seed": args.seed, "time_scale": args.time_scale,
                   "wait_quiet_s": args.wait_quiet, "retries": args.retries,
                   "noisy": args.noisy,
                   "state_alloc": "plain np.full" if args.plain_state
                   else "fusedopt.state_like (4K-staggered)",
                   "policy": {wl: CPU_POLICY.get(wl) for wl in wls} if not args.quick
                   else QUICK_POLICY},
        "algorithms": {a.name: {"hp": a.hp, "states": list(a.states), "buffers": a.nbuf,
                                "bytes_per_elem": a.bytes_per_elem, "torch": a.torch_cls,
                                "other_rule": list(a.other_rule), "note": a.note}
                       for a in algos},
        "workloads": workloads,
        "notes": notes,
        "results": rows,
        "overhead": overhead_rows,
        "agreement": agree,
        "agreement_steps": harness.AGREE_STEPS,
        "groups": groups,
        "machine_load": {"loadavg_start": load_start, "loadavg_end": report.loadavg(),
                         "others_cpu_whole_run": others_whole},
        "targets": [] if args.quick else report.targets(rows, overhead_rows, args.device),
    }
    chart_path = args.out / f"{stem}.png"
    if args.no_chart:
        chart_note = None
    else:
        chart_note = report.chart(result, chart_path)
        if chart_note:
            notes.append(chart_note)
    result["duration_s"] = time.time() - started
    json_path = args.out / f"{stem}.json"
    report.write_json(result, json_path)
    (args.out / f"{stem}.md").write_text(report.markdown(result) + "\n")
    print(f"\nwrote {json_path} and {stem}.md"
          + ("" if args.no_chart or chart_note else f" and {stem}.png"), flush=True)
    if result["targets"]:
        print("\n" + report.targets_table(result["targets"]))
    for n in notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
