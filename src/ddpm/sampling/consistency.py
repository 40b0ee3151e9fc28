"""One-step and multistep consistency sampling (Song et al. 2023, Algorithm 1).

With K steps at code timesteps τ_1 > … > τ_K (the ``trailing`` spacing: τ_1 = T−1, where x_T ~ N(0, I)
is the model's input), each step denoises and, except the last, re-noises to the next time:

    x̂0 = f(x, τ_k)                                  (the model's x̂0; a consistency model's f)
    x  = √ᾱ_{τ_{k+1}} x̂0 + √(1 − ᾱ_{τ_{k+1}}/ᾱ_0) z,   z ~ N(0, I)

The noise scale is the paper's √(τ² − ε²) in the σ view (x̃ = x̂0 + √(σ² − σ_min²) z, σ_min the
boundary at code step 0) mapped to x = √ᾱ x̃. K = 1 is one-step generation f(x_T, T−1) and draws
no noise. Any model works (its x̂0 comes from ``p_mean_variance``), but only a consistency model
(:mod:`ddpm.models.consistency`) is built to jump to x_0 from any point of a trajectory.
"""

from __future__ import annotations

import torch

from ddpm.errors import ConfigError
from ddpm.sampling.registry import SamplerSpec
from ddpm.sampling.respace import timestep_subsequence


def sample_consistency(model, diffusion, x, *, noise, steps=None, spacing="trailing", clip_denoised=True,
                       model_kwargs=None, callback=None, progress=False, t_start=None):
    """Algorithm 1 of Song et al. 2023 on ``steps`` (default 1) trailing timesteps; the registry's contract."""
    if t_start is not None:
        raise ConfigError("the consistency sampler always starts from x_T")
    T = diffusion.num_timesteps
    times = sorted(timestep_subsequence(T, steps or 1, spacing), reverse=True)
    alphas = diffusion.alphas_cumprod
    indices = range(len(times))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="consistency", leave=False)
    with torch.no_grad():
        for k in indices:
            t = torch.full((x.shape[0],), times[k], device=x.device, dtype=torch.long)
            x0 = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised,
                                           model_kwargs=model_kwargs)["pred_xstart"]
            if k + 1 < len(times):
                a = float(alphas[times[k + 1]])
                x = a**0.5 * x0 + max(1.0 - a / float(alphas[0]), 0.0) ** 0.5 * noise(times[k])
            else:
                x = x0
            if callback is not None:
                callback({"i": k, "t": times[k], "x": x, "pred_xstart": x0})
    return x


CONSISTENCY = SamplerSpec(
    name="consistency",
    fn=sample_consistency,
    summary="consistency sampling: one step (steps 1, the default) or multistep (Song et al. 2023, Algorithm 1)",
    spacings=("trailing",),
    noise_draws=lambda T, steps, spacing, options: (steps or 1) - 1,
    nfe=lambda T, steps, spacing, options: steps or 1,
    references="Song, Dhariwal, Chen & Sutskever 2023, Algorithm 1",
)

__all__ = ["CONSISTENCY", "sample_consistency"]
