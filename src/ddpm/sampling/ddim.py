"""DDIM sampling (Song, Meng & Ermon 2021): the non-Markovian reverse process with parameter η.

One step from code index t to its predecessor in the chain (ᾱ = ``alphas_cumprod``,
ᾱ' = ``alphas_cumprod_prev`` of the diffusion, which for a :class:`SpacedDiffusion` is the previous
*kept* step):

    x̂0 = pred_xstart of ``p_mean_variance``         (any mean type; clipped when asked)
    ε̂  = (x_t / √ᾱ − x̂0) / √(1/ᾱ − 1)              (the ε consistent with x̂0 and x_t)
    σ  = η · √((1 − ᾱ')/(1 − ᾱ)) · √(1 − ᾱ/ᾱ')
    x' = √ᾱ' · x̂0 + √(1 − ᾱ' − σ²) · ε̂ + σ z        (no noise at t = 0)

η = 0 is the deterministic DDIM; η = 1 on the full chain is ancestral sampling with the posterior
variance β̃ (σ² = β̃_t and the mean is the q-posterior mean). Learned variances are ignored, as in
improved DDPM's ``ddim_sample``. A K-step DDIM is this loop on ``respace(diffusion, K, spacing)``.

Deterministic inversion runs the η = 0 update forwards (x_t → x_{t+1}, with ᾱ_next), which makes
:func:`ddim_invert` / :func:`ddim_decode` an approximately invertible encoder/decoder pair.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ddpm.errors import ConfigError

NoiseSource = torch.Tensor | Callable[[int], torch.Tensor] | None


class _Tables:
    """The float64 DDIM coefficients of one diffusion and η, cast once to ``x``'s dtype/device."""

    def __init__(self, diffusion, eta: float, like: torch.Tensor):
        ac = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
        ac_prev = np.append(1.0, ac[:-1])
        ac_next = np.append(ac[1:], 0.0)
        sigma = eta * np.sqrt((1.0 - ac_prev) / (1.0 - ac) * (1.0 - ac / ac_prev))
        # Clamp the rounding residue at t = 0 (where 1 − ᾱ' − σ² is exactly 0 in real arithmetic).
        direction = np.sqrt(np.maximum(1.0 - ac_prev - sigma**2, 0.0))
        # float32 tables for every input but float64 ones (as GaussianDiffusion.gather): ᾱ_T ≈ 4e-5
        # would not survive a bf16 table.
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        cast = lambda a: torch.from_numpy(a).to(device=like.device, dtype=dtype)  # noqa: E731
        self.sqrt_recip_ac = cast(np.sqrt(1.0 / ac))
        self.sqrt_recipm1_ac = cast(np.sqrt(1.0 / ac - 1.0))
        self.sqrt_ac_prev = cast(np.sqrt(ac_prev))
        self.sigma = cast(sigma)
        self.direction = cast(direction)
        self.sqrt_ac_next = cast(np.sqrt(ac_next))
        self.sqrt_one_minus_ac_next = cast(np.sqrt(1.0 - ac_next))

    @staticmethod
    def at(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return table[t].reshape(-1, *([1] * (ndim - 1)))


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"DDIM eta must be in [0, 1] (0 deterministic, 1 ancestral), got {eta}")
    return eta


def _eps_from_xstart(tab: _Tables, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    n = x_t.ndim
    return (tab.at(tab.sqrt_recip_ac, t, n) * x_t - x0) / tab.at(tab.sqrt_recipm1_ac, t, n)


def ddim_step(diffusion, model, x: torch.Tensor, t: torch.Tensor, *, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_denoised: bool = True,
              model_kwargs: dict | None = None, generator: torch.Generator | None = None,
              _tables: _Tables | None = None) -> dict:
    """One DDIM step from x_t (code indices ``t``, shape (B,)); dict with ``sample``, ``pred_xstart``, ``eps``."""
    tab = _tables or _Tables(diffusion, _check_eta(eta), x)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
    x0 = out["pred_xstart"]
    eps = _eps_from_xstart(tab, x, t, x0)
    n = x.ndim
    sample = tab.at(tab.sqrt_ac_prev, t, n) * x0 + tab.at(tab.direction, t, n) * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (n - 1)))
        sample = sample + nonzero * tab.at(tab.sigma, t, n) * noise
    return {"sample": sample, "pred_xstart": x0, "eps": eps}


def _step_noise(step_noise: NoiseSource, i: int) -> torch.Tensor | None:
    if step_noise is None:
        return None
    return step_noise(i) if callable(step_noise) else step_noise[i]


def ddim_sample_loop_progressive(diffusion, model, shape: Sequence[int], *, eta: float = 0.0,
                                 noise: torch.Tensor | None = None, step_noise: NoiseSource = None,
                                 clip_denoised: bool = True, model_kwargs: dict | None = None,
                                 generator: torch.Generator | None = None, device=None,
                                 progress: bool = False) -> Iterator[dict]:
    """Yield ``{"t", "sample", "pred_xstart"}`` after each DDIM step from x_T (``noise``) down to x_0.

    ``step_noise[t]`` (a tensor indexed by the chain's code index, or a callable t → tensor) is the
    noise of the step leaving x_t; it is only drawn when η > 0.
    """
    eta = _check_eta(eta)
    if noise is not None:
        x = noise.to(device) if device is not None else noise
    else:
        x = torch.randn(tuple(shape), generator=generator, device=device)
    tab = _Tables(diffusion, eta, x)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="ddim", leave=False)
    with torch.no_grad():
        for i in indices:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            z = _step_noise(step_noise, i) if eta > 0 and i > 0 else None
            out = ddim_step(diffusion, model, x, t, eta=eta, noise=z, clip_denoised=clip_denoised,
                            model_kwargs=model_kwargs, generator=generator, _tables=tab)
            x = out["sample"]
            yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}


