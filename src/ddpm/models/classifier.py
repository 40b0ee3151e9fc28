"""A noise-aware classifier p_φ(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, §4).

The downsampling half of the U-Net (:mod:`ddpm.models.unet`: its time embedding, residual blocks,
attention and downsampling, then the middle block) followed by an attention-pooling head, as
guided-diffusion's ``EncoderUNetModel`` with ``pool="attention"`` (the head is CLIP's
``AttentionPool2d``: the mean token prepended to the H·W tokens, a learned positional embedding,
multi-head attention, and the output read at the mean token). ``forward(x_t, t)`` returns logits
(B, num_classes). Guided-diffusion's ImageNet classifiers use scale-shift norm and residual
up/downsampling; this one keeps the DDPM U-Net's blocks so the two networks share their parts.

``model.arch = "classifier"``; trained by the ``classifier`` objective (:mod:`ddpm.train.classifier`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.registry import Architecture
from ddpm.models.unet import (AttnBlock, Downsample, GN_GROUPS, ResnetBlock, TimestepMLP, conv3x3, group_norm,
                              init_layer, level_sizes, timestep_embedding)


@dataclass
class ClassifierConfig:
    """The encoder half of the U-Net with an attention-pooling head (``model.arch = "classifier"``).

    Inside a :class:`ddpm.config.Config` the image shape and the number of classes follow from the data
    (``data.class_labels`` must be set: the labels are the targets).
    """

    arch: str = "classifier"
    in_channels: int = 3
    resolution: int = 32
    num_classes: int | None = None  # logits; from the data
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    norm_groups: int = GN_GROUPS
    head_channels: int = 64  # channels per attention-pooling head (guided-diffusion: 64)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def with_data(self, *, channels: int, resolution: int, num_classes: int | None,
                  learn_sigma: bool) -> "ClassifierConfig":
        """This classifier for ``channels`` × ``resolution``² images and ``num_classes`` labels (a
        learned variance concerns denoisers only)."""
        return dataclasses.replace(self, in_channels=channels, resolution=resolution, num_classes=num_classes)

    def validate(self) -> None:
        if self.num_classes is None or self.num_classes < 2:
            raise ConfigError("model.arch 'classifier' needs class labels (at least 2 classes): set "
                              "data.class_labels=true")
        for key in ("ch", "resolution", "in_channels", "norm_groups", "head_channels"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.num_res_blocks < 1 or not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError("model.num_res_blocks must be >= 1 and model.ch_mult a non-empty list of "
                              "positive multipliers")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"model.ch={self.ch} with ch_mult={tuple(self.ch_mult)} gives widths {widths}; every "
                              f"width must be a multiple of model.norm_groups={self.norm_groups}")
        top = self.ch * self.ch_mult[-1]
        if top % self.head_channels:
            raise ConfigError(f"the pooling width {top} (ch × ch_mult[-1]) must be a multiple of "
                              f"model.head_channels={self.head_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def describe(self) -> str:
        return (f"noisy classifier {self.in_channels}x{self.resolution}x{self.resolution} -> {self.num_classes} "
                f"logits, ch {self.ch}, ch_mult {tuple(self.ch_mult)}, {self.num_res_blocks} res blocks, attention "
                f"at {tuple(self.attn_resolutions)}, attention pooling ({self.head_channels} channels per head)")


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling (guided-diffusion ``AttentionPool2d``): the spatial mean is prepended
    as a query token, every token gets a learned position, and the attended mean token is projected
    to the outputs."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, channels) / channels**0.5)
        self.qkv = init_layer(nn.Linear(channels, 3 * channels))
        self.c_proj = init_layer(nn.Linear(channels, out_dim))
        self.heads = channels // head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.positional_embedding
        q, k, v = self.qkv(tokens).reshape(b, h * w + 1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # only the mean token's output is read
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class NoisyClassifier(nn.Module):
    """``forward(x_t, t)`` → logits (B, num_classes); ``t`` are the diffusion's code timesteps."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise ConfigError(f"NoisyClassifier needs a ClassifierConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        ch, temb_ch, groups = config.ch, 4 * config.ch, config.norm_groups
        self.temb = TimestepMLP(ch, temb_ch)
        self.conv_in = conv3x3(config.in_channels, ch)
        sizes = level_sizes(config.resolution, len(config.ch_mult))
        cin = ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(config.ch_mult):
            blocks, attns = nn.ModuleList(), nn.ModuleDict()
            for j in range(config.num_res_blocks):
                blocks.append(ResnetBlock(cin, ch * mult, temb_ch, config.dropout, groups))
                cin = ch * mult
                if sizes[i] in set(config.attn_resolutions):
                    attns[str(j)] = AttnBlock(cin, groups)
            level = nn.Module()
            level.block, level.attn = blocks, attns
            level.downsample = Downsample(cin, config.resamp_with_conv) if i != len(config.ch_mult) - 1 else None
            self.down.append(level)
        self.mid_block_1 = ResnetBlock(cin, cin, temb_ch, config.dropout, groups)
        self.mid_attn = AttnBlock(cin, groups)
        self.mid_block_2 = ResnetBlock(cin, cin, temb_ch, config.dropout, groups)
        self.norm_out = group_norm(cin, groups)
        self.pool = AttentionPool2d(sizes[-1], cin, config.head_channels, config.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ConfigError("a noisy classifier takes no labels (y); they are its targets")
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.temb(timestep_embedding(t.to(x.device), self.config.ch).to(self.temb.dense[0].weight.dtype))
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h, temb)
                if str(j) in level.attn:
                    h = level.attn[str(j)](h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid_block_2(self.mid_attn(self.mid_block_1(h, temb)), temb)
        return self.pool(F.silu(self.norm_out(h)))


ARCH = Architecture(name="classifier", config=ClassifierConfig, network=NoisyClassifier,
                    summary="noise-aware classifier p(y | x_t, t): the U-Net's encoder half with attention "
                            "pooling (Dhariwal & Nichol 2021)")
