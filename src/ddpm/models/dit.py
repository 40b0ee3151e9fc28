"""DiT: the diffusion transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with Transformers").

Module names mirror the official ``facebookresearch/DiT`` ``models.py`` (``x_embedder.proj``,
``pos_embed``, ``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``, ``blocks.i.attn.qkv|proj``,
``blocks.i.mlp.fc1|fc2``, ``blocks.i.adaLN_modulation.1``, ``final_layer.linear|adaLN_modulation.1``), so
an official checkpoint loads as it is (:mod:`ddpm.models.convert_dit`).

The network (paper §3.2, Fig. 3): the input is cut into p×p patches, each linearly embedded
("patchify") and given a fixed 2-D sine–cosine position embedding; N transformer blocks condition on
c = embed(t) + embed(y) through adaLN-Zero — a LayerNorm without affine parameters whose shift, scale and
a residual gate come from a linear map of SiLU(c), zero-initialised so that every block starts as the
identity; a final adaptive LayerNorm and linear layer map each token back to a p×p×C_out patch
("unpatchify"). With learned Σ the output has twice the input channels (ε, then the variance
interpolation v of improved DDPM).

Class conditioning follows the project's convention (as the U-Net): label ``num_classes`` is the null
label of classifier-free guidance, ``y=None`` or a negative label means it. The official code drops
labels inside the network during training; here the trainer does (``train.class_dropout``, the paper's
10%).
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

LN_EPS = 1e-6  # the official LayerNorms (norm1, norm2, norm_final)


@dataclass
class DiTConfig:
    """A DiT (``model.arch = "dit"``). Defaults: DiT-XL/2 in the paper's ImageNet 256×256 latent setting
    (32×32×4 latents of the Stable Diffusion VAE, learned Σ, 1,000 classes).

    Inside a :class:`ddpm.config.Config` the input shape, class count and output channels are derived
    from the data and the diffusion (:meth:`with_data`).
    """

    arch: str = "dit"
    in_channels: int = 4
    out_channels: int = 8  # 2 * in_channels with learned Σ
    resolution: int = 32  # the official ``input_size``
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int | None = 1000
    frequency_embedding_size: int = 256  # sinusoid width fed to the timestep MLP
    # Two published variants of the same network, kept so imported weights compute what they computed:
    # the official timestep frequencies are exp(-ln(1e4)·j/half) (shift 0); diffusers'
    # DiTTransformer2DModel uses /(half - 1) (shift 1). The official LayerNorm before the MLP has
    # ε = 1e-6; diffusers' has its config's norm_eps (1e-5 by default).
    timestep_freq_shift: int = 0
    mlp_norm_eps: float = LN_EPS

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    @property
    def num_patches(self) -> int:
        return (self.resolution // self.patch_size) ** 2

    def with_data(self, *, channels: int, resolution: int, num_classes: int | None,
                  learn_sigma: bool) -> "DiTConfig":
        return dataclasses.replace(self, in_channels=channels, resolution=resolution, num_classes=num_classes,
                                   out_channels=channels * (2 if learn_sigma else 1))

    def validate(self) -> None:
        positive = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                    "resolution": self.resolution, "patch_size": self.patch_size, "hidden_size": self.hidden_size,
                    "depth": self.depth, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                    "frequency_embedding_size": self.frequency_embedding_size}
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"model.{key} must be positive, got {value}")
        if self.resolution % self.patch_size:
            raise ConfigError(f"model.patch_size={self.patch_size} does not divide the input size "
                              f"{self.resolution}; choose a patch size that divides it")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
                              f"{self.num_heads}")
        if self.hidden_size % 4:
            # two 1-D sine-cosine embeddings (rows, columns) of hidden/2 each, each half sin, half cos
            raise ConfigError(f"model.hidden_size={self.hidden_size} must be a multiple of 4 (2-D sine-cosine "
                              "position embedding)")
        if self.timestep_freq_shift not in (0, 1):
            raise ConfigError(f"model.timestep_freq_shift must be 0 (official DiT) or 1 (diffusers), "
                              f"got {self.timestep_freq_shift}")
        if not self.mlp_norm_eps > 0:
            raise ConfigError(f"model.mlp_norm_eps must be positive, got {self.mlp_norm_eps}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be a positive integer or None, got {self.num_classes}")

    def describe(self) -> str:
        cond = f", {self.num_classes} classes (+ null label)" if self.num_classes else ", unconditional"
        variant = "" if (self.timestep_freq_shift, self.mlp_norm_eps) == (0, LN_EPS) else (
            f", diffusers variant (freq shift {self.timestep_freq_shift}, MLP norm eps {self.mlp_norm_eps:g})")
        return (f"DiT {self.in_channels}x{self.resolution}x{self.resolution} -> {self.out_channels} channels, "
                f"patch {self.patch_size} ({self.num_patches} tokens), hidden {self.hidden_size}, depth "
                f"{self.depth}, {self.num_heads} heads, MLP x{self.mlp_ratio:g}{cond}{variant}")


def timestep_embedding(t: torch.Tensor, dim: int, freq_shift: int = 0, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's sinusoidal embedding of (float) timesteps: **cos first**, frequencies
    exp(−ln(max_period)·j/(half − freq_shift)) (official: shift 0; diffusers: 1). Always float32."""
    half = dim // 2
    with torch.autocast(device_type=t.device.type, enabled=False):
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                          / (half - freq_shift))
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = F.pad(emb, (0, 1))
    return emb


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid², dim) fixed position embedding of the official code (after MAE): the first dim/2 channels
    encode the column index, the last dim/2 the row index, each as [sin(pos·ω), cos(pos·ω)] with
    ω_j = 10000^(−j/(dim/4)); computed in float64, returned as float32, tokens in row-major order."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_d(cols), one_d(rows)], dim=1).float()


