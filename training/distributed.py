"""Multi-process training set-up: torchrun environment, process group, gradient synchronisation.

``torchrun --nproc_per_node N train_gan.py ...`` starts N processes with RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT set; `init_distributed` joins them in a process group (NCCL
on GPUs, Gloo on CPUs).  Without those variables it returns a single-process context and nothing
distributed is touched.

Gradients are averaged with explicit all-reduces (`DistContext.sync_gradients`) rather than through
``torch.nn.parallel.DistributedDataParallel``: the R1 and path-length penalties differentiate
through gradients (``autograd.grad(create_graph=True)``), which DDP's reducer does not support, and
the lazy-regularisation phases touch different parameter subsets.  This is the data-parallel scheme
of StyleGAN2-ADA: identical initial weights (broadcast from rank 0), each process computes its
share of the global batch, gradients are averaged before every optimizer step, so all processes
keep bit-identical weights.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process sits: rank among world_size processes, its device and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None          # None: single process, no process group

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes snapshots (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all processes (a new tensor; the input on one process)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process."""
        if not self.distributed:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def sync_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average gradients over processes (one flat all-reduce) and zero non-finite entries.

        Only parameters that received a gradient take part (the optimizer skips the others); the
        phase's graph is the same on every process, so every process reduces the same vector.
        """
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        if self.distributed:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
        torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0, out=flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def barrier(self) -> None:
        """Wait for every process (no-op when single)."""
        if self.distributed:
            dist.barrier()


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun process group if the environment says so; pick the device.

    ``device``: "auto" (CUDA if available, else CPU), "cpu" or "cuda".  On CUDA each process uses
    GPU LOCAL_RANK and NCCL; on CPU Gloo.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size <= 1:
        return DistContext(device=dev)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                       backend=backend)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group (if one was joined)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
