"""Score-based samplers: score SDE's predictor–corrector (Song et al. 2021, §4.2, Algorithms 2–3 and
App. G) and NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

Both use the score s(x, t) = −ε̂/√(1−ᾱ_t) of the model (ε̂ from ``p_mean_variance``'s x̂0, so every
parameterisation works and ``clip_denoised`` is honoured).

``pc`` runs on the (respaced) discrete chain, in VP coordinates, score SDE's VP discretisation with
the chain's own β_k (for all T steps these are their ``discrete_betas``):

- predictor ``reverse-diffusion``: x ← (2 − √(1−β_k))x + β_k s + √β_k z (their ReverseDiffusionPredictor
  on VPSDE.discretize); ``ancestral``: x ← (x + β_k s)/√(1−β_k) + √β_k z (AncestralSamplingPredictor,
  which is Algorithm 2 with σ² = β; tests/test_score_sde.py checks it against ``ddpm``);
- corrector: ``corrector_steps`` Langevin steps at the level just reached,
  x ← x + ε s + √(2ε) z with ε = 2α_k (r‖z‖/‖s‖)², r = ``snr`` (LangevinCorrector).

Deviations, both so that image i depends only on (seed, i): the norms ‖z‖, ‖s‖ are per image (the
authors average them over the batch), and the corrector runs after the predictor at the level it
reached (their Algorithm 2/3 order), never after the last predictor step, which lands on the data and
returns its noise-free mean (their ``denoise``). NFE = K + (K−1)·corrector_steps.

``langevin`` is NCSN's sampler in the σ view (x̃ = x/√ᾱ, s̃ = (x̂0 − x̃)/σ²): K−1 noise levels σ_i
geometric from σ_max to σ_min (NCSN's sequence), ``n_steps`` Langevin steps x̃ ← x̃ + (α_i/2)s̃ + √α_i z
at each with α_i = ε·σ_i²/σ_L² (ε = ``step_lr``; NCSN: 2e-5 with σ_L = 0.01, 100 steps per level),
then one denoising step x̂0 = D(x̃; σ_L) (NCSNv2, Song & Ermon 2020, App. / "denoising"). The
last of the K "steps" is that denoising step. NFE = (K−1)·n_steps + 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm.sampling.continuous import Denoiser, SigmaView
from ddpm.sampling.registry import Option, SamplerSpec
from ddpm.sampling.respace import SPACINGS, chain_length, respace

LANGEVIN_LEVELS = 10  # NCSN's L


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


def sample_pc(model, diffusion, x, *, noise, steps=None, spacing="uniform", clip_denoised=True,
              model_kwargs=None, callback=None, progress=False, t_start=None, predictor="reverse-diffusion",
              corrector_steps=1, snr=0.16):
    """Score SDE's predictor–corrector sampler on the (respaced) chain; the registry's contract."""
    chain = respace(diffusion, steps, spacing)
    mapping = getattr(chain, "timestep_map", None)
    K = chain.num_timesteps

    def orig(k: int) -> int:
        return int(mapping[k]) if mapping is not None else k

    def score(x, k):
        t = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        x0 = chain.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)["pred_xstart"]
        eps = chain.predict_eps_from_xstart(x, t, x0)
        return -eps / float(chain.sqrt_one_minus_alphas_cumprod[k]), x0

    levels = range(K - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        levels = tqdm(levels, desc="pc", leave=False)
    for i, k in enumerate(levels):
        beta = float(chain.betas[k])
        s, x0 = score(x, k)
        if predictor == "ancestral":
            x = (x + beta * s) / math.sqrt(1.0 - beta)
        else:
            x = (2.0 - math.sqrt(1.0 - beta)) * x + beta * s
        if k > 0:
            x = x + math.sqrt(beta) * noise(orig(k))
            alpha = 1.0 - float(chain.betas[k - 1])
            for _ in range(corrector_steps):
                g = score(x, k - 1)[0]
                z = noise(orig(k - 1))
                step = 2.0 * alpha * (snr * _norm(z) / _norm(g)) ** 2
                x = x + step * g + (2.0 * step).sqrt() * z
        if callback is not None:
            callback({"i": i, "t": orig(k), "x": x, "pred_xstart": x0})
    return x


def sample_langevin(model, diffusion, x, *, noise, steps=None, spacing="geometric", clip_denoised=True,
                    model_kwargs=None, callback=None, progress=False, t_start=None, n_steps=100, step_lr=2e-5):
    """NCSN's annealed Langevin dynamics plus a final denoising step; the registry's contract."""
    view = SigmaView(diffusion)
    den = Denoiser(diffusion, model, model_kwargs=model_kwargs, clip_denoised=clip_denoised, view=view)
    L = min(steps or LANGEVIN_LEVELS + 1, view.num_timesteps) - 1
    sigmas = np.geomspace(view.sigma_max, view.sigma_min, L) if L > 0 else np.array([view.sigma_max])
    x = x * math.sqrt(1.0 + float(sigmas[0]) ** 2)  # x_T as the VP sample at σ_max, in σ-view units
    levels = range(L)
    if progress:
        from tqdm.auto import tqdm

        levels = tqdm(levels, desc="langevin", leave=False)
    for i in levels:
        sigma = float(sigmas[i])
        t = float(view.sigma_to_t(sigma))
        alpha = step_lr * (sigma / float(sigmas[-1])) ** 2
        for _ in range(n_steps):
            x0 = den(x, sigma, t)
            x = x + 0.5 * alpha * (x0 - x) / sigma**2 + math.sqrt(alpha) * noise(int(round(t)))
        if callback is not None:
            callback({"i": i, "t": int(round(t)), "x": x / math.sqrt(1.0 + sigma**2), "pred_xstart": x0})
    x0 = den(x, float(sigmas[-1]))
    if callback is not None:
        callback({"i": L, "t": int(round(float(view.sigma_to_t(sigmas[-1])))), "x": x0, "pred_xstart": x0})
    return x0


PC = SamplerSpec(
    name="pc",
    fn=sample_pc,
    summary="score SDE's predictor-corrector: reverse-diffusion/ancestral predictor + Langevin corrector",
    options=(Option("predictor", "reverse-diffusion", "reverse-diffusion or ancestral", kind=str,
                    choices=("reverse-diffusion", "ancestral")),
             Option("corrector_steps", 1, "Langevin corrector steps per level (0: predictor only)", kind=int,
                    low=0, high=100),
             Option("snr", 0.16, "the corrector's signal-to-noise ratio r", low=0.0, high=10.0)),
    spacings=SPACINGS,
    noise_draws=lambda T, steps, spacing, o: (chain_length(T, steps, spacing) - 1) * (1 + o["corrector_steps"]),
    nfe=lambda T, steps, spacing, o: chain_length(T, steps, spacing) * (1 + o["corrector_steps"])
    - o["corrector_steps"],
    references="Song et al. 2021 (score SDE), Algorithms 2-3, §4.2 and App. G",
)

LANGEVIN = SamplerSpec(
    name="langevin",
    fn=sample_langevin,
    summary="NCSN's annealed Langevin dynamics (step ∝ σ_i²) over K−1 geometric levels, then denoising",
    options=(Option("n_steps", 100, "Langevin steps per noise level (NCSN: 100)", kind=int, low=1, high=10_000),
             Option("step_lr", 2e-5, "NCSN's ε: step α_i = ε·σ_i²/σ_min²", low=1e-12, high=1.0)),
    spacings=("geometric",),
    noise_draws=lambda T, steps, spacing, o: (min(steps or LANGEVIN_LEVELS + 1, T) - 1) * o["n_steps"],
    nfe=lambda T, steps, spacing, o: (min(steps or LANGEVIN_LEVELS + 1, T) - 1) * o["n_steps"] + 1,
    references="Song & Ermon 2019 (NCSN), Algorithm 1; Song & Ermon 2020 (NCSNv2), denoising step",
)