def _zero(layer: nn.Linear) -> None:
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """p×p patches -> tokens: a conv with kernel = stride = p, flattened to (B, T, D) row-major."""

    def __init__(self, in_channels: int, hidden: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoids (``frequency_embedding_size`` wide) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, freq_dim: int, freq_shift: int):
        super().__init__()
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim, self.freq_shift)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """A table of num_classes + 1 rows; the last is the null label of classifier-free guidance."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        null = self.num_classes
        if y is None:
            y = torch.full((batch,), null, dtype=torch.long, device=device)
        else:
            y = torch.where(y < 0, torch.full_like(y, null), y.long())
        return self.embedding_table(y)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's ``Attention``, qkv_bias=True),
    computed by SDPA (softmax(q·kᵀ/√d_head))."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation, as the paper's code) -> fc2."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """x + gate₁·Attn(LN(x)·(1+scale₁)+shift₁), then x + gate₂·MLP(LN(x)·(1+scale₂)+shift₂), with the six
    vectors from Linear(SiLU(c)) (adaLN-Zero; paper §3.2)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, mlp_norm_eps: float = LN_EPS):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        _zero(self.adaLN_modulation[1])  # adaLN-Zero: the block starts as the identity

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """LN(x)·(1+scale)+shift (from Linear(SiLU(c))), then a linear map to p·p·C_out per token."""

    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        _zero(self.adaLN_modulation[1])
        _zero(self.linear)  # the network's output starts at 0

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """``forward(x, t, y=None)``: (B, C, H, W) inputs and (B,) timesteps -> (B, out_channels, H, W)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise ConfigError(f"DiT needs a DiTConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(config.in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d, config.frequency_embedding_size, config.timestep_freq_shift)
        self.y_embedder = LabelEmbedder(config.num_classes, d) if config.num_classes else None
        # A frozen Parameter, as in the official code, so that parameter counts agree with its
        # ``sum(p.numel() for p in model.parameters())``; nothing ever trains it (requires_grad=False).
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(d, config.num_heads, config.mlp_ratio, config.mlp_norm_eps)
                                    for _ in range(config.depth))
        self.final_layer = FinalLayer(d, p, config.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation: xavier-uniform linears (and patch embedding, as a linear), zero
        biases, N(0, 0.02) label table and timestep MLP, zero adaLN modulations and zero output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.copy_(sincos_pos_embed_2d(self.config.hidden_size,
                                                     self.config.resolution // self.config.patch_size)[None])
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                      self.final_layer.linear]:
            _zero(layer)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiT":
        from ddpm.presets import get_network

        return cls(get_network(name, **overrides))

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning vector c = embed(t) + embed(y) of every block."""
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, t.shape[0], t.device).to(c.dtype)
        elif y is not None:
            raise ConfigError("class labels y were given but this network has num_classes=None (unconditional)")
        return c

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p·p·C) -> (B, C, H, W), the inverse of the row-major patch order."""
        c, p = self.config.out_channels, self.config.patch_size
        h = w = self.config.resolution // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = self.embed(t.to(x.device), y)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


ARCH = Architecture(name="dit", config=DiTConfig, network=DiT,
                    summary="the diffusion transformer DiT (Peebles & Xie 2023) with adaLN-Zero blocks")
