"""The processes of tests/test_zero.py: each joins a gloo group of ``world`` ranks, runs
``fusedopt.torch.ZeroRedundancyOptimizer`` and the unsharded optimizer on the same averaged grads,
and saves what the test compares (``torch.save`` to ``out/<name>-<rank>.pt``)."""

from __future__ import annotations

import io
import os
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import fusedopt.torch as ft

# (shape, dtype, group): 0-d to 3-d, sizes that leave uneven slices, two dtypes (two buckets)
SHAPES = [((), torch.float32, 0), ((7,), torch.float32, 0), ((3, 5), torch.float64, 0),
          ((4, 3, 2), torch.float32, 1), ((1000,), torch.float32, 1), ((33,), torch.float64, 1),
          ((2, 9), torch.float32, 0)]


def make_params(seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(d))
            for s, d, _ in SHAPES]


def groups_of(params: list, lrs: tuple = (1e-2, 3e-3)) -> list:
    return [{"params": [p for p, (_, _, gi) in zip(params, SHAPES) if gi == k], "lr": lrs[k]}
            for k in range(2)]


def averaged_grad(step: int, k: int, p: torch.Tensor, world: int, exact: bool = False) -> tuple:
    """Every rank's grad of param k at ``step``, and their average as DDP forms it (each
    divided by the world size, then summed in rank order). ``exact``: grads that are multiples
    of 3 * 2**-12 below 2**-4, so that dividing by 2 or 3 and summing in any order is exact."""
    local = []
    for r in range(world):
        g = torch.Generator().manual_seed(100_000 * step + 1000 * k + r)
        x = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if exact:
            x = torch.round(x * 8) * 3 * 2.0**-12
        local.append(x.to(p.dtype))
    avg = torch.zeros_like(local[0])
    for x in local:
        avg = avg + x / world
    return local, avg


def run(rank: int, world: int, init: str, out: str, job: str, kwargs: dict) -> None:
    kwargs = dict(kwargs)
    backend = kwargs.pop("backend", "gloo")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        result = JOBS[job](rank, world, **kwargs)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out, f"{job}-{rank}.pt"))
    # The result is saved: leave without the interpreter's finalization, where torch's gloo
    # threads abort about 1 exit in 8 on this machine ("terminate called without an active
    # exception", no Python frame; seen with and without this package's changes to the step)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train(opt: object, params: list, steps: int, world: int, *, sharded_grads: bool = False,
           exact: bool = False, skip: tuple = (), sched: object = None, clip: float | None = None,
           rank: int = 0, start: int = 1) -> None:
    for step in range(start, start + steps):
        for k, p in enumerate(params):
            local, avg = averaged_grad(step, k, p.detach().cpu(), world, exact)
            g = None if (step, k) in skip else (local[rank] if sharded_grads else avg)
            p.grad = None if g is None else g.to(p.device)
        if clip is not None:
            opt.clip_grad_norm_(clip) if hasattr(opt, "clip_grad_norm_") \
                else ft.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()


def job_elementwise(rank: int, world: int, configs: list) -> dict:
    """Each config: the sharded and the unsharded params (and state size) after 4 steps."""
    out = {}
    for name, cls_name, kw, view in configs:
        cls = getattr(ft, cls_name)
        params = make_params()
        ref = make_params()
        opt = ft.ZeroRedundancyOptimizer(groups_of(params), cls, parameters_as_bucket_view=view,
                                         **kw)
        uns = cls(groups_of(ref), **kw)
        s1 = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        s2 = torch.optim.lr_scheduler.StepLR(uns, step_size=2, gamma=0.5)
        skip = ((2, 1), (3, 4))  # params without a grad on some steps
        hooked: list = []
        opt.register_step_pre_hook(lambda o, args, kwargs, seen=hooked: seen.append(o))
        _train(opt, params, 4, world, skip=skip, sched=s1, rank=rank)
        _train(uns, ref, 4, world, skip=skip, sched=s2, rank=rank)
        state, full = _state_numel(opt.optim), _state_numel(uns)
        out[name] = {"sharded": [p.detach().clone() for p in params],
                     "unsharded": [p.detach().clone() for p in ref],
                     "state": state, "full_state": full,
                     "lr": [g["lr"] for g in opt.param_groups],
                     "hooked": len(hooked) == 4 and all(o is opt for o in hooked)}
    return out


