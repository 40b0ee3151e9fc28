"""Bringing images to the configured channel count and resolution.

Rules (documented in docs/data.md):

- Channels first: grayscale -> RGB repeats the plane; RGB -> grayscale uses PIL's "L" conversion
  (ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16). Alpha is dropped; 16-bit
  grayscale keeps its top 8 bits.
- Then size: an image that is already ``resolution × resolution`` is never resampled. Otherwise the
  shorter side is resized to ``resolution`` with PIL's BICUBIC filter (antialiased when shrinking: PIL
  widens the kernel by the scale factor), and the centre ``resolution × resolution`` square is cut out.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps

RESAMPLE = Image.BICUBIC


def rgb_to_gray(images: np.ndarray) -> np.ndarray:
    """uint8 ``(..., 3)`` RGB -> uint8 ``(..., 1)``, bit-identical to PIL's ``convert("L")``."""
    rgb = images.astype(np.uint32)
    gray = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return gray.astype(np.uint8)[..., None]


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 NHWC with 1 or 3 channels -> uint8 NHWC with ``channels`` channels."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        return rgb_to_gray(images)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (BICUBIC), then cut the centre square."""
    w, h = image.size
    if (w, h) == (resolution, resolution):
        return image
    scale = resolution / min(w, h)
    # max(): rounding must never leave the shorter side below the crop size.
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), RESAMPLE)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def fit_pil(image: Image.Image, resolution: int, channels: int) -> torch.Tensor:
    """A decoded PIL image -> uint8 ``(channels, resolution, resolution)`` tensor."""
    image = ImageOps.exif_transpose(image)  # phone photos store rotation as a tag
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale: PIL's convert would clip at 255; keep the top 8 bits instead.
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    image = resize_center_crop(image, resolution)
    arr = np.array(image, dtype=np.uint8)  # a copy: PIL's buffer is read-only
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def fit_array(images: np.ndarray, resolution: int, channels: int) -> torch.Tensor:
    """uint8 NHWC (or NHW) images of one size -> uint8 NCHW tensor at ``resolution`` / ``channels``.

    No resampling at all when the native size already matches (MNIST at 28, CIFAR-10 at 32).
    """
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    images = convert_channels(images, channels)
    n, h, w, c = images.shape
    if (h, w) != (resolution, resolution):
        out = np.empty((n, resolution, resolution, c), dtype=np.uint8)

        def resize_range(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                pil = Image.fromarray(images[i, ..., 0] if c == 1 else images[i])
                arr = np.asarray(resize_center_crop(pil, resolution), dtype=np.uint8)
                out[i] = arr[..., None] if c == 1 else arr

        # PIL releases the GIL while resampling, so threads share the work.
        workers = min(8, os.cpu_count() or 1)
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(resize_range, bounds[:-1], bounds[1:]))
        images = out
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
