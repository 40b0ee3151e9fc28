"""The paper's sampling experiments (Ho et al. 2020, §4.3–4.4), run by any registered sampler.

- :func:`progressive_samples` — x̂0 predicted along the chain (Fig. 6, Fig. 10);
- :func:`shared_latent_samples` — chains that share x_T, ..., x_t and then branch (Fig. 7);
- :func:`interpolate` — mixing two images in the latent x_t and decoding (Fig. 8, Fig. 9).

The paper ran them with Algorithm 2, the default here (``sampler=None``); any
:class:`ddpm.config.SamplerConfig` may be given instead (a stochastic one for branching, one that can
start part-way, ``ddpm`` or ``ddim``, for interpolation). Every function takes the diffusion first,
then the model, and draws all randomness from ``generator`` (or takes it as noise).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ddpm.config import SamplerConfig
from ddpm.diffusion import GaussianDiffusion, noise_at, model_device, randn
from ddpm.errors import ConfigError
from ddpm.sampling.api import sample


def progressive_samples(
    diffusion: GaussianDiffusion,
    model,
    shape,
    every: int = 50,
    *,
    noise: torch.Tensor | None = None,
    step_noise=None,
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
    device=None,
    progress: bool = False,
    sampler: SamplerConfig | None = None,
) -> dict:
    """Sample and keep x̂0 every ``every`` steps (the authors' ``include_xstartpred_freq``).

    Returns a dict with
    - ``sample``: the final x0, (B, C, H, W);
    - ``pred_xstart``: (B, K, C, H, W) with K = ceil(T / every); slot k holds the x̂0 predicted at code
      step k·every (slot 0, from the last step, equals ``sample``; slot K−1 is the earliest, noisiest);
    - ``x_t``: (B, K, C, H, W), slot k the chain's state fed to code step k·every;
    - ``timesteps``: the code steps [0, every, 2·every, ...] of the slots.
    With a sampler that skips steps, slot k holds the visited step nearest to k·every. Other
    arguments as :meth:`GaussianDiffusion.p_sample_loop`.
    """
    if every < 1:
        raise ConfigError(f"every must be a positive number of steps, got {every}")
    T = diffusion.num_timesteps
    timesteps = list(range(0, T, every))
    best: list[tuple | None] = [None] * len(timesteps)  # (distance, x̂0, state fed to the step)
    if noise is None:
        noise = randn(tuple(shape), generator, device if device is not None else model_device(model))
    state = {"x": noise}

    def keep(info: dict) -> None:
        t, fed = info["t"], state["x"]
        if info["pred_xstart"] is None:  # a report point without a network call (the adaptive ODE)
            state["x"] = info["x"]
            return
        for k, slot_t in enumerate(timesteps):
            d = abs(t - slot_t)
            if best[k] is None or d < best[k][0]:
                best[k] = (d, info["pred_xstart"], fed)
        state["x"] = info["x"]

    final = sample(model, diffusion, noise, sampler or SamplerConfig(clip_denoised=clip_denoised),
                   noise=lambda t: noise_at(step_noise, t, noise, generator), model_kwargs=model_kwargs,
                   callback=keep, progress=progress)
    return {
        "sample": final,
        "pred_xstart": torch.stack([b[1] for b in best], dim=1),
        "x_t": torch.stack([b[2] for b in best], dim=1),
        "timesteps": timesteps,
    }


def shared_latent_samples(
    diffusion: GaussianDiffusion,
    model,
    shape,
    share_until: int,
    *,
    noise: torch.Tensor | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    generator: torch.Generator | None = None,
    device=None,
    progress: bool = False,
    return_trajectory: bool = False,
    sampler: SamplerConfig | None = None,
) -> dict:
    """B chains that share their start and branch late (Fig. 7; the authors' ``repeat_noise_steps``).

    Convention, in the paper's indices (x_T is pure noise, x_0 the image): every chain shares
    x_T, x_{T−1}, ..., x_{share_until}; from there on each draws its own noise. In code terms, the
    step at code index i (x_{i+1} -> x_i) uses one noise draw broadcast over the batch when
    i ≥ share_until and independent draws otherwise. So ``share_until = T`` shares only x_T (the
    authors' default), ``share_until = 0`` makes every chain identical (so does 1: the final step
    adds no noise), and the paper's "branch at t = 500" is ``share_until = 500``.

    ``noise`` (optional) is the shared x_T, shape (C, H, W) or (1, C, H, W). Returns ``samples``
    (B, C, H, W) and ``latent``, the shared x_{share_until} (B, C, H, W; identical rows); with
    ``return_trajectory`` also ``trajectory`` (T+1, B, C, H, W) where ``trajectory[i]`` is the paper's
    x_i (index T the starting noise, index 0 the samples), like the authors' ``p_sample_loop_trajectory``.
    """
    T = diffusion.num_timesteps
    if not 0 <= share_until <= T:
        raise ConfigError(f"share_until must be a timestep in [0, {T}], got {share_until}")
    shape = tuple(shape)
    one = (1,) + shape[1:]
    dev = torch.device(device) if device is not None else (noise.device if noise is not None else model_device(model))
    x_T = randn(one, generator, dev) if noise is None else noise.reshape(one).to(dev)
    x = x_T.expand(shape).contiguous()

    def step_noise(i: int) -> torch.Tensor:
        if i >= share_until:
            return randn(one, generator, dev).expand(shape)
        return randn(shape, generator, dev)

    found = {"latent": x if share_until == T else None}
    trajectory = [x] if return_trajectory else None

    def watch(info: dict) -> None:
        if info["t"] == share_until:
            found["latent"] = info["x"]
        if trajectory is not None:
            trajectory.append(info["x"])

    x = sample(model, diffusion, x, sampler or SamplerConfig(clip_denoised=clip_denoised), noise=step_noise,
               model_kwargs=model_kwargs, callback=watch, progress=progress)
    result = {"samples": x, "latent": found["latent"]}
    if trajectory is not None:
        result["trajectory"] = torch.stack(trajectory[::-1], dim=0)
    return result


def interpolate(
    diffusion: GaussianDiffusion,
    model,
    x0_a: torch.Tensor,
    x0_b: torch.Tensor,
    t: int,
    lambdas: Sequence[float] | torch.Tensor,
    *,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    chunk: int | None = None,
    progress: bool = False,
    sampler: SamplerConfig | None = None,
) -> dict:
    """Interpolate images in the diffusion latent (paper §4.4, Fig. 8–9).

    ``t`` is the number of diffusion steps in the paper's indexing (0..T; Fig. 8 uses 500): both
    images are encoded to x_t with q(x_t | x0), ONE noise draw ε_a for ``x0_a`` and one ε_b for
    ``x0_b`` (``noise=(ε_a, ε_b)``, else drawn from ``generator``), reused for every λ; the latents
    (1−λ)·x_t^a + λ·x_t^b are decoded by the reverse chain from x_t to x_0 with the same step noise
    for every λ, so λ changes only the latent. ``t = 0`` is plain pixel-space mixing. The decoder is
    Algorithm 2 unless ``sampler`` names another that can start part-way (``ddim``: deterministic).

    ``x0_a``, ``x0_b``: (B, C, H, W) in [-1, 1]. ``chunk`` bounds how many λ are decoded in one
    batch (the step noise is replayed so that chunking does not change the result).
    Returns ``samples`` (L, B, C, H, W), ``latents`` (L, B, C, H, W), ``reconstructions`` (2, B, C, H, W)
    (x_t^a and x_t^b decoded, the "Rec." columns) and ``lambdas`` (L,).
    """
    T = diffusion.num_timesteps
    if not 0 <= int(t) <= T:
        raise ConfigError(f"interpolation depth t must be in [0, {T}] diffusion steps, got {t}")
    if x0_a.shape != x0_b.shape:
        raise ConfigError(
            f"images to interpolate must have the same shape, got {tuple(x0_a.shape)} and {tuple(x0_b.shape)}"
        )
    t = int(t)
    lam = torch.as_tensor(lambdas, dtype=x0_a.dtype, device=x0_a.device).reshape(-1)
    L, B = lam.shape[0], x0_a.shape[0]
    if t == 0:
        lat = _mix(x0_a, x0_b, lam)
        return {"samples": lat, "latents": lat, "reconstructions": torch.stack([x0_a, x0_b]), "lambdas": lam}

    gen = generator if generator is not None else _fresh_generator()
    if noise is None:
        eps_a = randn(x0_a.shape, gen, x0_a.device, x0_a.dtype)
        eps_b = randn(x0_b.shape, gen, x0_b.device, x0_b.dtype)
    else:
        eps_a, eps_b = noise
    code_t = torch.full((B,), t - 1, dtype=torch.long, device=x0_a.device)
    x_t_a = diffusion.q_sample(x0_a, code_t, noise=eps_a)
    x_t_b = diffusion.q_sample(x0_b, code_t, noise=eps_b)
    latents = _mix(x_t_a, x_t_b, lam)

    # Decode the λ latents and the two sources together; every chain of a given image index sees the
    # same step noise, replayed from one generator state per chunk.
    todo = torch.cat([latents, torch.stack([x_t_a, x_t_b])], dim=0)  # (L + 2, B, ...)
    n_chains = todo.shape[0]
    chunk = n_chains if chunk is None else max(1, int(chunk))
    start_state = gen.get_state()
    decoded = []
    for lo in range(0, n_chains, chunk):
        part = todo[lo : lo + chunk]
        n = part.shape[0]
        gen.set_state(start_state)

        def step_noise(i: int, n=n) -> torch.Tensor:
            z = randn(x0_a.shape, gen, x0_a.device, x0_a.dtype)
            return z.unsqueeze(0).expand(n, *z.shape).reshape(n * B, *z.shape[1:])

        kwargs = _repeat_kwargs(model_kwargs, n)
        out = sample(model, diffusion, part.reshape(n * B, *part.shape[2:]),
                     sampler or SamplerConfig(clip_denoised=clip_denoised), noise=step_noise,
                     model_kwargs=kwargs, t_start=t - 1, progress=progress)
        decoded.append(out.reshape(n, B, *out.shape[1:]))
    decoded = torch.cat(decoded, dim=0)
    return {"samples": decoded[:L], "latents": latents, "reconstructions": decoded[L:], "lambdas": lam}


def _mix(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    lam = lam.reshape(-1, *((1,) * a.ndim))
    return (1 - lam) * a.unsqueeze(0) + lam * b.unsqueeze(0)


def _repeat_kwargs(model_kwargs: dict | None, n: int) -> dict | None:
    """Tile per-example tensors (e.g. class labels of shape (B,)) over n chains of B examples each."""
    if not model_kwargs:
        return model_kwargs
    return {
        k: v.repeat(n, *((1,) * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.ndim > 0 else v
        for k, v in model_kwargs.items()
    }


def _fresh_generator() -> torch.Generator:
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)
