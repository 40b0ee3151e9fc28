"""The ``ddpm`` sampler: ancestral sampling, Algorithm 2 of Ho et al. (2020), on all T steps or on a
respaced K-step chain (Nichol & Dhariwal 2021, §4).

Each step draws x_{t−1} = μθ(x_t, t) + σ_t z with the diffusion's variance (β_t, β̃_t or learned); the
last step adds no noise. The step itself is :meth:`ddpm.diffusion.GaussianDiffusion.p_sample`; this
module only adapts the chain to the registry's contract.

A model that offers a ``mean_shift`` (classifier guidance, :mod:`ddpm.sampling.classifier_guidance`)
is guided as Dhariwal & Nichol's Algorithm 1: its unguided output forms μ and the step's mean becomes
μ + Σ·s∇ log p_φ(y | x_t).
"""

from __future__ import annotations

from ddpm.errors import ConfigError
from ddpm.sampling.registry import SamplerSpec
from ddpm.sampling.respace import SPACINGS, chain_length, respace


def sample_ancestral(model, diffusion, x, *, noise, steps=None, spacing="uniform", clip_denoised=True,
                     model_kwargs=None, callback=None, progress=False, t_start=None):
    """Algorithm 2 from x = x_T (or x_{t_start}) to x_0; see :mod:`ddpm.sampling.registry` for the contract."""
    chain = respace(diffusion, steps, spacing)
    if t_start is not None and chain is not diffusion:
        raise ConfigError("a part-way start (t_start) needs the full chain; drop steps")
    original = getattr(chain, "timestep_map", None)

    def step_noise(i: int):
        return noise(int(original[i]) if original is not None else i)

    cond_fn = None
    if getattr(model, "mean_shift", None) is not None:
        model, cond_fn = model.mean_shift
    sample = x
    for k, out in enumerate(chain.p_sample_loop_progressive(
            model, x.shape, noise=x, step_noise=step_noise, clip_denoised=clip_denoised, progress=progress,
            model_kwargs=model_kwargs, t_start=t_start, cond_fn=cond_fn)):
        sample = out["sample"]
        if callback is not None:
            t = int(original[out["t"]]) if original is not None else out["t"]
            callback({"i": k, "t": t, "x": sample, "pred_xstart": out["pred_xstart"]})
    return sample


ANCESTRAL = SamplerSpec(
    name="ddpm",
    fn=sample_ancestral,
    summary="ancestral sampling (Algorithm 2); with --steps K on a K-step respaced chain",
    spacings=SPACINGS,
    noise_draws=lambda T, steps, spacing, options: chain_length(T, steps, spacing) - 1,
    nfe=lambda T, steps, spacing, options: chain_length(T, steps, spacing),
    supports_t_start=True,
    references="Ho, Jain & Abbeel 2020, Algorithm 2; respacing: Nichol & Dhariwal 2021, §4",
)


def __getattr__(name: str):
    # The paper's Fig. 6-9 experiments lived here before the sampler registry; kept importable from
    # here for one release (their home is now ddpm.sampling.experiments).
    if name in ("progressive_samples", "shared_latent_samples", "interpolate"):
        from ddpm.sampling import experiments

        return getattr(experiments, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ANCESTRAL", "sample_ancestral"]
