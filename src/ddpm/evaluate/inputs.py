"""Turning the user's ``--data`` into evaluation images that match a checkpoint's network."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ddpm.config import Config, DataConfig
from ddpm.errors import DataError


def data_config_for(spec: str | None, config: Config, split: str | None = None, *,
                    download: bool = False) -> DataConfig:
    """The DataConfig named by ``spec``: None -> the checkpoint's training data; a source name
    (``digits``, ``cifar10``, ``mnist``) -> that dataset; a folder -> its images. Resolution and
    channels always follow the network."""
    from ddpm.data import SOURCES

    base = config.data
    if spec is None:
        cfg = replace(base)
    elif spec in SOURCES and spec != "folder":
        cfg = DataConfig(source=spec, class_labels=base.class_labels)
    elif Path(spec).is_dir():
        cfg = DataConfig(source="folder", path=spec)
    else:
        raise DataError(f"--data {spec!r} is neither a dataset name ({', '.join(s for s in SOURCES if s != 'folder')}),"
                        " a folder of images nor an .npz of images")
    cfg.resolution, cfg.channels = config.model.resolution, config.model.in_channels
    if download:
        cfg.download = True
    if split is not None:
        cfg.split = split
    return cfg


def eval_images(spec: str | None, config: Config, *, split: str = "test", num: int | None = None,
                download: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(images float NCHW in [−1, 1], labels or None, a description) for ``--data spec``; an .npz of
    uint8 NHWC images (``arr_0``) is also accepted. The first ``num`` (npz) or a fixed random subset
    of ``num`` (datasets, seed 0). ``download``: fetch a named dataset (cifar10, mnist) when it is
    not found (checksum-verified), as ``data.download`` does for training."""
    if spec is not None and spec.endswith(".npz"):
        from ddpm.evaluate.fid import load_images
        from ddpm.images import from_uint8

        x = from_uint8(load_images(spec, num))
        want = (config.model.in_channels, config.model.resolution, config.model.resolution)
        if tuple(x.shape[1:]) != want:
            raise DataError(f"{spec} holds images of shape {tuple(x.shape[1:])}; the model needs {want}")
        return x, None, spec
    from ddpm.data import load_tensor

    cfg = data_config_for(spec, config, split, download=download)
    x, labels = load_tensor(cfg, num=num, split=split)
    name = cfg.path if cfg.source == "folder" else cfg.source
    return x, labels, f"{name}/{split}"

