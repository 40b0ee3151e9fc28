"""Euler, Euler-ancestral and Heun on the σ grid (Karras et al. 2022, "Elucidating the design space
of diffusion-based generative models", Algorithms 1 and 2).

All three integrate dx̃/dσ = (x̃ − D(x̃; σ))/σ in the σ view of :mod:`ddpm.sampling.continuous`
from σ_0 to σ_K = 0, one network call per Euler step:

- ``euler``: x̃_{i+1} = x̃_i + (σ_{i+1} − σ_i) d_i. On an integer grid this *is* deterministic DDIM
  (Song et al. 2021, §4.3; tests/test_continuous.py checks it against ``ddim``).
- ``heun``: EDM's Algorithm 2 — the Euler step corrected with the slope at its end point,
  x̃_{i+1} = x̃_i + (σ_{i+1} − σ̂_i)(d_i + d'_{i+1})/2, except on the last step to σ = 0; 2K − 1 calls.
- EDM's stochastic "churn" (both): with γ_i = min(S_churn/K, √2 − 1) for σ_i ∈ [S_tmin, S_tmax], the
  step starts from σ̂_i = (1 + γ_i)σ_i, x̂_i = x̃_i + √(σ̂_i² − σ_i²)·S_noise·z, and the network is
  evaluated at σ̂_i. S_churn = 0 (default) is the deterministic ODE. No churn on the last step
  (σ_{i+1} = 0), so the final denoising step draws no noise (EDM would add noise of std
  σ_{K−1}√(γ²+2γ) just before it). diffusers' Euler/Heun schedulers evaluate the network at σ_i
  rather than σ̂_i; with S_churn = 0 (their default and our parity tests) the two agree.
- ``euler-ancestral``: each step σ_i → σ_{i+1} is an Euler step to σ_down plus fresh noise σ_up
  (:func:`ddpm.sampling.continuous.ancestral_split`, k-diffusion's ``sample_euler_ancestral``;
  η = 1 is diffusers' EulerAncestralDiscreteScheduler).
"""

from __future__ import annotations

import math

from ddpm.sampling.continuous import SIGMA_SPACINGS, Denoiser, SigmaView, Trajectory, ancestral_split
from ddpm.sampling.registry import Option, SamplerSpec

DEFAULT_STEPS = 20
QUANTIZE = Option("quantize", False, "call the network at the nearest code timestep instead of the "
                  "interpolated fractional one (k-diffusion's quantize)", kind=bool)
CHURN = (
    Option("s_churn", 0.0, "EDM's S_churn: stochasticity per run (0: the deterministic ODE)", low=0.0, high=1e6),
    Option("s_tmin", 0.0, "EDM's S_tmin: churn only for σ ≥ this", low=0.0, high=1e9),
    Option("s_tmax", 1e9, "EDM's S_tmax: churn only for σ ≤ this", low=0.0, high=1e9),
    Option("s_noise", 1.0, "EDM's S_noise: scale of the churn noise", low=0.0, high=10.0),
)


def _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback, noise,
           progress, name):
    view = SigmaView(diffusion)
    sigmas, ts = view.grid(min(steps or DEFAULT_STEPS, view.num_timesteps), spacing, quantize)
    den = Denoiser(diffusion, model, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                   quantize=quantize, view=view)
    return den, Trajectory(x, sigmas, ts, callback, noise, progress, name)


def _gamma(sigma: float, sigma_next: float, K: int, o: dict) -> float:
    if o["s_churn"] <= 0 or sigma_next == 0.0 or not o["s_tmin"] <= sigma <= o["s_tmax"]:
        return 0.0
    return min(o["s_churn"] / K, math.sqrt(2.0) - 1.0)


def _edm(model, diffusion, x, *, noise, steps, spacing, clip_denoised, model_kwargs, callback, progress,
         second_order, name, quantize, **churn):
    den, tr = _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback,
                     noise, progress, name)
    sig, K = tr.sigmas, len(tr.ts)
    x = tr.start
    for i in tr.steps:
        s, s_next = float(sig[i]), float(sig[i + 1])
        gamma = _gamma(s, s_next, K, churn)
        t = float(tr.ts[i])
        if gamma > 0:
            s_hat = s * (1.0 + gamma)
            x = x + math.sqrt(s_hat**2 - s**2) * churn["s_noise"] * tr.draw(i)
            s, t = s_hat, None  # the network is evaluated at σ̂ (EDM Algorithm 2, line 7)
        x0 = den(x, s, t)
        d = (x - x0) / s
        x_next = x + (s_next - s) * d
        if second_order and s_next > 0:
            x0_next = den(x_next, s_next, float(tr.ts[i + 1]))
            d_next = (x_next - x0_next) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
        tr.report(i, x, x0)
    return x


