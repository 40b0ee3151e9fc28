"""Converting model outputs to images and writing them (PNG grids, PNG folders, uint8 npz)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import UserError


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor -> uint8 NHWC array, rounding (the authors truncate; rounding is unbiased)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (or NHW) array -> float32 NCHW tensor in [-1, 1] (x / 127.5 - 1, Ho et al. 2020, §3.3)."""
    if a.ndim == 3:
        a = a[..., None]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image, ``nrow`` images per row (default: square-ish)."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def _check_writable(path: Path) -> None:
    parent = path.parent if path.parent != Path("") else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable; choose another path")


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 HWC image (C = 1 or 3) as PNG."""
    from PIL import Image

    path = Path(path)
    _check_writable(path)
    arr = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(arr).save(path)
    return path


def save_grid(x, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Write a batch (tensor in [-1, 1] NCHW, or uint8 NHWC array) as one PNG grid."""
    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    return save_image(make_grid(images, nrow=nrow), path)


def save_folder(x, directory: str | os.PathLike, start: int = 0) -> list[Path]:
    """Write each image of a batch as ``{index:06d}.png`` under ``directory``."""
    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    directory = Path(directory)
    return [save_image(img, directory / f"{start + i:06d}.png") for i, img in enumerate(images)]


def save_npz(x, path: str | os.PathLike, **extra) -> Path:
    """Write a batch as ``arr_0`` (uint8 NHWC), the layout FID tools read, plus extra arrays."""
    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    path = Path(path)
    _check_writable(path)
    np.savez(path, arr_0=images, **extra)
    return path
