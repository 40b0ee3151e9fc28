"""Training logs: a JSONL file of metrics (one object per log step), TensorBoard when installed, and the
running sums behind each record.

A record holds the loss averaged over the steps since the previous record, and the same loss split into
``NUM_BUCKETS`` equal ranges of the timestep t (``loss_by_t``: where in the chain the network is still
bad — improved DDPM's Fig. 2 shows how unequal these are; Nichol & Dhariwal 2021, §3.3). The sums are
part of every checkpoint, so a resumed run logs exactly the records of an uninterrupted one whatever
``train.log_every`` and ``train.ckpt_every`` are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import ConfigError

NUM_BUCKETS = 10
TENSORBOARD_HINT = 'pip install -e ".[tensorboard]"'


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def bucket_edges(num_timesteps: int) -> list[int]:
    """First timestep of each bucket, and T at the end: bucket k holds t in [edges[k], edges[k+1])."""
    n = min(NUM_BUCKETS, num_timesteps)
    return [-(-k * num_timesteps // n) for k in range(n)] + [num_timesteps]  # t lands in bucket t·n // T


class MetricsLog:
    """Appends ``{"step": ..., "loss": ..., ...}`` lines to ``metrics.jsonl``; mirrors to TensorBoard.

    ``tensorboard``: True requires the package (a one-line error with the install command when it is
    missing), None uses it when installed, False never.
    """

    def __init__(self, run_dir: Path, tensorboard: bool | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.edges: list[int] | None = None  # timestep buckets of ``loss_by_t`` (see bucket_edges)
        self._tb = None
        if self.check(tensorboard):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    @staticmethod
    def check(tensorboard: bool | None) -> bool:
        """Whether TensorBoard will be written; a one-line error when it is required but not installed
        (called before a run directory is touched)."""
        if tensorboard is False:
            return False
        if tensorboard_available():
            return True
        if tensorboard:
            raise ConfigError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_HINT} "
                              "(or drop --tensorboard)")
        return False

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (written by a process that died before checkpointing)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:  # a line cut short by a crash
                continue
        self.path.write_text("".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k not in ("step", "wall_time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)
            edges = self.edges
            for k, v in enumerate(record.get("loss_by_t") or []):
                if v is not None and edges is not None:
                    self._tb.add_scalar(f"loss_by_t/t{edges[k]:04d}-{edges[k + 1] - 1:04d}", v, step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        """An (H, W) or (H, W, C) uint8 image, e.g. a sample grid, to TensorBoard."""
        if self._tb is not None:
            self._tb.add_image(tag, grid if grid.ndim == 3 else grid[..., None], step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class RunningLoss:
    """Sums of the loss since the last record: the mean loss of each step (this rank's slice) and the
    per-example losses by timestep bucket. Kept on the device, so adding costs no host sync."""

    def __init__(self, num_timesteps: int, device):
        self.edges = bucket_edges(num_timesteps)
        self.num_timesteps = num_timesteps
        n = len(self.edges) - 1
        self._ids = torch.arange(n, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.bucket_sum = torch.zeros(n, device=device)
        self.bucket_count = torch.zeros(n, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, t: torch.Tensor, per_example: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        bucket = t * (len(self.edges) - 1) // self.num_timesteps
        onehot = (bucket.unsqueeze(1) == self._ids).float()  # not F.one_hot: it syncs to check its input
        self.bucket_sum += per_example.detach().float() @ onehot
        self.bucket_count += onehot.sum(0)
        self.count += 1

    def means(self, world_size: int = 1) -> tuple[float, list[float | None]]:
        """(mean loss per step, mean loss per bucket or None where no example fell) over all ranks."""
        total, sums, counts = self.loss_sum.clone(), self.bucket_sum.clone(), self.bucket_count.clone()
        if world_size > 1:
            for x in (total, sums, counts):
                torch.distributed.all_reduce(x)
            total /= world_size
        loss = float(total) / max(self.count, 1)
        by_t = [None if c == 0 else s / c for s, c in zip(sums.tolist(), counts.tolist())]
        return loss, by_t

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.bucket_sum.zero_()
        self.bucket_count.zero_()
        self.count = 0

    def fold_ranks(self, rank: int) -> None:
        """Before a checkpoint under DDP: rank 0 takes the sums of all ranks and the others restart at
        zero, so the single saved copy continues every rank's share."""
        for x in (self.loss_sum, self.bucket_sum, self.bucket_count):
            torch.distributed.all_reduce(x)
            if rank != 0:
                x.zero_()

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        return ({"running.loss_sum": self.loss_sum, "running.bucket_sum": self.bucket_sum,
                 "running.bucket_count": self.bucket_count}, {"count": self.count})

    def load_state_dict(self, tensors: dict[str, torch.Tensor], js: dict, rank: int = 0) -> None:
        """Restore the sums (rank 0 only: see :meth:`fold_ranks`); a checkpoint from before the sums
        were saved restarts them, as resumes did then."""
        self.reset()
        if rank != 0 or "running.loss_sum" not in tensors:
            return
        self.loss_sum.copy_(tensors["running.loss_sum"])
        if tensors["running.bucket_sum"].shape == self.bucket_sum.shape:
            self.bucket_sum.copy_(tensors["running.bucket_sum"])
            self.bucket_count.copy_(tensors["running.bucket_count"])
        self.count = int(js.get("count", 0))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's ``metrics.jsonl`` (a line cut short by a crash is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
