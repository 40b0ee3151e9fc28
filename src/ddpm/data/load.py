"""``load_dataset`` / ``load_tensor``: one entry point over every data source."""

from __future__ import annotations

import importlib

import numpy as np
import torch

from ddpm.config import DataConfig
from ddpm.errors import ConfigError
from ddpm.data.dataset import ImageDataset, Source
from ddpm.data.transforms import fit_array

# data.source name -> "module:attribute" of its Source; one line per data set (docs/extending.md).
DATASETS: dict[str, str] = {
    "digits": "ddpm.data.digits:SOURCE",
    "folder": "ddpm.data.folder:SOURCE",
    "cifar10": "ddpm.data.cifar10:SOURCE",
    "mnist": "ddpm.data.mnist:SOURCE",
}
SOURCES = tuple(DATASETS)
SPLITS = ("train", "test")


def get_source(name: str) -> Source:
    if name not in DATASETS:
        raise ConfigError(f"unknown data source {name!r}; choose one of {', '.join(DATASETS)}")
    module, attr = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def source_num_classes(name: str) -> int | None:
    """Classes of a built-in data set (None for folders, whose sub-folders decide, or unknown names)."""
    return get_source(name).num_classes if name in DATASETS else None


def check_config(cfg: DataConfig) -> None:
    """Raise ConfigError for an unknown source/split or an impossible channel count/resolution."""
    get_source(cfg.source)
    if cfg.split not in SPLITS:
        raise ConfigError(f"unknown data split {cfg.split!r}; choose train or test")
    if cfg.channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {cfg.channels}")
    if not isinstance(cfg.resolution, int) or cfg.resolution < 1:
        raise ConfigError(f"data.resolution must be a positive integer, got {cfg.resolution!r}")
    if cfg.source == "folder" and not cfg.path:
        raise ConfigError("data source 'folder' needs a path: set data.path (or --data) to an image folder")


def from_arrays(cfg: DataConfig, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                name: str) -> ImageDataset:
    """An in-memory dataset from uint8 arrays, resized to ``cfg`` (labels only when asked for)."""
    tensor = fit_array(images, cfg.resolution, cfg.channels)
    if cfg.class_labels:
        return ImageDataset(
            tensor, torch.from_numpy(labels.astype(np.int64)),
            num_classes=len(class_names), class_names=list(class_names), name=name,
        )
    return ImageDataset(tensor, torch.full((len(tensor),), -1, dtype=torch.long), name=name)


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """The dataset ``cfg`` describes, as uint8 ``C×H×W`` items with labels (−1 when labels are off).

    ``digits``: the bundled 5,000 MNIST digits (4,500 train / 500 test), no file needed.
    ``cifar10`` / ``mnist``: the official files at ``cfg.path`` (default ``$DDPM_DATA/<name>``,
    ``$DDPM_DATA`` defaulting to ``~/.cache/ddpm``), downloaded with checksum checks when
    ``cfg.download`` is set. ``folder``: every image under ``cfg.path``, labels from sub-folder names.
    """
    check_config(cfg)
    return get_source(cfg.source).load(cfg)


def subset_indices(n: int, num: int | None, seed: int = 0) -> torch.Tensor:
    """All of ``range(n)``, or a fixed pseudo-random ``num`` of them in increasing order.

    A random (not leading) subset because some sources are sorted by class (the digits are).
    """
    if num is None or num >= n:
        return torch.arange(n)
    if num < 0:
        raise ConfigError(f"number of images must be >= 0, got {num}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:num].sort().values


def load_tensor(
    cfg: DataConfig, num: int | None = None, split: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of ``cfg`` as float32 NCHW in [−1, 1] (x / 127.5 − 1) plus labels, for evaluation.

    ``split`` overrides ``cfg.split``; ``num`` takes a fixed subset (seed 0, see :func:`subset_indices`).
    Labels are returned when ``cfg.class_labels`` is set, else ``None``.
    """
    if split is not None:
        from dataclasses import replace

        cfg = replace(cfg, split=split)
    ds = load_dataset(cfg)
    idx = subset_indices(len(ds), num)
    x = ds.get_images(idx).float() / 127.5 - 1.0
    labels = ds.labels[idx] if ds.num_classes is not None else None
    return x, labels
