"""The digits networks: the project's offline quality instrument for 28×28 grey digits.

Inception features (FID/IS) need weights that cannot be fetched offline and were never meant for
MNIST; papers on MNIST-like data measure with a classifier trained on the data set instead. This is
a small VGG-style CNN (four 3×3 conv layers, two max-pools, a 3×3 conv to 128 channels pooled to 3×3,
a 128-unit ReLU layer — the *features* — and a 10-way linear head; 288,362 parameters), trained twice
for two roles (``KINDS``):

- ``features`` (``weights.safetensors``), trained on clean digits: its 128-d features are what FD, KID
  and precision/recall compare, so every visible defect, speckle included, moves them;
- ``recognizer`` (``recognizer.safetensors``), the same network trained with light pixel noise added:
  its class probabilities give the requested-class accuracy and the classifier IS. A classifier that
  has only seen clean digits reads speckled 0, 5, 6, 7 and 9 as 8, so its accuracy would measure the
  speckle of few-step stochastic samplers rather than whether the digit is legible; a noise-trained
  one, in turn, has features blind to that speckle, which is why FD keeps the clean network.

**Which digits train the networks** (``VERSIONS``). Version 2, the default, trains both on one random
half of the 5,000 bundled digits (:func:`instrument_split`: 250 per class, seed 0) and keeps the other
half as the reference set of every score and floor (:mod:`ddpm.evaluate.quality`). The reference must be
digits the networks never saw: version 1 trained on the 4,500 ``train`` digits and compared against all
5,000, and real digits it had not seen scored 2.3× its floor (0.90 against 0.38, n = 500) — its floor
measured how familiar the network was with the digits, not what a perfect generator reaches. Version 1
is kept (``digits_classifier_v1``, ``--features digits-v1``) so that tables measured with it can be
reproduced.

Training (:func:`train_classifier`, run by ``scripts/train_digits_classifier.py``) uses random shifts of
up to 2 pixels, small rotations and light pixel noise on half the images (:func:`_augment` says why); the
accuracy on the reference half is the held-out accuracy reported in the shipped ``README.md``. The
weights ship in ``ddpm/assets/digits_classifier`` (safetensors) beside their recipe and provenance.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpm.errors import ConfigError

FEATURE_DIM = 128
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
VERSIONS = {2: "digits_classifier", 1: "digits_classifier_v1"}  # version -> asset folder
CURRENT = 2
SPLIT_SEED = 0
TRAIN_PER_CLASS = 250


class DigitsNet(nn.Module):
    """``forward(x)`` → logits; ``features(x)`` → the 128-d penultimate activations. x in [-1, 1]."""

    def __init__(self):
        super().__init__()

        def conv(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(conv(1, 32), conv(32, 32), nn.MaxPool2d(2),      # 14×14
                                  conv(32, 64), conv(64, 64), nn.MaxPool2d(2),     # 7×7
                                  conv(64, 128), nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.fc = nn.Linear(128 * 9, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def _augment(x: torch.Tensor, gen: torch.Generator, noise: bool = False) -> torch.Tensor:
    """Random shifts (≤ 2 px) and rotations (≤ 10°): a digit moved a little is the same digit. With
    ``noise`` (the recognizer), half the images also get Gaussian pixel noise of a random σ ≤ NOISE_MAX
    on the [−1, 1] scale (see the module docstring for why)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 / 14)  # 2 px in [-1, 1] grid units
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # pad with black
    if not noise:
        return x
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * NOISE_MAX * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


NOISE_MAX = 0.3
KINDS = {"features": "weights", "recognizer": "recognizer"}  # role -> file stem in the asset folder


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28[, 1]) or float in [-1, 1] (N, 1, 28, 28) → float (N, 1, 28, 28) in [-1, 1]."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        x = torch.from_numpy(images).float().div(127.5).sub(1)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        x = x.unsqueeze(1) if x.ndim == 3 else x
    else:
        x = torch.as_tensor(images).float()
    if tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ConfigError(f"the digits feature network takes 28×28 grey images (N, 1, 28, 28); got images of "
                          f"shape {tuple(x.shape[1:])} — use a model trained on digits or mnist at resolution 28")
    return x


