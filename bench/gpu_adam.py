"""fusedopt's CUDA Adam against the GPU's ceiling, a device-to-device copy of the same bytes.

A float32 Adam step reads p, g, m, v and writes p, m, v: 28 bytes per element. The ceiling is a
``copy_`` between two buffers of 14 bytes per element, which also moves 28 bytes per element (half
read, half written), measured in the same run. Every call is timed with CUDA events on the current
stream after warm-up; the median is reported, as GB/s (bytes moved / time) and as % of the copy.
PyTorch's own fused Adam (``torch.optim.Adam(fused=True)``) is timed beside it when available.

    python bench/gpu_adam.py                      # 256Mi elements in one tensor
    python bench/gpu_adam.py --tensors 2000       # the same elements over 2,000 tensors
    python bench/gpu_adam.py --json out.json

Needs a CUDA build of PyTorch (allocation and events) and fusedopt built with CUDA. Benchmarks
never assert; the tests in tests/test_cuda.py do.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import subprocess
import sys

BYTES_PER_ELEM = 28  # fp32 Adam: read p, g, m, v (16) + write p, m, v (12)


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def timed(torch, fn, warmup, repeat):
    """Median seconds of ``fn()`` over ``repeat`` calls, each between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


def split(n, k):
    """``k`` sizes summing to ``n``, as equal as possible."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=256 << 20, help="total elements (256Mi)")
    ap.add_argument("--tensors", type=int, default=1, help="tensors the elements are split into")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("gpu_adam: needs PyTorch with CUDA", file=sys.stderr)
        return 2
    import fusedopt
    from fusedopt import functional

    if not torch.cuda.is_available():
        print("gpu_adam: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    if not fusedopt.build_info()["cuda"]:
        print("gpu_adam: this fusedopt was built without CUDA", file=sys.stderr)
        return 2

    n, dev = args.elements, torch.device("cuda")
    sizes = split(n, args.tensors)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    params = [torch.randn(s, device=dev, generator=gen) for s in sizes]
    grads = [torch.randn(s, device=dev, generator=gen) * 1e-3 for s in sizes]
    exp_avgs = [torch.zeros(s, device=dev) for s in sizes]
    exp_avg_sqs = [torch.zeros(s, device=dev) for s in sizes]
    bytes_moved = BYTES_PER_ELEM * n

    results = {}
    # The ceiling: a copy that reads and writes 14 bytes per element.
    src = torch.ones(-(-bytes_moved // 8), device=dev)
    dst = torch.empty_like(src)
    results["d2d copy (ceiling)"] = timed(torch, functools.partial(dst.copy_, src), args.warmup,
                                          args.repeat)
    del src, dst

    step = [0]

    def fusedopt_adam():
        step[0] += 1
        functional.adam(params, grads, exp_avgs, exp_avg_sqs, step=step[0], lr=1e-3)

    results["fusedopt.functional.adam"] = timed(torch, fusedopt_adam, args.warmup, args.repeat)

    try:
        tparams = [p.clone().requires_grad_() for p in params]
        for p, g in zip(tparams, grads):
            p.grad = g.clone()
        opt = torch.optim.Adam(tparams, lr=1e-3, fused=True)
        results["torch.optim.Adam(fused=True)"] = timed(torch, opt.step, args.warmup, args.repeat)
        del opt, tparams
    except (RuntimeError, TypeError, ValueError) as e:
        print(f"torch fused Adam skipped: {e}", file=sys.stderr)

    ceiling = bytes_moved / results["d2d copy (ceiling)"]
    print(f"{torch.cuda.get_device_name()}: fp32 Adam, {n} elements in {args.tensors} tensor(s), "
          f"{bytes_moved / 1e9:.2f} GB moved per step; median of {args.repeat}")
    rows = []
    for name, t in results.items():
        gbs = bytes_moved / t / 1e9
        rows.append(dict(name=name, ms=t * 1e3, gb_per_s=gbs, pct_of_copy=100 * gbs * 1e9 / ceiling))
        print(f"  {name:32s} {t * 1e3:9.3f} ms  {gbs:8.1f} GB/s  {rows[-1]['pct_of_copy']:6.1f} %")
    if args.json:
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                    fusedopt=fusedopt.build_info(), cuda=fusedopt._core.cuda.info(),
                    python=platform.python_version(), commit=commit(), elements=n,
                    tensors=args.tensors, repeat=args.repeat, bytes_per_step=bytes_moved)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
