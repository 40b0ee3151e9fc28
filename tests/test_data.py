"""ddpm.data: bundled digits, folders, CIFAR-10 tarball, MNIST idx, downloads, the safe unpickler."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import pickletools
import re
import struct
import tarfile
import urllib.error
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.config import DataConfig
from ddpm.data import ImageDataset, load_dataset, load_tensor
from ddpm.data import cifar10, digits, download, folder, mnist
from ddpm.data.load import subset_indices
from ddpm.data.safe_pickle import safe_loads
from ddpm.data.transforms import fit_array, resize_center_crop, rgb_to_gray
from ddpm.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- bundled digits


def test_digits_file_matches_provenance_and_is_small():
    raw = digits.asset_bytes()
    text = resources.files("ddpm.data").joinpath("assets", "PROVENANCE.md").read_text()
    recorded = re.search(r"Output: `mnist_5k.npz`, (\d+) bytes, sha256 `([0-9a-f]{64})`", text)
    assert recorded, "PROVENANCE.md must record the output size and sha256"
    assert hashlib.sha256(raw).hexdigest() == recorded.group(2)
    assert len(raw) == int(recorded.group(1)) < 5 * 2**20
    assert "CC BY-SA 3.0" in text
    assert "LeCun" in text and "Cortes" in text


def test_digits_are_5000_mnist_images_500_per_class():
    images, labels = digits.load_all()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,)
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert images.min() == 0 and images.max() == 255
    # MNIST statistics: mean intensity ~0.1307 over the full set, the top row is always blank.
    assert 0.125 < images.mean() / 255 < 0.137
    assert images[:, 0, :].max() == 0
    # Every image has ink: no blank rows crept in through a bad conversion.
    assert (images.reshape(5000, -1).max(axis=1) > 128).all()


def test_digits_split_is_balanced_disjoint_and_complete():
    _, labels = digits.load_all()
    train = digits.split_indices(labels, "train")
    test = digits.split_indices(labels, "test")
    assert len(train) == 4500 and len(test) == 500
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    assert np.bincount(labels[test]).tolist() == [50] * 10
    # The last 50 rows of each class block are the test set.
    assert np.array_equal(test[:50], np.arange(450, 500))


def test_load_dataset_digits_native_size_is_the_raw_pixels():
    ds = load_dataset(DataConfig(source="digits", resolution=28, channels=1, class_labels=True))
    images, labels = digits.load_digits("train")
    assert isinstance(ds, ImageDataset) and len(ds) == 4500
    assert ds.images.shape == (4500, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.num_classes == 10 and ds.class_names == [str(d) for d in range(10)]
    assert ds.labels.dtype == torch.long and torch.equal(ds.labels, torch.from_numpy(labels))
    x, y = ds[460]
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8 and y == 1 and isinstance(y, int)


def test_load_dataset_digits_rgb_32_without_labels():
    ds = load_dataset(DataConfig(source="digits", split="test"))
    assert ds.images.shape == (500, 3, 32, 32)
    assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 1], ds.images[:, 2])
    assert ds.num_classes is None and ds.class_names is None
    assert ds[0][1] == -1 and (ds.labels == -1).all()
    # Upsampling 28 -> 32 keeps the digit: the image mean barely moves.
    raw = digits.load_digits("test")[0].astype(np.float64)
    assert abs(ds.images.double().mean().item() - raw.mean()) < 2.0


def test_load_tensor_scaling_subset_and_labels():
    cfg = DataConfig(source="digits", resolution=28, channels=1, class_labels=True)
    x, y = load_tensor(cfg, num=100, split="test")
    x2, y2 = load_tensor(cfg, num=100, split="test")
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the subset is fixed
    assert len(torch.unique(y)) >= 8  # a random subset, not the first 100 rows (all zeros)
    ds = load_dataset(DataConfig(source="digits", resolution=28, channels=1, class_labels=True, split="test"))
    idx = subset_indices(500, 100)
    assert (idx[1:] > idx[:-1]).all()  # in dataset order
    assert torch.equal(x, ds.images[idx].float() / 127.5 - 1) and torch.equal(y, ds.labels[idx])
    assert x.min() == -1.0 and x.max() == 1.0  # 0 -> -1, 255 -> 1 exactly
    full, _ = load_tensor(cfg, split="test")
    assert torch.equal(full, ds.images.float() / 127.5 - 1)
    assert load_tensor(DataConfig(source="digits", channels=1, resolution=28), num=5)[1] is None


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown data source 'imagenet'"):
        load_dataset(DataConfig(source="imagenet"))
    with pytest.raises(ConfigError, match="split"):
        load_dataset(DataConfig(source="digits", split="val"))
    with pytest.raises(ConfigError, match="channels"):
        load_dataset(DataConfig(source="digits", channels=4))
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset(DataConfig(source="folder"))


# ----------------------------------------------------------------------------- transforms


def test_rgb_to_gray_is_bit_identical_to_pil():
    rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(rgb_to_gray(rgb)[..., 0], expected)


def test_resize_center_crop_keeps_the_middle():
    # Three 20-px vertical bands red | green | blue on a 60x20 image; at 16 px the crop is the green band.
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:40, 1] = 255
    arr[:, 40:, 2] = 255
    out = np.asarray(resize_center_crop(Image.fromarray(arr), 16))
    assert out.shape == (16, 16, 3)
    inner = out[:, 3:13].astype(int)  # away from the bicubic overshoot at the band edges
    assert (inner[..., 1] == 255).all() and (inner[..., 0] == 0).all() and (inner[..., 2] == 0).all()
    # Portrait image: crop is vertical.
    assert np.asarray(resize_center_crop(Image.fromarray(arr.transpose(1, 0, 2)), 16)).shape == (16, 16, 3)
    # Shorter side already equal to the resolution (LSUN at 256): a pure centre crop, no resampling.
    noise = np.random.default_rng(2).integers(0, 256, (8, 13, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(resize_center_crop(Image.fromarray(noise), 8)), noise[:, 2:10])


def test_fit_array_no_resampling_at_native_size():
    a = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = fit_array(a, 32, 3)
    assert out.shape == (4, 3, 32, 32) and torch.equal(out, torch.from_numpy(a).permute(0, 3, 1, 2))
    down = fit_array(a, 16, 3)
    pil = np.array(Image.fromarray(a[2]).resize((16, 16), Image.BICUBIC))
    assert torch.equal(down[2], torch.from_numpy(pil).permute(2, 0, 1))


# ----------------------------------------------------------------------------- image folders


def _save(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _solid(h, w, rgb):
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "cats" / "a.png", _solid(8, 8, (200, 10, 10)))
    _save(root / "cats" / "deep" / "nested" / "b.JPG", _solid(16, 24, (10, 200, 10)), "JPEG")
    _save(root / "dogs" / "c.bmp", _solid(8, 8, (10, 10, 200)))
    _save(root / "dogs" / "d.webp", _solid(12, 12, (90, 90, 90)), "WEBP")
    _save(root / "dogs" / "e.png", np.full((8, 8), 77, dtype=np.uint8))  # grayscale file
    _save(root / "dogs" / ".hidden.png", _solid(8, 8, (1, 2, 3)))
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_folder_dataset_nested_mixed_formats_and_labels(image_tree):
    ds = load_dataset(DataConfig(source="folder", path=str(image_tree), resolution=8, channels=3, class_labels=True))
    assert len(ds) == 5  # hidden file and .txt skipped
    assert ds.in_memory and ds.images.shape == (5, 3, 8, 8)
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    names = [Path(p).name for p in folder.list_images(image_tree)]
    assert names == ["a.png", "b.JPG", "c.bmp", "d.webp", "e.png"]  # sorted relative paths
    assert ds.images[0, :, 4, 4].tolist() == [200, 10, 10]  # exact: 8x8 PNG is not resampled
    assert ds.images[2, :, 4, 4].tolist() == [10, 10, 200]
    assert ds.images[4, :, 4, 4].tolist() == [77, 77, 77]  # L -> RGB repeats the plane
    g = ds.images[1, :, 4, 4].int()  # 16x24 JPEG resized/cropped to 8x8: still green
    assert g[1] > 180 and g[0] < 40 and g[2] < 40
    d = ds.images[3].int()
    assert (d - 90).abs().max() <= 3  # lossy webp of a flat grey


def test_folder_grayscale_target_uses_pil_luma(image_tree):
    ds = load_dataset(DataConfig(source="folder", path=str(image_tree), resolution=8, channels=1))
    assert ds.images.shape == (5, 1, 8, 8) and ds.num_classes is None and (ds.labels == -1).all()
    expected = int(np.asarray(Image.fromarray(_solid(1, 1, (200, 10, 10))).convert("L"))[0, 0])
    assert ds.images[0, 0, 0, 0].item() == expected == 67  # 0.299*200 + 0.587*10 + 0.114*10 = 66.8


def test_folder_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    _save(tmp_path / "g16.png", values)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    ds = load_dataset(DataConfig(source="folder", path=str(tmp_path), resolution=8, channels=1))
    assert torch.equal(ds.images[0, 0], torch.from_numpy((values >> 8).astype(np.uint8)))


def test_folder_lazy_matches_eager(image_tree):
    eager = folder.load_folder(image_tree, 8, 3, class_labels=True)
    lazy = folder.load_folder(image_tree, 8, 3, class_labels=True, eager_max_images=2)
    assert lazy.images is None and not lazy.in_memory and len(lazy) == 5
    for i in range(5):
        assert torch.equal(lazy[i][0], eager[i][0]) and lazy[i][1] == eager[i][1]
    assert torch.equal(lazy.get_images([4, 1]), eager.images[[4, 1]])


def test_folder_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _save(tmp_path / split / f"{i}.png", _solid(4, 4, (i, i, i)))
    train = load_dataset(DataConfig(source="folder", path=str(tmp_path), resolution=4))
    test = load_dataset(DataConfig(source="folder", path=str(tmp_path), resolution=4, split="test"))
    assert len(train) == 3 and len(test) == 2


def test_folder_errors_name_the_path(tmp_path, image_tree):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_dataset(DataConfig(source="folder", path=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=re.escape(str(empty)) + ".*contains no"):
        load_dataset(DataConfig(source="folder", path=str(empty)))
    with pytest.raises(DataError, match="no test/ sub-folder"):
        load_dataset(DataConfig(source="folder", path=str(image_tree), split="test"))
    bad = image_tree / "dogs" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_dataset(DataConfig(source="folder", path=str(image_tree), resolution=8))
    bad.unlink()
    _save(image_tree / "loose.png", _solid(8, 8, (0, 0, 0)))
    with pytest.raises(DataError, match="loose.png is not inside a class sub-folder"):
        load_dataset(DataConfig(source="folder", path=str(image_tree), resolution=8, class_labels=True))


# ----------------------------------------------------------------------------- CIFAR-10

class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR-10: every string as a py2 ``str`` (BINSTRING)
    and numpy globals under their old ``numpy.core`` module name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + raw)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _cifar_batches(seed=0, per_batch=4, n_test=3):
    """Synthetic batches in the official format: Python-2 style dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    files = {}
    for name, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", n_test)]:
        files[name] = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
    files["batches.meta"] = {b"label_names": CLASSES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    return files


def _write_cifar(dest: Path, files: dict, *, as_tarball=True, override: dict | None = None) -> Path:
    raw = {k: _py2_dumps(v) for k, v in files.items()}
    raw.update(override or {})
    if not as_tarball:
        d = dest / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for k, v in raw.items():
            (d / k).write_bytes(v)
        return d
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for k, v in raw.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{k}")
            info.size = len(v)
            tar.addfile(info, io.BytesIO(v))
    return dest


def test_cifar10_reader_tarball_folder_and_parent(tmp_path):
    files = _cifar_batches()
    tarball = _write_cifar(tmp_path / "dl" / "cifar-10-python.tar.gz", files)
    images, labels, names = cifar10.load_cifar10(str(tarball), "train")
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert names[0] == "airplane" and names[9] == "truck"
    # Row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    row = files["data_batch_2"][b"data"][1]
    assert np.array_equal(images[5, :, :, 0], row[:1024].reshape(32, 32))
    assert np.array_equal(images[5, :, :, 2], row[2048:].reshape(32, 32))
    assert labels.tolist() == sum((files[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])
    # Same data from the parent folder of the tarball and from an extracted folder.
    assert np.array_equal(cifar10.load_cifar10(str(tmp_path / "dl"), "train")[0], images)
    extracted = _write_cifar(tmp_path / "ex", files, as_tarball=False)
    assert np.array_equal(cifar10.load_cifar10(str(extracted), "train")[0], images)
    assert np.array_equal(cifar10.load_cifar10(str(tmp_path / "ex"), "train")[0], images)
    test_images, test_labels, _ = cifar10.load_cifar10(str(tarball), "test")
    assert len(test_images) == 3 and test_labels.tolist() == files["test_batch"][b"labels"]

    ds = load_dataset(DataConfig(source="cifar10", path=str(tarball), class_labels=True))
    assert ds.images.shape == (20, 3, 32, 32) and ds.num_classes == 10 and ds.class_names[3] == "cat"
    assert torch.equal(ds.images[5], torch.from_numpy(images[5]).permute(2, 0, 1))
    small = load_dataset(DataConfig(source="cifar10", path=str(tarball), resolution=16, channels=1, split="test"))
    assert small.images.shape == (3, 1, 16, 16) and (small.labels == -1).all()


def test_cifar10_default_location_uses_ddpm_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA", str(tmp_path))
    _write_cifar(tmp_path / "cifar10" / "cifar-10-python.tar.gz", _cifar_batches())
    assert len(load_dataset(DataConfig(source="cifar10", split="test"))) == 3


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_loads_rebuilds_arrays_at_every_protocol(protocol):
    obj = {b"data": np.arange(24, dtype=np.uint8).reshape(2, 12), "labels": [3, 7], b"x": np.float64(2.5)}
    out = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert out[b"data"].dtype == np.uint8 and np.array_equal(out[b"data"], obj[b"data"])
    assert out["labels"] == [3, 7] and out[b"x"] == 2.5


def test_cifar10_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Shell:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    class Evil:  # harmless but observable side effect: creates a directory
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    with pytest.raises(pickle.UnpicklingError, match="system"):
        safe_loads(pickle.dumps(Shell(), protocol=2))
    payload = pickle.dumps(Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="mkdir"):
        safe_loads(payload)
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")
    tarball = _write_cifar(tmp_path / "evil.tar.gz", _cifar_batches(), override={"test_batch": payload})
    with pytest.raises(DataError, match="corrupt or not a CIFAR-10 batch"):
        cifar10.load_cifar10(str(tarball), "test")
    assert not marker.exists()
    # The payload is live — it imports os.mkdir and calls it on the marker — shown by disassembly,
    # so the test never hands it to an unpickler that would run it.
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert ("GLOBAL", f"{os.mkdir.__module__} mkdir") in ops
    assert ("BINUNICODE", str(marker)) in ops and ("REDUCE", None) in ops


def test_cifar10_missing_offline_and_checksum(tmp_path, monkeypatch):
    where = tmp_path / "c10"
    with pytest.raises(DataError, match=re.escape(str(where)) + ".*cifar-10-python.tar.gz"):
        load_dataset(DataConfig(source="cifar10", path=str(where)))

    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "_urlopen", offline)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(source="cifar10", path=str(where), download=True))
    msg = str(err.value)
    assert "download failed" in msg and "no network" in msg and cifar10.URL in msg
    assert str(where / "cifar-10-python.tar.gz") in msg and "\n" not in msg

    # A download whose md5 does not match is rejected and leaves nothing behind.
    blob = _write_cifar(tmp_path / "src.tar.gz", _cifar_batches()).read_bytes()
    monkeypatch.setattr(download, "_urlopen", lambda url: io.BytesIO(blob))
    with pytest.raises(DataError, match="md5 .* != expected c58f30108f718f92721af3b95e74349a"):
        load_dataset(DataConfig(source="cifar10", path=str(where), download=True))
    assert not where.exists() or list(where.iterdir()) == []

    # With the matching checksum the file is fetched, moved into place and read.
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(blob).hexdigest())
    ds = load_dataset(DataConfig(source="cifar10", path=str(where), download=True, split="test"))
    assert len(ds) == 3 and (where / "cifar-10-python.tar.gz").read_bytes() == blob
    assert not (where / "cifar-10-python.tar.gz.part").exists()


