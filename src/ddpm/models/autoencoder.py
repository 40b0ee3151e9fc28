"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, §3 and App. G; the
``AutoencoderKL`` of ``CompVis/latent-diffusion``, which is also the Stable Diffusion VAE and diffusers'
``AutoencoderKL``).

Encoder: conv_in, per level ``num_res_blocks`` residual blocks and a stride-2 downsample (all but the last
level), a middle block (residual, single-head self-attention, residual), GroupNorm-SiLU-conv_out to the
2·z moments; ``quant_conv`` (1×1) gives the mean and log-variance of a diagonal Gaussian q(z|x).
Decoder: ``post_quant_conv`` (1×1), conv_in, the middle block, per level (lowest resolution first)
``num_res_blocks + 1`` residual blocks and a nearest ×2 upsample + conv, GroupNorm-SiLU-conv_out.
The downsampling factor is f = 2^(len(ch_mult) − 1). GroupNorm ε is 1e-6 throughout, as in their code.

Module names mirror ``ldm/modules/diffusionmodules/model.py`` (``encoder.down.i.block.j``,
``encoder.mid.attn_1``, ``decoder.up.i.upsample``, ``norm_out``, …), the same scheme as our U-Net, so
diffusers' folders convert by renaming (:mod:`ddpm.models.convert_autoencoder`).

``forward(x, t=None, y=None)`` reconstructs x from the posterior mode (``t`` and ``y`` exist only for
the model factory's common signature); ``encode``/``decode`` are what latent diffusion uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.registry import Architecture
from ddpm.models.unet import GN_EPS, AttnBlock


@dataclass
class AutoencoderConfig:
    """``model.arch = "autoencoder"``. Defaults: LDM's KL-f8 autoencoder, the Stable Diffusion VAE
    (``stabilityai/sd-vae-ft-ema`` / ``-mse``: ch 128 × (1, 2, 4, 4), 2 blocks, 4 latent channels)."""

    arch: str = "autoencoder"
    in_channels: int = 3
    resolution: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4  # z channels (LDM ties z_channels and embed_dim for these models)
    norm_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    dropout: float = 0.0
    # The published latent normalisation of an imported VAE (diffusers' scaling_factor, 0.18215 for the
    # SD VAEs; shift_factor for later ones): latent = (z − shift)·scale. 0 scale: none published, a latent
    # model then measures its own (1/std of the training latents, LDM §4.3.2 / App. G).
    scaling_factor: float = 0.0
    shift_factor: float = 0.0
    num_classes: int | None = None  # always None: the autoencoder ignores labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of z for this image size (also the shape of the trainer's noise draw: the
        reparameterisation noise of the posterior sample)."""
        return (self.latent_channels, self.resolution // self.factor, self.resolution // self.factor)

    def with_data(self, *, channels: int, resolution: int, num_classes: int | None,
                  learn_sigma: bool) -> "AutoencoderConfig":
        return dataclasses.replace(self, in_channels=channels, resolution=resolution, num_classes=None)

    def validate(self) -> None:
        for key in ("in_channels", "resolution", "ch", "num_res_blocks", "latent_channels", "norm_groups"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError("model.ch_mult must be a non-empty list of positive multipliers")
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"model.ch={self.ch} with ch_mult={tuple(self.ch_mult)} gives widths {widths}; every "
                              f"width must be a multiple of model.norm_groups={self.norm_groups}")
        if self.resolution % self.factor:
            raise ConfigError(f"the image size {self.resolution} is not divisible by the downsampling factor "
                              f"{self.factor} (2^(len(ch_mult) - 1)); change data.resolution or model.ch_mult")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.scaling_factor < 0:
            raise ConfigError(f"model.scaling_factor must be >= 0 (0: none published), got {self.scaling_factor}")

    def describe(self) -> str:
        c, h, w = self.latent_shape
        scale = f", published latent scale {self.scaling_factor:g}" if self.scaling_factor else ""
        shift = f", shift {self.shift_factor:g}" if self.shift_factor else ""
        return (f"KL autoencoder {self.in_channels}x{self.resolution}x{self.resolution} <-> {c}x{h}x{w} latents "
                f"(f={self.factor}), ch {self.ch}, ch_mult {tuple(self.ch_mult)}, {self.num_res_blocks} res blocks, "
                f"mid attention {'on' if self.mid_attention else 'off'}{scale}{shift}")


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))); log-variance clamped to [−30, 20] as in LDM."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) ‖ N(0, I)) per example, summed over the latent (nats)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=GN_EPS)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv1, GN-SiLU-dropout-conv2, plus a 1×1 ``nin_shortcut`` when the width changes (LDM's
    ResnetBlock without a time embedding)."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Downsample(nn.Module):
    """Pad one pixel right and bottom, then a 3×3 stride-2 conv (LDM; diffusers' downsample_padding=0)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.downsample: nn.Module | None = None
        self.upsample: nn.Module | None = None


class _Mid(nn.Module):
    def __init__(self, c: int, groups: int, attention: bool, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, groups, dropout)
        self.attn_1 = AttnBlock(c, groups) if attention else None
        self.block_2 = ResnetBlock(c, c, groups, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block_1(h)
        if self.attn_1 is not None:
            h = self.attn_1(h)
        return self.block_2(h)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, w in enumerate(widths):
            level = _Level()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, w, g, cfg.dropout))
                cin = w
            if i != len(widths) - 1:
                level.downsample = Downsample(cin)
            self.down.append(level)
        self.mid = _Mid(cin, g, cfg.mid_attention, cfg.dropout)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if level.downsample is not None:
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """``up[i]`` sits at the resolution of ``encoder.down[i]`` and runs in reverse (LDM's order)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.ch * m for m in cfg.ch_mult]
        cin = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, g, cfg.mid_attention, cfg.dropout)
        ups = []
        for i in reversed(range(len(widths))):
            level = _Level()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, widths[i], g, cfg.dropout))
                cin = widths[i]
            if i != 0:
                level.upsample = Upsample(cin)
            ups.append(level)
        self.up = nn.ModuleList(reversed(ups))
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """The KL autoencoder; PyTorch's default initialisation, as LDM's."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise ConfigError(f"AutoencoderKL needs an AutoencoderConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        z = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(z, z, 1) if config.use_post_quant_conv else None

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 2·z, h, w) mean and log-variance of q(z|x), stacked along channels."""
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) for images x in [−1, 1]."""
        return DiagonalGaussian(self.moments(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (about [−1, 1]; not clamped) from latents z."""
        return self.decoder(self.post_quant_conv(z) if self.post_quant_conv is not None else z)

    def forward(self, x: torch.Tensor, t=None, y=None, *, noise: torch.Tensor | None = None,
                return_moments: bool = False):
        """The reconstruction of x: from the posterior mode, or from mean + std·``noise`` (training).
        With ``return_moments`` also the posterior's moments (tensors only, so DDP sees plain outputs)."""
        moments = self.moments(x)
        posterior = DiagonalGaussian(moments)
        rec = self.decode(posterior.mode() if noise is None else posterior.sample(noise))
        return (rec, moments) if return_moments else rec

ARCH = Architecture(name="autoencoder", config=AutoencoderConfig, network=AutoencoderKL,
                    summary="the KL autoencoder of latent diffusion (Rombach et al. 2022)")
