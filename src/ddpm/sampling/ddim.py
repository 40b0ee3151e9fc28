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

from ddpm.diffusion import noise_at, randn, randn_like
from ddpm.errors import ConfigError
from ddpm.sampling.registry import Option, SamplerSpec
from ddpm.sampling.respace import SPACINGS, chain_length, respace

NoiseSource = torch.Tensor | Callable[[int], torch.Tensor] | None


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"DDIM eta must be in [0, 1] (0 deterministic, 1 ancestral), got {eta}")
    return eta


def _coefficients(diffusion, eta: float) -> tuple[str, str]:
    """Names of the η-dependent tables σ_t and √(1 − ᾱ' − σ_t²), registered on ``diffusion`` once."""
    sigma, direction = f"ddim_sigma[eta={eta!r}]", f"ddim_direction[eta={eta!r}]"
    ac, ac_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    with np.errstate(divide="ignore", invalid="ignore"):
        s = eta * np.sqrt((1.0 - ac_prev) / (1.0 - ac) * (1.0 - ac / ac_prev))
    # Clamp the rounding residue at t = 0 (where 1 − ᾱ' − σ² is exactly 0 in real arithmetic).
    diffusion.add_tables({sigma: s, direction: np.sqrt(np.maximum(1.0 - ac_prev - s**2, 0.0))})
    return sigma, direction


def ddim_step(diffusion, model, x: torch.Tensor, t: torch.Tensor, *, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_denoised: bool = True,
              model_kwargs: dict | None = None, generator: torch.Generator | None = None) -> dict:
    """One DDIM step from x_t (code indices ``t``, shape (B,)); dict with ``sample``, ``pred_xstart``, ``eps``."""
    eta = _check_eta(eta)
    sigma, direction = _coefficients(diffusion, eta)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    sample = diffusion.gather("sqrt_alphas_cumprod_prev", t, x) * x0 + diffusion.gather(direction, t, x) * eps
    if eta > 0:
        if noise is None:
            noise = randn_like(x, generator)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        sample = sample + nonzero * diffusion.gather(sigma, t, x) * noise
    return {"sample": sample, "pred_xstart": x0, "eps": eps}


def ddim_sample_loop_progressive(diffusion, model, shape: Sequence[int], *, eta: float = 0.0,
                                 noise: torch.Tensor | None = None, step_noise: NoiseSource = None,
                                 clip_denoised: bool = True, model_kwargs: dict | None = None,
                                 generator: torch.Generator | None = None, device=None,
                                 progress: bool = False, t_start: int | None = None) -> Iterator[dict]:
    """Yield ``{"t", "sample", "pred_xstart"}`` after each DDIM step from x_T (``noise``) down to x_0.

    ``step_noise[t]`` (a tensor indexed by the chain's code index, or a callable t → tensor) is the
    noise of the step leaving x_t; it is only drawn when η > 0. ``t_start`` starts part-way, ``noise``
    being x at code step ``t_start``.
    """
    eta = _check_eta(eta)
    t_start = diffusion.num_timesteps - 1 if t_start is None else int(t_start)
    if not 0 <= t_start < diffusion.num_timesteps:
        raise ConfigError(f"t_start must be in [0, {diffusion.num_timesteps - 1}], got {t_start}")
    if noise is not None:
        x = noise.to(device) if device is not None else noise
    else:
        x = randn(tuple(shape), generator, device)
    indices = range(t_start, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="ddim", leave=False)
    with torch.no_grad():
        for i in indices:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            z = noise_at(step_noise, i, x, generator) if eta > 0 and i > 0 else None
            out = ddim_step(diffusion, model, x, t, eta=eta, noise=z, clip_denoised=clip_denoised,
                            model_kwargs=model_kwargs, generator=generator)
            x = out["sample"]
            yield {"t": i, "sample": x, "pred_xstart": out["pred_xstart"]}


def ddim_sample_loop(diffusion, model, shape: Sequence[int], **kwargs) -> torch.Tensor:
    """x_0 from DDIM; keyword arguments as :func:`ddim_sample_loop_progressive`."""
    final = None
    for final in ddim_sample_loop_progressive(diffusion, model, shape, **kwargs):
        pass
    return final["sample"]


def sample_ddim(model, diffusion, x, *, noise, steps=None, spacing="uniform", clip_denoised=True,
                model_kwargs=None, callback=None, progress=False, t_start=None, eta=0.0):
    """DDIM with η on the ``steps``-step chain; the registry's contract (:mod:`ddpm.sampling.registry`)."""
    chain = respace(diffusion, steps, spacing)
    if t_start is not None and chain is not diffusion:
        raise ConfigError("a part-way start (t_start) needs the full chain; drop steps")
    original = getattr(chain, "timestep_map", None)

    def orig(i: int) -> int:
        return int(original[i]) if original is not None else i

    sample = x
    for k, out in enumerate(ddim_sample_loop_progressive(
            chain, model, x.shape, eta=eta, noise=x, step_noise=(lambda i: noise(orig(i))) if eta > 0 else None,
            clip_denoised=clip_denoised, model_kwargs=model_kwargs, progress=progress, t_start=t_start)):
        sample = out["sample"]
        if callback is not None:
            callback({"i": k, "t": orig(out["t"]), "x": sample, "pred_xstart": out["pred_xstart"]})
    return sample


DDIM = SamplerSpec(
    name="ddim",
    fn=sample_ddim,
    summary="DDIM with eta (0: deterministic, 1: ancestral with the posterior variance)",
    options=(Option("eta", 0.0, "DDIM's η: 0 deterministic, 1 ancestral with β̃", low=0.0, high=1.0),),
    spacings=SPACINGS,
    deterministic=lambda options: options["eta"] == 0.0,
    noise_draws=lambda T, steps, spacing, options: chain_length(T, steps, spacing) - 1,
    nfe=lambda T, steps, spacing, options: chain_length(T, steps, spacing),
    supports_t_start=True,
    references="Song, Meng & Ermon 2021, Eq. 12 and 16",
)


def ddim_reverse_step(diffusion, model, x: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = False,
                      model_kwargs: dict | None = None) -> dict:
    """One deterministic inversion step x_t → x_{t+1} (η = 0); dict with ``sample``, ``pred_xstart``."""
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    sample = (diffusion.gather("sqrt_alphas_cumprod_next", t, x) * x0
              + diffusion.gather("sqrt_one_minus_alphas_cumprod_next", t, x) * eps)
    return {"sample": sample, "pred_xstart": x0}


def ddim_invert(diffusion, model, x0: torch.Tensor, *, clip_denoised: bool = False,
                model_kwargs: dict | None = None, progress: bool = False) -> torch.Tensor:
    """Encode images ``x0`` (in [−1, 1]) to DDIM latents x_T by running the η = 0 ODE forwards.

    The first step evaluates the model at code t = 0 on x0 itself, exactly as improved DDPM's
    ``ddim_reverse_sample`` loop. ``clip_denoised`` defaults to False here (and in
    :func:`ddim_decode`) because clipping x̂0 breaks the symmetry the round trip relies on.
    """
    x = x0
    indices = range(diffusion.num_timesteps)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="ddim invert", leave=False)
    with torch.no_grad():
        for i in indices:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x = ddim_reverse_step(diffusion, model, x, t, clip_denoised=clip_denoised,
                                  model_kwargs=model_kwargs)["sample"]
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
