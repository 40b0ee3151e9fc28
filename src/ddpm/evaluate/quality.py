"""Sample quality on the digits feature network: FD, KID, precision/recall, class accuracy, IS.

Every score comes with its n and a ±, and :func:`real_floor` gives the same scores for real digits
against real digits, so a reader sees what "perfect" is at that n.

- **FD** (Fréchet distance; Heusel et al. 2017, eq. 6) of the Gaussians fitted to the 128-d features
  of the samples and of the reference set; ± is the std of FD over bootstrap resamples of the samples.
- **KID** (Bińkowski et al. 2018, §2.3, eq. 4): the unbiased MMD² with the cubic polynomial kernel
  k(a, b) = (aᵀb / d + 1)³, averaged over random subsets of size m; ± is the std over subsets.
  Unbiased: its expectation is 0 when both sets come from one distribution (it can be negative).
- **Precision / recall** (Kynkäänniemi et al. 2019, §2, eq. 1–2): the fraction of samples inside the
  real manifold (the union of balls around each real feature with the radius of its k-th nearest
  real neighbour, k = 3), and of real images inside the samples' manifold; n real vs n generated.
- **Accuracy**: the classifier's agreement with the requested class of a class-conditional sample,
  with the 10×10 confusion matrix (rows: requested, columns: recognised); ± is the binomial std.
- **Classifier IS** (the IS of Salimans et al. 2016 with this classifier): exp E KL(p(y|x) ‖ p(y)),
  mean ± std over 10 splits; 10 is the most it can be.

The reference set is all 5,000 bundled digits (the model's 4,500 training digits and the 500 held
out); it is small enough to featurise in a second, so its statistics are computed on first use and
kept for the process rather than shipped. The floor at size n draws n real digits and scores them
against the remaining 5,000 − n, over several draws (mean ± std).

Written with numpy rather than a metrics package: torchmetrics' FID/KID are built around a fixed
Inception pipeline and lack precision/recall, and the FD maths here is the project's FID code
(:func:`ddpm.evaluate.fid.frechet_distance`), already checked against the authors' numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from ddpm.errors import ConfigError
from ddpm.evaluate.fid import feature_statistics, frechet_distance, inception_score

KID_SUBSET = 1000
KID_SUBSETS = 100
PR_K = 3
BOOTSTRAP = 20
FLOOR_DRAWS = 5


# ------------------------------------------------------------------------------------------- maths
def fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    sa, sb = feature_statistics(a), feature_statistics(b)
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def fd_bootstrap(a: np.ndarray, b: np.ndarray, draws: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """(FD of ``a`` to ``b``, std of FD over ``draws`` bootstrap resamples of ``a``)."""
    rng = np.random.default_rng(seed)
    sb = feature_statistics(b)
    boot = []
    for _ in range(draws):
        s = feature_statistics(a[rng.integers(0, len(a), len(a))])
        boot.append(frechet_distance(s.mu, s.sigma, sb.mu, sb.sigma))
    return fd(a, b), float(np.std(boot))


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with the KID kernel; equal-size sets not required."""
    m, n = len(a), len(b)
    kaa, kbb, kab = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2.0 * kab.mean())


