"""FID and Inception Score (Heusel et al. 2017; Salimans et al. 2016; as used in Ho et al. 2020, §4): the statistics, and the pipeline images -> features -> score.

Protocol (written out in ``docs/evaluation.md``): images are quantised to uint8 (samples from the model
are rounded by :func:`ddpm.images.to_uint8`), fed to :class:`~ddpm.evaluate.inception.FIDInceptionV3`
(bilinear resize to 299), pool3 features in float32 are accumulated in float64; FID uses the unbiased
covariance (n − 1) like TTUR/pytorch-fid; IS uses 10 splits of the bias-free logits like OpenAI's code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import DataError


@dataclass
class InceptionStats:
    """Gaussian statistics of pool3 features; ``num`` images went into them."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``mu``, ``sigma`` (and ``num``) as .npz, the layout TTUR/pytorch-fid read."""
        from ddpm.outputs import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, num=np.int64(self.num))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InceptionStats":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"reference statistics {path} not found; compute them with `ddpm eval fid-stats`")
        from ddpm.images import read_npz

        f = read_npz(path)
        if "mu" not in f or "sigma" not in f:
            raise DataError(f"{path} has no 'mu'/'sigma' arrays; is it a statistics file?")
        num = int(f["num"]) if "num" in f else -1
        return cls(np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64), num)


def feature_statistics(features: np.ndarray) -> InceptionStats:
    """Mean and unbiased covariance (divide by n − 1) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"need at least 2 feature vectors to estimate a covariance, got shape {f.shape}")
    return InceptionStats(f.mean(axis=0), np.cov(f, rowvar=False), f.shape[0])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½).

    Tr((Σ1Σ2)^½) is computed as Σ √λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (same eigenvalues as
    Σ1Σ2) by ``numpy.linalg.eigh`` — exact for covariance matrices and free of the complex round-off
    that ``scipy.linalg.sqrtm`` of the non-symmetric product needs patching for (and no scipy needed).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise DataError(f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_to(features: np.ndarray, reference: InceptionStats) -> float:
    """FID between the Gaussian fitted to ``features`` (N, D) and ``reference``; same value as
    :func:`frechet_distance` of their statistics. With N ≤ D the sample covariance A^T A / (N − 1)
    (A = centred features) has rank < N, and the non-zero eigenvalues of Σ_ref^½ AᵀA Σ_ref^½ are those
    of the N×N matrix A Σ_ref Aᵀ — so small evaluations avoid two D×D eigendecompositions."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    if n > d:
        s = feature_statistics(f)
        return frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma)
    if n < 2:
        raise DataError(f"need at least 2 feature vectors to estimate a covariance, got {n}")
    mu = f.mean(axis=0)
    a = (f - mu) / np.sqrt(n - 1)
    eig = np.linalg.eigvalsh(a @ reference.sigma @ a.T)
    diff = mu - reference.mu
    return float(diff @ diff + np.sum(a * a) + np.trace(reference.sigma) - 2.0 * np.sqrt(np.clip(eig, 0, None)).sum())


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))) on each of ``splits`` consecutive chunks; returns (mean, std).

    As OpenAI's ``inception_score.py``: softmax of the logits, p(y) is each split's mean, std over splits
    with ddof 0.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = logits.shape[0]
    if n < splits:
        raise DataError(f"Inception Score needs at least {splits} images for {splits} splits, got {n}")
    logp = torch.log_softmax(logits, dim=1)
    scores = []
    for k in range(splits):
        part = logp[k * n // splits : (k + 1) * n // splits]
        log_py = torch.logsumexp(part, dim=0) - np.log(part.shape[0])
        kl = (part.exp() * (part - log_py)).sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------- pipeline
def as_uint8_images(x) -> np.ndarray:
    """uint8 NHWC from a uint8 array (NHWC, NHW) or a float tensor/array in [-1, 1] (NCHW)."""
    from ddpm.images import to_uint8

    if isinstance(x, torch.Tensor) and x.dtype != torch.uint8:
        return to_uint8(x)
    a = np.asarray(x)
    if a.dtype != np.uint8:
        return to_uint8(torch.as_tensor(a, dtype=torch.float32))
    return a[..., None] if a.ndim == 3 else a


@torch.no_grad()
def extract_features(net, images, batch_size: int = 50, device=None, progress: bool = False) -> dict[str, np.ndarray]:
    """Run the Inception ``net`` over uint8 NHWC ``images`` (or [-1, 1] float NCHW); returns float32
    ``pool3`` (N, 2048) and ``logits`` (N, 1008)."""
    images = as_uint8_images(images)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    pools, logits = [], []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="inception")
    for s in starts:
        batch = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).permute(0, 3, 1, 2)
        out = net(batch.to(device))
        pools.append(out["pool3"].float().cpu().numpy())
        logits.append(out["logits"].float().cpu().numpy())
    if not pools:
        raise DataError("no images to evaluate")
    return {"pool3": np.concatenate(pools), "logits": np.concatenate(logits)}


