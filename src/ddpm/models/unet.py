"""The paper's U-Net (Ho et al. 2020, §4 and App. B; the authors' ``diffusion_tf/models/unet.py``).

Module names mirror the authors' TF variable scopes (``down[i].block[j]``, ``down[i].attn[j]``,
``down[i].downsample``, ``mid.block_1``/``attn_1``/``block_2``, ``up[i]...``, ``norm_out``,
``conv_out``, ``temb.dense[0/1]``) so that converting their checkpoints is a renaming plus a
transpose. ``up[i]`` is the up-path level at the same resolution as ``down[i]``; it runs in reverse.

Beyond the paper: optional class conditioning (a label embedding added to the time embedding,
with label ``num_classes`` as the "null" label for classifier-free guidance), and the conventions of
diffusers' ``UNet2DModel`` that leave the network DDPM-shaped (cos-first time embedding and its
frequency shift, GroupNorm epsilon, multi-head attention, symmetric downsampling padding), so any
such UNet2DModel imports exactly. The defaults are the paper's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.registry import Architecture

# TF's variance_scaling treats scale 0 as 1e-10 (``nn.default_init``), so "zero" layers are tiny.
ZERO_INIT_SCALE = 1e-10
GN_EPS = 1e-6  # tf.contrib.layers.group_norm default; PyTorch's own default is 1e-5
GN_GROUPS = 32  # the authors' GroupNorm group count


@dataclass
class UNetConfig:
    """The authors' U-Net plus optional class conditioning (``model.arch = "unet"``).

    Inside a full :class:`ddpm.config.Config` the image shape, class count and output channels are
    derived from the data and the diffusion (:meth:`with_data`); standalone, they are plain fields.
    """

    arch: str = "unet"
    in_channels: int = 3
    out_channels: int = 3  # 2 * in_channels for learned variances
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resolution: int = 32
    resamp_with_conv: bool = True
    # Class conditioning (beyond the paper): a label embedding added to the time embedding.
    # Label index ``num_classes`` is the null label used for unconditional / guided sampling.
    num_classes: int | None = None
    # GroupNorm groups. The authors' 32 leaves one channel per group when ch = 32, which normalises
    # away the per-channel time and label bias of the first level's residual blocks.
    norm_groups: int = GN_GROUPS
    # diffusers UNet2DModel conventions (same names there), defaults = the authors' network:
    flip_sin_to_cos: bool = False  # time embedding [cos, sin] instead of the authors' [sin, cos]
    freq_shift: int = 1  # frequencies exp(-j ln(1e4) / (half - freq_shift)); the authors' is 1
    norm_eps: float = GN_EPS  # GroupNorm epsilon (TF's 1e-6; diffusers' default 1e-5)
    attention_head_dim: int = 0  # channels per attention head; 0 = one head over all channels (paper)
    downsample_padding: int = 0  # 0: TF 'SAME' (the extra pixel right/bottom); 1: one pixel each side

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the network denoises."""
        return (self.in_channels, self.resolution, self.resolution)

    def with_data(self, *, channels: int, resolution: int, num_classes: int | None,
                  learn_sigma: bool) -> "UNetConfig":
        """This network for images of ``channels`` x ``resolution``², ``num_classes`` labels, and twice
        the output channels when the diffusion learns its variances."""
        return dataclasses.replace(self, in_channels=channels, resolution=resolution, num_classes=num_classes,
                                   out_channels=channels * (2 if learn_sigma else 1))

    def validate(self) -> None:
        """ConfigError naming the first setting the network cannot be built with."""
        positive = {"ch": self.ch, "resolution": self.resolution, "in_channels": self.in_channels,
                    "out_channels": self.out_channels, "norm_groups": self.norm_groups}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"model.{key} must be positive, got {value}")
        if self.num_res_blocks < 1 or not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError("model.num_res_blocks must be >= 1 and model.ch_mult a non-empty list of "
                              "positive multipliers")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(
                f"model.ch={self.ch} with ch_mult={tuple(self.ch_mult)} gives widths {widths}; every width "
                f"must be a multiple of model.norm_groups={self.norm_groups} (GroupNorm groups)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be a positive integer or None, got {self.num_classes}")
        if not self.norm_eps > 0 or self.norm_eps != self.norm_eps or self.norm_eps == float("inf"):
            raise ConfigError(f"model.norm_eps must be a finite number > 0, got {self.norm_eps}")
        if self.downsample_padding not in (0, 1):
            raise ConfigError(f"model.downsample_padding must be 0 (TF 'SAME') or 1 (one pixel each side), "
                              f"got {self.downsample_padding}")
        if not 0 <= self.freq_shift < self.ch // 2:
            raise ConfigError(f"model.freq_shift must be in 0..{self.ch // 2 - 1} (below half the embedding "
                              f"width {self.ch}), got {self.freq_shift}")
        if self.attention_head_dim < 0:
            raise ConfigError(f"model.attention_head_dim must be >= 0 (0 = one head), got {self.attention_head_dim}")
        if self.attention_head_dim:
            sizes = level_sizes(self.resolution, len(self.ch_mult))
            attn = [self.ch * m for m, s in zip(self.ch_mult, sizes) if s in set(self.attn_resolutions)]
            bad = [w for w in attn + [self.ch * self.ch_mult[-1]] if w % self.attention_head_dim]
            if bad:
                raise ConfigError(f"model.attention_head_dim={self.attention_head_dim} does not divide the "
                                  f"attention width {bad[0]}; choose a divisor (0 = one head)")
        # attn_resolutions that match no level are ignored, as in the authors' code.

    def describe(self) -> str:
        cond = f", {self.num_classes} classes (+ null label)" if self.num_classes else ", unconditional"
        groups = "" if self.norm_groups == GN_GROUPS else f", GroupNorm {self.norm_groups} groups"
        extra = [f"{f.name} {getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if f.name in _CONVENTIONS and getattr(self, f.name) != f.default]
        conventions = f", diffusers conventions: {', '.join(extra)}" if extra else ""
        return (f"UNet {self.in_channels}x{self.resolution}x{self.resolution} -> {self.out_channels} channels, "
                f"ch {self.ch}, ch_mult {tuple(self.ch_mult)}, {self.num_res_blocks} res blocks, attention at "
                f"{tuple(self.attn_resolutions)}, dropout {self.dropout}{groups}{conventions}{cond}")


# The UNet2DModel options kept as fields (their defaults are the paper's).
_CONVENTIONS = ("flip_sin_to_cos", "freq_shift", "norm_eps", "attention_head_dim", "downsample_padding")


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = False,
                       freq_shift: int = 1) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps, sin first, frequencies exp(-j ln(1e4)/(half-1)) (the
    authors'); ``flip_sin_to_cos`` puts cos first and ``freq_shift`` replaces the 1 in ``half - 1``
    (diffusers' ``get_timestep_embedding``, whose UNet2DModel defaults are True and 0).

    Always computed in float32 (even under autocast) because large t times high frequencies loses
    too much precision in half types. Odd ``dim`` is zero-padded on the last column.
    """
    half = dim // 2
    with torch.autocast(device_type=t.device.type, enabled=False):
        scale = math.log(10000.0) / (half - freq_shift)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
        emb = torch.cat(parts, dim=1)
        if dim % 2 == 1:
            emb = F.pad(emb, (0, 1))
    return emb


def init_layer(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """TF ``variance_scaling(scale, 'fan_avg', 'uniform')`` weights and zero biases (``nn.default_init``).

    That is xavier_uniform with gain sqrt(scale); scale 0 means 1e-10 as in the authors' code.
    """
    scale = ZERO_INIT_SCALE if scale == 0 else scale
    nn.init.xavier_uniform_(layer.weight, gain=math.sqrt(scale))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv3x3(cin: int, cout: int, init_scale: float = 1.0, stride: int = 1) -> nn.Conv2d:
    """3x3 conv; stride 1 is TF 'SAME' (pad 1), stride 2 pads explicitly in :class:`Downsample`."""
    return init_layer(nn.Conv2d(cin, cout, 3, stride=stride, padding=1 if stride == 1 else 0), init_scale)


def nin(cin: int, cout: int, init_scale: float = 1.0) -> nn.Conv2d:
    """The authors' ``nin``: a dense layer over the channel axis, i.e. a 1x1 conv."""
    return init_layer(nn.Conv2d(cin, cout, 1), init_scale)


def group_norm(c: int, groups: int = GN_GROUPS, eps: float = GN_EPS) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=eps)


def tf_same_pad(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """(before, after) padding of TF 'SAME' for one axis: the extra pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ResnetBlock(nn.Module):
    """GN-SiLU-conv1, + dense(SiLU(temb)), GN-SiLU-dropout-conv2 (init ~0), plus a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, temb_ch: int, dropout: float, groups: int = GN_GROUPS,
                 eps: float = GN_EPS):
        super().__init__()
        self.norm1 = group_norm(cin, groups, eps)
        self.conv1 = conv3x3(cin, cout)
        self.temb_proj = init_layer(nn.Linear(temb_ch, cout))
        self.norm2 = group_norm(cout, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout, init_scale=0.0)
        self.nin_shortcut = nin(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over all H*W positions with separate q, k, v 1x1 layers: one head (the paper's),
    or heads of ``head_dim`` channels each (diffusers' ``attention_head_dim``; same weights)."""

    def __init__(self, c: int, groups: int = GN_GROUPS, eps: float = GN_EPS, head_dim: int = 0):
        super().__init__()
        self.norm = group_norm(c, groups, eps)
        self.heads = c // head_dim if head_dim else 1
        self.q = nin(c, c)
        self.k = nin(c, c)
        self.v = nin(c, c)
        self.proj_out = nin(c, c, init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        heads = self.heads

        def tokens(layer: nn.Conv2d) -> torch.Tensor:  # (B, heads, H*W, C / heads); channel = head·d + j
            if heads == 1:
                return layer(h).reshape(b, c, hgt * wid).transpose(1, 2).unsqueeze(1)
            return layer(h).reshape(b, heads, c // heads, hgt * wid).transpose(2, 3)

        # SDPA's default scale is d^-1/2 (d = channels per head), the authors' C^-1/2 for one head;
        # it picks a fused kernel when it can.
        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        if heads == 1:
            out = out.squeeze(1).transpose(1, 2).reshape(b, c, hgt, wid)
        else:
            out = out.transpose(2, 3).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """3x3 stride-2 conv with TF 'SAME' padding (asymmetric for even sizes: right/bottom only), or
    with one pixel on each side (``padding=1``, diffusers' default ``downsample_padding``)."""

    def __init__(self, c: int, with_conv: bool = True, padding: int = 0):
        super().__init__()
        self.conv = conv3x3(c, c, stride=2) if with_conv else None
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:  # the authors' with_conv=False path: 2x2 average pooling
            return F.avg_pool2d(x, 2, ceil_mode=True)
        if self.padding:
            return self.conv(F.pad(x, (self.padding,) * 4))
        top, bottom = tf_same_pad(x.shape[-2])
        left, right = tf_same_pad(x.shape[-1])
        return self.conv(F.pad(x, (left, right, top, bottom)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to the skip connection's size, for odd sizes), then a 3x3 conv."""

    def __init__(self, c: int, with_conv: bool = True):
        super().__init__()
        self.conv = conv3x3(c, c) if with_conv else None

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x) if self.conv is not None else x


class TimestepMLP(nn.Module):
    """dense0 (ch -> 4ch), SiLU, dense1 (4ch -> 4ch); no activation at the end."""

    def __init__(self, ch: int, temb_ch: int):
        super().__init__()
        self.dense = nn.ModuleList([init_layer(nn.Linear(ch, temb_ch)), init_layer(nn.Linear(temb_ch, temb_ch))])

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.dense[1](F.silu(self.dense[0](emb)))


class _Level(nn.Module):
    """One resolution of the down or up path: ``block``, ``attn`` and an optional resampler."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleDict()  # keyed by block index, as the authors' ``attn_{j}`` scopes
        self.downsample: nn.Module | None = None
        self.upsample: nn.Module | None = None


class _Mid(nn.Module):
    def __init__(self, c: int, temb_ch: int, dropout: float, groups: int, eps: float = GN_EPS, head_dim: int = 0):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, temb_ch, dropout, groups, eps)
        self.attn_1 = AttnBlock(c, groups, eps, head_dim)
        self.block_2 = ResnetBlock(c, c, temb_ch, dropout, groups, eps)


class UNet(nn.Module):
    """The DDPM U-Net. ``forward(x, t, y=None)`` maps (B, C, H, W) images and (B,) timesteps to
    (B, out_channels, H, W). ``y`` (B,) class labels are used when ``config.num_classes`` is set;
    ``y=None`` or a negative label means the null label ``num_classes``.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ConfigError(f"UNet needs a UNetConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        ch, temb_ch, dropout, groups = config.ch, 4 * config.ch, config.dropout, config.norm_groups
        eps, head_dim = config.norm_eps, config.attention_head_dim
        self.temb = TimestepMLP(ch, temb_ch)
        self.label_emb = nn.Embedding(config.num_classes + 1, temb_ch) if config.num_classes else None
        self.conv_in = conv3x3(config.in_channels, ch)

        # Down path: remember every stored activation's channel count so the up path can consume them.
        sizes = level_sizes(config.resolution, len(config.ch_mult))
        attn_at = set(config.attn_resolutions)
        skip_ch = [ch]
        cin = ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(config.ch_mult):
            level = _Level()
            for j in range(config.num_res_blocks):
                level.block.append(ResnetBlock(cin, ch * mult, temb_ch, dropout, groups, eps))
                cin = ch * mult
                if sizes[i] in attn_at:
                    level.attn[str(j)] = AttnBlock(cin, groups, eps, head_dim)
                skip_ch.append(cin)
            if i != len(config.ch_mult) - 1:
                level.downsample = Downsample(cin, config.resamp_with_conv, config.downsample_padding)
                skip_ch.append(cin)
            self.down.append(level)

        self.mid = _Mid(cin, temb_ch, dropout, groups, eps, head_dim)

        ups = []
        for i, mult in reversed(list(enumerate(config.ch_mult))):
            level = _Level()
            for j in range(config.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin + skip_ch.pop(), ch * mult, temb_ch, dropout, groups, eps))
                cin = ch * mult
                if sizes[i] in attn_at:
                    level.attn[str(j)] = AttnBlock(cin, groups, eps, head_dim)
            if i != 0:
                level.upsample = Upsample(cin, config.resamp_with_conv)
            ups.append(level)
        self.up = nn.ModuleList(reversed(ups))  # up[i] sits at the resolution of down[i]

        self.norm_out = group_norm(cin, groups, eps)
        self.conv_out = conv3x3(cin, config.out_channels, init_scale=0.0)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """Build a preset's network (:func:`ddpm.presets.get_network`), fields overridable."""
        from ddpm.presets import get_network

        return cls(get_network(name, **overrides))

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, 4ch) conditioning vector: timestep MLP plus the optional label embedding."""
        c = self.config
        emb = timestep_embedding(t, c.ch, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift)
        emb = self.temb(emb.to(self.temb.dense[0].weight.dtype))
        if self.label_emb is not None:
            null = self.config.num_classes
            if y is None:
                y = torch.full((t.shape[0],), null, dtype=torch.long, device=t.device)
            else:
                y = torch.where(y < 0, torch.full_like(y, null), y.long())
            emb = emb + self.label_emb(y).to(emb.dtype)
        elif y is not None:
            raise ConfigError("class labels y were given but this network has num_classes=None (unconditional)")
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.embed(t.to(x.device), y)

        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if str(j) in level.attn:
                    h = level.attn[str(j)](h)
                hs.append(h)
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)

        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if str(j) in level.attn:
                    h = level.attn[str(j)](h)
            if level.upsample is not None:
                h = level.upsample(h, size=hs[-1].shape[-2:])

        return self.conv_out(F.silu(self.norm_out(h)))


def level_sizes(resolution: int, num_levels: int) -> list[int]:
    """Spatial size at each level: TF-SAME stride-2 convs give ceil(size / 2) (28 -> 14 -> 7 -> 4)."""
    sizes = [resolution]
    for _ in range(num_levels - 1):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; the paper's CIFAR-10 net has 35,746,307."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


ARCH = Architecture(name="unet", config=UNetConfig, network=UNet,
                    summary="the DDPM U-Net (Ho et al. 2020, App. B) with optional class conditioning")
