"""How training draws timesteps: uniformly (the paper, Algorithm 1) or by importance (improved DDPM).

A sampler returns ``(t, weights)``; the training loss is ``(losses * weights).mean()``, where the
weights ``1 / (T p_t)`` keep the estimate unbiased. Uniform sampling gives weights of exactly 1.
"""

from __future__ import annotations

import numpy as np
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


class LossSecondMomentResampler(TimestepSampler):
    """Improved DDPM's loss-aware sampler (Nichol & Dhariwal 2021, §3.3, Eq. 18): p_t ∝ sqrt(E[L_t²]) over the last
    ``history_per_term`` losses of each t, mixed with ``uniform_prob`` of the uniform distribution.

    It stays uniform until every t has a full history. Under DDP, :meth:`update_with_losses`
    all-gathers (t, loss) from every rank and applies them in rank order, so all ranks hold the same
    history and draw from the same distribution. The state is two plain lists (JSON-safe).
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self._counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        """True once every timestep has a full loss history."""
        return bool((self._counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = np.sqrt(np.mean(self._history**2, axis=-1))
        w /= w.sum()
        w = w * (1 - self.uniform_prob) + self.uniform_prob / len(w)
        return torch.from_numpy(w)

    def update_with_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        t, losses = _all_gather_pairs(t.detach().reshape(-1), losses.detach().reshape(-1).double())
        for ti, li in zip(t.tolist(), losses.tolist()):
            n = self._counts[ti]
            if n == self.history_per_term:
                # Keep the most recent losses: shift the window left and append.
                self._history[ti, :-1] = self._history[ti, 1:]
                self._history[ti, -1] = li
            else:
                self._history[ti, n] = li
                self._counts[ti] += 1

    def state_dict(self) -> dict:
        return {"history": self._history.tolist(), "counts": self._counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        history = np.asarray(state["history"], dtype=np.float64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        if history.shape != self._history.shape or counts.shape != self._counts.shape:
            raise ConfigError(
                f"timestep-sampler state is for history {history.shape}, this run needs "
                f"{self._history.shape}; resume with the same diffusion.num_timesteps"
            )
        self._history, self._counts = history, counts


def _all_gather_pairs(t: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, losses) from every rank, concatenated in rank order; the local pair without DDP."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t.cpu(), losses.cpu()
    world = dist.get_world_size()
    # Ranks may hold different batch sizes (the last microbatch), so pad to the largest first.
    size = torch.tensor([t.numel()], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    pad_t = torch.zeros(longest, dtype=t.dtype, device=t.device)
    pad_l = torch.zeros(longest, dtype=losses.dtype, device=losses.device)
    pad_t[: t.numel()], pad_l[: losses.numel()] = t, losses
    all_t = [torch.zeros_like(pad_t) for _ in range(world)]
    all_l = [torch.zeros_like(pad_l) for _ in range(world)]
    dist.all_gather(all_t, pad_t)
    dist.all_gather(all_l, pad_l)
    t_out = torch.cat([a[:n] for a, n in zip(all_t, sizes)]).cpu()
    l_out = torch.cat([a[:n] for a, n in zip(all_l, sizes)]).cpu()
    return t_out, l_out


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentResampler}


def create_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    """Build the timestep sampler called ``name`` (see ``TIMESTEP_SAMPLERS``)."""
    if name not in TIMESTEP_SAMPLERS:
        raise ConfigError(f"unknown timestep sampler {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    return TIMESTEP_SAMPLERS[name](num_timesteps)

