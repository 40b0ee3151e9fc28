"""Noise sources for samplers: x_T and the step noise a stochastic sampler draws as it goes.

A source is a callable ``noise(t) -> Tensor`` (see :mod:`ddpm.sampling.registry`).

- :class:`PerImageNoise` gives every image its own ``torch.Generator`` seeded from
  ``SeedSequence([seed, i])``: it draws that image's x_T first, then its step noise in blocks of steps,
  so **image i depends only on (seed, i)**, whatever the batch size, the process count or the other
  images drawn. CPU and CUDA generators are different algorithms: a seed gives other images on a GPU.
- :class:`GeneratorNoise` draws batch-shaped noise from one generator (or the global RNG), for direct
  calls of :func:`ddpm.sampling.sample` and the figure experiments.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ddpm.diffusion import randn_like

# Per-image step noise is drawn this many bytes at a time (a block of steps): big enough that a GPU
# makes few generator calls, small enough that a batch of 256x256 images stays cheap in memory.
NOISE_BLOCK_BYTES = 1 << 20


def image_generator(seed: int, index: int, device) -> torch.Generator:
    """The generator of global image ``index`` for ``seed`` (independent streams via SeedSequence)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


class PerImageNoise:
    """x_T and step noise for a batch, each image from its own generator, drawn in blocks of steps.

    ``draws``: how many step draws the sampler will make (its registry entry knows), or None when it
    cannot say; the blocks (and so the exact numbers) follow from it and the image size alone.
    """

    def __init__(self, generators: list[torch.Generator], image_shape: Sequence[int], draws: int | None,
                 device, dtype=torch.float32):
        self.generators, self.shape = generators, tuple(image_shape)
        self.device, self.dtype = device, dtype
        per_block = max(1, NOISE_BLOCK_BYTES // (4 * int(np.prod(self.shape))))
        self.block = per_block if draws is None else max(1, min(int(draws), per_block))
        self.remaining = None if draws is None else int(draws)
        self._buffer: torch.Tensor | None = None
        self._pos = 0

    def initial(self) -> torch.Tensor:
        """x_T: the first draw of every image's generator."""
        return torch.stack([self._randn(g, self.shape) for g in self.generators])

    def __call__(self, t: int | None = None) -> torch.Tensor:
        """The next step's noise (B, C, H, W); ``t`` is not needed: draws come in order."""
        if self._buffer is None or self._pos == self._buffer.shape[1]:
            size = self.block
            if self.remaining is not None:
                if self.remaining <= 0:
                    raise RuntimeError("the sampler drew more step noise than its registry entry announced")
                size = min(size, self.remaining)
                self.remaining -= size
            self._buffer = torch.stack([self._randn(g, (size,) + self.shape) for g in self.generators])
            self._pos = 0
        z = self._buffer[:, self._pos]
        self._pos += 1
        return z

    step = __call__  # the name earlier releases used

    def _randn(self, g: torch.Generator, shape) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=self.device, dtype=self.dtype)


class GeneratorNoise:
    """Standard normal draws shaped like ``like`` from ``generator`` (its own device), or the global RNG."""

    def __init__(self, like: torch.Tensor, generator: torch.Generator | None = None):
        self.like, self.generator = like, generator

    def __call__(self, t: int | None = None) -> torch.Tensor:
        return randn_like(self.like, self.generator)


__all__ = ["PerImageNoise", "GeneratorNoise", "image_generator", "NOISE_BLOCK_BYTES"]