def job_add_group(rank: int, world: int, cls_name: str, kw: dict) -> dict:
    """Group 1 added after 2 steps of group 0: the partition is made anew and the state moves
    to its new slices; 2 more steps, sharded and not."""
    cls = getattr(ft, cls_name)
    out = {}
    for name in ("sharded", "unsharded"):
        params = make_params()
        first, second = groups_of(params)
        opt = ft.ZeroRedundancyOptimizer([first], cls, **kw) if name == "sharded" \
            else cls([first], **kw)
        for step in (1, 2):
            for k, p in enumerate(params):
                p.grad = averaged_grad(step, k, p, world)[1]
            opt.step()
        opt.add_param_group(second)
        _train(opt, params, 2, world, rank=rank, start=3)
        out[name] = [p.detach().clone() for p in params]
    return out


def _state_numel(opt: object) -> int:
    """Elements of the state buffers (not the step counts or scalar state) of ``opt``."""
    scalars = ("step", *type(opt)._scalar_state)
    return sum(v.numel() for s in opt.state.values() for k, v in s.items()
               if isinstance(v, torch.Tensor) and k not in scalars)


def job_norms(rank: int, world: int, configs: list) -> dict:
    """LAMB (per-tensor norms across the ranks) and clipping, sharded and not."""
    out = {}
    for name, cls_name, kw, clip in configs:
        cls = getattr(ft, cls_name)
        params, ref = make_params(), make_params()
        opt = ft.ZeroRedundancyOptimizer(groups_of(params), cls, **kw)
        uns = cls(groups_of(ref), **kw)
        _train(opt, params, 3, world, clip=clip, rank=rank)
        _train(uns, ref, 3, world, clip=clip, rank=rank)
        out[name] = {"sharded": [p.detach().clone() for p in params],
                     "unsharded": [p.detach().clone() for p in ref]}
    return out


def job_reduce(rank: int, world: int, view: bool) -> dict:
    """reduce_grads=True: each rank gives its own grads (exact ones), the optimizer averages."""
    params, ref = make_params(), make_params()
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), ft.AdamW, reduce_grads=True,
                                     parameters_as_bucket_view=view, weight_decay=0.1)
    uns = ft.AdamW(groups_of(ref), weight_decay=0.1)
    skip = ((2, 1),)
    _train(opt, params, 3, world, sharded_grads=True, exact=True, skip=skip, rank=rank)
    _train(uns, ref, 3, world, exact=True, skip=skip, rank=rank)
    return {"sharded": [p.detach().clone() for p in params],
            "unsharded": [p.detach().clone() for p in ref],
            "grads": [None if p.grad is None else p.grad.clone() for p in params],
            "local": [averaged_grad(3, k, p, world, True)[0][rank] for k, p in enumerate(params)]}


def job_save(rank: int, world: int, path: str, cls_name: str, kw: dict) -> dict:
    """2 steps at this world size, then the consolidated state dict saved by rank 0."""
    cls = getattr(ft, cls_name)
    params = make_params()
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), cls, **kw)
    _train(opt, params, 2, 2, rank=rank)
    opt.consolidate_state_dict(to=0)
    refused = None
    if rank == 0:
        torch.save({"optim": opt.state_dict(), "params": [p.detach() for p in params]}, path)
    else:
        try:
            opt.state_dict()
        except RuntimeError as e:
            refused = str(e)
    return {"refused": refused}


