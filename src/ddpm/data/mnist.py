"""MNIST from the four idx files (LeCun, Cortes & Burges), raw or gzipped.

``path`` is a folder holding the files (also looked for in ``raw/`` and ``MNIST/raw/`` below it, the
torchvision layout); by default ``$DDPM_DATA/mnist``. train = 60,000 images, test (t10k) = 10,000,
28×28 uint8, labels 0–9.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ddpm.errors import DataError
from ddpm.data.dataset import Source
from ddpm.data.download import data_root, fetch

# Mirrors in the order tried; the md5 sums of the .gz files are the same on all of them.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = [str(d) for d in range(10)]

# idx type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_dir() -> Path:
    return data_root() / "mnist"


def parse_idx(data: bytes, where: str = "idx file") -> np.ndarray:
    """Decode one idx file (gzip-compressed or not) into a numpy array of its declared shape."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{where} is a damaged gzip file ({e}); download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{where} is not an idx file (bad magic number {data[:4].hex()}); use the MNIST idx files")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{where} is truncated or padded: {len(data)} bytes, header promises {expected}; download it again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` (also with the ``train-images.idx3-ubyte`` spelling) in the usual places."""
    dotted = stem.replace("-idx", ".idx")
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist(path: str | None, split: str = "train", *, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels of ``split`` from the idx files under ``path``."""
    root = Path(path).expanduser() if path else default_dir()
    found = []
    for stem in FILES[split]:
        file = _find(root, stem)
        if file is None:
            gz = stem + ".gz"
            manual = f"download {gz} from {MIRRORS[0]}{gz} and put it in {root} or pass --data PATH"
            if not download:
                raise DataError(f"MNIST file {stem}[.gz] not found in {root}: {manual} (or let ddpm fetch it: --download on ddpm eval, --set data.download=true on ddpm train)")
            file = fetch([m + gz for m in MIRRORS], root / gz, MD5[gz], what=f"MNIST {gz}", manual=manual)
        found.append(file)
    images = parse_idx(found[0].read_bytes(), str(found[0]))
    labels = parse_idx(found[1].read_bytes(), str(found[1]))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{found[0]} holds {images.dtype} {images.shape}, not uint8 (N, H, W) images")
    if labels.shape != (len(images),):
        raise DataError(f"{found[1]} has {labels.shape} labels for {len(images)} images in {found[0]}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{found[1]} has labels outside 0..9; is it an MNIST label file?")
    return images, labels.astype(np.int64)


def _load(cfg):
    from ddpm.data.load import from_arrays

    images, labels = load_mnist(cfg.path, cfg.split, download=cfg.download)
    return from_arrays(cfg, images, labels, CLASS_NAMES, f"mnist/{cfg.split}")


SOURCE = Source("mnist", _load, num_classes=len(CLASS_NAMES))
