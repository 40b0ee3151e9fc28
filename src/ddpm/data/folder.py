"""A folder of images (any depth), optionally labelled by first-level sub-folder name.

Files: extensions png/jpg/jpeg/webp/bmp in any letter case; hidden files and folders (names starting
with ".") are skipped; order is the sorted relative path, so the dataset is the same on every machine.
Every image is brought to ``channels`` × ``resolution`` × ``resolution`` by
:func:`ddpm.data.transforms.fit_pil`. Splits: if the folder has a ``train/`` or ``test/`` sub-folder,
that sub-folder is the split; otherwise the whole folder is ``train`` and there is no ``test``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ddpm.errors import DataError
from ddpm.data.dataset import ImageDataset, Source
from ddpm.data.transforms import fit_pil

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Above either limit images are decoded per item instead of all at start-up.
EAGER_MAX_IMAGES = 20_000
EAGER_MAX_BYTES = 2 << 30


def list_images(root: Path) -> list[Path]:
    """All image files under ``root`` (following symlinks), sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_image(path: str | os.PathLike, resolution: int, channels: int) -> torch.Tensor:
    """Decode one file to a uint8 ``(channels, resolution, resolution)`` tensor; DataError if unreadable."""
    try:
        with Image.open(path) as image:
            return fit_pil(image, resolution, channels)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} ({e}); delete or replace the file") from None


def _split_root(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if split == "test":
        raise DataError(f"image folder {root} has no test/ sub-folder: put held-out images in {root / 'test'} or use split train")
    return root


def load_folder(
    path: str | os.PathLike,
    resolution: int,
    channels: int,
    *,
    class_labels: bool = False,
    split: str = "train",
    eager_max_images: int = EAGER_MAX_IMAGES,
) -> ImageDataset:
    """The images under ``path`` as an :class:`ImageDataset`, in memory unless the folder is large."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist: pass --data PATH with a folder of images")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder: pass --data PATH with a folder of images")
    root = _split_root(root, split)
    paths = list_images(root)
    if not paths:
        raise DataError(f"image folder {root} contains no {'/'.join(e[1:] for e in EXTENSIONS)} files: add images or fix --data")

    if class_labels:
        rel = [p.relative_to(root).parts for p in paths]
        loose = [p for p, parts in zip(paths, rel) if len(parts) == 1]
        if loose:
            raise DataError(f"{loose[0]} is not inside a class sub-folder of {root}: move it into one or turn class labels off")
        class_names = sorted({parts[0] for parts in rel})
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[parts[0]] for parts in rel], dtype=torch.long)
        num_classes = len(class_names)
    else:
        class_names, num_classes = None, None
        labels = torch.full((len(paths),), -1, dtype=torch.long)

    loader = partial(load_image, resolution=resolution, channels=channels)
    shape = (channels, resolution, resolution)
    name = f"folder:{root}"
    nbytes = len(paths) * channels * resolution * resolution
    if len(paths) > eager_max_images or nbytes > EAGER_MAX_BYTES:
        loader(paths[0])  # fail now, not mid-training, if even the first file is unreadable
        return ImageDataset(None, labels, num_classes=num_classes, class_names=class_names, name=name,
                            paths=[str(p) for p in paths], loader=loader, shape=shape)
    # PIL releases the GIL while decoding and resizing, so threads help.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = tqdm(pool.map(loader, paths), total=len(paths), desc=f"reading {root}", unit="img",
                       leave=False, disable=None if len(paths) > 1000 else True)
        images = torch.stack(list(decoded))
    return ImageDataset(images, labels, num_classes=num_classes, class_names=class_names, name=name)


SOURCE = Source("folder", lambda cfg: load_folder(cfg.path, cfg.resolution, cfg.channels,
                                                  class_labels=cfg.class_labels, split=cfg.split))
