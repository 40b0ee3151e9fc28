"""Sample quality on the digits feature network: FD, KID, precision/recall, class accuracy, IS.

Every score comes with its n and a ±, and :func:`real_floor` gives the same scores for real digits
against real digits, so a reader sees what "perfect" is at that n.

- **FD** (Fréchet distance; Heusel et al. 2017, eq. 6) of the Gaussians fitted to the 128-d features
  of the samples and of the reference set.
- **KID** (Bińkowski et al. 2018, §2.3, eq. 4): the unbiased MMD² with the cubic polynomial kernel
  k(a, b) = (aᵀb / d + 1)³, averaged over random subsets of size m. Unbiased for two i.i.d. sets of one
  distribution (it can be negative); a class-balanced set (50 of each class) is not i.i.d., and scores
  below 0 even when perfect — the floor below is drawn the same way, so compare with it, not with 0.
- **Precision / recall** (Kynkäänniemi et al. 2019, §2, eq. 1–2): the fraction of samples inside the
  real manifold (the union of balls around each real feature with the radius of its k-th nearest
  real neighbour, k = 3), and of real images inside the samples' manifold; n real vs n generated
  (the real n with the samples' class counts when those are known).
Features come from the digits ``features`` network, class probabilities from the ``recognizer``
(:mod:`ddpm.evaluate.digits_classifier` says why there are two).

- **Accuracy**: the recognizer's agreement with the requested class of a class-conditional sample,
  with the 10×10 confusion matrix (rows: requested, columns: recognised); ± is the binomial std.
- **Classifier IS** (the IS of Salimans et al. 2016 with this classifier): exp E KL(p(y|x) ‖ p(y)),
  mean ± std over 10 splits; 10 is the most it can be.

**The ± of FD, KID, precision and recall** is the delete-half jackknife (Shao & Wu 1989, d = n/2): the
std of the score over 20 random halves of the samples, drawn within each requested class. Two things
made the bootstrap used before wrong here, by measurement (DDIM-10 samples of the shipped digits model,
five disjoint sets of 500): FD varied by 0.026 (std) from set to set, but the bootstrap of one set said
0.53. First, the features separate the classes, so a resample that changes the class proportions
(50 of each requested) moves the mean far more than any real set of class-balanced samples does;
resampling within classes brings the bootstrap to 0.13. Second, FD is near its degenerate point (true
distance ≈ 0, the estimate mostly the 1/n bias), where the bootstrap is inconsistent, and its
duplicated points inflate FD itself (bootstrap mean 1.26 vs 0.85). Halves drawn within classes gave
0.08–0.11: still conservative, about 3× the set-to-set std, but not 20×. Where a table has several
seeds per setting, the std over those independent sets is the better ±, and the tables show it
(:func:`ddpm.evaluate.sweep.aggregate_seeds`).

The reference set is the 2,500 bundled digits the digits networks never saw (the reference half of
:func:`ddpm.evaluate.digits_classifier.instrument_split`; the module says why the networks must not have
seen them); its features are computed on first use (seconds) and cached on disk under a hash of the
networks, the data and the split (:func:`cache_dir`), rather than shipped. The **floor** at size n draws
n reference digits and scores them against the remaining 2,500 − n, over several draws (mean ± std over
draws), so n ≤ 1,250. Samples are scored against all 2,500: at n = 500 the reference's share of FD's
small-sample bias is a few per cent of the floor, inside its ±.
For class-conditional samples each draw takes the samples' class counts (50 of each at n = 500 with
``--class all``): a perfect conditional generator gives exactly that, and random class proportions
alone raised the FD floor at n = 500 from 0.39 to 1.17 (with ± 0.36 instead of 0.03; version 1 of the
instrument, version 2: from 0.52 to 1.34).

Written with numpy rather than a metrics package: torchmetrics' FID/KID are built around a fixed
Inception pipeline and lack precision/recall, and the FD maths here is the project's FID code
(:func:`ddpm.evaluate.fid.frechet_distance`), already checked against the authors' numbers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ddpm.errors import ConfigError
from ddpm.evaluate.fid import _psd_sqrt, feature_statistics, frechet_distance_to, inception_score

KID_SUBSET = 1000
KID_SUBSETS = 100
PR_K = 3
HALVES = 20
FLOOR_DRAWS = 5


# ------------------------------------------------------------------------------------------- maths
def fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    return _FDTo(b)(a)


class _FDTo:
    """FD of feature sets to one fixed reference set, with the reference's matrix square root computed
    once (the ± calls this 20 times; with 2048-d Inception features that is the whole cost)."""

    def __init__(self, b: np.ndarray):
        self.ref = feature_statistics(b)
        self.root = None

    def __call__(self, a: np.ndarray) -> float:
        n, d = a.shape
        if n <= d:  # the N×N form: exact and cheap when there are fewer images than dimensions
            return frechet_distance_to(a, self.ref)
        if self.root is None:
            self.root = _psd_sqrt(self.ref.sigma)
        s = feature_statistics(a)
        eig = np.linalg.eigvalsh(self.root @ s.sigma @ self.root)  # same spectrum as Σ_ref Σ_a
        diff = s.mu - self.ref.mu
        return float(diff @ diff + np.trace(s.sigma) + np.trace(self.ref.sigma)
                     - 2.0 * np.sqrt(np.clip(eig, 0, None)).sum())


def half_indices(n: int, rng: np.random.Generator, strata=None) -> np.ndarray:
    """A random half (⌊n/2⌋ items) of range(n), drawn without replacement within each stratum (``strata``:
    one label per item, e.g. the requested class) so that a half keeps the set's class proportions; the odd
    items left over by the strata are halved at random among themselves."""
    if strata is None:
        return rng.permutation(n)[: n // 2]
    strata = np.asarray(strata)
    picks, odd = [], []
    for c in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == c))
        picks.append(idx[: len(idx) // 2])
        odd.extend(idx[2 * (len(idx) // 2):])
    picks.append(rng.permutation(np.asarray(odd, dtype=np.int64))[: len(odd) // 2])
    return np.concatenate(picks)


def fd_halves(a: np.ndarray, b: np.ndarray, strata=None, draws: int = HALVES, seed: int = 0) -> tuple[float, float]:
    """(FD of ``a`` to ``b``, std of FD over ``draws`` random halves of ``a``: the delete-half jackknife,
    stratified by ``strata``; see the module docstring for why not the bootstrap)."""
    to_b = _FDTo(b)
    return to_b(a), float(_half_spread(lambda h, i: to_b(a[h[0]]), [(len(a), strata)], draws, seed))


def _half_spread(score, sets, draws: int, seed: int) -> np.ndarray:
    """Std over ``draws`` calls of ``score(halves, i)``, where ``halves`` holds a fresh random half (see
    :func:`half_indices`) of each set in ``sets`` (a list of (size, strata)): the delete-half jackknife."""
    rng = np.random.default_rng(seed)
    values = [score([half_indices(n, rng, strata) for n, strata in sets], i) for i in range(draws)]
    return np.std(np.asarray(values, dtype=float), axis=0)


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


def kid_halves(a: np.ndarray, b: np.ndarray, strata=None, draws: int = HALVES, seed: int = 0) -> tuple[float, float]:
    """(KID of ``a`` against ``b``, std of KID over ``draws`` random halves of ``a``, stratified as for FD;
    each half against 10 subsets of ``b``)."""
    spread = _half_spread(lambda h, i: kid(a[h[0]], b, subsets=10, seed=seed + 1 + i)[0],
                          [(len(a), strata)], draws, seed)
    return kid(a, b, seed=seed)[0], float(spread)


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


def precision_recall_halves(real: np.ndarray, fake: np.ndarray, real_strata=None, fake_strata=None,
                            draws: int = HALVES, seed: int = 0) -> tuple[float, float, float, float]:
    """(precision, recall, their stds over ``draws`` random halves of both sets, stratified)."""
    prec, rec = precision_recall(real, fake)
    p_std, r_std = _half_spread(lambda h, i: precision_recall(real[h[0]], fake[h[1]]),
                                [(len(real), real_strata), (len(fake), fake_strata)], draws, seed)
    return prec, rec, float(p_std), float(r_std)


def has_counts(labels: np.ndarray | None, counts) -> bool:
    """Whether ``labels`` hold at least ``counts[c]`` items of every class c (so a stratified draw works)."""
    return labels is not None and all(m <= np.count_nonzero(labels == c) for c, m in enumerate(counts))


def stratified_draw(labels: np.ndarray, counts, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``counts[c]`` items of each class c, drawn without replacement (check ``has_counts``
    first)."""
    if not has_counts(labels, counts):
        raise ValueError(f"labels hold fewer items of some class than the counts {list(counts)} ask for")
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), m, replace=False) for c, m in enumerate(counts)])


