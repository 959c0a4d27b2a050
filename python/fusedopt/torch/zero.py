"""``fusedopt.torch.ZeroRedundancyOptimizer``: optimizer state sharded over the ranks of a
``torch.distributed`` process group (ZeRO stage 1), on gloo (CPU tensors) or NCCL (CUDA tensors).

Note [A sharded step]
    The params are cut into buckets, one per (device, dtype), each the concatenation of its params
    in param-group order, padded to a multiple of the world size W and split into W equal
    contiguous slices: rank r owns elements [r S, (r + 1) S) of each bucket (S = ceil(N / W)), so
    one large tensor is split across ranks, and no rank holds more than S elements of a bucket.
    Each rank runs an ordinary ``fusedopt.torch`` optimizer (``self.optim``) whose params are its
    pieces: 1-d views of the intersection of its slice with each param, grouped as the param
    groups are. Its state is that of the pieces only (about 1/W of the unsharded state), and its
    step is one fused call per (group, bucket), as unsharded, over the pieces' grads: views of the
    params' grads (already averaged, by DDP), or, with ``reduce_grads=True``, the rank's slice of
    a reduce-scatter of the grads (on gloo, a reduce of each slice to its rank). Then the params
    are rebuilt on every rank from the slices: one all-gather per bucket on NCCL; on gloo, whose
    all-gather is several times slower than broadcasts of the same bytes, rank q broadcasts its
    slice (``_plan_broadcasts``). An elementwise update of a piece is the update of those
    elements: the params come out bitwise as in the unsharded run.
    A step is all or nothing across the ranks: the inner optimizer checks all its calls, then its
    ``_shard.before_run`` makes one all-reduce in which every rank says whether its checks passed
    (a rank that failed earlier joins it from its ``except``); every rank raises when one failed,
    before anything was written, so no rank waits for a collective that another will not make.
    The same all-reduce carries the sum of the squares of the rank's grads, for an algorithm that
    takes the grads' global norm (LAMB's ``grad_norm``, Note [Passes] in ``csrc/spec.h``).
    A spec whose passes sum per tensor (LAMB's norms of each param and of its update) sees
    per-piece sums: Note [The pass hook] (``csrc/bindings/cpu.cpp``) lets this class add, between
    the passes, the sums of the other pieces of each tensor (one all-reduce per call and pass), so
    the trust ratio is that of the whole tensor. For every rank to make the same collectives in
    the same order, each (group, bucket) call of such an algorithm has an empty placeholder piece
    with an empty grad, so that every rank makes exactly that call, and such an algorithm must
    count steps per group (``StepsPerGroup``: one call per group and bucket).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import clip as _clip
from ..optim.optimizer import Optimizer as _BaseOptimizer
from ..optim.optimizer import StepsPerGroup
from .optimizer import Optimizer, _view

__all__ = ["ZeroRedundancyOptimizer"]

_NOT_GROUP = ("params", "param_names")
# gloo: a slice goes straight from and into the params when they average this many elements or
# more in it (a broadcast's fixed cost is about that of copying this many elements in and out:
# bench/README.md, "ZeRO-1"); through the flat buffer otherwise
_DIRECT_MIN = 1 << 18
# torch 2.13 names them *_single (the *_tensor names warn); older releases have only *_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _Bucket:
    """The params of one (device, dtype), flattened: ``flat`` holds S * W elements."""

    def __init__(self, device: Any, dtype: Any, members: list) -> None:
        self.device, self.dtype, self.members = device, dtype, members
        self.numel = sum(p.numel() for _, _, p in members)
        self.size = 0  # S
        self.flat: Any = None
        self.offsets: list = []  # of each member in flat
        self.gflat: Any = None  # reduce_grads: the grads, flattened, and this rank's slice
        self.gslice: Any = None
        # without bucket views: the pieces -> flat, then flat -> the params not wholly here
        self.copy_dst: list = []
        self.copy_src: list = []
        self.out_dst: list = []
        self.out_src: list = []
        self.sends: Any = None  # gloo: the tensors of rank q's broadcasts, for each q


class _Piece:
    """The intersection of this rank's slice with param ``(gi, j)``: its elements [lo, hi)."""

    __slots__ = ("gi", "j", "param", "lo", "hi", "tensor", "bucket", "row", "m", "grad_src")

    def __init__(self, gi: int, j: int, param: Any, lo: int, hi: int, tensor: Any, bucket: int,
                 row: int, m: int) -> None:
        self.gi, self.j, self.param, self.lo, self.hi = gi, j, param, lo, hi
        self.tensor, self.bucket, self.row = tensor, bucket, row
        self.m = m  # its param's index in the bucket's members
        self.grad_src: Any = None


