"""Data-parallel training on ``torch.distributed``: the process group, the shards, the all-reduces.

Run a trainer under ``torchrun`` (``torchrun --standalone --nproc_per_node=2 examples/multi_digit.py ...``,
``torchrun ... -m lenet.train ...``): `init` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``...) and joins the process group, on gloo for the CPU and NCCL for CUDA. Without
torchrun it returns `SINGLE`, the one-process context, and every helper below is the identity: the trainers
then do exactly what they did before this module existed.

What data parallelism means here (both trainers): a step's *global* batch is what one process would train on;
rank ``r`` takes its contiguous share ``shard(batch)`` (so no two ranks see the same string, and the union is the
global batch), computes the *sum* of its losses, divides it by the global count of counted losses (one
all-reduce of a few numbers) and back-propagates; `average_gradients` then sums every gradient over the ranks
in one flattened all-reduce. The result is the gradient of the mean over the global batch, the same as one
process's up to the order of float additions, so one optimiser step moves every parameter (the network's,
the segmentation scores', the SDNN's blank) as one process would.

Why not ``DistributedDataParallel``'s wrapper: a reader's loss is not a ``forward()`` call of one module (its
segmentation parameters live beside the network), and a rank's share of a step can be empty (a last batch
shorter than the number of ranks) or hold only strings no path can spell — DDP needs every rank to run
forward and backward through every parameter, or it hangs. An explicit all-reduce of all gradients (zeros for a
rank that had nothing) is the same collective DDP runs, without those conditions.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

__all__ = ["Context", "SINGLE", "init", "teardown", "launched"]


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes (``local_rank`` on its machine), the
    ``backend`` of the process group (``None`` alone) and the ``device`` it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The process that evaluates, prints and writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def bounds(self, n: int) -> tuple:
        """``(start, stop)`` of this rank's contiguous share of ``n`` items (shares differ by at most one)."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def shard(self, items: Sequence) -> Sequence:
        """This rank's share of ``items`` (all of them alone): over the ranks, every item exactly once, in
        order."""
        start, stop = self.bounds(len(items))
        return items[start:stop]

    def sum(self, values: Iterable[float]) -> List[float]:
        """The sums over the ranks of a few numbers (one all-reduce in float64); the numbers themselves alone."""
        values = [float(v) for v in values]
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, in place, in one flattened all-reduce per dtype. A
        rank without a gradient for a parameter adds zeros; a parameter no rank has a gradient for keeps
        none (so the optimiser skips it, as it would in one process). The caller scaled its loss so that
        the sum is the gradient of the global mean."""
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        for dtype in sorted({p.dtype for p in params}, key=str):
            group = [p for p in params if p.dtype == dtype]
            has = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=group[0].device)
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                             + [has])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p, any_grad in zip(group, flat[-len(group):].tolist()):
                n = p.numel()
                if any_grad > 0:
                    p.grad = flat[offset:offset + n].view_as(p).clone()
                else:
                    p.grad = None
                offset += n

    @torch.no_grad()
    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers rank 0's (as DDP does when it wraps a module)."""
        if not self.distributed:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


#: The context of a process run alone.
SINGLE = Context()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything that sets its environment) with more
    than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> Context:
    """Join the job's process group when launched by torchrun, else return `SINGLE`.

    ``device``: ``None`` chooses CUDA (this process's ``LOCAL_RANK``-th GPU, NCCL) when available and the CPU
    (gloo) otherwise; ``"cpu"`` forces gloo. Calling it again in a process that already joined returns the
    same context."""
    if not launched():
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=timeout_s)
        store, _, _ = next(rendezvous("env://", timeout=timeout))
        # torchrun keeps its store across restarts (--max-restarts): keys of the dead attempt would send the
        # new workers to dead addresses (gloo: "connectFullMesh failed ... Connection refused"), so every
        # attempt gets its own key prefix
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"lenet-attempt-{attempt}", store), rank=rank,
                                world_size=world, timeout=timeout)
    return Context(rank=rank, world_size=world, local_rank=local, backend=backend, device=device)


def teardown(ctx: Context) -> None:
    """Leave the process group (no barrier: rank 0 may still be evaluating when the others are done)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
