"""The Inception-v3 of the TensorFlow FID/IS code (graph ``inception-2015-12-05``), in plain PyTorch.

Why hand-written: torch-fidelity, pytorch-fid, clean-fid and torchmetrics all need torchvision, and
the only torchvision on PyPI for this platform pulls a different (CUDA) torch. The architecture is
torchvision's Inception3 with the changes the FID graph needs (public knowledge, documented by
pytorch-fid): average pools that exclude padding in the A, C and first E blocks, a max pool in the
last E block, and a 1008-way classifier. Module names equal torchvision's, so the state dict of
``pt_inception-2015-12-05-6726825d.pth`` (the TF weights ported by pytorch-fid) loads without
renaming.

Input protocol (see ``docs/evaluation.md``): uint8 images -> float in [0, 1] -> bilinear resize to
299x299 (``align_corners=False``, no antialiasing, as pytorch-fid's ``InceptionV3``) -> 2x − 1.
Outputs: ``pool3`` (N, 2048) for FID and the 1008 ``logits`` for IS; IS uses the classifier matrix
*without* its bias, as the OpenAI ``inception_score.py`` does (it multiplies pool3 by the weights of
``softmax/logits/MatMul`` only).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.errors import UserError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
# No full SHA-256 of this file is published with it; like torch.hub(check_hash=True) we check the
# first 8 hex digits of its SHA-256 against the prefix in its name.
WEIGHTS_SHA256_PREFIX = "6726825d"
ENV_VAR = "DDPM_INCEPTION_WEIGHTS"
FID_RESOLUTION = 299


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, TF's) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):
    # TF's SAME average pool divides by the number of real pixels: count_include_pad=False.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        h, v = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **h)
        self.branch7x7_3 = BasicConv2d(c7, 192, **v)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **v)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **h)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **v)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **h)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the FID graph's last block (Mixed_7c) pools with max, the one before with avg."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        h, v = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, **h)
        self.branch3x3_2b = BasicConv2d(384, 384, **v)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **h)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **v)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID graph. ``forward(images)`` takes uint8 NCHW/NHWC or float in [0, 1]
    NCHW images (1 or 3 channels, any size) and returns ``{"pool3": (N, 2048), "logits": (N, 1008)}``
    (logits without the classifier bias, for IS)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.eval()

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 (NHWC or NCHW) or float [0, 1] NCHW -> float (N, 3, 299, 299) in [-1, 1]."""
        x = images
        if x.dtype == torch.uint8:
            if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
                x = x.permute(0, 3, 1, 2)
            x = x.float() / 255.0
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"Inception expects images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] == 1:  # grayscale: replicate to RGB, as every FID tool does
            x = x.expand(-1, 3, -1, -1)
        x = x.float()
        if x.shape[-2:] != (FID_RESOLUTION, FID_RESOLUTION):
            x = F.interpolate(x, size=(FID_RESOLUTION, FID_RESOLUTION), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.preprocess(images.to(self.fc.weight.device))
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool3 = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return {"pool3": pool3, "logits": pool3 @ self.fc.weight.t()}


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpm" / WEIGHTS_NAME


def check_weights_file(path: Path) -> None:
    """Raise a one-line :class:`UserError` unless ``path``'s SHA-256 starts with the expected prefix."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise UserError(
            f"{path} is not {WEIGHTS_NAME} (sha256 {digest[:8]}…, expected {WEIGHTS_SHA256_PREFIX}…); "
            f"download it again from {WEIGHTS_URL}"
        )


def find_weights(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Locate the Inception weights: ``path``, else $DDPM_INCEPTION_WEIGHTS, else the cache
    (~/.cache/ddpm/), downloading there when online. Checked by hash; one-line error otherwise."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"Inception weights file {p} not found; download {WEIGHTS_URL} to that path")
        check_weights_file(p)
        return p
    cached = _default_cache()
    if cached.is_file():
        check_weights_file(cached)
        return cached
    if download:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".part")
        try:
            with urllib.request.urlopen(WEIGHTS_URL, timeout=60) as r, open(tmp, "wb") as f:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
        except OSError:  # offline, blocked or interrupted: fall through to the one-line message
            tmp.unlink(missing_ok=True)
        else:
            try:
                check_weights_file(tmp)
            except UserError:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(cached)
            return cached
    raise UserError(
        f"Inception weights not found: download {WEIGHTS_URL} and put it at {cached}, "
        f"or pass --inception PATH / set {ENV_VAR}"
    )


def load_inception(path: str | os.PathLike | None = None, *, device=None, download: bool = True) -> FIDInceptionV3:
    """The FID Inception network with the ported TF weights (see :func:`find_weights`), in eval mode.

    ``path="random"`` gives random weights instead (pipeline checks only: its scores mean nothing)."""
    if str(path) == "random":
        import warnings

        warnings.warn("Inception with RANDOM weights: FID/IS values are meaningless", stacklevel=2)
        return random_inception(device=device)
    file = find_weights(path, download=download)
    state = torch.load(file, map_location="cpu", weights_only=True)
    net = FIDInceptionV3()
    missing, unexpected = net.load_state_dict(state, strict=False)
    # Old BatchNorm state dicts lack the ``num_batches_tracked`` counters, which eval mode never reads.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"{file} does not hold the FID Inception weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); download {WEIGHTS_URL}"
        )
    return net.to(device or "cpu").eval()


def random_inception(seed: int = 0, device=None) -> FIDInceptionV3:
    """Same architecture with random weights: for tests and pipeline checks, never for scores."""
    g = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5))
    return net.to(device or "cpu").eval()


__all__ = [
    "FIDInceptionV3", "load_inception", "random_inception", "find_weights", "check_weights_file",
    "WEIGHTS_NAME", "WEIGHTS_URL", "ENV_VAR", "FID_RESOLUTION",
]