def train_classifier(*, kind: str = "features", epochs: int = 30, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, log=print, data=None, heldout=None) -> tuple[DigitsNet, dict]:
    """Train the ``kind`` network (``features``: clean digits; ``recognizer``: with pixel noise) on the
    instrument's half of the bundled digits (:func:`instrument_split`); returns it (eval mode) and its
    record (hyper-parameters, per-epoch loss, held-out accuracy on the reference half). ``data`` /
    ``heldout`` ((uint8 images, labels)) replace the two halves, for studies of the instrument itself."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    noise = kind == "recognizer"
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = None
    if data is None or heldout is None:
        (train, ref), (images, labels) = instrument_split(), _all_digits()
        split = (f"instrument_split(): {TRAIN_PER_CLASS} per class of the bundled digits at random (seed "
                 f"{SPLIT_SEED}) train, the other {len(ref)} are held out (the reference)")
        data = (images[train], labels[train]) if data is None else data
        heldout = (images[ref], labels[ref]) if heldout is None else heldout
    xs, ys = data
    x, y = to_input(xs), torch.from_numpy(ys)
    net = DigitsNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    history = []
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(net(_augment(x[idx], gen, noise)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
    net.eval()
    augmentation = "shift <= 2 px, rotation <= 10 deg" + (
        f", Gaussian noise sigma ~ U(0, {NOISE_MAX}) on half the images" if noise else "")
    record = {"kind": kind, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
              "optimizer": "AdamW wd 1e-4, one-cycle", "augmentation": augmentation, "label_smoothing": 0.05,
              "train_images": len(x), "heldout_images": len(heldout[0]), "split": split or "given",
              "version": CURRENT if split else None, "loss_per_epoch": [round(v, 5) for v in history],
              "train_accuracy": accuracy(net, xs, ys), "heldout_accuracy": accuracy(net, *heldout),
              "parameters": sum(p.numel() for p in net.parameters())}
    return net, record


@torch.no_grad()
def predict(net: DigitsNet | None, images, batch_size: int = 500,
            recognizer: DigitsNet | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 128) float64, class probabilities (N, 10) float64) of uint8 or [-1, 1] images:
    the features of ``net`` and the probabilities of ``recognizer`` (default: the shipped ones)."""
    x = to_input(images)
    net = load("features") if net is None else net
    recognizer = load("recognizer") if recognizer is None else recognizer
    device = next(net.parameters()).device
    feats, probs = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        feats.append(net.features(xb).double().cpu())
        probs.append(F.softmax(recognizer(xb), dim=1).double().cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def accuracy(net: DigitsNet, images, labels) -> float:
    """Held-out accuracy of one network on its own."""
    _, p = predict(net, images, recognizer=net)
    return float((p.argmax(1) == np.asarray(labels)).mean())


def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from ddpm.data.digits import load_all

    return load_all()


def instrument_split() -> tuple[np.ndarray, np.ndarray]:
    """(indices of the digits that train the version-2 networks, indices of the reference digits) into the
    5,000 bundled digits (:func:`ddpm.data.digits.load_all`): ``TRAIN_PER_CLASS`` of each class drawn at
    random with seed ``SPLIT_SEED``, and the rest. Random rather than a block of the file, whose order is
    MNIST's: neighbouring digits often share a writer, and a block would put whole writers on one side."""
    from ddpm.evaluate.quality import stratified_draw

    labels = _all_digits()[1]
    train = stratified_draw(labels, [TRAIN_PER_CLASS] * NUM_CLASSES, np.random.default_rng(SPLIT_SEED))
    return train, np.setdiff1d(np.arange(len(labels)), train)


def asset_dir(version: int = CURRENT) -> Path:
    if version not in VERSIONS:
        raise ConfigError(f"digits instrument version must be one of {sorted(VERSIONS)}, got {version!r}")
    return Path(str(resources.files("ddpm").joinpath("assets", VERSIONS[version])))


def _files(folder: Path, kind: str) -> tuple[Path, Path]:
    stem = KINDS[kind]
    return folder / f"{stem}.safetensors", folder / ("record.json" if kind == "features" else f"{stem}_record.json")


def save(net: DigitsNet, record: dict, folder: str | Path, kind: str = "features") -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, rec = _files(folder, kind)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(weights), metadata={"format": "pt", "model": "ddpm.DigitsNet", "kind": kind})
    rec.write_text(json.dumps(record, indent=1) + "\n")
    return weights


@lru_cache(maxsize=8)
def load(kind: str = "features", folder: str | None = None, version: int = CURRENT) -> DigitsNet:
    """The shipped ``features`` or ``recognizer`` network of ``version`` (or a given folder's) in eval
    mode, on the CPU, weights from safetensors."""
    from safetensors.torch import load_file

    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(folder) if folder else asset_dir(version)
    weights = _files(path, kind)[0]
    if not weights.is_file():
        raise ConfigError(f"no digits {kind} network at {weights}; train one with scripts/train_digits_classifier.py")
    net = DigitsNet()
    missing, unexpected = net.load_state_dict(load_file(str(weights)), strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ConfigError(f"{weights} does not hold DigitsNet weights (missing {missing}, unexpected {unexpected})")
    return net.eval()


def weights_bytes(version: int = CURRENT) -> bytes:
    """Both shipped networks' weight files of ``version``, for cache keys."""
    return b"".join(_files(asset_dir(version), k)[0].read_bytes() for k in KINDS)