def confusion(requested: np.ndarray, recognised: np.ndarray, classes: int = 10) -> np.ndarray:
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (np.asarray(requested), np.asarray(recognised)), 1)
    return m


# -------------------------------------------------------------------------------------- instruments
class Instrument:
    """A feature network with its real reference set: what scores and floors are measured with.

    ``predict(images)`` → (features (N, D), class probabilities (N, K)) of [−1, 1] float NCHW (or uint8)
    images; ``reference()`` → (features, probabilities, labels or None) of the real images;
    ``check(image_shape)`` raises ConfigError for images it cannot score.
    """

    name = "instrument"
    scores_accuracy = False  # whether its classes are the data set's (then requested-class accuracy)

    def check(self, image_shape) -> None:
        pass

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def reference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class DigitsInstrument(Instrument):
    """The shipped digits networks of ``version`` (:mod:`ddpm.evaluate.digits_classifier`) against their
    reference digits: version 2 (default) the half of the bundled digits they never saw, version 1 all
    5,000. Images at a resolution r < 28 are scored after bilinear upsampling to 28, against real digits
    put through the same path (shrunk to r with the training data's BICUBIC resize, then upsampled), so
    the floor and the samples see the same loss of detail."""

    name = "digits"
    scores_accuracy = True

    def __init__(self, resolution: int = 28, version: int | None = None):
        from ddpm.evaluate import digits_classifier as dc

        if not MIN_DIGITS_RES <= int(resolution) <= dc.IMAGE_SHAPE[1]:
            raise ConfigError(f"the digits features score grey digits of {MIN_DIGITS_RES}–28 pixels, got {resolution}")
        self.resolution = int(resolution)
        self.version = dc.CURRENT if version is None else int(version)
        dc.asset_dir(self.version)  # an unknown version fails here, before any sampling

    def check(self, image_shape) -> None:
        c, h, w = (int(v) for v in image_shape)
        if c != 1 or h != w or not MIN_DIGITS_RES <= h <= 28:
            raise ConfigError(f"--features digits scores grey square digits of {MIN_DIGITS_RES}–28 pixels, but this "
                              f"model makes {h}×{w} images with {c} channel(s); it works for models trained on "
                              "digits or mnist (1 channel)")
        if h != self.resolution:
            raise ConfigError(f"these digits features are for {self.resolution}×{self.resolution} images, got {h}×{w}")

    def predict(self, images):
        from ddpm.evaluate import digits_classifier as dc

        return dc.predict(dc.load("features", version=self.version), upsample_to_28(images),
                          recognizer=dc.load("recognizer", version=self.version))

    def reference(self):
        return _digits_reference(self.resolution, self.version)

    def describe(self) -> str:
        # version 1 keeps the plain name its sweep files recorded, so they resume under it
        name = "digits" if self.version == 1 else f"digits v{self.version}"
        return name + ("" if self.resolution == 28 else f" (at {self.resolution}×{self.resolution}, upsampled)")


