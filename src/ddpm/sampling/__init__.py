"""Sampling: the sampler registry and the two ways in.

``ddpm.sampling.sample(model, diffusion, x_T, sampler=..., steps=..., **options)`` runs any registered
sampler from a given x_T; ``ddpm.sampling.generate(model, diffusion, n, ...)`` draws n images with
per-image seeds. ``sampler_names()`` lists the registry (:mod:`ddpm.sampling.registry`). Imported
lazily, so listing samplers does not import the samplers themselves.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "sample": "ddpm.sampling.api",
    "generate": "ddpm.sampling.api",
    "sampler_config": "ddpm.sampling.api",
    "FAST_SAMPLER": "ddpm.sampling.api",
    "sampler_names": "ddpm.sampling.registry",
    "get_sampler": "ddpm.sampling.registry",
    "resolve_sampler": "ddpm.sampling.registry",
    "SamplerSpec": "ddpm.sampling.registry",
    "Option": "ddpm.sampling.registry",
    "SAMPLERS": "ddpm.sampling.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm.sampling' has no attribute {name!r}")