def load_images(path: str | os.PathLike, num: int | None = None) -> np.ndarray:
    """uint8 NHWC images from an .npz (``arr_0`` or the only array; uint8, or float in [-1, 1]) or a
    folder of PNG/JPEG files (sorted by name); the first ``num`` if given."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        if not files:
            raise DataError(f"no .png/.jpg images in folder {path}")
        files = files[:num] if num else files
        arrays = [np.asarray(Image.open(f)) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise DataError(f"images in {path} differ in size; resize them to one size first")
        return as_uint8_images(np.stack(arrays))
    if path.suffix == ".npz" and path.is_file():
        from ddpm.images import read_npz
        from ddpm.outputs import NPZ_KEY

        arrays = read_npz(path)
        keys = [k for k in arrays if k not in (NPZ_KEY, "labels")]  # ddpm sample's extra keys
        key = "arr_0" if "arr_0" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise DataError(f"{path} has arrays {keys}; expected 'arr_0' (uint8 NHWC images)")
        a = arrays[key][:num] if num else arrays[key]
        if a.dtype != np.uint8 and a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = np.transpose(a, (0, 3, 1, 2))  # float NHWC -> NCHW for to_uint8
        return as_uint8_images(a)
    raise DataError(f"{path} is neither a folder of images nor an .npz file")


def compute_statistics(net, images, batch_size: int = 50, device=None, progress: bool = False) -> InceptionStats:
    """pool3 statistics of ``images`` (see :func:`extract_features`)."""
    return feature_statistics(extract_features(net, images, batch_size, device, progress)["pool3"])


def fid_from_images(net, images, reference: InceptionStats, **kw) -> float:
    """FID of ``images`` against reference statistics."""
    s = compute_statistics(net, images, **kw)
    return frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma)


def reference_statistics(net, source: str | os.PathLike, *, num: int | None = None, split: str = "train",
                         resolution: int | None = None, channels: int | None = None, batch_size: int = 50,
                         device=None, progress: bool = False, download: bool = False) -> InceptionStats:
    """Reference statistics from a stats .npz (``mu``/``sigma``), an image .npz/folder, or a dataset
    name understood by :func:`ddpm.data.load_tensor` (``cifar10``, ``digits``, ``mnist``, ...), at
    ``resolution``/``channels`` (those of the samples, so both sides see the same pixels);
    ``download`` fetches a named dataset that is not found (checksum-verified)."""
    p = Path(source)
    if p.suffix == ".npz" and p.is_file():
        from ddpm.images import read_npz

        f = read_npz(p)
        if "mu" in f and "sigma" in f:
            return InceptionStats.load(p)
    if p.exists():
        return compute_statistics(net, load_images(p, num), batch_size, device, progress)
    from ddpm.config import DataConfig
    from ddpm.data import load_tensor

    cfg = DataConfig(source=str(source), split=split, download=bool(download))
    if resolution:
        cfg.resolution = resolution
    if channels:
        cfg.channels = channels
    x, _ = load_tensor(cfg, num=num, split=split)
    return compute_statistics(net, x, batch_size, device, progress)



__all__ = [
    "InceptionStats", "feature_statistics", "frechet_distance", "inception_score", "extract_features",
    "load_images", "compute_statistics", "fid_from_images", "reference_statistics", "as_uint8_images",
    "score_images", "frechet_distance_to",
]


def score_images(net, images, reference: InceptionStats | None = None, *, splits: int = 10,
                 batch_size: int = 50, device=None, progress: bool = False) -> dict:
    """IS (mean, std over ``splits``) and, given reference statistics, FID of ``images``, from one
    Inception pass. Returns ``num``, ``is_mean``, ``is_std``, ``fid`` (None without a reference)."""
    feats = extract_features(net, images, batch_size, device, progress)
    out = {"num": int(feats["pool3"].shape[0]), "fid": None, "is_mean": None, "is_std": None}
    if out["num"] >= splits:
        out["is_mean"], out["is_std"] = inception_score(feats["logits"], splits)
    if reference is not None:
        out["fid"] = frechet_distance_to(feats["pool3"], reference)
    return out
