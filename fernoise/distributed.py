"""torch.distributed plumbing for `fernoise train`: torchrun environments and ``--devices N``.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) every process joins the group;
``--devices N`` spawns N local processes itself. Backend: NCCL on CUDA, gloo on the CPU. Each
rank trains on its own slice of the epoch's permutation with its own batch of
``--batch-size`` samples (so the class thresholds are computed per rank's batch, as in the
paper); gradients are averaged by DistributedDataParallel; rank 0 alone writes files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` (1 = not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The torchrun environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device_type: str) -> None:
    """Join the process group (no-op for one process)."""
    if d.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group(backend, rank=d.rank, world_size=d.world)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Element-wise sum of ``t`` over ranks (in place; returns it). NCCL reduces only CUDA
    tensors: a CPU tensor (the loop's metric sums, a method's per-sample state) goes through
    this rank's GPU and back."""
    if d.enabled:
        if dist.get_backend() == "nccl" and not t.is_cuda:
            on_gpu = t.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            t.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (one shape on all ranks) concatenated in rank order, differentiable:
    the gradient of each part flows back to the rank it came from, summed over the ranks that
    used it (torch.distributed.nn's all_gather; gloo emulates its reduce-scatter with all-to-all).
    With the same loss on every rank and DDP's gradient average, the result is the gradient of
    the loss over the gathered batch."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()))


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local_rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    fn(*args)


def spawn(n: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``n`` local processes forming one group (``--devices N``)."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _entry, args=(n, free_port(), fn, args), nprocs=n, join=True, start_method="spawn"
    )