MIN_DIGITS_RES = 8


def upsample_to_28(images):
    """[−1, 1] float (N, 1, r, r) or uint8 (N, r, r) digits → float (N, 1, 28, 28) (bilinear when r < 28)."""
    import torch
    import torch.nn.functional as F

    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        x = torch.from_numpy(images).float().div(127.5).sub(1)
        x = x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
        x = x.unsqueeze(1) if x.ndim == 3 else x
    else:
        x = torch.as_tensor(images).float()
    if x.ndim == 4 and x.shape[1] == 1 and x.shape[2] == x.shape[3] and x.shape[2] < 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x


@lru_cache(maxsize=8)
def _digits_reference(resolution: int = 28, version: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of the reference digits of instrument ``version`` (see :class:`DigitsInstrument`), computed
    once and kept in the cache folder under a key that hashes the networks' weights, the digits file, the
    reference indices and the resolution (a new classifier, split or data set never reads stale features)."""
    import hashlib

    import torch

    from ddpm.data.digits import asset_bytes, load_all
    from ddpm.evaluate import digits_classifier as dc

    version = dc.CURRENT if version is None else version
    images, labels = load_all()
    idx = np.arange(len(labels)) if version == 1 else dc.instrument_split()[1]
    images, labels = images[idx], labels[idx]
    h = hashlib.sha256(asset_bytes())
    h.update(dc.weights_bytes(version))
    h.update(idx.astype(np.int64).tobytes())
    h.update(str(resolution).encode())
    cache = cache_dir() / f"digits_reference_{h.hexdigest()[:16]}.npz"
    try:
        with np.load(cache, allow_pickle=False) as f:
            return f["features"], f["probs"], labels
    except (OSError, KeyError, ValueError):
        pass
    if resolution != 28:
        from ddpm.data.transforms import fit_array

        # as the training data is made (BICUBIC), then to [−1, 1] floats
        images = torch.as_tensor(np.asarray(fit_array(images, resolution, 1))).float().div(127.5).sub(1)
    feats, probs = digits_instrument(28, version).predict(images)
    try:  # a cache that cannot be written only costs the time to recompute
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, features=feats, probs=probs)
        os.replace(tmp, cache)
    except OSError:
        pass
    return feats, probs, labels


def cache_dir() -> Path:
    """``$DDPM_CACHE``, else ``$XDG_CACHE_HOME/ddpm`` (``~/.cache/ddpm``)."""
    return Path(os.environ.get("DDPM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpm")


def reference(resolution: int = 28, version: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, 128), probabilities (N, 10), labels) of the reference digits of instrument ``version``
    (2,500 for version 2, the default; 5,000 for version 1) at ``resolution``."""
    from ddpm.evaluate import digits_classifier as dc

    return _digits_reference(int(resolution), dc.CURRENT if version is None else int(version))


class InceptionInstrument(Instrument):
    """Inception-v3 pool3 features (the FID network, :mod:`ddpm.evaluate.inception`) against real images
    named by ``ref`` (a dataset name, an image folder or an .npz), at most ``ref_num`` of them."""

    name = "inception"

    def __init__(self, net, ref_images, ref_desc: str, batch_size: int = 50):
        self.net, self.batch_size, self.ref_desc = net, batch_size, ref_desc
        self._ref_images = ref_images
        self._ref = None

    def predict(self, images):
        from ddpm.evaluate.fid import extract_features

        out = extract_features(self.net, images, self.batch_size)
        logits = out["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return out["pool3"].astype(np.float64), probs / probs.sum(1, keepdims=True)

    def reference(self):
        if self._ref is None:
            feats, probs = self.predict(self._ref_images)
            self._ref, self._ref_images = (feats, probs, None), None
        return self._ref

    def describe(self) -> str:
        return f"inception vs {self.ref_desc}"


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
    precision_std: float
    recall_std: float
    accuracy: float | None = None
    accuracy_std: float | None = None
    confusion: list | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def score_features(feats: np.ndarray, probs: np.ndarray, labels=None, *, ref_feats: np.ndarray | None = None,
                   ref_labels: np.ndarray | None = None, seed: int = 0) -> QualityReport:
    """Scores of images given by their features and class probabilities; ``labels`` are the requested
    classes (None for unconditional samples, or when the features' classes are not the data set's);
    the reference defaults to all bundled digits. With both ``labels`` and ``ref_labels``, the ± halves
    keep the requested class proportions and the real set of precision/recall is drawn with the same
    number of images per class as the samples."""
    n = len(feats)
    if n < 10:
        raise ConfigError(f"quality scores need at least 10 images (10 IS splits, k-NN radii), got {n}; raise -n")
    if ref_feats is None:
        ref_feats, _, ref_labels = digits_instrument(28).reference()
    rng = np.random.default_rng(seed)
    labels = None if labels is None else np.asarray(labels)
    fd_v, fd_s = fd_halves(feats, ref_feats, strata=labels, seed=seed)
    kid_v, kid_s = kid_halves(feats, ref_feats, strata=labels, seed=seed)
    counts = None if labels is None or ref_labels is None else np.bincount(labels, minlength=int(ref_labels.max()) + 1)
    if counts is not None and has_counts(ref_labels, counts):
        real_idx = stratified_draw(ref_labels, counts, rng)
    else:
        real_idx = rng.choice(len(ref_feats), min(n, len(ref_feats)), replace=False)
    real_strata = None if labels is None or ref_labels is None else ref_labels[real_idx]
    prec, rec, prec_s, rec_s = precision_recall_halves(ref_feats[real_idx], feats, real_strata, labels, seed=seed)
    is_m, is_s = inception_score(np.log(np.clip(probs, 1e-30, None)), splits=10)
    report = QualityReport(n, fd_v, fd_s, kid_v, kid_s, prec, rec, is_m, is_s, prec_s, rec_s)
    if labels is not None:
        acc = float((probs.argmax(1) == labels).mean())
        report.accuracy, report.accuracy_std = acc, float(np.sqrt(acc * (1 - acc) / n))
        report.confusion = confusion(labels, probs.argmax(1)).tolist()
    return report


def score_images(images, labels=None, *, seed: int = 0, instrument: Instrument | None = None) -> QualityReport:
    """Scores of images (uint8 (N, H, W[, 1]) or [−1, 1] float (N, C, H, W)) with ``instrument``
    (default: the digits features at the images' resolution)."""
    if instrument is None:
        instrument = DigitsInstrument(_resolution_of(images))
    feats, probs = instrument.predict(images)
    ref_feats, _, ref_labels = instrument.reference()
    if not instrument.scores_accuracy:
        labels = ref_labels = None
    return score_features(feats, probs, labels, ref_feats=ref_feats, ref_labels=ref_labels, seed=seed)


def _resolution_of(images) -> int:
    shape = np.shape(images)
    return int(shape[-1] if len(shape) == 3 or shape[1] in (1, 3) else shape[2])


def floor_of(instrument: Instrument, n: int, draws: int = FLOOR_DRAWS, seed: int = 1, class_counts=None) -> dict:
    """The scores of n real images against the other reference images (and with their true labels), as
    {metric: (mean, std over draws)}: what a perfect generator of the reference set would get.

    ``class_counts`` (images per class of the samples being compared, e.g. 50 of each of 10 for
    ``--class all`` at n = 500): every draw takes exactly that many real images of each class, as a perfect
    class-conditional generator would give; the features separate the classes, so random class proportions
    alone would raise the floor about threefold (see the module docstring). Without (unconditional samples,
    or a reference without labels) the n images are drawn at random; "stratified" in the result says which."""
    counts = None if class_counts is None else tuple(int(c) for c in class_counts)
    key = (id(instrument), instrument.describe(), n, draws, seed, counts)
    if key in _FLOORS:
        return _FLOORS[key]
    feats, probs, labels = instrument.reference()
    if not 10 <= n <= len(feats) // 2:
        raise ConfigError(f"the real-vs-real floor needs 10 ≤ n ≤ {len(feats) // 2} (half the reference images), "
                          f"got {n}")
    if counts is not None and sum(counts) != n:
        raise ConfigError(f"the floor's class counts {list(counts)} add up to {sum(counts)}, not n = {n}")
    rng = np.random.default_rng(seed)
    stratified = counts is not None and has_counts(labels, counts)
    rows = []
    for d in range(draws):
        if stratified:  # mixed (by a stream of its own, so the draws stay those of before), since the
            # classifier IS scores 10 consecutive splits: sorted by class, each split holds one class (IS 1)
            s = stratified_draw(labels, counts, rng)
            s = s[np.random.default_rng([seed, d]).permutation(len(s))]
        else:
            s = rng.permutation(len(feats))[:n]
        rest = np.setdiff1d(np.arange(len(feats)), s)
        rows.append(score_features(feats[s], probs[s], None if labels is None else labels[s],
                                   ref_feats=feats[rest], ref_labels=None if labels is None else labels[rest],
                                   seed=seed + d))
    keys = ("fd", "kid", "precision", "recall", "is_mean") + (("accuracy",) if labels is not None else ())
    out = {k: (float(np.mean([getattr(r, k) for r in rows])), float(np.std([getattr(r, k) for r in rows])))
           for k in keys}
    out.update(stratified=bool(stratified), draws=draws)
    _FLOORS[key] = out
    return out


_FLOORS: dict = {}


@lru_cache(maxsize=8)
def digits_instrument(resolution: int = 28, version: int | None = None) -> DigitsInstrument:
    return DigitsInstrument(resolution, version)


def real_floor(n: int, draws: int = FLOOR_DRAWS, seed: int = 1, resolution: int = 28, class_counts=None,
               version: int | None = None) -> dict:
    """:func:`floor_of` the digits features of ``version`` at ``resolution`` (28: the digits as they are)."""
    return floor_of(digits_instrument(int(resolution), version), n, draws, seed, class_counts)
