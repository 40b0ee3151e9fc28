"""Latent diffusion (Rombach et al. 2022, §3–4): the diffusion runs on z = scale·E(x), the latents of a
frozen KL autoencoder (:mod:`ddpm.models.autoencoder`), and samples are decoded x = D(z / scale).

``model.arch = "latent"`` wraps a denoiser of any other architecture (``backbone``: a U-Net, a DiT, …)
and the autoencoder into one network that looks like a pixel model to the rest of the tool: its
``image_shape`` is the images', ``latent_shape`` is what the diffusion draws, ``forward(z, t, y)`` is the
denoiser, ``encode_images``/``decode_latents`` cross between the two. The trainer encodes each batch on
the fly (the ``diffusion`` objective does it, per rank on its slice); :func:`ddpm.sampling.api.generate`
decodes at the end, so every sampler, guidance, the evaluations and the figures produce images.

The checkpoint holds the autoencoder's weights too (frozen, never trained): sampling needs nothing but
the checkpoint. ``autoencoder`` names where they came from (a run/checkpoint directory, a diffusers
``AutoencoderKL`` folder or a Hub id); its network config is copied into ``autoencoder_config`` when the
config is made, and the weights are loaded when a new run starts (:meth:`LatentDiffusion.prepare_training`).

The scale: latents are multiplied by ``scale_factor`` so that they have about unit variance, as the
diffusion's prior assumes. Set explicitly, or the autoencoder's published one (diffusers'
``scaling_factor``, 0.18215 for the Stable Diffusion VAEs), or else measured when training starts:
1 / std of the posterior samples of the first 512 training images in the run's data order (LDM §4.3.2:
"rescale the latent ... by the component-wise standard deviation" estimated from the first batch). It
is a buffer of the network, so it is saved in (and resumed from) every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.autoencoder import AutoencoderConfig, AutoencoderKL
from ddpm.models.registry import Architecture, build_model, model_config_from_dict

_READ_FROM = "_read_from"  # autoencoder_config key: the checkpoint it was copied from
SCALE_IMAGES = 512  # training images that measure the latent scale


@dataclass
class LatentConfig:
    """``model.arch = "latent"``: ``backbone`` (a model config dict of another arch) in the latent space
    of the autoencoder checkpoint ``autoencoder``. In a :class:`ddpm.config.Config` the pixel shape and
    labels come from ``data``; the backbone's shape, labels and output channels are derived from them."""

    arch: str = "latent"
    autoencoder: str = ""  # run/checkpoint dir, diffusers AutoencoderKL folder or Hub id
    autoencoder_config: dict = field(default_factory=dict)  # its network config (copied; never typed)
    backbone: dict = field(default_factory=lambda: {"arch": "unet"})
    scale_factor: float = 0.0  # 0: the autoencoder's published scaling_factor, else measured (see module doc)
    in_channels: int = 3  # of the images
    resolution: int = 32  # of the images
    num_classes: int | None = None

    def __post_init__(self):
        if dataclasses.is_dataclass(self.backbone):
            self.backbone = dataclasses.asdict(self.backbone)
        if dataclasses.is_dataclass(self.autoencoder_config):
            self.autoencoder_config = dataclasses.asdict(self.autoencoder_config)
        ae = dict(self.autoencoder_config)
        if self.autoencoder and ae.get(_READ_FROM) != self.autoencoder:
            ae = {**dataclasses.asdict(read_autoencoder_config(self.autoencoder)), _READ_FROM: self.autoencoder}
        source = ae.pop(_READ_FROM, None)
        if ae:
            ae = dataclasses.asdict(model_config_from_dict({**ae, "arch": "autoencoder"}))
            if source is not None:
                ae[_READ_FROM] = source
        self.autoencoder_config = ae
        self.backbone = dataclasses.asdict(model_config_from_dict(self.backbone))

    @property
    def ae_config(self) -> AutoencoderConfig:
        """The autoencoder's config (LDM's KL-f8 defaults while none is named)."""
        d = {k: v for k, v in self.autoencoder_config.items() if k != _READ_FROM}
        return model_config_from_dict({**d, "arch": "autoencoder"}) if d else AutoencoderConfig()

    @property
    def backbone_config(self):
        return model_config_from_dict(self.backbone)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        ae = self.ae_config
        return (ae.latent_channels, self.resolution // ae.factor, self.resolution // ae.factor)

    def with_data(self, *, channels: int, resolution: int, num_classes: int | None,
                  learn_sigma: bool) -> "LatentConfig":
        ae = self.ae_config
        backbone = self.backbone_config.with_data(channels=ae.latent_channels, resolution=max(1, resolution // ae.factor),
                                                  num_classes=num_classes, learn_sigma=learn_sigma)
        return dataclasses.replace(self, in_channels=channels, resolution=resolution, num_classes=num_classes,
                                   backbone=dataclasses.asdict(backbone))

    def validate(self) -> None:
        ae, bb = self.ae_config, self.backbone_config
        if bb.arch in ("latent", "autoencoder"):
            raise ConfigError(f"model.backbone must be a denoiser (unet, dit, ...), not {bb.arch!r}")
        dataclasses.replace(ae, resolution=ae.factor).validate()
        if ae.in_channels != self.in_channels:
            raise ConfigError(f"the autoencoder encodes {ae.in_channels}-channel images but the data has "
                              f"{self.in_channels} (data.channels)")
        if self.resolution % ae.factor:
            raise ConfigError(f"data.resolution={self.resolution} is not divisible by the autoencoder's "
                              f"downsampling factor f={ae.factor}")
        if not self.scale_factor >= 0:
            raise ConfigError(f"model.scale_factor must be >= 0 (0: published or measured), got {self.scale_factor}")
        bb.validate()

    def describe(self) -> str:
        from ddpm.models.registry import count_parameters

        ae = self.ae_config
        name = self.autoencoder or "(none named yet: set model.autoencoder)"
        scale = (f"{self.scale_factor:g}" if self.scale_factor else f"{ae.scaling_factor:g} (published)"
                 if ae.scaling_factor else "measured from the data when training starts")
        return (f"latent diffusion in the {'x'.join(map(str, self.latent_shape))} latents of autoencoder {name} "
                f"(f={ae.factor}, {count_parameters(ae):,} parameters, frozen; latent scale {scale}); denoiser "
                f"{self.backbone_config.arch} ({count_parameters(self.backbone_config):,} parameters): "
                f"{self.backbone_config.describe()}")


def read_autoencoder_config(source: str) -> AutoencoderConfig:
    """The network config of the autoencoder at ``source`` (read from its metadata; no weights loaded)."""
    from ddpm import checkpoint as ckpt
    from ddpm import hub

    path = hub.resolve(source)
    if path.is_dir() and not (path / "checkpoints").is_dir() and not any(
            (path / n).is_file() for n in ckpt.WEIGHT_FILES):
        import json

        from ddpm.models.convert_autoencoder import autoencoder_config_from_diffusers, autoencoder_folder

        return autoencoder_config_from_diffusers(json.loads((autoencoder_folder(path) / "config.json").read_text()))
    target = ckpt.resolve_checkpoint(path)
    file = target if target.is_file() else next(
        (target / n for n in ckpt.WEIGHT_FILES if (target / n).is_file()), None)
    if file is None:
        raise CheckpointError(f"model.autoencoder {source}: no weights in {target}")
    cfg = ckpt.config_from_metadata(ckpt._read_safetensors_header(file), file).model
    if cfg.arch != "autoencoder":
        raise ConfigError(f"model.autoencoder {source} is a {cfg.arch!r} checkpoint, not an autoencoder "
                          "(train one with `ddpm train --preset digits-autoencoder`)")
    return cfg


class LatentDiffusion(nn.Module):
    """``forward(z, t, y=None)`` is the denoiser on latents; the frozen autoencoder crosses to images."""

    def __init__(self, config: LatentConfig):
        super().__init__()
        if not isinstance(config, LatentConfig):
            raise ConfigError(f"LatentDiffusion needs a LatentConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.denoiser = build_model(config.backbone_config)
        self.autoencoder = AutoencoderKL(config.ae_config).requires_grad_(False).eval()
        scale = config.scale_factor or config.ae_config.scaling_factor or math.nan
        self.register_buffer("scale_factor", torch.tensor(float(scale)))

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.autoencoder.eval()  # frozen: never in training mode (dropout)
        return self

    def forward(self, z: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser(z, t, y)

    def _scale(self) -> torch.Tensor:
        if not bool(torch.isfinite(self.scale_factor)):
            raise CheckpointError("this latent model's scale factor was never measured (it is set when a run "
                                  "starts); train it, or set model.scale_factor")
        return self.scale_factor

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Latents scale·(z − shift) of images x in [−1, 1]; z the posterior mode, or mean + std·noise."""
        with torch.autocast(device_type=x.device.type, enabled=False):  # the autoencoder stays fp32
            posterior = self.autoencoder.encode(x.float())
            z = posterior.mode() if noise is None else posterior.sample(noise.float())
            return (z - self.config.ae_config.shift_factor) * self._scale()

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images (not clamped) from scaled latents."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.autoencoder.decode(z.float() / self._scale() + self.config.ae_config.shift_factor)

    @torch.no_grad()
    def prepare_training(self, images: torch.Tensor, *, seed: int = 0) -> dict:
        """At the start of a new run: load the autoencoder's weights from ``config.autoencoder`` and, when
        no scale is set or published, measure it on ``images`` (float, [−1, 1]) as 1/std of posterior
        samples (noise seeded by ``seed``). Returns {"scale_factor": value, "measured": bool}."""
        from ddpm.checkpoint import load_checkpoint

        if not self.config.autoencoder:
            raise ConfigError("model.autoencoder names no autoencoder checkpoint; train one (e.g. `ddpm train "
                              "--preset digits-autoencoder --run-dir runs/ae`) and --set model.autoencoder=runs/ae")
        loaded = load_checkpoint(self.config.autoencoder, device=self.scale_factor.device)
        theirs, ours = loaded.config.model, self.config.ae_config
        if getattr(theirs, "arch", None) != "autoencoder" or dataclasses.replace(
                theirs, resolution=ours.resolution, in_channels=ours.in_channels) != ours:
            raise ConfigError(f"model.autoencoder_config does not describe {self.config.autoencoder}; set "
                              "model.autoencoder_config={} to copy it from the checkpoint")
        self.autoencoder.load_state_dict(loaded.model.state_dict())
        measured = not bool(torch.isfinite(self.scale_factor))
        if measured:
            device = self.scale_factor.device
            g = torch.Generator(device=device).manual_seed(int(seed))
            zs = []
            for chunk in images.split(64):
                chunk = chunk.to(device).float()
                posterior = self.autoencoder.encode(chunk)
                zs.append(posterior.sample(torch.randn(posterior.mean.shape, generator=g, device=device)))
            z = torch.cat(zs).double()
            self.scale_factor.fill_(float(1.0 / z.std()))
        return {"scale_factor": float(self.scale_factor), "measured": measured}


def find_latent_model(model) -> LatentDiffusion | None:
    """The :class:`LatentDiffusion` inside ``model`` (through DDP / compile / fast-path / guidance
    wrappers), or None for a pixel model."""
    for _ in range(8):
        if isinstance(model, LatentDiffusion):
            return model
        model = next((getattr(model, a) for a in ("_orig_mod", "module", "model", "fn")
                      if getattr(model, a, None) is not None), None)
        if model is None:
            return None
    return None


ARCH = Architecture(name="latent", config=LatentConfig, network=LatentDiffusion,
                    summary="latent diffusion (Rombach et al. 2022): any denoiser in a frozen autoencoder's latents")
