"""Progressive lossy compression: rate and distortion along the reverse process (Ho et al. 2020, §4.3, Fig. 5,
Table 4), derived from the per-t averages of one :func:`ddpm.evaluate.likelihood.evaluate_bpd` pass.

When the receiver holds x_t (paper index t = T … 1, i.e. after T − t reverse steps):

- rate(t) = L_T + Σ_{s=t}^{T−1} L_s bits/dim, i.e. the prior plus code terms t … T−1;
- distortion(t) = RMSE between x0 and x̂0(x_t) on the 0–255 scale.

The paper does not say how it averages RMSE over the test set (spec: UNCONFIRMED). We report
``distortion`` = 127.5·√(mean over images and dims of (x̂0 − x0)²) — the RMSE of the whole test set,
the natural thing to compute from averaged MSE curves — and also ``distortion_mean_per_image``, the
average of each image's RMSE (never larger, by Jensen).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class RateDistortion:
    """Curves indexed by reverse steps taken, ``steps[k] = T − t`` with t = T − k (k = 0 … T−1)."""

    steps: np.ndarray  # (T,) 0 … T−1
    paper_t: np.ndarray  # (T,) T … 1
    rate: np.ndarray  # (T,) bits/dim received
    distortion: np.ndarray  # (T,) √(mean MSE) · 127.5
    distortion_mean_per_image: np.ndarray  # (T,) mean of per-image RMSE · 127.5

    @property
    def num_timesteps(self) -> int:
        return int(self.steps.shape[0])

    def at(self, paper_t: int) -> tuple[float, float]:
        """(rate, distortion) when the receiver holds x_t."""
        k = self.num_timesteps - int(paper_t)
        return float(self.rate[k]), float(self.distortion[k])

    def table4(self, num_columns: int = 10) -> list[dict]:
        """Table 4's layout: columns T − t + 1 = T, 0.9T, …, 0.1T (for T = 1000: 1000, 900, …, 100)."""
        T = self.num_timesteps
        rows = []
        for j in range(num_columns):
            col = T - j * T // num_columns  # "reverse process time" T − t + 1
            rate, dist = self.at(T - col + 1)
            rows.append({"reverse_time": col, "rate_bpd": rate, "distortion_rmse": dist})
        return rows

    def write_csv(self, path: str | os.PathLike) -> Path:
        from ddpm.outputs import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            w = csv.writer(f)
            w.writerow(["reverse_steps", "paper_t", "rate_bpd", "distortion_rmse_0_255",
                        "distortion_mean_per_image_rmse_0_255"])
            for k in range(self.num_timesteps):
                w.writerow([int(self.steps[k]), int(self.paper_t[k]), f"{self.rate[k]:.8g}",
                            f"{self.distortion[k]:.8g}", f"{self.distortion_mean_per_image[k]:.8g}"])
        return path


def rate_distortion(terms_bpd, prior_bpd: float, xstart_mse, xstart_rmse_per_image=None) -> RateDistortion:
    """Curves from per-t averages (code index t = 0..T−1): VLB terms in bits/dim, the prior L_T, and
    x̂0 MSE on the [−1, 1] scale (optionally the mean per-image RMSE, same scale)."""
    terms = np.asarray(terms_bpd, dtype=np.float64)
    mse = np.asarray(xstart_mse, dtype=np.float64)
    T = terms.shape[0]
    if mse.shape != (T,):
        raise ValueError(f"xstart_mse must have shape ({T},), got {mse.shape}")
    paper_t = np.arange(T, 0, -1)  # receiver holds x_t, t = T … 1
    # rate(t) = prior + Σ_{i=t}^{T−1} terms[i]: a reversed cumulative sum that excludes terms[0].
    tail = np.concatenate([np.cumsum(terms[::-1])[::-1], [0.0]])  # tail[i] = Σ_{j ≥ i} terms[j]
    rate = float(prior_bpd) + tail[paper_t]
    distortion = 127.5 * np.sqrt(mse[paper_t - 1])
    per_image = (127.5 * np.asarray(xstart_rmse_per_image, np.float64)[paper_t - 1]
                 if xstart_rmse_per_image is not None else distortion.copy())
    return RateDistortion(np.arange(T), paper_t, rate, distortion, per_image)


def from_bpd_result(result) -> RateDistortion:
    """Curves from a :class:`ddpm.evaluate.likelihood.BpdResult`."""
    return rate_distortion(result.terms_bpd, result.prior, result.xstart_mse, result.xstart_rmse_per_image)


def plot_rate_distortion(rd: RateDistortion, path: str | os.PathLike, title: str | None = None) -> Path:
    """Fig. 5's three panels: distortion vs steps, rate vs steps, distortion vs rate (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    ax[0].plot(rd.steps, rd.distortion)
    ax[0].set_xlabel("Reverse process steps (T − t)")
    ax[0].set_ylabel("Distortion (RMSE [0, 255])")
    ax[1].plot(rd.steps, rd.rate)
    ax[1].set_xlabel("Reverse process steps (T − t)")
    ax[1].set_ylabel("Rate (bits/dim)")
    ax[2].plot(rd.rate, rd.distortion)
    ax[2].set_xlabel("Rate (bits/dim)")
    ax[2].set_ylabel("Distortion (RMSE [0, 255])")
    for a in ax:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from ddpm.outputs import atomic_write

    try:
        with atomic_write(path) as f:
            fig.savefig(f, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


__all__ = ["RateDistortion", "rate_distortion", "from_bpd_result", "plot_rate_distortion"]
