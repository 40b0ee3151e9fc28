"""Converting model outputs to images and writing them (PNG grids, PNG folders, uint8 npz)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import DataError, UserError


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


def save_image(image: np.ndarray, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write one uint8 HWC image (C = 1 or 3) as PNG, atomically (:func:`ddpm.outputs.atomic_write`),
    with ``metadata`` (a provenance record) in its ``ddpm`` text chunk."""
    from PIL import Image

    from ddpm.outputs import atomic_write, png_info

    path = Path(path)
    _check_writable(path)
    arr = image[..., 0] if image.shape[-1] == 1 else image
    with atomic_write(path) as f:
        Image.fromarray(arr).save(f, format="PNG", pnginfo=png_info(metadata))
    return path


def save_grid(x, path: str | os.PathLike, nrow: int | None = None, metadata: dict | None = None) -> Path:
    """Write a batch (tensor in [-1, 1] NCHW, or uint8 NHWC array) as one PNG grid."""
    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    return save_image(make_grid(images, nrow=nrow), path, metadata)


def save_folder(x, directory: str | os.PathLike, start: int = 0, metadata=None) -> list[Path]:
    """Write each image of a batch as ``{index:06d}.png`` under ``directory``, numbered from ``start``.

    The images are staged and moved in together (:func:`ddpm.outputs.staged_files`): a failure adds
    none of them. ``metadata(i)``, when given, is the provenance record of image ``start + i``.
    """
    from ddpm.outputs import staged_files

    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    directory = Path(directory)
    names = [f"{start + i:06d}.png" for i in range(len(images))]
    with staged_files(directory) as stage:
        for i, (img, name) in enumerate(zip(images, names)):
            _save_png(img, stage / name, None if metadata is None else metadata(i))
    return [directory / n for n in names]


def _save_png(image: np.ndarray, path: Path, metadata: dict | None) -> None:
    from PIL import Image

    from ddpm.outputs import png_info

    arr = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(arr).save(path, format="PNG", pnginfo=png_info(metadata))


def save_npz(x, path: str | os.PathLike, metadata: dict | None = None, **extra) -> Path:
    """Write a batch as ``arr_0`` (uint8 NHWC), the layout FID tools read, plus extra arrays and the
    provenance record as key ``provenance``; atomically."""
    from ddpm.outputs import atomic_write, npz_record

    images = to_uint8(x) if isinstance(x, torch.Tensor) else x
    path = Path(path)
    _check_writable(path)
    with atomic_write(path) as f:
        np.savez(f, arr_0=images, **extra, **npz_record(metadata))
    return path


def save_arrays(path: str | os.PathLike, arrays: dict, metadata: dict | None = None) -> Path:
    """Write named arrays as an .npz (atomically), with the provenance record as key ``provenance``."""
    from ddpm.outputs import atomic_write, npz_record

    path = Path(path)
    _check_writable(path)
    with atomic_write(path) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}, **npz_record(metadata))
    return path


def read_npz(path: str | os.PathLike, error=DataError) -> dict[str, np.ndarray]:
    """All arrays of an .npz, read without unpickling anything (``allow_pickle=False``); a file that is
    not a readable .npz, or holds pickled objects, raises ``error`` with one line."""
    import zipfile

    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:2] != b"PK":  # not a zip archive: numpy would take it for a pickle
            raise ValueError("not an .npz archive")
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in reason:  # object arrays inside the archive
            reason = "it holds pickled Python objects, which ddpm never loads"
        raise error(f"{path} is not a readable .npz of arrays ({reason})") from None
