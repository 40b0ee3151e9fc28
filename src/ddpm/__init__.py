"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020) in PyTorch.

The public API is imported lazily so that ``import ddpm`` stays cheap and each layer (maths,
network, training, evaluation) can be used without the others.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "get_beta_schedule": "ddpm.schedules",
    "GaussianDiffusion": "ddpm.diffusion",
    "normal_kl": "ddpm.likelihoods",
    "discretized_gaussian_log_likelihood": "ddpm.likelihoods",
    "UNet": "ddpm.models.unet",
    "Config": "ddpm.config",
    "UNetConfig": "ddpm.models.unet",
    "DiffusionConfig": "ddpm.config",
    "TrainConfig": "ddpm.config",
    "DataConfig": "ddpm.config",
    "SamplerConfig": "ddpm.config",
    "progressive_samples": "ddpm.sampling.experiments",
    "shared_latent_samples": "ddpm.sampling.experiments",
    "interpolate": "ddpm.sampling.experiments",
    "generate": "ddpm.sampling.api",
    "sample": "ddpm.sampling.api",
    "sampler_names": "ddpm.sampling.registry",
    "build_model": "ddpm.models.registry",
    "count_parameters": "ddpm.models.registry",
    "get_preset": "ddpm.presets",
    "Trainer": "ddpm.train.trainer",
    "load_checkpoint": "ddpm.checkpoint",
    "Pipeline": "ddpm.pipeline",
    "load": "ddpm.pipeline",
    "read_provenance": "ddpm.outputs",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