def test_cifar10_not_a_cifar_tarball(tmp_path):
    bogus = tmp_path / "x.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="not the CIFAR-10 python tarball"):
        cifar10.load_cifar10(str(bogus), "train")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match=re.escape(str(junk))):
        cifar10.load_cifar10(str(junk), "train")


# ----------------------------------------------------------------------------- MNIST idx


def _idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _mnist_files(root: Path, split_stems, n, seed, gz):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(split_stems, (images, labels)):
        data = _idx(arr)
        (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


def test_mnist_idx_raw_and_gz(tmp_path):
    train = _mnist_files(tmp_path / "m", mnist.FILES["train"], 7, 0, gz=False)
    test = _mnist_files(tmp_path / "m", mnist.FILES["test"], 5, 1, gz=True)
    images, labels = mnist.load_mnist(str(tmp_path / "m"), "train")
    assert np.array_equal(images, train[0]) and labels.tolist() == train[1].tolist()
    images, labels = mnist.load_mnist(str(tmp_path / "m"), "test")
    assert np.array_equal(images, test[0]) and labels.dtype == np.int64
    ds = load_dataset(DataConfig(source="mnist", path=str(tmp_path / "m"), resolution=28, channels=1, class_labels=True))
    assert ds.images.shape == (7, 1, 28, 28) and torch.equal(ds.images[:, 0], torch.from_numpy(train[0]))
    assert ds.num_classes == 10
    # torchvision layout (MNIST/raw) and the dotted file names some mirrors use.
    tv = tmp_path / "tv" / "MNIST" / "raw"
    tv.mkdir(parents=True)
    for stem in mnist.FILES["test"]:
        (tv / (stem.replace("-idx", ".idx") + ".gz")).write_bytes((tmp_path / "m" / (stem + ".gz")).read_bytes())
    assert np.array_equal(mnist.load_mnist(str(tmp_path / "tv"), "test")[0], test[0])


def test_parse_idx_other_dtypes_and_errors(tmp_path):
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    assert np.array_equal(mnist.parse_idx(_idx(a, 0x0B)), a)
    f = np.linspace(0, 1, 5, dtype=np.float32)
    assert np.array_equal(mnist.parse_idx(_idx(f, 0x0D)), f)
    with pytest.raises(DataError, match="bad magic"):
        mnist.parse_idx(b"\x89PNG\r\n\x1a\n", "x.png")
    with pytest.raises(DataError, match="truncated"):
        mnist.parse_idx(_idx(np.zeros((2, 28, 28), np.uint8))[:-1], "short")


def test_mnist_missing_offline_and_download(tmp_path, monkeypatch):
    where = tmp_path / "mn"
    with pytest.raises(DataError, match=re.escape(str(where)) + ".*train-images-idx3-ubyte.gz"):
        load_dataset(DataConfig(source="mnist", path=str(where)))
    tried = []

    def offline(url):
        tried.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "_urlopen", offline)
    with pytest.raises(DataError, match="download failed.*" + re.escape(str(where))):
        load_dataset(DataConfig(source="mnist", path=str(where), download=True))
    assert len(tried) == len(mnist.MIRRORS)  # every mirror tried before giving up

    src = tmp_path / "src"
    images, labels = _mnist_files(src, mnist.FILES["test"], 4, 2, gz=True)
    blobs = {stem + ".gz": (src / (stem + ".gz")).read_bytes() for stem in mnist.FILES["test"]}

    def second_mirror_only(url):  # the first mirror is down: the next one is used
        if url.startswith(mnist.MIRRORS[0]):
            raise urllib.error.HTTPError(url, 403, "Forbidden", None, None)
        return io.BytesIO(blobs[url.rsplit("/", 1)[-1]])

    monkeypatch.setattr(download, "_urlopen", second_mirror_only)
    monkeypatch.setattr(mnist, "MD5", {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()})
    got, got_labels = mnist.load_mnist(str(where), "test", download=True)
    assert np.array_equal(got, images) and got_labels.tolist() == labels.tolist()
    assert sorted(p.name for p in where.iterdir()) == sorted(blobs)


def test_download_over_real_http(tmp_path, monkeypatch):
    """The urllib path end to end against a local HTTP server: fetch, md5 check, rename, read."""
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    blob = _write_cifar(served / "cifar-10-python.tar.gz", _cifar_batches()).read_bytes()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(cifar10, "URL", f"{base}/cifar-10-python.tar.gz")
        monkeypatch.setattr(cifar10, "MD5", hashlib.md5(blob).hexdigest())
        images, labels, names = cifar10.load_cifar10(str(tmp_path / "got"), "test", download=True)
        assert (tmp_path / "got" / "cifar-10-python.tar.gz").read_bytes() == blob and len(images) == 3
        monkeypatch.setattr(cifar10, "URL", f"{base}/missing.tar.gz")
        with pytest.raises(DataError, match="download failed \\(HTTP Error 404"):
            cifar10.load_cifar10(str(tmp_path / "other"), "test", download=True)
    finally:
        server.shutdown()
        server.server_close()
