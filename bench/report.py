"""What a run records: the machine, the tables, the targets of the speed contract, JSON and a chart.

Nothing here asserts: a missed target is reported as missed, with its number.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness import IMPLS

REPO = Path(__file__).resolve().parent.parent

# CPU flags worth a line in a report on vectorized streaming kernels.
FLAGS_OF_NOTE = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
                 "avx512vl", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "sve",
                 "asimd")


# --------------------------------------------------------------------------------------------
# Machine, versions, commit


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info():
    info = {"platform": platform.platform(), "arch": platform.machine(),
            "logical_cpus": os.cpu_count()}
    lscpu = {}
    for line in _run(["lscpu"]).splitlines():
        key, _, value = line.partition(":")
        lscpu[key.strip()] = value.strip()
    flags = lscpu.get("Flags", "")
    if not flags and Path("/proc/cpuinfo").exists():
        m = re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        flags = m.group(1) if m else ""
    flag_set = flags.split()
    info.update({
        "cpu_model": lscpu.get("Model name") or platform.processor() or "unknown",
        "cpu_family_model": "/".join(lscpu.get(k, "?") for k in ("CPU family", "Model",
                                                                  "Stepping")),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "sockets": lscpu.get("Socket(s)"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "caches": {k: lscpu[k] for k in ("L1d cache", "L2 cache", "L3 cache") if k in lscpu},
        "flags_of_note": [f for f in FLAGS_OF_NOTE if f in flag_set],
        "flags": flags,
    })
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return info


def machine_slug(info):
    """A file-name for the machine: its CPU model and core count, e.g. ``amd-epyc-2c``."""
    model = re.sub(r"\(.*?\)|@.*|cpu|processor|\d+-core", "", info["cpu_model"], flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "machine"
    return f"{slug}-{info['logical_cpus']}c"


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def versions(torch):
    import fusedopt

    core = Path(fusedopt._core.__file__)
    out = {"python": sys.version.split()[0], "numpy": np.__version__,
           "fusedopt": fusedopt.__version__, "fusedopt_build": fusedopt.build_info(),
           "fusedopt_core": {"path": str(core),
                             "sha256": hashlib.sha256(core.read_bytes()).hexdigest()[:16]},
           "torch": None, "matplotlib": None}
    if torch is not None:
        out["torch"] = torch.__version__
        try:
            out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except AttributeError:
            pass
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    return out


def commit_info():
    sha = _run(["git", "rev-parse", "HEAD"])
    return {"sha": sha or None,
            "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
            if sha else None}


# --------------------------------------------------------------------------------------------
# Targets (the speed contract), evaluated on a run's rows. Reported, never asserted.

TORCH_FUSED_CPU = {"adam", "adamw", "sgd", "sgd-momentum", "sgd-nesterov", "adagrad"}
TORCH_NO_FUSED = {"rmsprop", "rmsprop-centered", "rmsprop-momentum", "adadelta", "nadam",
                  "adamax", "radam"}


def _row(rows, workload, algo, impl):
    return next((r for r in rows if r["workload"] == workload and r["algo"] == algo
                 and r["impl"] == impl), None)


def targets(rows, overhead_rows, device):
    out = []

    def add(name, value, goal, met, unit):
        out.append({"target": name, "value": value, "goal": goal, "unit": unit,
                    "met": None if value is None else bool(met)})

    if device == "cuda":
        r = _row(rows, "flat256M", "adam", "fusedopt")
        add("adam flat256M % of copy bandwidth", r and r["pct_ceiling"], 92,
            r and r["pct_ceiling"] >= 92, "%")
        r = _row(rows, "small20k", "adam", "fusedopt")
        add("adam small20k speedup over torch fused", r and _speedup(rows, r, "torch-fused"),
            1.0, r and (_speedup(rows, r, "torch-fused") or 0) > 1.0, "x")
        o = next((o for o in overhead_rows if o["algo"] == "adam" and o["impl"] == "fusedopt"), None)
        t = next((o for o in overhead_rows if o["algo"] == "adam" and o["impl"] == "torch-fused"), None)
        if o is not None and t is not None:  # not a target of the issue: recorded beside them
            s = t["median_s"] / o["median_s"]
            add(f"adam step over {o['tensors']} tiny tensors, speedup over torch fused "
                "(host cost)", s, 1.0, s >= 1.0, "x")
        return out
    algos = sorted({r["algo"] for r in rows})
    for wl, goal in (("flat16M", 95), ("flat64M", 95), ("model200", 95), ("small4096", 85)):
        for a in algos:
            r = _row(rows, wl, a, "fusedopt")
            if r is None or r["pct_ceiling"] is None:
                continue
            add(f"{a} {wl} % of ceiling", r["pct_ceiling"], goal, r["pct_ceiling"] >= goal, "%")
            if wl not in ("flat16M", "flat64M"):
                continue
            if a in TORCH_FUSED_CPU:
                s = _speedup(rows, r, "torch-fused")
                if s is not None:
                    add(f"{a} {wl} speedup over torch fused", s, 1.0, s >= 1.0, "x")
            elif a in TORCH_NO_FUSED:
                s = _speedup(rows, r, "torch-loop")
                if s is not None:
                    add(f"{a} {wl} speedup over torch default (for-loop)", s, 5.0, s >= 5.0, "x")
    r = _row(rows, "incache256K", "adam", "fusedopt")
    if r is not None:
        s = _speedup(rows, r, "torch-fused")
        if s is not None:
            add("adam incache256K speedup over torch fused", s, 1.4, s >= 1.4, "x")
    for impl, what in (("fusedopt", "functional call"), ("fusedopt-class", "optimizer class step")):
        o = next((o for o in overhead_rows if o["algo"] == "adam" and o["impl"] == impl), None)
        if o is not None:
            us = o["median_s"] * 1e6
            add(f"adam {what} over {o['tensors']} tiny tensors (Python overhead)", us, 30,
                us <= 30, "us")
    return out


def _speedup(rows, fo_row, peer):
    """fusedopt's speedup over peer: the median of the per-round ratios (harness.group_rows)."""
    p = _row(rows, fo_row["workload"], fo_row["algo"], peer)
    return p["fusedopt_speedup"] if p else None