def job_resume(rank: int, world: int, path: str, cls_name: str, kw: dict) -> dict:
    """Resume the checkpoint of job_save at this world size for 2 more steps."""
    cls = getattr(ft, cls_name)
    ck = torch.load(path, weights_only=True)
    params = make_params()
    with torch.no_grad():
        for p, q in zip(params, ck["params"]):
            p.copy_(q)
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), cls, **kw)
    opt.load_state_dict(ck["optim"])
    _train(opt, params, 2, 2, rank=rank, start=3)
    opt.consolidate_state_dict(to=world - 1)
    sd = opt.state_dict() if rank == world - 1 else None
    return {"params": [p.detach().clone() for p in params], "state_dict": sd}


def job_fail(rank: int, world: int, where: str) -> dict:
    """Rank 1 gives a bad grad (or a bad lr): every rank must raise, nothing may change."""
    params = make_params()
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), ft.Adam,
                                     reduce_grads=where == "reduce")
    _train(opt, params, 1, world, rank=rank)
    before = [p.detach().clone() for p in params]
    state = {id(t): {k: v.clone() for k, v in s.items()} for t, s in opt.optim.state.items()}
    for p in params:
        p.grad = torch.ones_like(p)
    if rank == 1:
        if where == "lr":
            opt.param_groups[0]["lr"] = -1.0
        else:
            big = torch.ones(*params[4].shape, 2, dtype=params[4].dtype)
            params[4].grad = big[..., 0]  # not contiguous; param 4 is split over the ranks
    error = None
    try:
        opt.step()
    except Exception as e:  # noqa: BLE001 - the test reads the text
        error = f"{type(e).__name__}: {e}"
    same = all(torch.equal(a, b) for a, b in zip(before, params))
    same_state = all(torch.equal(v, state[id(t)][k]) for t, s in opt.optim.state.items()
                     for k, v in s.items())
    # the group still works for a good step on every rank afterwards
    if rank == 1:
        opt.param_groups[0]["lr"] = 1e-3
        for p in params:
            p.grad = torch.ones_like(p)
    opt.step()
    return {"error": error, "unchanged": same and same_state}


def job_cuda(rank: int, world: int) -> dict:
    """NCCL over CUDA tensors: AdamW sharded and not, 3 steps, on this rank's device."""
    dev = torch.device("cuda", rank)
    out = {}
    for name in ("sharded", "unsharded"):
        params = [torch.nn.Parameter(p.detach().to(dev)) for p in make_params()]
        opt = ft.ZeroRedundancyOptimizer(groups_of(params), ft.AdamW, weight_decay=0.1) \
            if name == "sharded" else ft.AdamW(groups_of(params), weight_decay=0.1)
        _train(opt, params, 3, world, rank=rank)
        out[name] = [p.detach().cpu() for p in params]
    return out


def job_crash(rank: int, world: int) -> dict:
    """Rank 1 dies before its step (an error in the user's loop); rank 0's step must end with an
    error, not wait for it forever."""
    params = make_params()
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), ft.AdamW)
    _train(opt, params, 1, world, rank=rank)
    if rank == 1:
        os._exit(3)  # as a crashed process: no clean shutdown of the group
    start = time.monotonic()
    error = None
    try:
        _train(opt, params, 1, world, rank=rank, start=2)
    except Exception as e:  # noqa: BLE001 - the test reads the text
        error = f"{type(e).__name__}: {e}"
    return {"error": error, "seconds": time.monotonic() - start}


def job_steps_per_group(rank: int, world: int, configs: list) -> dict:
    """The algorithms that count steps per group (LAMB, Schedule-Free AdamW) with params and a
    whole group without grads on some steps, sharded and not; Schedule-Free also through
    eval() and train() (the params at x, then back at y)."""
    out = {}
    # group 1 (params 3, 4, 5) has no grad at step 2; at step 3 only param 3 of it has one
    # (it is rank 0's alone: the other ranks' slices of the group lag); params 1 and 6 miss some
    skip = ((2, 3), (2, 4), (2, 5), (3, 4), (3, 5), (3, 1), (4, 6), (5, 1))
    for name, cls_name, kw in configs:
        cls = getattr(ft, cls_name)
        res = {}
        for mode in ("sharded", "unsharded"):
            params = make_params()
            opt = ft.ZeroRedundancyOptimizer(groups_of(params), cls, **kw) \
                if mode == "sharded" else cls(groups_of(params), **kw)
            if hasattr(cls, "train"):
                opt.train()
            _train(opt, params, 5, world, skip=skip, rank=rank)
            snaps = [[p.detach().clone() for p in params]]
            if hasattr(cls, "eval"):
                opt.eval()
                snaps.append([p.detach().clone() for p in params])
                opt.train()
                _train(opt, params, 1, world, rank=rank, start=6)
                snaps.append([p.detach().clone() for p in params])
            res[mode] = snaps
        out[name] = res
    return out


