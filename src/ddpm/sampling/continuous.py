"""Continuous-time views of a trained discrete DDPM: the σ (EDM / k-diffusion) view and the VP-SDE view.

A discrete model knows ᾱ_i only at its T code timesteps i = 0..T−1. Fast solvers need it between
them; this module defines both views on one interpolation, exact at every code timestep.

**σ view** (Karras et al. 2022, §2 and Table 1 "VP"; Song et al. 2021 (DDIM), Eq. 14). Rescale
x̃ = x_t / √ᾱ_t; then x̃ = x_0 + σ ε with σ = √((1−ᾱ)/ᾱ), a variance-exploding process whose
probability-flow ODE is dx̃/dσ = ε̂(x̃, σ) = (x̃ − D(x̃; σ))/σ. :class:`SigmaView` holds the table σ_i
(increasing in i) and maps σ ↔ t: ``sigma_to_t`` interpolates linearly in log σ between neighbouring
code timesteps (k-diffusion's ``DiscreteSchedule.sigma_to_t``, diffusers' ``_sigma_to_t``), so t is
fractional between grid points; ``quantize`` rounds it to the nearest code timestep instead
(k-diffusion's ``quantize=True``). The network is called with that t (our U-Net embeds real t).
:class:`Denoiser` is D(x̃; σ).

**VP-SDE view** (Song et al. 2021 (score SDE), §3.4 and App. B/C): t ∈ [0, 1] with the network
label t·(T−1), exactly as their ``get_score_fn`` does for discrete DDPM checkpoints. Here ᾱ(t) is
the σ view's interpolation at that label (exact at the labels i/(T−1)); β(t) = −d log ᾱ/dt, forward
drift f = −½β(t)x, diffusion g = √β(t), score s(x, t) = −ε̂/√(1−ᾱ(t)) and probability-flow drift
f − ½g²s = −½β(t)(x + s) (their Eq. 13). Their linear VP-SDE (β_min = 0.1, β_max = 20) is the
T = 1000 limit of this for the paper's schedule; ours stays exact at the model's own grid.

**x̂0 for every parameterisation.** :class:`Denoiser` converts the network output to x̂0 with the
continuous ᾱ = 1/(1+σ²) of the σ being evaluated — for ε: x̂0 = x̃ − σε; for x₀: itself; for v:
√ᾱ x_t − √(1−ᾱ) v — as diffusers' and k-diffusion's solvers do. At grid points this is exactly
``GaussianDiffusion.p_mean_variance(...)["pred_xstart"]`` (tests/test_continuous.py checks it for
every mean type); off the grid (Karras σ, intermediate solver stages) p_mean_variance cannot be used
because its conversions read the tables at an integer t. ``xprev`` models predict a posterior mean
whose coefficients exist only on the grid, so they are evaluated at the nearest code timestep
(network and ``predict_xstart_from_xprev`` alike). Learned variances: only the mean part (the first
C channels) is used — the solvers are deterministic or set their own noise. ``clip_denoised`` clips x̂0 to [−1, 1]
(off in the parity tests and for likelihoods).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.sampling.respace import SPACINGS as CHAIN_SPACINGS, timestep_subsequence

KARRAS_RHO = 7.0  # Karras et al. 2022, Eq. 5 and Table 1

# Step spacings of the σ-grid solvers (see :meth:`SigmaView.grid`); the respacing ones (integer
# timesteps of ddpm/ddim) work too.
SIGMA_SPACINGS = ("karras", "logsnr", "time", "linspace", *CHAIN_SPACINGS)


class SigmaView:
    """σ_i = √((1−ᾱ_i)/ᾱ_i) of a diffusion's T steps and the maps σ ↔ t between them."""

    def __init__(self, diffusion):
        ac = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
        self.num_timesteps = len(ac)
        self.sigmas = np.sqrt((1.0 - ac) / ac)
        self.log_sigmas = np.log(self.sigmas)
        if np.any(np.diff(self.log_sigmas) <= 0):
            raise ConfigError("the σ view needs ᾱ strictly decreasing in t (every β > 0)")

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma, quantize: bool = False):
        """The (fractional) code timestep of ``sigma``: linear in log σ between grid points, clamped
        to [0, T−1]; rounded to the nearest grid point with ``quantize``."""
        s = np.asarray(sigma, dtype=np.float64)
        t = np.interp(np.log(np.maximum(s, 1e-300)), self.log_sigmas, np.arange(self.num_timesteps, dtype=np.float64))
        return np.round(t) if quantize else t

    def t_to_sigma(self, t):
        """σ at a (fractional) code timestep: the inverse of :meth:`sigma_to_t` (log-linear)."""
        return np.exp(np.interp(np.asarray(t, dtype=np.float64), np.arange(self.num_timesteps), self.log_sigmas))

    def grid(self, steps: int, spacing: str, quantize: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(σ_0 > … > σ_{K−1} > σ_K = 0, t_0 … t_{K−1}): the K noise levels a K-step solver evaluates.

        - ``karras``: σ_i = (σ_max^{1/ρ} + i/(K−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7 (Karras et al.
          2022, Eq. 5), between the model's own σ_max = σ_{T−1} and σ_min = σ_0;
        - ``logsnr``: uniform in log-SNR λ = −log σ, the first K of K+1 points from λ(T−1) to λ(0)
          (DPM-Solver's ``logSNR`` grid, Lu et al. 2022a, §3.4);
        - ``time``: uniform in time, t_i = round((T−1)(K−i)/K) — DPM-Solver's ``time_uniform`` on the
          integer grid, which is diffusers' ``linspace`` of DPMSolverMultistep/UniPC;
        - ``linspace``: diffusers' ``linspace`` of Euler/Heun: t_i = (T−1)(1 − i/(K−1)), fractional,
          with σ interpolated linearly in σ (their ``interpolation_type="linear"``);
        - ``uniform``, ``quadratic``, ``even``, ``trailing``: the respacing subsequences of
          :func:`ddpm.sampling.respace.timestep_subsequence`, largest first.

        The solvers start from x_T taken as the VP sample at t_0 and end at σ = 0 (the data).
        """
        T, K = self.num_timesteps, int(steps)
        if not 1 <= K <= T:
            raise ConfigError(f"steps must be between 1 and the model's {T} timesteps, got {K}")
        if spacing == "karras":
            ramp = np.linspace(0.0, 1.0, K)
            lo, hi = self.sigma_min ** (1 / KARRAS_RHO), self.sigma_max ** (1 / KARRAS_RHO)
            sigmas = (hi + ramp * (lo - hi)) ** KARRAS_RHO
            ts = self.sigma_to_t(sigmas)
        elif spacing == "logsnr":
            sigmas = np.exp(np.linspace(math.log(self.sigma_max), math.log(self.sigma_min), K + 1)[:K])
            ts = self.sigma_to_t(sigmas)
        elif spacing == "time":
            ts = np.linspace(0, T - 1, K + 1).round()[::-1][:K].copy()
            sigmas = self.sigmas[ts.astype(np.int64)]
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, K)[::-1].copy()
            sigmas = np.interp(ts, np.arange(T), self.sigmas)
        elif spacing in CHAIN_SPACINGS:
            ts = np.asarray(timestep_subsequence(T, K, spacing), dtype=np.float64)[::-1].copy()
            sigmas = self.sigmas[ts.astype(np.int64)]
        else:
            raise ConfigError(f"unknown spacing {spacing!r}; choose one of {', '.join(SIGMA_SPACINGS)}")
        if quantize:
            ts = np.round(ts)
        return np.append(np.asarray(sigmas, dtype=np.float64), 0.0), np.asarray(ts, dtype=np.float64)


class Denoiser:
    """D(x̃; σ): the x̂0 of ``model`` (through ``diffusion``'s parameterisation) at noise level σ.

    Called as ``den(x̃, sigma, t=None)``; ``t`` is the code timestep the network sees (default: from
    σ, interpolated or quantized). Counts its network calls in ``nfe``.
    """

    def __init__(self, diffusion, model, *, model_kwargs: dict | None = None, clip_denoised: bool = True,
                 quantize: bool = False, view: SigmaView | None = None):
        self.diffusion, self.model = diffusion, model
        self.model_kwargs = model_kwargs
        self.clip_denoised, self.quantize = bool(clip_denoised), bool(quantize)
        self.view = view if view is not None else SigmaView(diffusion)
        self.nfe = 0

    def timestep(self, sigma: float, t: float | None = None) -> float:
        return float(self.view.sigma_to_t(sigma, self.quantize) if t is None else t)

    def __call__(self, x: torch.Tensor, sigma: float, t: float | None = None) -> torch.Tensor:
        sigma = float(sigma)
        t = self.timestep(sigma, t)
        alpha_bar = 1.0 / (1.0 + sigma * sigma)
        return self.xstart(x * math.sqrt(alpha_bar), t, alpha_bar)

    def xstart(self, x_t: torch.Tensor, t, alpha_bar, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x̂0 from the VP sample ``x_t`` at code timestep(s) ``t`` whose ᾱ is ``alpha_bar`` (scalars
        or one value per image). ``rows``: which images of the batch ``x_t`` holds (per-image
        ``model_kwargs`` such as labels are taken at those rows)."""
        d = self.diffusion
        B = x_t.shape[0]
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (B,))
        if d.mean_type == "xprev":
            t = np.round(t)  # its posterior-mean coefficients exist on the grid only
        if np.all(t == np.round(t)):
            tt = torch.as_tensor(t.astype(np.int64), device=x_t.device)
        else:
            tt = torch.as_tensor(t.copy(), dtype=torch.float64, device=x_t.device)
        kwargs = self.model_kwargs
        if rows is not None and kwargs:
            kwargs = {k: v[rows] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in kwargs.items()}
        out = d.model_output(self.model, x_t, tt, kwargs)
        self.nfe += 1
        out = out[:, :x_t.shape[1]]  # a learned variance's channels are not used
        ab = np.broadcast_to(np.asarray(alpha_bar, dtype=np.float64), (B,))
        shape = (B,) + (1,) * (x_t.ndim - 1)
        a = torch.as_tensor(np.sqrt(ab), dtype=x_t.dtype, device=x_t.device).view(shape)
        s = torch.as_tensor(np.sqrt(1.0 - ab), dtype=x_t.dtype, device=x_t.device).view(shape)
        if d.mean_type == "eps":
            x0 = (x_t - s * out) / a
        elif d.mean_type == "xstart":
            x0 = out
        elif d.mean_type == "v":
            x0 = a * x_t - s * out
        else:
            x0 = d.predict_xstart_from_xprev(x_t, tt, out)
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    def eps(self, x: torch.Tensor, sigma: float, t: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) at σ > 0: ε̂ = (x̃ − x̂0)/σ, the ε consistent with x̂0 (DDIM's Eq. 12 reading)."""
        x0 = self(x, sigma, t)
        return (x - x0) / float(sigma), x0


class VPSDE:
    """The VP-SDE view of a discrete diffusion, t ∈ [0, 1] ↔ network label t·(T−1) (score SDE).

    ᾱ(t) interpolates the model's own ᾱ (log-linear in σ between labels, as :class:`SigmaView`), so
    t = i/(T−1) is exactly code timestep i; t = 0 is code timestep 0 (ᾱ_0 = 1 − β_1), not noise-free.
    """

    def __init__(self, diffusion):
        self.view = SigmaView(diffusion)
        self.N = self.view.num_timesteps

    def label(self, t):
        """The network's timestep for SDE time t (score SDE's ``labels = t * (N - 1)``)."""
        return np.asarray(t, dtype=np.float64) * (self.N - 1)

    def sigma(self, t):
        return self.view.t_to_sigma(self.label(t))

    def alpha_bar(self, t):
        s = self.sigma(t)
        return 1.0 / (1.0 + s * s)

    def beta(self, t):
        """β(t) = −d log ᾱ/dt = 2σ²/(1+σ²) · d log σ/dt. log σ is linear between labels, so this is
        the left limit (the segment just below t), which reverse-time steps move into."""
        label = np.clip(self.label(t), 0.0, self.N - 1)
        i = np.clip(np.ceil(label).astype(np.int64) - 1, 0, self.N - 2)
        slope = (self.view.log_sigmas[i + 1] - self.view.log_sigmas[i]) * (self.N - 1)
        s2 = self.sigma(t) ** 2
        return 2.0 * s2 / (1.0 + s2) * slope

    def marginal_std(self, t):
        return np.sqrt(1.0 - self.alpha_bar(t))

    def drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Forward drift f(x, t) = −½β(t)x."""
        return -0.5 * float(self.beta(t)) * x

    def diffusion(self, t: float) -> float:
        """Forward diffusion coefficient g(t) = √β(t)."""
        return math.sqrt(float(self.beta(t)))

    def score(self, den: Denoiser, x: torch.Tensor, t: float) -> torch.Tensor:
        """s(x, t) = −ε̂/√(1−ᾱ(t)), ε̂ from the network at label t·(T−1) (quantized if ``den`` is)."""
        ab = float(self.alpha_bar(t))
        label = float(self.label(t))
        if den.quantize:
            label = float(np.round(label))
        x0 = den.xstart(x, label, ab)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        return -eps / math.sqrt(1.0 - ab)

    def probability_flow(self, den: Denoiser, x: torch.Tensor, t: float) -> torch.Tensor:
        """dx/dt of the probability-flow ODE, f − ½g²s = −½β(t)(x + s(x, t)) (score SDE, Eq. 13)."""
        return -0.5 * float(self.beta(t)) * (x + self.score(den, x, t))


def ancestral_split(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up): an ancestral step σ_from → σ_to as a deterministic step to σ_down plus fresh
    noise of std σ_up, σ_down² + σ_up² = σ_to² (k-diffusion's ``get_ancestral_step``; η = 1 is the
    DDPM posterior's variance in the σ view, η = 0 is deterministic)."""
    if not eta or sigma_to == 0.0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


class Trajectory:
    """Book-keeping shared by the σ-grid solvers: the start x̃_T, callbacks in VP units, noise."""

    def __init__(self, x_T: torch.Tensor, sigmas: np.ndarray, ts: np.ndarray, callback, noise, progress: bool,
                 desc: str):
        self.sigmas, self.ts = sigmas, ts
        self.callback, self.noise = callback, noise
        self.start = x_T * math.sqrt(1.0 + float(sigmas[0]) ** 2)  # x_T is the VP sample at t_0
        self.steps = range(len(ts))
        if progress:
            from tqdm.auto import tqdm

            self.steps = tqdm(self.steps, desc=desc, leave=False)

    def draw(self, i: int) -> torch.Tensor:
        """Step i's standard-normal noise (never for the last step, where σ_{i+1} = 0)."""
        return self.noise(int(round(float(self.ts[i]))))

    def report(self, i: int, x: torch.Tensor, x0: torch.Tensor, nfe: int | None = None) -> None:
        if self.callback is None:
            return
        sigma = float(self.sigmas[i + 1])
        info = {"i": i, "t": int(round(float(self.ts[i]))), "x": x / math.sqrt(1.0 + sigma * sigma),
                "pred_xstart": x0}
        if nfe is not None:
            info["nfe"] = nfe
        self.callback(info)


__all__ = ["SigmaView", "Denoiser", "VPSDE", "ancestral_split", "Trajectory", "SIGMA_SPACINGS", "KARRAS_RHO"]
