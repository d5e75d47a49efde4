"""Process-group setup for ``torchrun`` (single node or multi-node) and plain single-process runs.

``torchrun --nproc_per_node=N [--nnodes=M --rdzv_endpoint=HOST:PORT] -m kdseg_train.cli train cfg.yaml``
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and
joins the group with NCCL on CUDA or gloo on CPU. Without those variables the run is a
single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List

import torch
import torch.distributed as dist
from .errors import UsageError

__all__ = ["DistributedContext", "init_distributed", "select_device", "gather_batch"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints, figures and final weights."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (e.g. a stop signal)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        if self.backend == "nccl":
            value = value.cuda()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def sum(self, number: float) -> float:
        """Sum of ``number`` over ranks."""
        if not self.enabled:
            return number
        value = torch.tensor([float(number)], dtype=torch.float64)
        if self.backend == "nccl":
            value = value.cuda()
        dist.all_reduce(value)
        return float(value.item())

    def gather_objects(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order (picklable Python objects from this job only)."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def select_device(requested: str, context: DistributedContext) -> torch.device:
    """``auto``: CUDA when available (this process's ``LOCAL_RANK`` GPU), else CPU.

    Raises:
        RuntimeError: ``cuda`` requested without a usable GPU.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"train.device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but PyTorch sees no CUDA GPU; install the CUDA build of torch "
                           "or set train.device=cpu")
    return torch.device("cuda", context.local_rank)


def init_distributed(device_request: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the torchrun process group if this process was started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_request != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=timeout_minutes))
    return DistributedContext(rank, world_size, local_rank, backend)


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands every rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_batch(tensor: torch.Tensor, with_gradient: bool) -> torch.Tensor:
    """The global batch (ranks concatenated in order along dim 0) of an equally sized local batch.

    With ``with_gradient``, a loss computed identically on every rank from the gathered
    tensor back-propagates W times the true gradient into each local slice, which
    DistributedDataParallel's averaging over W ranks turns into exactly the gradient of
    that loss on the global batch. This keeps batch-level statistics such as TransUNet's
    batch Dice identical to a single-process run.
    """
    if with_gradient:
        return _GatherWithGradient.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