def ddim_sample_loop(diffusion, model, shape: Sequence[int], **kwargs) -> torch.Tensor:
    """x_0 from DDIM; keyword arguments as :func:`ddim_sample_loop_progressive`."""
    final = None
    for final in ddim_sample_loop_progressive(diffusion, model, shape, **kwargs):
        pass
    return final["sample"]


def ddim_reverse_step(diffusion, model, x: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = False,
                      model_kwargs: dict | None = None, _tables: _Tables | None = None) -> dict:
    """One deterministic inversion step x_t → x_{t+1} (η = 0); dict with ``sample``, ``pred_xstart``."""
    tab = _tables or _Tables(diffusion, 0.0, x)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
    x0 = out["pred_xstart"]
    eps = _eps_from_xstart(tab, x, t, x0)
    n = x.ndim
    sample = tab.at(tab.sqrt_ac_next, t, n) * x0 + tab.at(tab.sqrt_one_minus_ac_next, t, n) * eps
    return {"sample": sample, "pred_xstart": x0}


def ddim_invert(diffusion, model, x0: torch.Tensor, *, clip_denoised: bool = False,
                model_kwargs: dict | None = None, progress: bool = False) -> torch.Tensor:
    """Encode images ``x0`` (in [−1, 1]) to DDIM latents x_T by running the η = 0 ODE forwards.

    The first step evaluates the model at code t = 0 on x0 itself, exactly as improved DDPM's
    ``ddim_reverse_sample`` loop. ``clip_denoised`` defaults to False here (and in
    :func:`ddim_decode`) because clipping x̂0 breaks the symmetry the round trip relies on.
    """
    x = x0
    tab = _Tables(diffusion, 0.0, x)
    indices = range(diffusion.num_timesteps)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="ddim invert", leave=False)
    with torch.no_grad():
        for i in indices:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x = ddim_reverse_step(diffusion, model, x, t, clip_denoised=clip_denoised,
                                  model_kwargs=model_kwargs, _tables=tab)["sample"]
    return x


def ddim_decode(diffusion, model, x_T: torch.Tensor, *, clip_denoised: bool = False,
                model_kwargs: dict | None = None, progress: bool = False) -> torch.Tensor:
    """Decode latents x_T with deterministic DDIM (η = 0): the inverse of :func:`ddim_invert`."""
    return ddim_sample_loop(diffusion, model, x_T.shape, eta=0.0, noise=x_T,
                            clip_denoised=clip_denoised, model_kwargs=model_kwargs, progress=progress)


def slerp(z0: torch.Tensor, z1: torch.Tensor, lam: float) -> torch.Tensor:
    """Spherical interpolation per batch element (the DDIM paper's latent interpolation).

    θ = arccos(⟨z0, z1⟩ / (‖z0‖‖z1‖)) over all non-batch dims; returns
    sin((1−λ)θ)/sin θ · z0 + sin(λθ)/sin θ · z1, falling back to linear interpolation when θ ≈ 0.
    λ = 0 gives z0 and λ = 1 gives z1.
    """
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(sin), sin)
    w0 = torch.where(small, 1.0 - lam * torch.ones_like(sin), torch.sin((1.0 - lam) * theta) / safe)
    w1 = torch.where(small, lam * torch.ones_like(sin), torch.sin(lam * theta) / safe)
    shape = (-1,) + (1,) * (z0.ndim - 1)
    return (w0.reshape(shape) * z0.double() + w1.reshape(shape) * z1.double()).to(z0.dtype)


def ddim_interpolate(diffusion, model, x_a: torch.Tensor, x_b: torch.Tensor, lambdas: Sequence[float], *,
                     encode: bool = True, clip_denoised: bool = False, model_kwargs: dict | None = None,
                     progress: bool = False) -> dict:
    """Semantic interpolation: slerp between the DDIM latents of ``x_a`` and ``x_b``, then decode.

    With ``encode=True`` the inputs are images, inverted with :func:`ddim_invert`; with
    ``encode=False`` they already are latents x_T (e.g. two Gaussian draws). Returns a dict with
    ``samples`` and ``latents`` of shape (L, B, C, H, W) for the L values of λ, and ``z_a``, ``z_b``.
    """
    if encode:
        z_a = ddim_invert(diffusion, model, x_a, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        z_b = ddim_invert(diffusion, model, x_b, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
    else:
        z_a, z_b = x_a, x_b
    latents = torch.stack([slerp(z_a, z_b, float(lam)) for lam in lambdas])
    samples = torch.stack([
        ddim_decode(diffusion, model, z, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                    progress=progress)
        for z in latents
    ])
    return {"samples": samples, "latents": latents, "z_a": z_a, "z_b": z_b}