def kid(a: np.ndarray, b: np.ndarray, subset: int = KID_SUBSET, subsets: int = KID_SUBSETS,
        seed: int = 0) -> tuple[float, float]:
    """KID of ``a`` against ``b``: mean ± std of the unbiased MMD² over random subsets of size
    min(``subset``, len(a), len(b))."""
    m = min(subset, len(a), len(b))
    if m < 2:
        raise ConfigError(f"KID needs at least 2 images in each set, got {len(a)} and {len(b)}; raise -n")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _manifold_coverage(support: np.ndarray, query: np.ndarray, k: int) -> float:
    """Fraction of ``query`` inside ∪ balls(support_i, distance to the k-th nearest other support point)."""
    d_ss = _sq_dists(support, support)
    radii = np.sort(d_ss, axis=1)[:, k]  # column 0 is the point itself
    return float((_sq_dists(query, support) <= radii[None, :]).any(axis=1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real``."""
    if min(len(real), len(fake)) <= k:
        raise ConfigError(f"precision/recall with k = {k} needs more than {k} images per set")
    return _manifold_coverage(real, fake, k), _manifold_coverage(fake, real, k)


def confusion(requested: np.ndarray, recognised: np.ndarray, classes: int = 10) -> np.ndarray:
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (np.asarray(requested), np.asarray(recognised)), 1)
    return m


# -------------------------------------------------------------------------------------- reference
@lru_cache(maxsize=1)
def reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (5000, 128), probabilities (5000, 10), labels) of all bundled digits."""
    from ddpm.data.digits import load_all
    from ddpm.evaluate import digits_classifier as dc

    images, labels = load_all()
    feats, probs = dc.predict(dc.load(), images)
    return feats, probs, labels


@dataclass
class QualityReport:
    """Scores of one set of images; ``*_std`` are the ± described in the module docstring."""

    n: int
    fd: float
    fd_std: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    is_mean: float
    is_std: float
    accuracy: float | None = None
    accuracy_std: float | None = None
    confusion: list | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def score_features(feats: np.ndarray, probs: np.ndarray, labels=None, *, ref_feats: np.ndarray | None = None,
                   seed: int = 0) -> QualityReport:
    """Scores of images given by their features and class probabilities; ``labels`` are the requested
    classes (None for unconditional samples); the reference defaults to all bundled digits."""
    n = len(feats)
    if n < 10:
        raise ConfigError(f"quality scores need at least 10 images (10 IS splits, k-NN radii), got {n}; raise -n")
    if ref_feats is None:
        ref_feats = reference()[0]
    rng = np.random.default_rng(seed)
    fd_v, fd_s = fd_bootstrap(feats, ref_feats, seed=seed)
    kid_v, kid_s = kid(feats, ref_feats, seed=seed)
    real_n = ref_feats[rng.choice(len(ref_feats), min(n, len(ref_feats)), replace=False)]
    prec, rec = precision_recall(real_n, feats)
    is_m, is_s = inception_score(np.log(np.clip(probs, 1e-30, None)), splits=10)
    report = QualityReport(n, fd_v, fd_s, kid_v, kid_s, prec, rec, is_m, is_s)
    if labels is not None:
        labels = np.asarray(labels)
        acc = float((probs.argmax(1) == labels).mean())
        report.accuracy, report.accuracy_std = acc, float(np.sqrt(acc * (1 - acc) / n))
        report.confusion = confusion(labels, probs.argmax(1)).tolist()
    return report


def score_images(images, labels=None, *, seed: int = 0) -> QualityReport:
    """Scores of uint8 (N, 28, 28[, 1]) or [-1, 1] float (N, 1, 28, 28) digit images."""
    from ddpm.evaluate import digits_classifier as dc

    feats, probs = dc.predict(dc.load(), images)
    return score_features(feats, probs, labels, seed=seed)


@lru_cache(maxsize=8)
def real_floor(n: int, draws: int = FLOOR_DRAWS, seed: int = 1) -> dict:
    """The scores of n real digits against the other 5,000 − n (and with their true labels), as
    {metric: (mean, std over draws)}: what a perfect generator of the bundled digits would get."""
    feats, probs, labels = reference()
    if not 10 <= n <= len(feats) // 2:
        raise ConfigError(f"the real-vs-real floor needs 10 ≤ n ≤ {len(feats) // 2} (half the bundled digits), got {n}")
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(draws):
        perm = rng.permutation(len(feats))
        s, rest = perm[:n], perm[n:]
        r = score_features(feats[s], probs[s], labels[s], ref_feats=feats[rest], seed=seed + d)
        rows.append(r)
    keys = ("fd", "kid", "precision", "recall", "is_mean", "accuracy")
    return {k: (float(np.mean([getattr(r, k) for r in rows])), float(np.std([getattr(r, k) for r in rows])))
            for k in keys}
