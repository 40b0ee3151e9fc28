"""Timestep respacing: run a diffusion on a subsequence of its T steps (Nichol & Dhariwal 2021, §4).

Keeping the steps S = {s_1 < ... < s_K} of a schedule with cumulative products ᾱ defines a new
K-step diffusion whose ᾱ'_k equals ᾱ_{s_k}: its betas are β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}}. Every
table (posterior variance, learned-range bounds, ...) is then rebuilt from β', while the network keeps
seeing the *original* indices s_k, because that is what it was trained on.

Four ways of choosing S for K sampling steps (:func:`timestep_subsequence`):

- ``uniform``: s_k = k·(T // K), k = 0..K−1 — the DDIM repo's "uniform" skip (``range(0, T, T//K)``,
  identical when K divides T) and diffusers' "leading" spacing; exactly K steps in every case.
- ``quadratic``: the DDIM repo's ``int(linspace(0, sqrt(0.8 T), K)²)``, duplicates removed (so large
  K can give fewer than K steps).
- ``even``: improved DDPM's ``space_timesteps(T, "K")``: K steps evenly spread over [0, T−1], both
  ends included.
- ``trailing``: diffusers' ``timestep_spacing="trailing"`` (Lin et al. 2024, "Common diffusion noise
  schedules and sample steps are flawed", §3.3 / Table 2): s = round(T − k·T/K) − 1 for k = 0..K−1,
  so the chain always starts at the last step T−1, which few-step samplers need. For K a power of
  two the K/2 grid is every other point of the K grid (k·T/K is exact in binary), which progressive
  distillation needs (:mod:`ddpm.train.progressive`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError

SPACINGS = ("uniform", "quadratic", "even", "trailing")


def space_timesteps(num_timesteps: int, section_counts: str | Iterable[int]) -> list[int]:
    """Improved DDPM's ``space_timesteps``: which of ``num_timesteps`` steps to keep, sorted.

    ``section_counts`` is a list of counts, or a comma string such as ``"10,15,20"``: [0, T) is cut
    into that many nearly equal sections (the first ``T % n`` one step longer) and section i keeps
    ``counts[i]`` steps spaced by the float stride (size−1)/(count−1), rounded with Python's
    half-to-even ``round`` after float accumulation, exactly as the reference does. ``"ddimN"`` keeps
    ``range(0, T, s)`` for the integer stride s that gives exactly N steps.
    """
    T = int(num_timesteps)
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                want = int(spec[4:])
            except ValueError:
                raise ConfigError(f"timestep respacing {spec!r} must look like ddim50") from None
            for stride in range(1, T):
                if len(range(0, T, stride)) == want:
                    return list(range(0, T, stride))
            raise ConfigError(f"no integer stride gives exactly {want} of {T} steps for {spec!r}; "
                              f"use a plain count such as {want!r} instead")
        try:
            counts = [int(c) for c in spec.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"timestep respacing {spec!r} must be counts like '250' or '10,15,20'"
                              ", or 'ddim50'") from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or min(counts) < 1:
        raise ConfigError(f"timestep respacing {section_counts!r} needs one or more counts ≥ 1")
    base, extra = divmod(T, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ConfigError(f"cannot keep {count} steps from a section of {size} of the {T} "
                              f"timesteps; ask for fewer steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def timestep_subsequence(num_timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """The ``steps`` code timesteps (sorted) a K-step sampler visits; see the module docstring."""
    T, K = int(num_timesteps), int(steps)
    if not 1 <= K <= T:
        raise ConfigError(f"steps must be between 1 and the model's {T} timesteps, got {K}")
    if spacing == "uniform":
        return [k * (T // K) for k in range(K)]
    if spacing == "quadratic":
        seq = np.linspace(0, np.sqrt(0.8 * T), K) ** 2
        return sorted({int(s) for s in seq})
    if spacing == "even":
        return space_timesteps(T, [K])
    if spacing == "trailing":
        # numpy's arange of the float stride and half-to-even rounding, exactly as diffusers
        return sorted(int(s) - 1 for s in np.arange(T, 0, -T / K).round())
    raise ConfigError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def chain_length(num_timesteps: int, steps: int | None, spacing: str = "uniform") -> int:
    """How many steps a chain of ``steps`` (None: all T) with ``spacing`` really has (quadratic may
    merge duplicates)."""
    if steps is None:
        return int(num_timesteps)
    return len(timestep_subsequence(num_timesteps, steps, spacing))


class SpacedDiffusion(GaussianDiffusion):
    """A :class:`GaussianDiffusion` over the kept steps ``use_timesteps`` of the schedule ``betas``.

    Indices 0..K−1 of this object are positions in the kept subsequence; every model evaluation maps
    them back (:meth:`model_output`), so the network receives the original indices.
    ``timestep_map[k]`` is the original index of step k. With all T steps kept it is the base
    diffusion (same tables up to float rounding).
    """

    def __init__(self, use_timesteps: Iterable[int], betas, mean_type: str = "eps",
                 var_type: str = "fixedlarge", loss_type: str = "mse"):
        base_betas = np.asarray(betas, dtype=np.float64)
        T = len(base_betas)
        kept = sorted({int(t) for t in use_timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= T:
            raise ConfigError(f"respaced timesteps must be a non-empty subset of 0..{T - 1}")
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1.0 - base_alphas_cumprod[i] / last)
            last = base_alphas_cumprod[i]
        super().__init__(np.array(new_betas, dtype=np.float64), mean_type, var_type, loss_type)
        self.timestep_map = np.array(kept, dtype=np.int64)
        self.original_num_steps = T

    def __repr__(self) -> str:
        return (f"SpacedDiffusion({self.num_timesteps} of {self.original_num_steps} steps, "
                f"mean_type={self.mean_type!r}, var_type={self.var_type!r}, loss_type={self.loss_type!r})")

    @classmethod
    def from_diffusion(cls, diffusion: GaussianDiffusion, use_timesteps: Iterable[int]) -> "SpacedDiffusion":
        """Respace an existing diffusion, keeping its mean, variance and loss types."""
        return cls(use_timesteps, diffusion.betas, diffusion.mean_type, diffusion.var_type,
                   diffusion.loss_type)

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original-schedule indices of this chain's indices ``t`` (the map is cached per device)."""
        cache = self.__dict__.setdefault("_map_cache", {})
        table = cache.get(t.device)
        if table is None or table.numel() != len(self.timestep_map):
            table = cache[t.device] = torch.from_numpy(self.timestep_map).to(t.device)
        return table[t]

    def model_output(self, model, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None):
        # GaussianDiffusion routes every network evaluation through here, so mapping the indices in
        # this one place covers sampling, losses and the bound alike.
        return super().model_output(model, x_t, self.original_timesteps(t), model_kwargs)


def respace(diffusion: GaussianDiffusion, steps: int | None, spacing: str = "uniform") -> GaussianDiffusion:
    """``diffusion`` itself when all steps are kept, else a :class:`SpacedDiffusion` of ``steps``."""
    T = diffusion.num_timesteps
    if steps is None:
        return diffusion
    kept = timestep_subsequence(T, steps, spacing)
    if kept == list(range(T)) and not isinstance(diffusion, SpacedDiffusion):
        return diffusion
    if isinstance(diffusion, SpacedDiffusion):
        # Respacing a respaced chain: compose the maps so the network still sees original indices.
        inner = SpacedDiffusion.from_diffusion(diffusion, kept)
        inner.timestep_map = diffusion.timestep_map[inner.timestep_map]
        inner.__dict__.pop("_map_cache", None)
        inner.original_num_steps = diffusion.original_num_steps
        return inner
    return SpacedDiffusion.from_diffusion(diffusion, kept)
