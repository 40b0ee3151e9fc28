"""CIFAR-10 from the official "python version" tarball (Krizhevsky 2009).

``path`` may be the tarball, the extracted ``cifar-10-batches-py`` folder, or a folder holding either;
by default ``$DDPM_DATA/cifar10``. The batches are read straight out of the tarball (nothing is
extracted) with the restricted unpickler of :mod:`ddpm.data.safe_pickle`.
train = ``data_batch_1..5`` (50,000 images), test = ``test_batch`` (10,000), labels 0–9 named by
``batches.meta``.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from ddpm.errors import DataError
from ddpm.data.dataset import Source
from ddpm.data.download import data_root, fetch
from ddpm.data.safe_pickle import safe_loads

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}


def default_dir() -> Path:
    return data_root() / "cifar10"


def _locate(path: Path) -> Path | None:
    """The tarball or extracted folder at/under ``path``, or None."""
    if path.is_file():
        return path
    for candidate in (path, path / FOLDER):
        if (candidate / "data_batch_1").is_file() or (candidate / "test_batch").is_file():
            return candidate
    if (path / TARBALL).is_file():
        return path / TARBALL
    return None


def _read_members(source: Path, names: list[str]) -> dict[str, bytes]:
    """Raw bytes of the named batch files, from a folder or from inside the tarball."""
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"CIFAR-10 folder {source} lacks {', '.join(missing)}; re-extract {TARBALL}")
        return {n: (source / n).read_bytes() for n in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and base not in out:
                    out[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read CIFAR-10 tarball {source} ({e}); download {TARBALL} again from {URL}") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(f"{source} is not the CIFAR-10 python tarball (no {', '.join(missing)}); get {TARBALL} from {URL}")
    return out


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = safe_loads(raw)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"CIFAR-10 file {where} is corrupt or not a CIFAR-10 batch ({e}); re-download {TARBALL}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 file {where} holds a {type(obj).__name__}, not a batch dict; re-download {TARBALL}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _decode_batch(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-10 file {where} has no uint8 (N, 3072) 'data' array; re-download {TARBALL}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"CIFAR-10 file {where} has {labels.shape} labels for {len(data)} images; re-download {TARBALL}")
    # Each row is the red, green, then blue 32x32 plane, row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(path: str | None, split: str = "train", *, download: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC images (N, 32, 32, 3), int64 labels and the 10 class names of ``split``."""
    root = Path(path).expanduser() if path else default_dir()
    source = _locate(root)
    if source is None:
        target = root if root.suffix == ".gz" else root / TARBALL
        manual = f"download {TARBALL} from {URL} and put it at {target} or pass --data PATH"
        if not download:
            raise DataError(f"CIFAR-10 not found at {root}: {manual} (or let ddpm fetch it: --download on ddpm eval, --set data.download=true on ddpm train)")
        source = fetch(URL, target, MD5, what="CIFAR-10", manual=manual)
    names = BATCHES[split] + ["batches.meta"]
    raw = _read_members(source, names)
    meta = _unpickle(raw["batches.meta"], f"{source}:batches.meta")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    if len(class_names) != 10:
        raise DataError(f"CIFAR-10 batches.meta in {source} does not list 10 label_names; re-download {TARBALL}")
    parts = [_decode_batch(_unpickle(raw[n], f"{source}:{n}"), f"{source}:{n}") for n in BATCHES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, class_names



def _load(cfg):
    from ddpm.data.load import from_arrays

    images, labels, names = load_cifar10(cfg.path, cfg.split, download=cfg.download)
    return from_arrays(cfg, images, labels, names, f"cifar10/{cfg.split}")


SOURCE = Source("cifar10", _load, num_classes=10)
