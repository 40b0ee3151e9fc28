"""The paper's generation figures as image grids: progressive x̂0 (Fig. 6), shared latents (Fig. 7) and
interpolation across t (Fig. 8/9). Each function returns the uint8 grid (HWC) plus the raw tensors;
the sampling itself is :mod:`ddpm.sampling.experiments`. The paper drew them with Algorithm 2 (the
default, ``sampler=None``); ``sampler`` (a :class:`ddpm.config.SamplerConfig`) runs them with any
registered sampler instead. A latent model's chains run on latents; every image shown is decoded.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.images import make_grid, to_uint8


def _shape(model) -> tuple[int, ...]:
    from ddpm.models.registry import noise_shape

    return noise_shape(model.config)


def _to_images(model, x: torch.Tensor) -> torch.Tensor:
    """``x`` (any leading dims) as images: decoded for a latent model, unchanged for a pixel model."""
    from ddpm.models.latent import find_latent_model

    latent = find_latent_model(model)
    if latent is None:
        return x
    lead = x.shape[:-3]
    out = latent.decode_latents(x.reshape(-1, *x.shape[-3:]).to(latent.scale_factor.device)).cpu()
    return out.reshape(*lead, *out.shape[1:])


def _from_images(model, x: torch.Tensor) -> torch.Tensor:
    from ddpm.models.latent import find_latent_model

    latent = find_latent_model(model)
    return x if latent is None else latent.encode_images(x)


def _rows_to_grid(rows: torch.Tensor) -> np.ndarray:
    """(R, K, C, H, W) in [−1, 1] -> one uint8 grid with R rows of K images."""
    r, k = rows.shape[:2]
    return make_grid(to_uint8(rows.reshape(r * k, *rows.shape[2:])), nrow=k)


def progressive_figure(model, diffusion, *, num_chains: int = 4, num_frames: int = 10, seed: int = 0,
                       device=None, progress: bool = False, model_kwargs: dict | None = None,
                       sampler=None) -> dict:
    """Fig. 6: each row one chain of Algorithm 2, left to right the x̂0 predicted every T/num_frames
    steps (noisiest first), last column the final sample. ``frames_t``: paper t of each column."""
    from ddpm.sampling.experiments import progressive_samples

    T = diffusion.num_timesteps
    if not 1 <= num_frames <= T:
        raise ConfigError(f"num_frames must be in [1, {T}], got {num_frames}")
    every = max(1, T // num_frames)
    g = torch.Generator().manual_seed(seed)
    out = progressive_samples(diffusion, model, (num_chains, *_shape(model)), every=every, generator=g,
                              device=device, progress=progress, model_kwargs=model_kwargs, sampler=sampler)
    preds = out["pred_xstart"].flip(1)  # slot 0 is the last step: put the noisiest first
    frames = _to_images(model, torch.cat([preds, out["sample"].unsqueeze(1)], dim=1)).cpu()
    frames_t = [t + 1 for t in reversed(out["timesteps"])] + [0]
    return {"grid": _rows_to_grid(frames), "frames": frames, "frames_t": frames_t}


def shared_latent_figure(model, diffusion, *, share_until: Sequence[int] | None = None, num_samples: int = 4,
                         seed: int = 0, device=None, progress: bool = False,
                         model_kwargs: dict | None = None, sampler=None) -> dict:
    """Fig. 7: one row per branching time t (default T, 3T/4, T/2, T/4, as the paper's 1000/750/500/250);
    first column the shared latent x_t, then ``num_samples`` samples that share x_T … x_t."""
    from ddpm.sampling.experiments import shared_latent_samples

    T = diffusion.num_timesteps
    share_until = list(share_until) if share_until else [T, 3 * T // 4, T // 2, T // 4]
    rows, latents = [], []
    for t in share_until:
        g = torch.Generator().manual_seed(seed)  # same x_T in every row
        out = shared_latent_samples(diffusion, model, (num_samples, *_shape(model)), int(t),
                                    generator=g, device=device, progress=progress, model_kwargs=model_kwargs,
                                    sampler=sampler)
        latent = out["latent"][:1].cpu()
        latents.append(latent[0])
        rows.append(torch.cat([_to_images(model, latent).clamp(-1, 1), _to_images(model, out["samples"]).cpu()],
                              dim=0))
    rows = torch.stack(rows)
    return {"grid": _rows_to_grid(rows), "samples": rows[:, 1:], "latents": torch.stack(latents),
            "share_until": share_until}


def interpolation_figure(model, diffusion, x_a: torch.Tensor, x_b: torch.Tensor, *,
                         ts: Sequence[int] | None = None, num_lambdas: int = 9, seed: int = 0,
                         progress: bool = False, model_kwargs: dict | None = None, sampler=None) -> dict:
    """Fig. 8/9: one row per number of diffusion steps t (default 0, T/8, …, T as Fig. 9), columns
    source a, Rec. a, λ = 1/(L+1) … L/(L+1), Rec. b, source b. The encoder noise is drawn once per
    row and shared by every λ; ``x_a``/``x_b`` are single images (C, H, W) or (1, C, H, W) in [−1, 1]."""
    from ddpm.sampling.experiments import interpolate

    T = diffusion.num_timesteps
    ts = list(ts) if ts else [round(k * T / 8) for k in range(9)]
    x_a, x_b = x_a.reshape(1, *x_a.shape[-3:]), x_b.reshape(1, *x_b.shape[-3:])
    device = next(model.parameters()).device
    x_a, x_b = x_a.to(device), x_b.to(device)
    z_a, z_b = _from_images(model, x_a), _from_images(model, x_b)  # latent models mix latents
    lambdas = torch.linspace(0, 1, num_lambdas + 2)[1:-1]
    rows = []
    for t in ts:
        g = torch.Generator().manual_seed(seed)
        out = interpolate(diffusion, model, z_a, z_b, int(t), lambdas, generator=g, progress=progress,
                          model_kwargs=model_kwargs, sampler=sampler)
        samples = _to_images(model, out["samples"][:, 0]).cpu()  # (L, C, H, W)
        rec = _to_images(model, out["reconstructions"][:, 0]).cpu()
        rows.append(torch.cat([x_a.cpu(), rec[:1], samples, rec[1:], x_b.cpu()], dim=0))
    rows = torch.stack(rows)
    return {"grid": _rows_to_grid(rows), "rows": rows, "ts": ts, "lambdas": lambdas}


__all__ = ["progressive_figure", "shared_latent_figure", "interpolation_figure"]
