"""The exact ε-model of Gaussian data, for closed-form tests of the continuous-time samplers.

Data x0 ~ N(μ, s²I). At a (possibly fractional) code timestep t with ᾱ = 1/(1 + σ(t)²), σ(t) the σ
view's interpolation, x_t ~ N(√ᾱ μ, (ᾱs² + 1 − ᾱ)I), and the exact ε-prediction is
E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱs² + 1 − ᾱ). In the σ view x̃ ~ N(μ, (s² + σ²)I), so the
probability-flow ODE maps x̃(σ_a) to x̃(σ_b) = μ + (x̃(σ_a) − μ)·√((s² + σ_b²)/(s² + σ_a²)).
"""

import math

import numpy as np
import torch

from ddpm.sampling.continuous import SigmaView


class GaussianEps(torch.nn.Module):
    def __init__(self, diffusion, mu: float, s2: float, image_shape=(1, 4, 4)):
        super().__init__()
        self.view = SigmaView(diffusion)
        self.mu, self.s2 = float(mu), float(s2)
        self.image_shape = tuple(image_shape)
        self.calls = 0

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        sigma = self.view.t_to_sigma(t.detach().double().cpu().numpy())
        return torch.as_tensor(1.0 / (1.0 + sigma**2), dtype=torch.float64)

    def forward(self, x, t, y=None):
        self.calls += 1
        ab = self.alpha_bar(t).to(x.device).view(-1, *([1] * (x.ndim - 1)))
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * self.mu) / (ab * self.s2 + 1 - ab)
        return eps.to(x.dtype)

    def flow(self, x_tilde: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The exact probability-flow map in σ-view units."""
        return self.mu + (x_tilde - self.mu) * math.sqrt((self.s2 + sigma_to**2) / (self.s2 + sigma_from**2))

    def posterior_mean(self, x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
        """E[x0 | x̃] at noise level σ: the exact D(x̃; σ)."""
        return self.mu + self.s2 / (self.s2 + sigma**2) * (x_tilde - self.mu)

    def log_density(self, x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
        """log N(x̃; μ, (s² + σ²)I) per image (natural log)."""
        v = self.s2 + sigma**2
        d = x_tilde[0].numel()
        return -0.5 * ((x_tilde - self.mu) ** 2).flatten(1).sum(1) / v - 0.5 * d * np.log(2 * np.pi * v)
