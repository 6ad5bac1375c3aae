"""One run across processes under torchrun (`torch.distributed`): gloo on CPU, NCCL on CUDA.

The global batch is the config's, `batch_size x grad_accum` sequences per optimizer step, whatever
the number of processes N: rank r computes micro-batches r, r + N, r + 2N, ... of each step (so
`grad_accum` must be a multiple of N), each divided by `grad_accum` as on one process, and the
gradients are summed over ranks before clipping and the optimizer step. Every rank thus takes the
same step and holds the same weights; the loss history equals the one-process run's up to float
rounding (the sum is taken in another order; with dropout > 0 the masks differ too).

Rank 0 alone evaluates, reports metrics, writes checkpoints and samples. It reads the checkpoint
to resume from and sends it to the other ranks, so a run resumes with any N, on any machines. A
stop asked on rank 0 (Ctrl-C, a pruner) reaches every rank before the next step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current_ranks() -> Ranks:
    """This process's place in the torchrun job (joining the process group on first use); one
    process outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size())


def leave_process_group() -> None:
    """Leave the process group before the process exits: one that exits holding it may abort in
    gloo's threads at interpreter shutdown ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


def my_micro_batches(grad_accum: int, ranks: Ranks) -> range:
    if grad_accum % ranks.world:
        raise ValueError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of "
                         f"processes ({ranks.world}): the global batch is split between them")
    return range(ranks.rank, grad_accum, ranks.world)


def sum_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum every gradient over the ranks, in one flat buffer (one collective per step)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    total = value.clone()
    dist.all_reduce(total)
    return total


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any (used for rank 0's stop)."""
    signal = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(signal, op=dist.ReduceOp.MAX)
    return bool(signal.item())


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a checkpoint dict, a run's JSON, None)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
