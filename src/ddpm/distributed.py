"""torchrun / DDP plumbing: detect ranks from the environment, pick NCCL or gloo, shard and gather.

``torchrun --nproc_per_node=N -m ddpm train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain
``ddpm train`` sees none of them and runs as rank 0 of 1 without touching torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Ranks as torchrun (or any launcher setting the same variables) describes them."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(device: str | torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns (ranks, this process's device).

    NCCL when the device is CUDA, gloo otherwise. Each rank uses cuda:LOCAL_RANK.
    """
    from ddpm.accel import resolve_device

    info = env_info()
    device = resolve_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (used for e.g. rank 0's error messages)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_shards(x: torch.Tensor, info: DistInfo) -> torch.Tensor | None:
    """Reassemble a tensor sharded as ``global index i -> rank i % world_size`` on rank 0.

    Returns the full tensor on rank 0 and None elsewhere. Shards may differ in length by one.
    """
    if not info.enabled:
        return x
    n_local = torch.tensor([x.shape[0]], dtype=torch.long)
    counts = [torch.zeros_like(n_local) for _ in range(info.world_size)]
    dist.all_gather(counts, n_local)
    counts = [int(c) for c in counts]
    pad = max(counts)
    padded = torch.zeros((pad, *x.shape[1:]), dtype=x.dtype)
    padded[: x.shape[0]] = x.cpu()
    if dist.get_backend() == "nccl":
        padded = padded.cuda()
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    if not info.is_main:
        return None
    total = sum(counts)
    out = torch.empty((total, *x.shape[1:]), dtype=x.dtype)
    for r, (part, c) in enumerate(zip(parts, counts)):
        out[r::info.world_size] = part[:c].cpu()
    return out


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
