"""Adam with 16-bit storage on the CPU (Note [Staged storage] in csrc/storage.h): fusedopt.Adam on
NumPy arrays (bfloat16 as ml_dtypes arrays) against the memory wall of the same bytes, torch.optim
and DeepSpeed's CPU Adam, round by round.

Configurations (params / grads / states), with the bytes an element moves in one step:
  ``fp32``          float32 everywhere                                            28 B
  ``bf16-p``        bfloat16 params and grads, float32 states                      22 B
  ``bf16``          bfloat16 everywhere                                            14 B
  ``fp32-p-bf16-s`` float32 params and grads, bfloat16 states                      20 B
  ``offload``       float32 params and states, bfloat16 grads (the step of
                    ZeRO-Offload: master weights and state in host memory)        26 B
  ``fp16-p``        float16 params and grads, float32 states                       22 B
  ``offload-copy``  offload, and the bfloat16 params written in the same pass
                    (``param_copies``, what goes back to the GPU)                 28 B
  ``bf16-master``   bfloat16 params and grads, float32 master weights and states
                    (``master_weights=True``)                                     28 B
  ``bf16-kahan``    bf16-p with a bfloat16 Kahan compensation per param, read and
                    written (``kahan_summation=True``)                            26 B
The ceiling is ``_core.cpu.rmw`` over the same arrays: params and both states read and written,
grads read, trivial math, through the same driver with the buffers' own dtypes (no staging); for
the last three, whose copy or compensation it cannot move, it is the ceiling of the arrays it
can (26 B; bf16-kahan: bf16-p's 22 B), and their % of it is their GB/s over its GB/s.

Peers, each over its own copies of the same values:
  ``torch fused``     ``torch.optim.Adam(fused=True)`` where torch takes the dtypes (fp32, bf16:
                      torch keeps a param's state in its dtype);
  ``torch cast``      torch's best composition where it does not: the grads cast to float32
                      into float32 params (a master copy for 16-bit params) and the fused step,
                      the params cast back (bf16-p, fp16-p, offload; fp32-p-bf16-s casts the
                      states up and back down instead);
  ``DeepSpeed``       ``deepspeed.ops.adam.DeepSpeedCPUAdam`` (its JIT-built AVX2 op) on the
                      configurations it takes;
  ``optimi``          ``optimi.Adam(kahan_sum=True, foreach=True)`` (torch-optimi, the library
                      whose bfloat16 Kahan summation the issue names) on bf16-kahan, with
                      torch's betas and eps.
Ratios are time / fusedopt's time in the same round; GB/s counts the bytes above, whatever an
implementation moves.

    python bench/low_precision.py --rounds 7 --json bench/results/<machine>-low-precision.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fusedopt  # noqa: E402
from fusedopt import _core  # noqa: E402
from report import machine_info  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)

# name: (param, grad, state dtype), bytes per element
CONFIGS = {
    "fp32": ((F32, F32, F32), 28),
    "bf16-p": ((BF16, BF16, F32), 22),
    "bf16": ((BF16, BF16, BF16), 14),
    "fp32-p-bf16-s": ((F32, F32, BF16), 20),
    "offload": ((F32, BF16, F32), 26),
    "fp16-p": ((F16, F16, F32), 22),
    "offload-copy": ((F32, BF16, F32), 28),
    "bf16-master": ((BF16, BF16, F32), 28),
    "bf16-kahan": ((BF16, BF16, F32), 26),
}
CEILING_BYTES = {"offload-copy": 26, "bf16-master": 26, "bf16-kahan": 22}
LR = 1e-3


def _values(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def _torch_dtype(torch, d):
    return {F32: torch.float32, BF16: torch.bfloat16, F16: torch.float16}[d]


def implementations(config, n, torch, deepspeed_adam):
    (pd, gd, sd), _ = CONFIGS[config]
    p32, g32 = _values(n, 0)
    out = {}

    cp, cg = p32.astype(F32 if config == "bf16-master" else pd), g32.astype(gd)
    cm, cv = np.zeros(n, sd), np.zeros(n, sd)
    out["ceiling"] = lambda: _core.cpu.rmw([cp], [cg], [[cm], [cv]])

    p = p32.astype(pd)
    g = g32.astype(gd)
    opt = fusedopt.Adam([p], lr=LR, state_dtype=None if sd == F32 else "bfloat16",
                        master_weights=config == "bf16-master",
                        kahan_summation=config == "bf16-kahan")
    if config == "offload-copy":
        # state where fusedopt.state_like puts it (Note [State at its own 4 KiB offset])
        m, v = fusedopt.state_like(p, slot=0), fusedopt.state_like(p, slot=1)
        copy = fusedopt.state_like(p, slot=2, dtype=BF16)
        t = [0]

        def offload_step():
            t[0] += 1
            fusedopt.functional.adam([p], [g], [m], [v], step=t[0], lr=LR, param_copies=[copy])

        out["fusedopt"] = offload_step
    else:
        out["fusedopt"] = lambda: opt.step([g])

    if torch is None:
        return out
    tp, tg, ts = (_torch_dtype(torch, d) for d in (pd, gd, sd))
    if pd == gd == sd:  # torch fused takes it: state in the param's dtype
        param = torch.nn.Parameter(torch.from_numpy(p32).to(tp))
        param.grad = torch.from_numpy(g32).to(tg)
        out["torch fused"] = torch.optim.Adam([param], lr=LR, fused=True).step
    elif sd == F32:  # cast the grads (and a 16-bit param's master) to float32, step, cast back
        low = torch.from_numpy(p32).to(tp)
        grad = torch.from_numpy(g32).to(tg)
        master = torch.nn.Parameter(low.float())
        master.grad = torch.empty_like(master)
        topt = torch.optim.Adam([master], lr=LR, fused=True)

        back = torch.empty(n, dtype=torch.bfloat16) if config == "offload-copy" else None

        def cast_step():
            master.grad.copy_(grad)
            topt.step()
            if tp != torch.float32:
                low.copy_(master.detach())
            if back is not None:
                back.copy_(master.detach())

        out["torch cast"] = cast_step
    else:  # float32 params, bfloat16 state: the state cast up, the fused step, cast back
        param = torch.nn.Parameter(torch.from_numpy(p32.copy()))
        param.grad = torch.from_numpy(g32.copy())
        topt = torch.optim.Adam([param], lr=LR, fused=True)
        topt.step()  # state allocated (float32)
        st = topt.state[param]
        low_m, low_v = st["exp_avg"].to(ts), st["exp_avg_sq"].to(ts)

        def cast_state_step():
            st["exp_avg"].copy_(low_m)
            st["exp_avg_sq"].copy_(low_v)
            topt.step()
            low_m.copy_(st["exp_avg"])
            low_v.copy_(st["exp_avg_sq"])

        out["torch cast"] = cast_state_step
    if config == "bf16-kahan":
        try:
            import optimi
        except ImportError:
            print("# torch-optimi is not installed: no optimi row")
        else:
            kparam = torch.nn.Parameter(torch.from_numpy(p32).to(tp))
            kparam.grad = torch.from_numpy(g32).to(tg)
            kopt = optimi.Adam([kparam], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                               kahan_sum=True, foreach=True)
            out["optimi"] = kopt.step
    if deepspeed_adam is not None and gd == pd and sd == F32 and \
            config not in ("bf16-master", "bf16-kahan"):
        dparam = torch.nn.Parameter(torch.from_numpy(p32).to(tp))
        dparam.grad = torch.from_numpy(g32).to(tg)
        try:
            dopt = deepspeed_adam([dparam], lr=LR, adamw_mode=False)
            dopt.step()
            out["DeepSpeed"] = dopt.step
        except Exception as e:  # noqa: BLE001 -- a configuration it refuses: say so
            print(f"# DeepSpeedCPUAdam refused {config}: {type(e).__name__}: {e}"[:300])
    return out


def time_once(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def run(config, n, rounds, reps, torch, deepspeed_adam):
    impls = implementations(config, n, torch, deepspeed_adam)
    names = list(impls)
    for fn in impls.values():
        for _ in range(2):
            fn()
    times = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            times[k].append(time_once(impls[k], reps))
    scale = CONFIGS[config][1] / CEILING_BYTES.get(config, CONFIGS[config][1])
    rows = []
    for k in names:
        ratio = [a / b for a, b in zip(times[k], times["fusedopt"])]
        # GB/s over the ceiling's GB/s in the same round
        ceil = [c / a * (1.0 if k == "ceiling" else scale)
                for c, a in zip(times["ceiling"], times[k])]
        t = statistics.median(times[k])
        b = CEILING_BYTES.get(config, CONFIGS[config][1]) if k == "ceiling" else CONFIGS[config][1]
        rows.append({"config": config, "bytes_per_element": b, "impl": k,
                     "median_ms": t * 1e3, "gb_s": n * b / t / 1e9,
                     "melem_s": n / t / 1e6,
                     "time_vs_fusedopt": statistics.median(ratio),
                     "range": [min(ratio), max(ratio)],
                     "pct_ceiling": 100 * statistics.median(ceil),
                     "pct_ceiling_range": [100 * min(ceil), 100 * max(ceil)]})
    return rows


def print_rows(rows):
    print("| config | B/elem | implementation | median time | GB/s | Melem/s | % of ceiling "
          "[range] | time / fusedopt's [range] |")
    print("|---|---:|---|---:|---:|---:|---|---|")
    for r in rows:
        lo, hi = r["pct_ceiling_range"]
        print(f"| {r['config']} | {r['bytes_per_element']} | {r['impl']} | "
              f"{r['median_ms']:.2f} ms | {r['gb_s']:.2f} | {r['melem_s']:.0f} | "
              f"{r['pct_ceiling']:.0f} [{lo:.0f}-{hi:.0f}] | {r['time_vs_fusedopt']:.2f} "
              f"[{r['range'][0]:.2f}-{r['range'][1]:.2f}] |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--elements", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-deepspeed", action="store_true")
    ap.add_argument("--quick", action="store_true", help="64Ki elements, 2 rounds (smoke test)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.quick:
        args.elements, args.rounds, args.reps = 1 << 16, 2, 1
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("# torch is not installed: its rows are left out")
    deepspeed_adam = None
    if torch is not None and not args.no_deepspeed:
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam as deepspeed_adam
        except Exception as e:  # noqa: BLE001 -- not installed, or its op does not build here
            print(f"# DeepSpeed is not usable here ({type(e).__name__}): its rows are left out")
    info = machine_info()
    info.update(fusedopt_threads=fusedopt.get_num_threads(),
                simd=fusedopt.build_info()["simd_active"])
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    print(f"# {info.get('cpu_model', info)}; {args.elements} elements; fusedopt "
          f"{fusedopt.get_num_threads()} threads ({info['simd']})")
    rows = []
    for c in args.configs.split(","):
        rows += run(c, args.elements, args.rounds, args.reps, torch, deepspeed_adam)
    print_rows(rows)
    fp32 = next((r for r in rows if r["config"] == "fp32" and r["impl"] == "fusedopt"), None)
    if fp32:
        for r in rows:
            if r["impl"] == "fusedopt" and r["config"] != "fp32":
                print(f"# {r['config']}: {r['melem_s'] / fp32['melem_s']:.2f}x the fp32 "
                      "element rate")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