def sample_euler(model, diffusion, x, *, noise, steps=None, spacing="karras", clip_denoised=True,
                 model_kwargs=None, callback=None, progress=False, t_start=None, quantize=False, **churn):
    """Euler steps on the σ grid (EDM Algorithm 2 without the correction); the registry's contract."""
    return _edm(model, diffusion, x, noise=noise, steps=steps, spacing=spacing, clip_denoised=clip_denoised,
                model_kwargs=model_kwargs, callback=callback, progress=progress, second_order=False,
                name="euler", quantize=quantize, **churn)


def sample_heun(model, diffusion, x, *, noise, steps=None, spacing="karras", clip_denoised=True,
                model_kwargs=None, callback=None, progress=False, t_start=None, quantize=False, **churn):
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 2); the registry's contract."""
    return _edm(model, diffusion, x, noise=noise, steps=steps, spacing=spacing, clip_denoised=clip_denoised,
                model_kwargs=model_kwargs, callback=callback, progress=progress, second_order=True,
                name="heun", quantize=quantize, **churn)


def sample_euler_ancestral(model, diffusion, x, *, noise, steps=None, spacing="karras", clip_denoised=True,
                           model_kwargs=None, callback=None, progress=False, t_start=None, eta=1.0,
                           s_noise=1.0, quantize=False):
    """Euler steps to σ_down plus σ_up fresh noise per step; the registry's contract."""
    den, tr = _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback,
                     noise, progress, "euler-ancestral")
    sig = tr.sigmas
    x = tr.start
    for i in tr.steps:
        s, s_next = float(sig[i]), float(sig[i + 1])
        x0 = den(x, s, float(tr.ts[i]))
        down, up = ancestral_split(s, s_next, eta)
        x = x + (down - s) * (x - x0) / s
        if up > 0:
            x = x + up * s_noise * tr.draw(i)
        tr.report(i, x, x0)
    return x


def _steps(T, steps):
    return min(steps or DEFAULT_STEPS, T)


def _churns(T, steps, spacing, options) -> int:
    """Steps that may churn (an upper bound: which σ fall in [S_tmin, S_tmax] is known at run time)."""
    return 0 if options["s_churn"] <= 0 else _steps(T, steps) - 1


EULER = SamplerSpec(
    name="euler",
    fn=sample_euler,
    summary="Euler steps of the probability-flow ODE on a σ grid (Karras σ by default; EDM churn optional)",
    options=(*CHURN, QUANTIZE),
    spacings=SIGMA_SPACINGS,
    deterministic=lambda o: o["s_churn"] <= 0,
    noise_draws=_churns,
    nfe=lambda T, steps, spacing, o: _steps(T, steps),
    references="Karras et al. 2022, Algorithm 2 (first-order) and Eq. 5; Song et al. 2021 (DDIM), §4.3",
)

HEUN = SamplerSpec(
    name="heun",
    fn=sample_heun,
    summary="EDM's 2nd-order Heun sampler on Karras σ (ρ = 7), with optional churn",
    options=(*CHURN, QUANTIZE),
    spacings=SIGMA_SPACINGS,
    deterministic=lambda o: o["s_churn"] <= 0,
    noise_draws=_churns,
    nfe=lambda T, steps, spacing, o: 2 * _steps(T, steps) - 1,
    references="Karras et al. 2022, Algorithm 2, Eq. 5 and Table 1",
)

EULER_ANCESTRAL = SamplerSpec(
    name="euler-ancestral",
    fn=sample_euler_ancestral,
    summary="Euler-ancestral: an Euler step to σ_down plus fresh noise σ_up per step",
    options=(Option("eta", 1.0, "ancestral noise fraction (1: DDPM's posterior variance; 0: euler)",
                    low=0.0, high=1.0),
             Option("s_noise", 1.0, "scale of the fresh noise", low=0.0, high=10.0), QUANTIZE),
    spacings=SIGMA_SPACINGS,
    deterministic=lambda o: o["eta"] == 0.0,
    noise_draws=lambda T, steps, spacing, o: _steps(T, steps) - 1,
    nfe=lambda T, steps, spacing, o: _steps(T, steps),
    references="k-diffusion sample_euler_ancestral; Karras et al. 2022, §4; Ho et al. 2020, Eq. 7",
)
