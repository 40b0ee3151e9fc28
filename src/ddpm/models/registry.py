"""The model factory: ``model.arch`` names a network and its config dataclass.

Each architecture module defines a config dataclass (with an ``arch`` field) and an ``nn.Module``
built from it, and exposes both as ``ARCH = Architecture(...)``. The config dataclass provides:

- ``image_shape`` — (C, H, W) of the images the model takes and makes (pixels, also for latent models);
- optionally ``latent_shape`` — (C, H, W) of what the diffusion runs on when that is not the image (a
  latent model's latents; for an autoencoder, its posterior noise); :func:`noise_shape` reads it;
- ``with_data(channels=, resolution=, num_classes=, learn_sigma=)`` — the same network for a data set
  and diffusion (inside a :class:`ddpm.config.Config` these fields are derived, never cross-checked);
- ``validate()`` — ConfigError naming the first bad setting;
- ``describe()`` — one line for ``ddpm info``.

The network's ``forward(x, t, y=None)`` takes images, (B,) timesteps and optional labels (None: the
null label). Adding a backbone is ``models/<name>.py`` plus one line in :data:`ARCHS`
(docs/extending.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from ddpm.errors import ConfigError

# arch name -> module defining ARCH; imported on first use.
ARCHS: dict[str, str] = {
    "unet": "ddpm.models.unet",
    "dit": "ddpm.models.dit",
    "autoencoder": "ddpm.models.autoencoder",
    "latent": "ddpm.models.latent",
    "classifier": "ddpm.models.classifier",
    "consistency": "ddpm.models.consistency",
}
DEFAULT_ARCH = "unet"


@dataclass(frozen=True)
class Architecture:
    name: str
    config: type  # the config dataclass
    network: type  # nn.Module class, built as network(config)
    summary: str = ""


def get_arch(name: str) -> Architecture:
    if name not in ARCHS:
        raise ConfigError(f"unknown model.arch {name!r}; choose one of {', '.join(ARCHS)}")
    return importlib.import_module(ARCHS[name]).ARCH


def default_model_config():
    """The default network's config (the paper's CIFAR-10 U-Net)."""
    return get_arch(DEFAULT_ARCH).config()


def model_config_from_dict(d: dict[str, Any]):
    """The model config a checkpoint's JSON describes; without ``arch`` (checkpoints written before
    the factory existed) it is a U-Net. Lists become tuples; unknown keys are an error."""
    d = dict(d)
    arch = get_arch(d.setdefault("arch", DEFAULT_ARCH))
    names = {f.name for f in dataclasses.fields(arch.config)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown model field(s) {sorted(unknown)} for arch {arch.name!r}; known: {sorted(names)}")
    return arch.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def build_model(config, device=None):
    """The network ``config`` describes (on ``device``; ``"meta"`` allocates nothing)."""
    arch = get_arch(getattr(config, "arch", DEFAULT_ARCH))
    if not isinstance(config, arch.config):
        raise ConfigError(f"model.arch {arch.name!r} needs a {arch.config.__name__}, got {type(config).__name__}")
    if device is None:
        return arch.network(config)
    import torch

    with torch.device(device):
        return arch.network(config)


def noise_shape(config) -> tuple[int, ...]:
    """(C, H, W) of the standard normal the trainer and the samplers draw per example: the config's
    ``latent_shape`` when it has one (latent models, autoencoders), else its ``image_shape``."""
    return tuple(getattr(config, "latent_shape", None) or config.image_shape)


def count_parameters(config) -> int:
    """Parameters of the network ``config`` describes, counted on the meta device (no memory, instant
    even for the largest presets)."""
    return sum(p.numel() for p in build_model(config, device="meta").parameters())


__all__ = ["ARCHS", "Architecture", "build_model", "count_parameters", "default_model_config", "get_arch",
           "model_config_from_dict", "noise_shape"]
