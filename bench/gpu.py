"""The CUDA side of the harness: buffers are torch CUDA tensors, the ceiling is a device-to-device
copy of the same number of bytes, and every call is timed with CUDA events after warm-up.

fusedopt receives the same torch tensors (it reads them through the CUDA array interface /
DLPack, zero copy); a build without the CUDA backend is skipped with a note. There is no NumPy peer
on the GPU.
"""

from __future__ import annotations

from harness import Group, Impl, Stepper, class_step, torch_impls


def available(torch):
    """None when a CUDA run can go ahead, else the reason it cannot."""
    if torch is None:
        return "torch is not installed (the CUDA harness allocates and times through it)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def fusedopt_has_cuda():
    import fusedopt

    return bool(fusedopt.build_info().get("cuda"))


def cuda_group(algo, sizes, rng, torch, wanted):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(rng.integers(1 << 31)))
    params = [torch.randn(n, device=dev, generator=gen) for n in sizes]
    grads = [torch.rand(n, device=dev, generator=gen) * 9e-4 + 1e-4 for n in sizes]
    states = {s: [torch.full((n,), algo.init.get(s, 0.0), device=dev) for n in sizes]
              for s in algo.states}
    g = Group([], params + grads + [b for v in states.values() for b in v])
    if "ceiling" in wanted:
        # A copy reads and writes its size: half the algorithm's bytes each way.
        n = -(-algo.bytes_per_elem * sum(sizes) // 8)
        src = torch.ones(n, device=dev)
        dst = torch.empty(n, device=dev)
        g.impls.append(Impl("ceiling", lambda: dst.copy_(src)))
    if "fusedopt" in wanted:
        if fusedopt_has_cuda():
            g.impls.append(Impl("fusedopt", Stepper(algo.fusedopt, params, grads, states)))
        else:
            g.notes.append("fusedopt: this build has no CUDA backend (build_info()['cuda'] is "
                           "False); skipped")
    if "fusedopt-class" in wanted and fusedopt_has_cuda():
        g.impls.append(Impl("fusedopt-class", class_step(algo, params, grads)))
    if "numpy" in wanted:
        g.notes.append("numpy: no NumPy peer on the GPU")
    torch_wanted = [w for w in wanted if w.startswith("torch")]
    if torch_wanted:
        g.impls += torch_impls(torch, algo, params, grads, states, torch_wanted, g.notes)
    torch.cuda.synchronize()
    return g


def event_timer(torch):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def timer(fn):
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3

    return timer
