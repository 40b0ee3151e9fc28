"""The one dataset type every source returns: uint8 images plus integer labels."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Source:
    """A data set of :data:`ddpm.data.load.DATASETS`: ``load(cfg) -> ImageDataset`` for a
    :class:`ddpm.config.DataConfig`, and its class count (None: read from the data, e.g. folders)."""

    name: str
    load: Callable
    num_classes: int | None = None


class ImageDataset(Dataset):
    """Images as uint8 ``C×H×W`` tensors with an integer label (−1 when labels are off or absent).

    Small datasets (the digits, MNIST, CIFAR-10, small folders) hold everything in ``.images``, one
    uint8 tensor ``(N, C, H, W)``, so a trainer can move it to the GPU once. Large folders keep
    ``.images = None`` and decode file ``i`` on each ``__getitem__`` through ``loader``.
    Pixel scaling to [−1, 1] and random flips are the trainer's job, not the dataset's.
    """

    def __init__(
        self,
        images: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        name: str = "",
        paths: Sequence[str] | None = None,
        loader: Callable[[str], torch.Tensor] | None = None,
        shape: tuple[int, int, int] | None = None,
    ):
        if images is None and (paths is None or loader is None or shape is None):
            raise ValueError("a lazy ImageDataset needs paths, loader and shape")
        if images is not None:
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
            shape = tuple(images.shape[1:])
        n = len(images) if images is not None else len(paths)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.num_classes = num_classes
        self.class_names = class_names
        self.name = name
        self.paths = list(paths) if paths is not None else None
        self._loader = loader
        self.shape: tuple[int, int, int] = shape  # (C, H, W) of every item

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i] if self.images is not None else self._loader(self.paths[i])
        return image, int(self.labels[i])

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def get_images(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 ``(len(indices), C, H, W)`` for the given indices, in memory or decoded from disk.

        Lazy datasets decode the files on a thread pool (PIL releases the GIL while decoding), so a
        trainer can fetch a whole batch of a large folder with one call and no worker processes.
        """
        if self.images is not None:
            return self.images[torch.as_tensor(indices, dtype=torch.long).to(self.images.device)]
        if len(indices) == 0:
            return torch.empty((0, *self.shape), dtype=torch.uint8)
        paths = [self.paths[int(i)] for i in indices]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(paths))) as pool:
            return torch.stack(list(pool.map(self._loader, paths)))

    def __repr__(self) -> str:
        c, h, w = self.shape
        where = "in memory" if self.in_memory else "lazy from disk"
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return f"ImageDataset({self.name!r}, {len(self)} images {c}x{h}x{w}{classes}, {where})"
