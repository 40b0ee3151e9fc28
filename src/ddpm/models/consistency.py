"""A consistency model f_θ(x_t, t) (Song et al. 2023, §3 and App. C): the U-Net under the boundary
parameterisation, so that f_θ(x, σ_min) = x holds by construction.

In the σ view of a VP diffusion (Karras et al. 2022, Table 1), x_t = √ᾱ_t (x_0 + σ_t n) with
σ_t = √((1 − ᾱ_t)/ᾱ_t); write x̃ = x_t/√ᾱ_t = x_t·√(1 + σ_t²). Then

    f_θ(x_t, t) = c_skip(σ_t)·x̃ + c_out(σ_t)·F_θ,
    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²),   c_out(σ) = σ_d (σ − σ_min) / √(σ² + σ_d²),

with σ_d = ``sigma_data`` and σ_min = σ at the first code step t = 0, where c_skip = 1 and c_out = 0
exactly: f_θ(x_0, σ_min) = x̃. F_θ is the U-Net's output with its sign flipped, read from the VP input
x_t (EDM's c_in·x̃ with σ_d = 1) at the code timestep t. Both choices keep a U-Net trained as an
ε-predictor meaningful when a consistency model starts from its weights: it sees the inputs and
times it was trained on, and −ε is F to first order at low noise (where c_skip ≈ 1 and c_out ≈ σ).

The network returns f (an x_0 estimate in data units): a consistency checkpoint has
``diffusion.mean_type = "xstart"``, so every sampler can use it and the ``consistency`` sampler
(:mod:`ddpm.sampling.consistency`) does what Song et al.'s Algorithm 1 does. The noise schedule is
the diffusion's, copied into this config from ``Config.diffusion`` (:meth:`ConsistencyConfig.with_diffusion`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.models.registry import Architecture
from ddpm.models.unet import UNet, UNetConfig


@dataclass
class ConsistencyConfig(UNetConfig):
    """The U-Net's fields (same weights, so a teacher's state dict loads as it is) plus σ_data and the
    diffusion's schedule (derived from ``Config.diffusion``, never set by hand)."""

    arch: str = "consistency"
    sigma_data: float = 0.5  # Song et al. 2023 (and EDM) for images in [-1, 1]
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000

    def with_diffusion(self, diffusion) -> "ConsistencyConfig":
        """This network on ``diffusion``'s noise schedule (a :class:`ddpm.config.DiffusionConfig`)."""
        return dataclasses.replace(self, schedule=diffusion.schedule, beta_start=diffusion.beta_start,
                                   beta_end=diffusion.beta_end, num_timesteps=diffusion.num_timesteps)

    def with_data(self, **kw) -> "ConsistencyConfig":
        if kw.get("learn_sigma"):
            raise ConfigError("a consistency model predicts x0 with a fixed variance; set diffusion.var_type to "
                              "fixedlarge or fixedsmall")
        return super().with_data(**kw)

    def validate(self) -> None:
        super().validate()
        if not self.sigma_data > 0:
            raise ConfigError(f"model.sigma_data must be positive, got {self.sigma_data}")

    def sigmas(self) -> np.ndarray:
        """σ_t = √((1 − ᾱ_t)/ᾱ_t) of every code timestep (float64)."""
        from ddpm.schedules import get_beta_schedule

        betas = get_beta_schedule(self.schedule, beta_start=self.beta_start, beta_end=self.beta_end,
                                  num_timesteps=self.num_timesteps)
        ac = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        return np.sqrt((1.0 - ac) / ac)

    def describe(self) -> str:
        return (f"consistency model (sigma_data {self.sigma_data:g}, boundary at t = 0) on "
                + super().describe())


def boundary_coefficients(sigma: np.ndarray | torch.Tensor, sigma_min: float, sigma_data: float):
    """(c_skip, c_out) of Song et al. 2023, App. C, at noise levels ``sigma``."""
    lib = torch if torch.is_tensor(sigma) else np
    d = sigma - sigma_min
    return sigma_data**2 / (d**2 + sigma_data**2), sigma_data * d / lib.sqrt(sigma**2 + sigma_data**2)


class ConsistencyModel(UNet):
    """``forward(x_t, t, y=None)`` → f_θ(x_t, t), the consistency function in data units."""

    def __init__(self, config: ConsistencyConfig):
        if not isinstance(config, ConsistencyConfig):
            raise ConfigError(f"ConsistencyModel needs a ConsistencyConfig, got {type(config).__name__}")
        super().__init__(config)
        sigma = config.sigmas()
        c_skip, c_out = boundary_coefficients(sigma, sigma[0], config.sigma_data)
        # Tables, not weights: rebuilt from the config, so not in the state dict (a U-Net's loads as is).
        table = np.stack([np.sqrt(1.0 + sigma**2) * c_skip, c_out])
        self.register_buffer("coefficients", torch.from_numpy(table).float(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        t = t.to(x.device)
        raw = super().forward(x, t, y)
        skip, out = self.coefficients[:, t.long()].to(raw.dtype).unsqueeze(-1).unsqueeze(-1).unsqueeze(-1)
        return skip * x - out * raw


ARCH = Architecture(name="consistency", config=ConsistencyConfig, network=ConsistencyModel,
                    summary="consistency model: the U-Net with c_skip/c_out boundary parameterisation "
                            "(Song et al. 2023)")
