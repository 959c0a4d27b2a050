"""fusedopt.torch.ZeroRedundancyOptimizer over gloo, in 2 and 3 spawned processes (3 gives uneven
slices): params equal to the unsharded run's (bitwise for elementwise algorithms), state about 1/N
per rank, checkpoints across world sizes, all ranks failing together. The processes run
tests/zero_workers.py; every spawn is bounded in time."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedopt.torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import zero_workers as zw  # noqa: E402  (tests/ is on sys.path, as for the other helpers)

TIMEOUT = 180.0  # seconds for one spawn of every rank, imports included


def spawn(tmp_path, world: int, job: str, **kwargs) -> list:
    """Runs ``zero_workers.run(rank, world, ..., job, kwargs)`` in ``world`` processes and
    returns each rank's result; fails (after killing them) if they take over TIMEOUT."""
    mp = torch.multiprocessing
    init = tmp_path / f"init-{job}-{world}-{time.monotonic_ns()}"
    ctx = mp.start_processes(zw.run, args=(world, str(init), str(tmp_path), job, kwargs),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{job} on {world} ranks did not end within {TIMEOUT} s")
    return [torch.load(tmp_path / f"{job}-{r}.pt", weights_only=False) for r in range(world)]


ELEMENTWISE = [
    ("adamw", "AdamW", {"weight_decay": 0.1}, False),
    ("adamw-view", "AdamW", {"weight_decay": 0.1, "amsgrad": True}, True),
    ("sgd-nesterov", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, False),
    ("adagrad", "Adagrad", {"lr_decay": 0.01}, True),
    ("nadam", "NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}, False),
    ("rmsprop", "RMSprop", {"centered": True, "momentum": 0.5}, True),
    ("lion", "Lion", {"weight_decay": 0.1}, False),
]


@pytest.mark.parametrize("world", [2, 3])
def test_elementwise_params_bitwise_equal_to_unsharded(tmp_path, world):
    results = spawn(tmp_path, world, "elementwise", configs=ELEMENTWISE)
    for rank, res in enumerate(results):
        for name, _, _, _ in ELEMENTWISE:
            r = res[name]
            for k, (a, b) in enumerate(zip(r["sharded"], r["unsharded"])):
                assert a.dtype == b.dtype and a.shape == b.shape
                assert torch.equal(a, b), (rank, name, k, (a - b).abs().max())
                # and the params moved: the comparison is not of two untouched copies
                assert not torch.equal(a, zw.make_params()[k]), (name, k)
            assert r["hooked"], name  # torch's step hooks run around the sharded step
            assert r["lr"] == [1e-2 * 0.25, 3e-3 * 0.25] or name == "sgd-nesterov"
            # each rank keeps the state of at most ceil(N / W) elements of each bucket
            sizes = {}
            for (_, dtype, _), p in zip(zw.SHAPES, r["unsharded"]):
                sizes[dtype] = sizes.get(dtype, 0) + p.numel()
            per_buffer = r["full_state"] / sum(sizes.values())
            bound = per_buffer * sum(-(-n // world) for n in sizes.values())
            assert 0 < r["state"] <= bound, (name, r["state"], bound)
        total = sum(res[name]["state"] for res in results)
        assert total == results[0][name]["full_state"], name


@pytest.mark.parametrize("cls_name,kw", [("Adam", {"amsgrad": True}), ("LAMB", {})])
def test_add_param_group_moves_the_state(tmp_path, cls_name, kw):
    """A group added mid-run (3 ranks): the same params as the unsharded optimizer's
    (bitwise for Adam; LAMB's norms are sums over the ranks: rtol 1e-6 / 1e-12)."""
    for res in spawn(tmp_path, 3, "add_group", cls_name=cls_name, kw=kw):
        for k, (a, b) in enumerate(zip(res["sharded"], res["unsharded"])):
            if cls_name == "Adam":
                assert torch.equal(a, b), (k, (a - b).abs().max())
            else:
                tol = 1e-12 if a.dtype == torch.float64 else 1e-6
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)


NORMS = [
    ("lamb", "LAMB", {"weight_decay": 0.01}, None),
    ("lamb-clipped", "LAMB", {"weight_decay": 0.01, "max_grad_norm": 0.5, "use_nvlamb": True},
     None),
    ("lamb-no-decay", "LAMB", {"weight_decay": 0.0, "adam_w_mode": False}, None),
    ("adamw-clip", "AdamW", {}, 0.5),
]


@pytest.mark.parametrize("world", [2, 3])
def test_norms_summed_across_ranks(tmp_path, world):
    """LAMB's trust ratio is per tensor and its clipping by the global grad norm; both are sums
    over slices of several ranks here. Equal to the unsharded run up to the order of those
    sums: rtol 1e-6 in float32 (a few ulps of the ratio per step), 1e-12 in float64. A rank that
    used its own slice's norms would be off by the trust ratio itself (tens of percent)."""
    results = spawn(tmp_path, world, "norms", configs=NORMS)
    for res in results:
        for name, _, _, _ in NORMS:
            r = res[name]
            for k, (a, b) in enumerate(zip(r["sharded"], r["unsharded"])):
                tol = 1e-12 if a.dtype == torch.float64 else 1e-6
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol,
                                           err_msg=f"{name} param {k}")
                assert not torch.equal(a, zw.make_params()[k])


STEPS_PER_GROUP = [
    ("lamb", "LAMB", {"weight_decay": 0.01}),
    ("schedulefree", "AdamWScheduleFree", {"lr": 1e-2, "warmup_steps": 2}),
]


@pytest.mark.parametrize("world", [2, 3])
def test_steps_per_group_with_missing_grads(tmp_path, world):
    """LAMB and Schedule-Free count steps per group (the most advanced count of the params that
    have a grad): with params, and a whole group, without a grad on some steps, every rank's
    params are the unsharded run's (Schedule-Free bitwise, through eval() and train() as well;
    LAMB rtol 1e-6 / 1e-12 for its norms' sums). A rank that took the count of its own slices,
    or counted a step in which the group had no grad, is off in the bias corrections (1e-3 and
    more)."""
    for res in spawn(tmp_path, world, "steps_per_group", configs=STEPS_PER_GROUP):
        for name, _, _ in STEPS_PER_GROUP:
            for when, (snap, ref) in enumerate(zip(res[name]["sharded"],
                                                   res[name]["unsharded"])):
                for k, (a, b) in enumerate(zip(snap, ref)):
                    if name == "schedulefree":
                        assert torch.equal(a, b), (name, when, k, (a - b).abs().max())
                    else:
                        tol = 1e-12 if a.dtype == torch.float64 else 1e-6
                        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol,
                                                   err_msg=f"{name} param {k}")


def test_failures_end_alike_on_every_rank(tmp_path):
    """add_param_group, clip_grad_norm_ and step refused on one rank: every rank raises (no
    hang), the state kept; ADOPT's consolidated state dict holds no code and loads with
    weights_only; misuse refused by name."""
    results = spawn(tmp_path, 2, "misc")
    for rank, res in enumerate(results):
        assert res["add_one"] and res["add_both"], res
        assert ("rank 1" in res["add_one"]) == (rank == 0), res["add_one"]
        assert "learning rate" in res["add_both"]
        groups, numel, before = res["add_kept"]
        assert groups == 1 and numel == before > 0
        assert res["add_after"]  # and it goes on as the unsharded run
        assert res["clip"] and "clip_grad_norm_" in res["clip"], res["clip"]
        assert ("rank 1" in res["clip"]) == (rank == 0), res["clip"]
        assert res["data"] and ("rank 1" in res["data"]) == (rank == 0), res["data"]
        if rank == 1:
            assert "replaced" in res["data"] and "[1]['params'][1]" in res["data"], res["data"]
        assert res["to"] and res["to"].startswith("ValueError") and "to" in res["to"]
        assert res["twice"] and res["twice_in_group"], res
    sd, ref = results[0]["adopt_sd"], results[0]["adopt_ref"]
    assert [sorted(g) for g in sd["param_groups"]] == [sorted(g) for g in ref]
    for entry in sd["state"].values():
        assert all(v.device.type == "cpu" for v in entry.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("view", [False, True])
def test_reduce_grads_averages_itself(tmp_path, view):
    """reduce_grads=True on 3 ranks with grads whose average is exact in any order: bitwise
    the unsharded run on the averaged grads; the ranks' own grads are left as they were."""
    results = spawn(tmp_path, 3, "reduce", view=view)
    for res in results:
        for k, (a, b) in enumerate(zip(res["sharded"], res["unsharded"])):
            assert torch.equal(a, b), (k, (a - b).abs().max())
        for g, local in zip(res["grads"], res["local"]):
            assert torch.equal(g, local)


@pytest.mark.parametrize("cls_name,kw", [("AdamW", {"weight_decay": 0.1}),
                                         ("LAMB", {"weight_decay": 0.01}),
                                         ("NAdam", {})])
def test_checkpoint_saved_at_2_resumes_at_3(tmp_path, cls_name, kw):
    """Saved at world size 2, resumed at 3: the params after 4 steps are those of the run of 4
    steps unsharded (bitwise for the elementwise ones), and the consolidated state dict loads
    into the unsharded fusedopt class and into torch.optim's, which continue the same run."""
    path = str(tmp_path / "ck.pt")
    saved = spawn(tmp_path, 2, "save", path=path, cls_name=cls_name, kw=kw)
    assert saved[0]["refused"] is None and "consolidate_state_dict" in saved[1]["refused"]
    resumed = spawn(tmp_path, 3, "resume", path=path, cls_name=cls_name, kw=kw)
    cls = getattr(ft, cls_name)
    ref = zw.make_params()
    uns = cls(zw.groups_of(ref), **kw)
    zw._train(uns, ref, 4, 2)
    exact = cls_name != "LAMB"
    for res in resumed:
        for k, (a, b) in enumerate(zip(res["params"], ref)):
            if exact:
                assert torch.equal(a, b.detach()), (k, (a - b).abs().max())
            else:
                np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-6, atol=1e-7)
    # the checkpoint at step 2 into the unsharded classes, continued for 2 steps
    ref2 = zw.make_params()
    half = cls(zw.groups_of(ref2), **kw)
    zw._train(half, ref2, 2, 2)
    for other in [cls, getattr(torch.optim, cls_name, None)]:
        if other is None:  # LAMB has no torch.optim twin
            continue
        # loaded anew for each: a loaded state dict's tensors become the optimizer's state
        ck = torch.load(path, weights_only=True)
        params = zw.make_params()
        with torch.no_grad():
            for p, q in zip(params, ck["params"]):
                p.copy_(q)
        kw2 = dict(kw)
        opt = other(zw.groups_of(params), **kw2)
        opt.load_state_dict(ck["optim"])
        sd_ref = half.state_dict()
        assert opt.state_dict()["param_groups"][0]["lr"] == sd_ref["param_groups"][0]["lr"]
        zw._train(opt, params, 2, 2, start=3)
        for k, (a, b) in enumerate(zip(params, ref)):
            if other is cls and exact:
                assert torch.equal(a.detach(), b.detach()), (other, k)
            else:
                np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5,
                                           atol=1e-6, err_msg=f"{other} param {k}")
    # and the state dict consolidated at world size 3 equals the unsharded one's
    sd = resumed[-1]["state_dict"]
    usd = uns.state_dict()
    assert sd["state"].keys() == usd["state"].keys()
    for i, entry in usd["state"].items():
        assert sd["state"][i].keys() == entry.keys()
        for name, v in entry.items():
            w = sd["state"][i][name]
            assert w.dtype == v.dtype and w.shape == v.shape, (i, name)
            if exact:
                assert torch.equal(w, v), (i, name)
    for g, h in zip(sd["param_groups"], usd["param_groups"]):
        assert g == h