# --------------------------------------------------------------------------------------------
# Tables


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.3f}" if s < 0.1 else f"{s * 1e3:.1f}"


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def summary_table(rows, workload, groups=None):
    """One line per algorithm: fusedopt against the ceiling and fusedopt's speedup over each
    peer (peer time / fusedopt time); with ``groups``, the share of the CPUs that other
    processes used while the algorithm's group was timed."""
    lines = []
    for algo in dict.fromkeys(r["algo"] for r in rows if r["workload"] == workload):
        fo = _row(rows, workload, algo, "fusedopt")
        ce = _row(rows, workload, algo, "ceiling")
        if fo is None:
            continue
        sp = [_f(_speedup(rows, fo, p), ".2f") for p in IMPLS[2:]]
        line = [algo, fo["bytes_per_elem"], _f(ce and ce["gbps"], ".1f"),
                f"{_ms(fo['median_s'])} [{_ms(fo['p25_s'])}, {_ms(fo['p75_s'])}]",
                _f(fo["gbps"], ".1f"), _pct(fo), *sp]
        if groups is not None:
            share = groups.get(f"{workload}/{algo}", {}).get("others_cpu")
            line.append(_f(share and 100 * share, ".0f"))
        lines.append(line)
    header = ["algorithm", "B/elem", "ceiling GB/s", "fusedopt ms [p25, p75]", "GB/s",
              "% ceiling [p25, p75]", *(f"x {p}" for p in IMPLS[2:])]
    if groups is not None:
        header.append("others' CPU %")
    return _table(header, lines)


def _pct(r):
    if r["pct_ceiling"] is None:
        return "-"
    return f"{r['pct_ceiling']:.1f} [{r['pct_ceiling_p25']:.0f}, {r['pct_ceiling_p75']:.0f}]"


def detail_table(rows, workload):
    """One line per (algorithm, implementation)."""
    lines = []
    for r in rows:
        if r["workload"] != workload:
            continue
        lines.append([r["algo"], r["impl"], _ms(r["median_s"]), _ms(r["p25_s"]), _ms(r["p75_s"]),
                      _f(r["gbps"], ".1f"), _pct(r), _f(r["pct_ceiling_medians"], ".1f"),
                      _f(r["fusedopt_speedup"], ".2f"), _f(r["fusedopt_speedup_medians"], ".2f"),
                      r["rounds"]])
    header = ["algorithm", "implementation", "median ms", "p25 ms", "p75 ms", "GB/s",
              "% ceiling [p25, p75]", "% ceiling (ratio of medians)", "fusedopt speedup",
              "fusedopt speedup (ratio of medians)", "rounds"]
    return _table(header, lines)


def overhead_table(rows):
    lines = [[r["algo"], r["impl"], f"{r['median_s'] * 1e6:.1f}",
              f"{r['p25_s'] * 1e6:.1f}", f"{r['p75_s'] * 1e6:.1f}"] for r in rows]
    return _table(["algorithm", "implementation", "median us/step", "p25", "p75"], lines)


def targets_table(ts):
    lines = [[t["target"], _f(t["value"], ".2f") + " " + t["unit"],
              f"{'>=' if t['unit'] != 'us' else '<='} {t['goal']} {t['unit']}",
              {True: "met", False: "**missed**", None: "not measured"}[t["met"]]] for t in ts]
    return _table(["target", "measured", "goal", ""], lines)


