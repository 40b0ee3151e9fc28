"""Exact likelihood under the probability-flow ODE (Song et al. 2021, "Score-based generative modeling
through SDEs", §4.3 and App. D.2): the instantaneous change of variables of a continuous normalizing
flow (Chen et al. 2018, Thm. 1) with the Skilling–Hutchinson trace estimator (FFJORD, Grathwohl et
al. 2019, §3).

The flow is the one :mod:`ddpm.sampling.ode` samples with: the VP sample x in u = log σ,
dx/du = f(x, u) = ᾱx − √ᾱ·x̂0(x, σ), from σ_min (code step 0) to σ_max (code step T−1). Along it

    log p_{σ_min}(x(u_min)) = log N(x(u_max); 0, I) + ∫ div_x f du,   div_x f = ᾱ·D − √ᾱ·tr(∂x̂0/∂x),

with the prior N(0, I) of the variational bound's L_T. tr(∂x̂0/∂x) ≈ (1/k)Σ_j v_jᵀ(∂x̂0/∂x)v_j with k
fixed probes per image (Rademacher or Gaussian; one vector-Jacobian product each per evaluation),
which keeps log p unbiased, not the bits/dim. The data x₀ (in [−1, 1]) is taken as the σ-view sample
x̃ at σ_min, x(u_min) = √ᾱ_0·x₀, so log p(x₀) = log p_{σ_min}(x(u_min)) + (D/2) log ᾱ_0 — score SDE's
start at t = ε with data as the sample, here with ε the model's smallest noise level (σ_min ≈ 0.01 for
the paper's schedule) rather than 1e-5.

Bits/dim: with uniform dequantization x₀ = 2(k + U)/256 − 1 for pixel k ∈ {0..255}, U ~ U[0, 1)ᴰ,
−E[log p(x₀)]/(D ln 2) + 7 bounds the discrete model's NLL (the +7 = log₂(256/2) is the bin width of
[−1, 1]; score SDE's ``offset = 7``). ``dequantize="none"`` evaluates the density at the pixel values
themselves (not a bound). The adaptive solver is :class:`ddpm.sampling.ode.Dopri5`, per image, so an
image's value does not depend on its batch; its probes and dequantization noise come from its own
generator seeded with (seed, index).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ddpm.errors import UserError
from ddpm.sampling.continuous import Denoiser, SigmaView
from ddpm.sampling.ode import Dopri5

PROBES = ("rademacher", "gaussian")
DEQUANTIZE = ("uniform", "none")
OFFSET_BITS = 7.0  # log2(256 / 2): 8-bit pixels on [−1, 1]


def _generator(seed: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(index), 7]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def dequantize(x0: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Uniform dequantization of images in [−1, 1] made from 8-bit pixels: 2(k + U)/256 − 1."""
    k = torch.round((x0.double() + 1.0) * 127.5).clamp(0, 255)
    u = torch.stack([torch.rand(x0.shape[1:], generator=g, dtype=torch.float64) for g in generators])
    return 2.0 * (k + u) / 256.0 - 1.0