@pytest.mark.parametrize("where", ["grad", "lr", "reduce"])
def test_one_rank_fails_every_rank_raises(tmp_path, where):
    """Rank 1's step is refused (a non-contiguous grad, a negative lr): every rank raises
    within the timeout, no rank changes a param or its state, and the next step works."""
    results = spawn(tmp_path, 2, "fail", where=where)
    assert results[1]["error"] and results[0]["error"], results
    assert "rank 1" in results[0]["error"], results[0]["error"]
    assert "rank 1" not in results[1]["error"], results[1]["error"]
    for res in results:
        assert res["unchanged"]


def test_refused_without_a_process_group():
    params = zw.make_params()
    with pytest.raises(TypeError, match="optimizer_class must be a fusedopt.torch optimizer"):
        ft.ZeroRedundancyOptimizer(params, torch.optim.AdamW)
    with pytest.raises(TypeError, match="Adafactor cannot be sharded yet"):
        ft.ZeroRedundancyOptimizer(params, ft.Adafactor)
    with pytest.raises(ValueError, match="overlap_with_ddp"):
        ft.ZeroRedundancyOptimizer(params, ft.AdamW, overlap_with_ddp=True)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            ft.ZeroRedundancyOptimizer(params, ft.AdamW)



def test_a_rank_that_dies_does_not_hang_the_others(tmp_path):
    """Rank 1 exits (as a crash in the user's loop would) before its second step: rank 0's step
    ends with an error from the process group well within the test's bound, not a hang."""
    ctx = torch.multiprocessing.get_context("spawn")
    init = tmp_path / "init-crash"
    procs = [ctx.Process(target=zw.run, args=(r, 2, str(init), str(tmp_path), "crash", {}))
             for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank was still running after the timeout"
    assert procs[1].exitcode == 3
    res = torch.load(tmp_path / "crash-0.pt", weights_only=False)
    assert res["error"] is not None and res["seconds"] < 90, res


def _cuda_devices() -> int:
    import fusedopt

    if not torch.cuda.is_available() or not fusedopt.cuda_available() \
            or not dist.is_nccl_available():
        return 0
    return torch.cuda.device_count()


@pytest.mark.skipif(_cuda_devices() == 0, reason="no CUDA device usable by torch and fusedopt")
def test_nccl_cuda_params_bitwise_equal_to_unsharded(tmp_path):
    """NCCL over CUDA tensors (one rank per device, up to 2): AdamW sharded gives the bits of
    the unsharded CUDA run."""
    world = min(2, _cuda_devices())
    for res in spawn(tmp_path, world, "cuda", backend="nccl"):
        for k, (a, b) in enumerate(zip(res["sharded"], res["unsharded"])):
            assert torch.equal(a, b), (k, (a - b).abs().max())