def agreement_table(agree):
    peers = sorted({p for v in agree.values() for p in v}, key=IMPLS.index)
    lines = [[a] + [_f(v.get(p), ".1e") for p in peers] for a, v in agree.items()]
    return _table(["algorithm", *peers], lines)


def markdown(result):
    """The whole run as Markdown: machine, summary and detail tables, overhead, targets."""
    m, v = result["machine"], result["versions"]
    out = [f"# fusedopt benchmark: {result['device']} on {m['cpu_model']}", ""]
    out.append(f"- machine: {m['cpu_model']} ({m.get('cpu_family_model')}), "
               f"{m['logical_cpus']} logical CPUs, {m.get('memory_gib')} GiB, "
               f"hypervisor {m.get('hypervisor') or 'none'}; caches "
               + ", ".join(f"{k} {c}" for k, c in m.get("caches", {}).items()))
    if result.get("gpu"):
        out.append(f"- GPU: {result['gpu']}")
    out.append(f"- CPU flags of note: {' '.join(m['flags_of_note'])}")
    out.append(f"- threads: {result['threads']}")
    out.append(f"- versions: python {v['python']}, numpy {v['numpy']}, fusedopt {v['fusedopt']} "
               f"(SIMD path {v['fusedopt_build'].get('simd_active')}, "
               f"{v['fusedopt_build'].get('compiler')}), torch {v['torch'] or 'not installed'}")
    c = result["commit"]
    out.append(f"- commit: {c['sha']}{' (+ uncommitted changes)' if c['dirty'] else ''}; "
               f"{result['started']}, {result['duration_s']:.0f} s")
    ml = result.get("machine_load") or {}
    if ml.get("others_cpu_whole_run") is not None:
        out.append(f"- other processes used {100 * ml['others_cpu_whole_run']:.0f}% of the CPUs "
                   f"over the run (load average {ml['loadavg_start']} at the start, "
                   f"{ml['loadavg_end']} at the end); per group in the last column below")
    out.append("")
    for note in result["notes"]:
        out.append(f"- note: {note}")
    out.append("")
    if result["targets"]:
        out += ["## Targets", "", targets_table(result["targets"]), ""]
    for wl, desc in result["workloads"].items():
        out += [f"## {wl}: {desc['description']}", "",
                f"{desc['tensors']} tensors, {desc['elements']:,} elements.", "",
                summary_table(result["results"], wl, result["groups"]), "",
                "<details><summary>every implementation</summary>", "",
                detail_table(result["results"], wl), "",
                "</details>", ""]
    if result["overhead"]:
        o = result["overhead"][0]
        out += [f"## Python overhead: one step over {o['tensors']} tensors of "
                f"{o['elements_each']} elements", "", overhead_table(result["overhead"]), ""]
    if result["agreement"]:
        out += ["## Agreement with fusedopt (largest relative difference after "
                f"{result['agreement_steps']} steps)", "", agreement_table(result["agreement"]),
                ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Files


def write_json(result, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")


def chart(result, path):
    """GB/s of every implementation per algorithm, one panel per workload, with the ceiling as a
    black bar across each group. Returns None, or why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    rows = result["results"]
    workloads = list(result["workloads"])
    impls = [i for i in IMPLS[1:] if any(r["impl"] == i for r in rows)]
    colors = dict(zip(IMPLS[1:], ("#d62728", "#7f7f7f", "#9ecae1", "#4292c6", "#08519c")))
    fig, axes = plt.subplots(len(workloads), 1, figsize=(14, 3.2 * len(workloads)),
                             squeeze=False)
    for ax, wl in zip(axes[:, 0], workloads):
        algos = list(dict.fromkeys(r["algo"] for r in rows if r["workload"] == wl))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for i, a in enumerate(algos):
                r = _row(rows, wl, a, impl)
                if r is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r["gbps"])
            ax.bar(xs, ys, width, label=impl, color=colors[impl])
        for i, a in enumerate(algos):
            r = _row(rows, wl, a, "ceiling")
            if r is not None:
                ax.hlines(r["gbps"], i - 0.45, i + 0.45, colors="black", linewidth=2,
                          label="ceiling" if i == 0 else None)
        ax.set_xticks(range(len(algos)))
        ax.set_xticklabels(algos, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("GB/s (minimum bytes)")
        ax.set_title(f"{wl}: {result['workloads'][wl]['description']}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=len(impls) + 1, fontsize=8, loc="upper right")
    threads = ", ".join(f"{k} {v}" for k, v in result["threads"].items())
    fig.suptitle(f"fusedopt vs peers and the memory ceiling — {result['device']}, "
                 f"{result['machine']['cpu_model']}, threads: {threads}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