def ode_log_likelihood(model, diffusion, x0: torch.Tensor, *, probes: torch.Tensor, rtol: float = 1e-5,
                       atol: float = 1e-5, model_kwargs: dict | None = None, quantize: bool = False) -> dict:
    """log p(x0) in nats per image under the probability-flow ODE (x0 not dequantized here).

    ``probes``: (k, B, C, H, W) Hutchinson vectors. Returns ``log_p`` (B,), ``prior_log_p``,
    ``delta`` (∫ div f du), ``z`` (x at σ_max) and ``nfe`` (per image, float tensor).
    """
    view = SigmaView(diffusion)
    den = Denoiser(diffusion, model, model_kwargs=model_kwargs, clip_denoised=False, quantize=quantize,
                   view=view)
    shape = x0.shape
    dim = int(np.prod(shape[1:]))
    dtype = x0.dtype  # the network's; the solver's state is float64
    probes = probes.to(device=x0.device, dtype=dtype)

    def rhs(rows: torch.Tensor, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(u).cpu().numpy()
        ab = 1.0 / (1.0 + sigma * sigma)
        abt = torch.as_tensor(ab, dtype=torch.float64, device=y.device)[:, None]
        x = y[:, :dim].to(dtype).view(-1, *shape[1:])
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            x_hat = den.xstart(x, view.sigma_to_t(sigma, quantize), ab, rows=rows)
            trace = 0.0
            for j, v in enumerate(probes[:, rows]):
                (vjp,) = torch.autograd.grad((x_hat * v).sum(), x, retain_graph=j < len(probes) - 1)
                trace = trace + (vjp * v).flatten(1).sum(1).double()
        trace = trace / len(probes)
        dx = abt * y[:, :dim] - abt.sqrt() * x_hat.detach().double().flatten(1)
        ddelta = abt[:, 0] * dim - abt[:, 0].sqrt() * trace
        return torch.cat([dx, ddelta[:, None]], dim=1)

    ab0 = 1.0 / (1.0 + view.sigma_min**2)
    start = torch.cat([math.sqrt(ab0) * x0.double().flatten(1), torch.zeros(shape[0], 1, dtype=torch.float64,
                                                                           device=x0.device)], dim=1)
    solver = Dopri5(rhs, start, math.log(view.sigma_min), rtol, atol)
    y = solver.integrate(math.log(view.sigma_max))
    z, delta = y[:, :dim], y[:, dim]
    prior = -0.5 * (z**2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
    log_p = prior + delta + 0.5 * dim * math.log(ab0)
    return {"log_p": log_p, "prior_log_p": prior, "delta": delta, "z": z.view(shape),
            "nfe": solver.nfe.double()}


def bits_per_dim(log_p: torch.Tensor, dim: int) -> torch.Tensor:
    """−log p/(D ln 2) + 7: nats per image of [−1, 1] data to bits/dim of 8-bit data."""
    return -log_p / (dim * math.log(2.0)) + OFFSET_BITS


def evaluate_ode_bpd(model, diffusion, images: torch.Tensor, *, batch_size: int = 64, seed: int = 0,
                     probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                     dequantization: str = "uniform", labels: torch.Tensor | None = None, device=None,
                     chunk_dir=None, meta: dict | None = None, progress: bool = False) -> dict:
    """ODE bits/dim of every image in ``images`` ((N, C, H, W) in [−1, 1]); mean, ± (standard error over
    images) and the per-image values. Finished batches are saved in ``chunk_dir`` and skipped on rerun."""
    from ddpm.evaluate.likelihood import _check_meta, _save_chunk

    if probe not in PROBES:
        raise UserError(f"unknown Hutchinson probe {probe!r}; choose one of {', '.join(PROBES)}")
    if dequantization not in DEQUANTIZE:
        raise UserError(f"unknown dequantization {dequantization!r}; choose one of {', '.join(DEQUANTIZE)}")
    n = images.shape[0]
    if n == 0:
        raise UserError("no images to evaluate")
    device = device or next(model.parameters()).device
    cdir = Path(chunk_dir) if chunk_dir is not None else None
    settings = {"method": "ode", "num_images": n, "batch_size": batch_size, "seed": seed, "probes": probes,
                "probe": probe, "rtol": rtol, "atol": atol, "dequantize": dequantization}
    if cdir is not None:
        _check_meta(cdir, {**(meta or {}), **settings})
    model.eval()
    chunks = range(math.ceil(n / batch_size))
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="ode bpd", unit="batch")
    bpd, nfe = [], []
    dim = int(np.prod(images.shape[1:]))
    for c in chunks:
        path = cdir / f"ode_{c:05d}.npz" if cdir is not None else None
        if path is not None and path.is_file():
            with np.load(path) as f:
                bpd.append(f["bpd"]), nfe.append(f["nfe"])
            continue
        idx = range(c * batch_size, min(n, (c + 1) * batch_size))
        gens = [_generator(seed, i) for i in idx]
        x0 = images[idx.start:idx.stop].to(device)
        if dequantization == "uniform":
            x0 = dequantize(x0, gens).to(device)
        draw = (lambda g, s: torch.randint(0, 2, s, generator=g, dtype=torch.float64) * 2 - 1) if probe == "rademacher" \
            else (lambda g, s: torch.randn(s, generator=g, dtype=torch.float64))
        v = torch.stack([draw(g, (probes, *images.shape[1:])) for g in gens], dim=1)
        kwargs = {"y": labels[idx.start:idx.stop].to(device)} if labels is not None else None
        with torch.no_grad():
            out = ode_log_likelihood(model, diffusion, x0.to(images.dtype), probes=v, rtol=rtol, atol=atol,
                                     model_kwargs=kwargs)
        res = {"bpd": bits_per_dim(out["log_p"], dim).cpu().numpy(), "nfe": out["nfe"].cpu().numpy(),
               "index": np.arange(idx.start, idx.stop)}
        if path is not None:
            _save_chunk(path, res)
        bpd.append(res["bpd"]), nfe.append(res["nfe"])
    per_image = np.concatenate(bpd)
    stderr = float(per_image.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"bpd": float(per_image.mean()), "bpd_stderr": stderr, "num_images": n,
            "nfe_per_image": float(np.concatenate(nfe).mean()), "per_image": per_image, **settings}


__all__ = ["ode_log_likelihood", "evaluate_ode_bpd", "bits_per_dim", "dequantize", "PROBES", "DEQUANTIZE"]