def job_misc(rank: int, world: int) -> dict:
    """What goes wrong on one rank or both, and must end the same way on every rank."""
    out: dict = {}

    def attempt(fn: object) -> str | None:
        try:
            fn()  # type: ignore[operator]
        except Exception as e:  # noqa: BLE001 - the test reads the text
            return f"{type(e).__name__}: {e}"
        return None

    # a group that cannot be added (a bad lr on rank 1 only, then on both) keeps the state
    params = make_params()
    first, second = groups_of(params)
    opt = ft.ZeroRedundancyOptimizer([first], ft.Adam)
    ref = make_params()
    uns = ft.Adam([groups_of(ref)[0]])
    _train(opt, params, 2, world, rank=rank)
    _train(uns, ref, 2, world, rank=rank)
    before = _state_numel(opt.optim)
    out["add_one"] = attempt(lambda: opt.add_param_group(
        {**second, "lr": -1.0 if rank == 1 else 1e-3}))
    out["add_both"] = attempt(lambda: opt.add_param_group({**second, "lr": -1.0}))
    out["add_kept"] = (len(opt.param_groups), _state_numel(opt.optim), before)
    _train(opt, params, 1, world, rank=rank, start=3)
    _train(uns, ref, 1, world, rank=rank, start=3)
    out["add_after"] = all(torch.equal(a, b) for a, b in zip(params, ref))

    # clip_grad_norm_ refused on rank 1 (a grad that is not contiguous): every rank raises
    for p in params:
        p.grad = torch.ones_like(p)
    if rank == 1:  # param 6 (group 0) is split over the ranks
        big = torch.ones(*params[6].shape, 2, dtype=params[6].dtype)
        params[6].grad = big[..., 0]
    out["clip"] = attempt(lambda: opt.clip_grad_norm_(1.0))

    # a param whose .data was replaced (on rank 1 only): refused, not silently left behind
    params = make_params()
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), ft.AdamW)
    _train(opt, params, 1, world, rank=rank)
    if rank == 1:
        params[4].data = params[4].data.clone()
    out["data"] = attempt(lambda: _train(opt, params, 1, world, rank=rank, start=2))

    # ADOPT's consolidated state dict: no code in its groups, the state on the CPU, loadable
    params = make_params()
    opt = ft.ZeroRedundancyOptimizer(groups_of(params), ft.ADOPT)
    _train(opt, params, 2, world, rank=rank)
    out["to"] = attempt(lambda: opt.consolidate_state_dict(to=world))
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        sd = opt.state_dict()
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        out["adopt_sd"] = torch.load(buf, weights_only=True)
        out["adopt_ref"] = ft.ADOPT(groups_of(make_params())).state_dict()["param_groups"]

    # the same param twice is refused
    params = make_params()
    out["twice"] = attempt(lambda: ft.ZeroRedundancyOptimizer(
        [{"params": params[:2]}, {"params": params[1:3]}], ft.AdamW))
    out["twice_in_group"] = attempt(lambda: ft.ZeroRedundancyOptimizer(
        [params[0], params[1], params[0]], ft.AdamW))
    return out


JOBS = {"elementwise": job_elementwise, "add_group": job_add_group, "norms": job_norms, "reduce": job_reduce,
        "save": job_save, "resume": job_resume, "fail": job_fail,
        "crash": job_crash, "cuda": job_cuda,
        "steps_per_group": job_steps_per_group, "misc": job_misc}
