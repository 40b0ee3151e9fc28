"""How training draws timesteps: uniformly (the paper, Algorithm 1) or by importance (improved DDPM).

A sampler returns ``(t, weights)``; the training loss is ``(losses * weights).mean()``, where the
weights ``1 / (T p_t)`` keep the estimate unbiased. Uniform sampling gives weights of exactly 1.
"""

from __future__ import annotations

import torch

from ddpm.errors import ConfigError


class TimestepSampler:
    """Base class: a distribution over code timesteps 0..T-1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        """Unnormalised float64 probabilities of each timestep, shape (T,)."""
        raise NotImplementedError

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        """Draw ``batch_size`` timesteps; returns (t LongTensor, importance weights float32)."""
        w = self.weights()
        p = w / w.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update_with_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses (no-op unless the sampler adapts)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformSampler(TimestepSampler):
    """t ~ U{0, ..., T-1}, as in the paper; weights are exactly 1."""

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        # randint rather than multinomial so that uniform sampling draws the same stream as the
        # authors' tf.random_uniform([B], 0, T) would on a comparable RNG.
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)


SAMPLERS = {"uniform": UniformSampler}


def create_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    """Build the timestep sampler called ``name`` (see ``SAMPLERS``)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown timestep sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](num_timesteps)