class ZeroRedundancyOptimizer(torch.optim.Optimizer):
    """A ``fusedopt.torch`` optimizer whose state is sharded over the ranks of a process group
    (Note [A sharded step]), with ``torch.distributed.optim.ZeroRedundancyOptimizer``'s
    interface: ``ZeroRedundancyOptimizer(params, optimizer_class, process_group=None,
    parameters_as_bucket_view=False, overlap_with_ddp=False, **defaults)``.

    - ``optimizer_class``: a :mod:`fusedopt.torch` class (``fusedopt.torch.AdamW``, ...), built
      on every rank over its slice with ``defaults`` (its constructor arguments).
    - ``params``: params or param groups, as for any optimizer; every rank must give the same,
      in the same order. Float32 / float64, dense, contiguous, on the CPU (gloo) or CUDA (NCCL).
    - Each rank owns an element-balanced contiguous slice of each (device, dtype) bucket: a large
      tensor is split across ranks, not given to one (torch's class assigns whole params).
    - ``parameters_as_bucket_view=True``: the params' data become views of one flat buffer per
      bucket (``p.data`` is replaced once, here; replacing it again is refused at the next
      step), which the gather fills in place; False (as torch's default): the params keep their
      memory, and the gathered slices are copied into them where they go through the buffer (a
      slice of many small params; one buffer of their size per bucket).
    - Grads: by default ``p.grad`` is taken as already averaged over the ranks (by DDP), as
      torch's class assumes. ``reduce_grads=True``: the optimizer averages them itself, each rank
      receiving only its slice (a reduce-scatter per bucket on NCCL, a reduce of each slice to its
      rank on gloo; ``p.grad`` is left as it was); a
      param whose grad is None on every rank is skipped, one that has a grad on some rank is
      updated with the others' taken as 0. Not with ``GradScaler`` (each rank would find infs
      in its own grads, before they are averaged, and skip the step alone): use DDP for that.
    - ``step(closure=None)``: one fused call per (group, bucket) on each rank, then the params
      gathered (Note [A sharded step]). All or nothing across ranks: if one rank's step fails
      its checks, every rank raises before any param or state changes; so do
      ``clip_grad_norm_``, ``add_param_group``, ``train`` and ``eval``.
    - ``clip_grad_norm_(max_norm)``: clips the grads this rank's step reads by the global norm of
      all grads (one all-reduce; the norm as :func:`fusedopt.torch.clip_grad_norm_`'s).
    - Checkpoints: ``consolidate_state_dict(to=0)`` on every rank, then ``state_dict()`` on rank
      ``to`` gives the unsharded optimizer's state dict: it loads into ``optimizer_class`` and
      into ``torch.optim``'s class of that name. ``load_state_dict`` takes such a dict (every
      rank loads the whole dict, of any world size, and keeps its slice).
    - LAMB: its per-tensor norms are summed across the ranks between its passes (CPU tensors).
      The algorithms that count steps per group (LAMB, Schedule-Free) take the group's count
      from every rank (one more all-gather of a few numbers per step).
    - Schedule-Free: ``train()`` and ``eval()`` move each rank's slice, then gather the params.
    - Not supported: ``overlap_with_ddp=True``; ``GradScaler``'s fused unscale (it unscales the
      grads itself before the step, which is fine with DDP-averaged grads).
    """

    # the partition, made by ``_partition`` and ``_commit``
    _buckets: list
    _pieces: list
    _rows: dict
    _views: list
    _piece_of: dict
    _placeholder_of: dict
    _holders: dict
    _params: list
    _ptrs: list
    _tops: dict
    optim: Any

    def __init__(self, params: Any, optimizer_class: Any, process_group: Any = None,
                 parameters_as_bucket_view: bool = False, overlap_with_ddp: bool = False, *,
                 reduce_grads: bool = False, **defaults: Any) -> None:
        cls = type(self).__name__
        self._built = False
        if getattr(optimizer_class, "__name__", None) == "Adafactor" and \
                optimizer_class.__module__ == "fusedopt.torch.adafactor":
            raise TypeError(f"{cls}: Adafactor cannot be sharded yet (its row and column factors "
                            "span whole matrices, which the element slices of ZeRO-1 cut)")
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)
                and optimizer_class is not Optimizer):
            name = getattr(optimizer_class, "__name__", type(optimizer_class).__name__)
            raise TypeError(
                f"{cls}: optimizer_class must be a fusedopt.torch optimizer class (such as "
                f"fusedopt.torch.AdamW), got {name}")
        if overlap_with_ddp:
            raise ValueError(f"{cls}: overlap_with_ddp=True is not supported (call step() after "
                             "backward())")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{cls}: torch.distributed is not initialized (call "
                               "torch.distributed.init_process_group first)")
        numpy_cls = optimizer_class._numpy
        if optimizer_class._kernel.passes > 1 and not issubclass(numpy_cls, StepsPerGroup):
            raise ValueError(f"{cls}: {optimizer_class.__name__} cannot be sharded (an algorithm "
                             "of several passes must count steps per group)")
        self._optimizer_class = optimizer_class
        self._steps_per_group = issubclass(numpy_cls, StepsPerGroup)
        self._inner_defaults = dict(defaults)
        self.process_group = process_group if process_group is not None else dist.group.WORLD
        self.world_size = dist.get_world_size(self.process_group)
        self.rank = dist.get_rank(self.process_group)
        self._ranks = dist.get_process_group_ranks(self.process_group)  # global, by group rank
        self.parameters_as_bucket_view = bool(parameters_as_bucket_view)
        self.reduce_grads = bool(reduce_grads)
        self._comm_device = torch.device("cpu")
        if dist.get_backend(self.process_group) == "nccl":
            self._comm_device = torch.device("cuda", torch.cuda.current_device())
        self._consolidated: Any = None
        self._agreed = False
        self._reduced = False  # this step's grads were reduced by clip_grad_norm_
        self.run_input = 0.0  # the global norm of the grads, for the inner optimizer
        super().__init__(params, defaults)
        self._build()
        self._built = True

    # ---- the partition ---------------------------------------------------------------------------

    def _build(self) -> None:
        """Partitions the param groups and builds the inner optimizer (Note [A sharded step])."""
        self._commit(self._partition())

    def _partition(self) -> dict:
        """The partition of the param groups and the inner optimizer over it, with no effect on
        this object or the params until ``_commit`` (a refused group leaves everything as it
        was)."""
        cls = type(self).__name__
        W, r = self.world_size, self.rank
        nccl = self._comm_device.type == "cuda"
        by_key: dict = {}
        seen: dict = {}
        for gi, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                what = f"{cls}: param_groups[{gi}]['params'][{j}]"
                if id(p) in seen:
                    raise ValueError(f"{what} is also param_groups{seen[id(p)]}: a param may "
                                     "appear once (its slice would be updated twice)")
                seen[id(p)] = f"[{gi}]['params'][{j}]"
                if p.dtype not in (torch.float32, torch.float64):
                    raise TypeError(f"{what} has dtype {p.dtype}, expected torch.float32 or "
                                    "torch.float64")
                if p.layout != torch.strided or not p.is_contiguous():
                    raise ValueError(f"{what} is not a dense contiguous tensor")
                if p.device.type not in ("cpu", "cuda"):
                    raise TypeError(f"{what} is on device {p.device}, expected the CPU or CUDA")
                if nccl and p.device.type != "cuda":
                    raise ValueError(f"{what} is on the CPU, and the process group's backend is "
                                     "NCCL (CUDA tensors only): use gloo for CPU params")
                if p.device.type != "cpu" and self._optimizer_class._kernel.passes > 1:
                    raise ValueError(f"{what}: sharded {self._optimizer_class.__name__} takes CPU "
                                     "tensors only (its per-tensor norms are summed across ranks "
                                     "on the host)")
                by_key.setdefault((p.device, p.dtype), []).append((gi, j, p))
        placeholders = self._optimizer_class._kernel.passes > 1
        buckets: list[_Bucket] = []
        pieces: list[_Piece] = []
        rows: dict = {}  # (gi, bucket) -> number of params of group gi in the bucket
        views: list = []  # parameters_as_bucket_view: (param, its view of the flat buffer)
        for (device, dtype), members in by_key.items():
            b = _Bucket(device, dtype, members)
            bi = len(buckets)
            b.size = -(-b.numel // W)
            b.flat = torch.zeros(b.size * W, dtype=dtype, device=device)
            lo, hi = r * b.size, min((r + 1) * b.size, b.numel)
            off = 0
            owned = []
            with torch.no_grad():
                for m, (gi, j, p) in enumerate(members):
                    n = p.numel()
                    row = rows.get((gi, bi), 0)
                    rows[(gi, bi)] = row + 1
                    b.flat[off : off + n].copy_(p.detach().reshape(-1))
                    if self.parameters_as_bucket_view:
                        views.append((p, b.flat[off : off + n].view_as(p)))
                    a, e = max(off, lo), min(off + n, hi)
                    if a < e:
                        t = b.flat[a:e] if self.parameters_as_bucket_view \
                            else p.detach().view(-1)[a - off : e - off]
                        owned.append(_Piece(gi, j, p, a - off, e - off, t, bi, row, m))
                    b.offsets.append(off)
                    off += n
            pieces += owned
            if nccl:
                self._plan_all_gather(b, owned)
            else:
                self._plan_broadcasts(b)
            buckets.append(b)
        placeholder_of: dict = {}
        holders: dict = {}  # (gi, bucket) -> placeholder
        groups = []
        for gi, group in enumerate(self.param_groups):
            plist: list = []
            for bi, b in enumerate(buckets):
                if placeholders and rows.get((gi, bi)):
                    ph = torch.zeros(0, dtype=b.dtype, device=b.device)
                    placeholder_of[id(ph)] = (gi, bi)
                    holders[(gi, bi)] = ph
                    plist.append(ph)
                plist += [pc.tensor for pc in pieces if pc.gi == gi and pc.bucket == bi]
            groups.append({**{k: v for k, v in group.items() if k not in _NOT_GROUP},
                           "params": plist})
        optim = self._optimizer_class(groups, **self._inner_defaults)
        return {"_buckets": buckets, "_pieces": pieces, "_rows": rows, "_views": views,
                "_piece_of": {id(pc.tensor): pc for pc in pieces},
                "_placeholder_of": placeholder_of, "_holders": holders, "optim": optim}

    def _plan_all_gather(self, b: _Bucket, owned: list) -> None:
        """NCCL: one all-gather of the flat buffer; without bucket views, the pieces are copied
        into this rank's slice before it, and the gathered buffer into every param that is not
        wholly this rank's after it."""
        if self.parameters_as_bucket_view:
            return
        b.copy_dst = [b.flat[b.offsets[pc.m] + pc.lo : b.offsets[pc.m] + pc.hi] for pc in owned]
        b.copy_src = [pc.tensor for pc in owned]
        whole = {pc.m for pc in owned if pc.lo == 0 and pc.hi == pc.param.numel()}
        b.out_dst = [p.detach().view(-1) for m, (_, _, p) in enumerate(b.members)
                     if m not in whole and p.numel()]
        b.out_src = [b.flat[off : off + p.numel()] for m, ((_, _, p), off) in
                     enumerate(zip(b.members, b.offsets)) if m not in whole and p.numel()]

    def _plan_broadcasts(self, b: _Bucket) -> None:
        """gloo: rank q's slice goes to the others by broadcasts (gloo's all-gather is several
        times slower than broadcasts of the same bytes). With bucket views, one broadcast of the
        slice of the flat buffer. Without, a slice of a few large params goes straight from and
        into the params' memory, one broadcast per param in it (no copy); a slice of many small
        ones goes through the flat buffer (one broadcast, a copy in on rank q and out on the
        others). Every rank makes the same choice: it depends on the partition only."""
        W, r, S = self.world_size, self.rank, b.size
        b.sends = []
        for q in range(W):
            lo, hi = q * S, min((q + 1) * S, b.numel)
            segs = []
            for (_, _, p), off in zip(b.members, b.offsets):
                a, e = max(off, lo), min(off + p.numel(), hi)
                if a < e:
                    segs.append((p, a - off, e - off, a))
            if not segs:
                b.sends.append([])
            elif self.parameters_as_bucket_view:
                b.sends.append([b.flat[lo:hi]])
            elif len(segs) * _DIRECT_MIN <= hi - lo or len(segs) == 1:
                b.sends.append([p.detach().view(-1)[x:y] for p, x, y, _ in segs])
            else:
                b.sends.append([b.flat[lo:hi]])
                views = [p.detach().view(-1)[x:y] for p, x, y, _ in segs]
                flats = [b.flat[a : a + y - x] for _, x, y, a in segs]
                if q == r:
                    b.copy_dst, b.copy_src = flats, views
                else:
                    b.out_dst += views
                    b.out_src += flats

    _PARTITION = ("_buckets", "_pieces", "_rows", "_views", "_piece_of", "_placeholder_of",
                  "_holders", "optim")

    def _commit(self, built: dict) -> None:
        """Makes the partition of ``_partition`` this object's."""
        for name in self._PARTITION:
            setattr(self, name, built[name])
        for p, view in self._views:
            p.data = view
        self._views = []
        # a weak reference: the inner optimizer must not keep this one (and its process group)
        # alive in a cycle that only the garbage collector, maybe at the exit of the
        # interpreter, would free
        self.optim._shard = weakref.proxy(self)
        for group, inner in zip(self.param_groups, self.optim.param_groups):
            for k, v in inner.items():
                if k not in _NOT_GROUP:
                    group.setdefault(k, v)
        for k, v in self.optim.defaults.items():
            self.defaults.setdefault(k, v)
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._ptrs = [p.data_ptr() for p in self._params]
        self._tops: dict = {}

    # ---- collectives -----------------------------------------------------------------------------

    def _agree(self, failed: bool, value: float = 0.0, what: str = "step") -> float:
        """The all-reduce of Note [A sharded step]: whether any rank failed (raised here when
        another did), and the sum of ``value`` over the ranks."""
        W = self.world_size
        t = torch.zeros(W + 1, dtype=torch.float64, device=self._comm_device)
        if failed:
            t[self.rank] = 1.0
        t[W] = value
        dist.all_reduce(t, group=self.process_group)
        t = t.cpu()
        bad = [k for k in range(W) if t[k] != 0.0]
        if bad and not failed:
            raise RuntimeError(
                f"{type(self).__name__}.{what}: rank {', '.join(map(str, bad))} of the process "
                f"group failed this {what} (its own error says why); no rank changed any param "
                "or state")
        return float(t[W])

    def before_run(self, grad_lists: list) -> None:
        """Called by the inner optimizer once its calls are checked, before it writes."""
        local = 0.0
        try:
            if self._optimizer_class._kernel.run_input is not None:
                arrays = [_view(g) for gl in grad_lists for g in gl if g.numel()]
                local = _clip.sumsq(f"{type(self).__name__}.step", arrays)
        except BaseException:
            self._agreed = True
            self._agree(True)
            raise
        self._agreed = True
        self.run_input = math.sqrt(self._agree(False, local))

    def pass_hook(self, params: list) -> Any:
        """The hook of Note [The pass hook] for an inner call over ``params``: each row's sums
        become those of its whole tensor, summed over the ranks."""
        key, local, rows = None, [], []
        for i, t in enumerate(params):
            pc = self._piece_of.get(id(t))
            if pc is not None:
                key = (pc.gi, pc.bucket)
                local.append(i)
                rows.append(pc.row)
            elif id(t) in self._placeholder_of:
                key = self._placeholder_of[id(t)]
        if key is None:
            raise AssertionError("a sharded call without pieces")
        n = self._rows[key]
        local_i, rows_i = np.array(local, dtype=np.intp), np.array(rows, dtype=np.intp)
        group = self.process_group

        def hook(pass_: int, sums: Any) -> None:
            # a tensor of torch's own memory: gloo's work may outlive the call, and a tensor
            # from_numpy holds a Python object that cannot be freed without the GIL (an abort at
            # the exit of the process when it is the last one to go)
            full = torch.zeros((n, sums.shape[1]), dtype=torch.float64)
            view = full.numpy()
            view[rows_i] = sums[local_i]
            dist.all_reduce(full, group=group)
            sums[local_i] = view[rows_i]

        return hook

    def _check_params(self, what: str = "step") -> None:
        """The params still hold the memory the pieces view (``p.data = ...`` would leave the
        pieces, and the steps, behind)."""
        if list(map(torch.Tensor.data_ptr, self._params)) == self._ptrs:
            return
        k = 0
        for gi, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                k += 1
                if p.data_ptr() != self._ptrs[k - 1]:
                    raise ValueError(
                        f"{type(self).__name__}.{what}: param_groups[{gi}]['params'][{j}] no "
                        "longer holds the memory it had when the optimizer was built (its .data "
                        "was replaced): this rank's slice of it is a view of that memory; build "
                        "the optimizer after replacing it")

    def _set_grads(self, what: str = "step") -> None:
        """Each piece's grad: a view of its param's grad (already averaged)."""
        for pc in self._pieces:
            g = pc.param.grad
            if g is pc.grad_src:
                continue
            if g is not None:
                if g.is_sparse or g.layout != torch.strided or not g.is_contiguous():
                    raise ValueError(
                        f"{type(self).__name__}.{what}: param_groups[{pc.gi}]['params'][{pc.j}]"
                        ".grad is not a dense contiguous tensor")
                pc.tensor.grad = g.detach().view(-1)[pc.lo : pc.hi]
            else:
                pc.tensor.grad = None
            pc.grad_src = g
        if self._holders:
            has = {}
            for bi, b in enumerate(self._buckets):
                for gi, _, p in b.members:
                    if p.grad is not None and p.numel():
                        has[(gi, bi)] = True
            self._set_placeholders(has)

    def _set_placeholders(self, has: dict) -> None:
        """A placeholder has a grad (its call is made on every rank) when a param of its group and
        bucket has one on some rank: as unsharded, a group without grads makes no call."""
        for key, ph in self._holders.items():
            if has.get(key):
                if ph.grad is None:
                    ph.grad = torch.zeros(0, dtype=ph.dtype, device=ph.device)
            else:
                ph.grad = None

    def _reduce_grads(self, what: str = "step") -> None:
        """``reduce_grads=True``: each rank's slice of the average of the ranks' grads."""
        W = self.world_size
        params = self._params
        mask = torch.zeros(W + len(params), dtype=torch.float64, device=self._comm_device)
        error = None
        for k, p in enumerate(params):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse or g.layout != torch.strided or not g.is_contiguous():
                error = ValueError(f"{type(self).__name__}.{what}: the grad of param {k} is not "
                                   "a dense contiguous tensor")
            mask[W + k] = 1.0
        if error is not None:
            mask[self.rank] = 1.0
        dist.all_reduce(mask, group=self.process_group)
        mask = mask.cpu()
        bad = [k for k in range(W) if mask[k] != 0.0]
        if error is not None:
            raise error
        if bad:
            raise RuntimeError(f"{type(self).__name__}.{what}: rank {', '.join(map(str, bad))} "
                               f"of the process group failed this {what} (its own error says "
                               "why); no rank changed any param or state")
        has = {id(p): bool(mask[W + k]) for k, p in enumerate(params)}
        for b in self._buckets:
            if b.gflat is None:
                b.gflat = torch.zeros(b.size * W, dtype=b.dtype, device=b.device)
                b.gslice = torch.zeros(b.size, dtype=b.dtype, device=b.device) \
                    if b.sends is None else b.gflat[self.rank * b.size : (self.rank + 1) * b.size]
            dst, src = [], []
            for (_, _, p), off in zip(b.members, b.offsets):
                view = b.gflat[off : off + p.numel()]
                if p.grad is not None:
                    dst.append(view)
                    src.append(p.grad.detach().view(-1))
                else:
                    view.zero_()
            if dst:
                torch._foreach_copy_(dst, src)
            b.gflat.div_(W)  # as DDP: each rank's grad divided by W, then summed
            if b.sends is None:
                _reduce_scatter(b.gslice, b.gflat, group=self.process_group)
            else:  # gloo: a reduce of each slice to its rank, 2x faster than its reduce-scatter
                for q in range(W):
                    dist.reduce(b.gflat[q * b.size : (q + 1) * b.size], dst=self._ranks[q],
                                group=self.process_group)
        for pc in self._pieces:
            b = self._buckets[pc.bucket]
            if has[id(pc.param)]:
                start = b.offsets[pc.m] + pc.lo - self.rank * b.size
                pc.tensor.grad = b.gslice[start : start + pc.hi - pc.lo]
            else:
                pc.tensor.grad = None
            pc.grad_src = None
        if self._holders:
            self._set_placeholders({(gi, bi): True for bi, b in enumerate(self._buckets)
                                    for gi, _, p in b.members if has[id(p)] and p.numel()})

    def _sync_tops(self) -> None:
        """For an algorithm that counts steps per group (``StepsPerGroup``): the key (step count
        and scalar state) each group's calls take is the most advanced of the pieces that have a
        grad on every rank, as unsharded it is of the params that have one (a rank's own pieces
        may lag: their params had no grad on steps when others did). One all-gather."""
        opt = self.optim
        n = len(opt._scalar_state)
        width = 1 + n
        G = len(self.param_groups)
        local = torch.full((G, width), -1.0, dtype=torch.float64)
        for gi, inner in enumerate(opt.param_groups):
            with_grad = [t for t in inner["params"]
                         if t.grad is not None and id(t) not in self._placeholder_of]
            if not with_grad:
                continue
            run = opt._runs.get(gi)
            if run is not None and len(with_grad) + sum(
                    id(t) in self._placeholder_of for t in inner["params"]) == len(run.params):
                top = run.key(n)
            else:
                if run is not None:
                    opt._flush(gi)
                states = opt._plain_states([dict.get(opt.state, t) for t in with_grad])
                keys = _BaseOptimizer._call_keys(opt, inner, states)
                top = max(keys, key=lambda k: k[0])
            local[gi] = torch.tensor([float(v) for v in top[:width]], dtype=torch.float64)
        out = torch.empty(self.world_size * G * width, dtype=torch.float64,
                          device=self._comm_device)
        _all_gather(out, local.reshape(-1).to(self._comm_device), group=self.process_group)
        full = out.cpu().reshape(self.world_size, G, width)
        self._tops = {}
        for gi in range(G):
            steps = full[:, gi, 0]
            best = int(torch.argmax(steps))  # the first rank of the most advanced count
            if steps[best] < 0:
                continue
            row = full[best, gi].tolist()
            top = (int(row[0]), *row[1:])
            self._tops[gi] = top
            run = opt._runs.get(gi)
            if run is not None:
                if run.key(n)[:width] != top:  # its run keeps its own count: the general step, keyed anew
                    opt._flush(gi)
                    del opt._runs[gi]

    def keys(self, gi: int, keys: list) -> list:
        """The keys of group ``gi``'s calls, as the inner optimizer's ``_call_keys`` gave them
        from this rank's pieces: those of ``_sync_tops`` for a ``StepsPerGroup`` algorithm."""
        top = self._tops.get(gi)
        return keys if top is None or not keys else [top] * len(keys)

    def _gather(self) -> None:
        """Every rank's slice into every rank's params: one all-gather per bucket on NCCL, the
        broadcasts of ``_plan_broadcasts`` on gloo."""
        r = self.rank
        for b in self._buckets:
            if b.copy_dst:
                torch._foreach_copy_(b.copy_dst, b.copy_src)
            if b.sends is None:
                _all_gather(b.flat, b.flat[r * b.size : (r + 1) * b.size],
                            group=self.process_group)
            else:  # Note [A sharded step]: _plan_broadcasts
                for q, tensors in enumerate(b.sends):
                    for t in tensors:
                        dist.broadcast(t, src=self._ranks[q], group=self.process_group)
            if b.out_dst:
                torch._foreach_copy_(b.out_dst, b.out_src)

    # ---- the step --------------------------------------------------------------------------------

    def _sync_groups(self) -> None:
        for group, inner in zip(self.param_groups, self.optim.param_groups):
            for k, v in group.items():
                if k not in _NOT_GROUP and inner.get(k) is not v:
                    inner[k] = v

    def step(self, closure: Any = None) -> Any:
        """The sharded step of Note [A sharded step]; returns the closure's loss."""
        loss = None
        self._consolidated = None
        self._agreed = False
        try:
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._check_params()
            self._sync_groups()
            with torch.no_grad():
                if not self.reduce_grads:
                    self._set_grads()
                elif not self._reduced:
                    self._reduce_grads()
                self._reduced = False
                if self._steps_per_group:
                    self._sync_tops()
                self.optim.step()
        except BaseException:
            self._reduced = False
            if not self._agreed:
                self._agreed = True
                self._agree(True)
            raise
        if not self._agreed:
            self._agree(False)
        with torch.no_grad():
            self._gather()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad`` of the params; the pieces let go of their grads."""
        super().zero_grad(set_to_none)
        self._reduced = False
        if set_to_none:
            for pc in self._pieces:
                pc.tensor.grad = None
                pc.grad_src = None

    def train(self) -> None:
        """Schedule-Free's ``train()`` (the params at y) on every rank: each rank moves its slice,
        then the params are gathered."""
        self._mode("train")

    def eval(self) -> None:
        """Schedule-Free's ``eval()`` (the params at x) on every rank: each rank moves its slice,
        then the params are gathered."""
        self._mode("eval")

    def _mode(self, name: str) -> None:
        fn = getattr(self.optim, name, None)
        if fn is None:
            raise AttributeError(f"{type(self).__name__}.{name}: "
                                 f"{self._optimizer_class.__name__} has no train and eval modes")
        try:
            self._check_params(name)
            self._sync_groups()
            with torch.no_grad():
                fn()
        except BaseException:
            self._agree(True, what=name)
            raise
        self._agree(False, what=name)
        for group, inner in zip(self.param_groups, self.optim.param_groups):
            for k, v in inner.items():
                if k not in _NOT_GROUP:
                    group[k] = v
        with torch.no_grad():
            self._gather()

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> torch.Tensor:
        """:func:`fusedopt.torch.clip_grad_norm_` of all the params' grads, computed from the
        slices: the sum of the squares of this rank's grads, one all-reduce, then this rank's
        grads (those its step reads) scaled. With ``reduce_grads=True`` the grads are reduced
        here first (the step then uses them as they are). Returns the norm, a 0-d tensor. If
        it fails on one rank, it raises on every rank, and no grad is scaled."""
        fn = f"{type(self).__name__}.clip_grad_norm_"
        _clip._check_norm_type(fn, norm_type)
        if self.reduce_grads:
            with torch.no_grad():
                self._reduce_grads("clip_grad_norm_")
            self._reduced = True
        try:
            if not self.reduce_grads:
                self._check_params("clip_grad_norm_")
                self._set_grads("clip_grad_norm_")
            grads = [pc.tensor.grad for pc in self._pieces if pc.tensor.grad is not None]
            arrays = [_view(g) for g in grads]
            local = _clip.sumsq(fn, arrays)
        except BaseException:
            self._reduced = False
            self._agree(True, what="clip_grad_norm_")
            raise
        total = self._agree(False, local, what="clip_grad_norm_")
        dtype = self._buckets[0].dtype if self._buckets else torch.float32
        if any(b.dtype == torch.float64 for b in self._buckets):
            dtype = torch.float64
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        norm = np_dtype(math.sqrt(total))
        if error_if_nonfinite and not math.isfinite(norm):
            raise RuntimeError(_clip._NONFINITE.format(float(norm_type)))
        with np.errstate(all="ignore"):
            coef = np.minimum((np_dtype(1.0) / (norm + np_dtype(1e-6))) * np_dtype(max_norm),
                              np_dtype(1.0))
        if coef != 1.0 and arrays:
            _clip._scale(fn, arrays, float(coef))
        return torch.tensor(float(norm), dtype=dtype)

    # ---- checkpoints -----------------------------------------------------------------------------

    def _local_state(self) -> tuple:
        """This rank's pieces' state: [(gi, j, lo, hi, entry)], and its inner groups' values."""
        sd = self.optim.state_dict()
        index = {id(t): k for k, t in
                 enumerate(t for g in self.optim.param_groups for t in g["params"])}
        local = []
        for pc in self._pieces:
            entry = sd["state"].get(index[id(pc.tensor)])
            if entry:
                local.append((pc.gi, pc.j, pc.lo, pc.hi,
                              {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                               for k, v in entry.items()}))
        groups = [{k: v for k, v in g.items() if k not in _NOT_GROUP}
                  for g in sd["param_groups"]]
        has = [any(pc.gi == gi for pc in self._pieces) for gi in range(len(self.param_groups))]
        return local, groups, has

    def _assemble(self, parts: list) -> dict:
        """The unsharded state dict from every rank's ``_local_state``."""
        buffers = self._optimizer_class._kernel.state_names
        entries: dict = {}
        for local, _, _ in parts:
            for gi, j, lo, hi, entry in local:
                p = self.param_groups[gi]["params"][j]
                e = entries.setdefault((gi, j), {})
                for name, v in entry.items():
                    if name in buffers and isinstance(v, torch.Tensor):
                        full = e.get(name)
                        if full is None:
                            full = e[name] = torch.zeros(p.numel(), dtype=v.dtype)
                        full[lo:hi] = v
                    elif name not in e:
                        e[name] = v
        state, groups, k = {}, [], 0
        code = self._optimizer_class._numpy._step_fns  # not state (ADOPT's clip_lambda)
        for gi, group in enumerate(self.param_groups):
            packed = {key: v for key, v in group.items() if key != "params" and key not in code}
            for _, inner, has in parts:
                if has[gi]:
                    for key, v in inner[gi].items():
                        packed.setdefault(key, v)
                    break
            ids = []
            for j, p in enumerate(group["params"]):
                e = entries.get((gi, j))
                if e is not None:
                    state[k] = {name: v.view(p.shape)
                                if name in buffers and isinstance(v, torch.Tensor) else v
                                for name, v in e.items()}
                ids.append(k)
                k += 1
            packed["params"] = ids
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gathers every rank's state on rank ``to`` (called on every rank), for ``state_dict``."""
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < self.world_size:
            raise ValueError(f"{type(self).__name__}.consolidate_state_dict: to must be a rank of "
                             f"the process group (0 to {self.world_size - 1}), got {to!r}")
        parts = [None] * self.world_size if self.rank == to else None
        dist.gather_object(self._local_state(), parts,
                           dst=self._ranks[to],
                           group=self.process_group)
        self._consolidated = self._assemble(parts) if parts is not None else None

    def state_dict(self) -> dict:
        """The unsharded state dict, on the rank that ``consolidate_state_dict`` gathered it on
        (since the last step)."""
        if self._consolidated is None:
            raise RuntimeError(
                f"{type(self).__name__}: the state is not consolidated on this rank: call "
                "consolidate_state_dict(to=rank) on every rank first (after the last step)")
        return self._consolidated

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads an unsharded state dict (of this class, of ``optimizer_class``, or of
        ``torch.optim``'s class of that name, saved at any world size): every rank gives the
        whole dict and keeps its slice."""
        cls = type(self).__name__
        groups, states = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, (list, tuple)) or not isinstance(states, dict):
            raise ValueError(f"{cls}.load_state_dict: expected a dict with 'state' and "
                             "'param_groups'")
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
        buffers = self._optimizer_class._kernel.state_names
        inner_states: dict = {}
        inner_groups = []
        k = 0
        for gi, inner in enumerate(self.optim.param_groups):
            saved = groups[gi]
            ids = []
            for t in inner["params"]:
                pc = self._piece_of.get(id(t))
                entry = states.get(saved["params"][pc.j]) if pc is not None else None
                if entry:
                    inner_states[k] = {
                        name: _slice(name, v, pc) if name in buffers else v
                        for name, v in entry.items()}
                ids.append(k)
                k += 1
            inner_groups.append({**{key: v for key, v in saved.items() if key not in _NOT_GROUP},
                                 "params": ids})
        self.optim.load_state_dict({"state": inner_states, "param_groups": inner_groups})
        for group, inner in zip(self.param_groups, self.optim.param_groups):
            for key, v in inner.items():
                if key not in _NOT_GROUP:
                    group[key] = v
        self._consolidated = None
        self._reduced = False
        for pc in self._pieces:
            pc.grad_src = None

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group`` (on every rank): the params are partitioned anew, and the
        state moves to its new slices (every rank's state is gathered on every rank first)."""
        if not getattr(self, "_built", False):
            super().add_param_group(param_group)
            return
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, self._local_state(), group=self.process_group)
        before = self._assemble(parts)
        n = len(self.param_groups)
        try:  # all or nothing across the ranks, as a step
            super().add_param_group(param_group)
            built = self._partition()
        except BaseException:
            del self.param_groups[n:]
            self._agree(True, what="add_param_group")
            raise
        try:
            self._agree(False, what="add_param_group")
        except BaseException:
            del self.param_groups[n:]
            raise
        self._commit(built)
        new = self.param_groups[n]
        count = sum(len(g["params"]) for g in before["param_groups"])
        packed = {k: v for k, v in new.items() if k != "params"}
        packed["params"] = list(range(count, count + len(new["params"])))
        self.load_state_dict({"state": before["state"],
                              "param_groups": [*before["param_groups"], packed]})


def _slice(name: str, v: Any, pc: Any) -> Any:
    """Piece ``pc``'s part of state buffer ``v`` of its param, as a new 1-d tensor."""
    if not isinstance(v, torch.Tensor) or v.numel() != pc.param.numel():
        raise ValueError(f"loaded state {name!r} of a param of {pc.param.numel()} elements has "
                         f"{v.numel() if isinstance(v, torch.Tensor) else type(v).__name__}")
    return v.detach().reshape(-1)[pc.lo : pc.hi].clone()
