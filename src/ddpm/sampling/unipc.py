"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework for fast sampling of
diffusion models", NeurIPS), data-prediction form, on the σ grid of :mod:`ddpm.sampling.continuous`.

A multistep exponential integrator in λ = −log σ like DPM-Solver++ (``hh = −h``):

- **UniP-p** (predictor, their §3.2): x̃_t = (σ_t/σ_s)x̃_s − (e^{−h} − 1)x̂0_s − B(h)·Σ_k ρ_k D_k,
  with D_k = (x̂0_{s_k} − x̂0_s)/r_k the divided differences over the previous points
  (r_k = (λ_{s_k} − λ_s)/h), and ρ solving R ρ = g(h) with R_{ik} = r_k^{i} and the φ-function
  vector g_i = i!·hφ_{i+1}(hh)/B(h) (their Theorem 3.1); ρ = ½ at order 2.
- **UniC-p** (corrector, their §3.1): once the network has been evaluated at the predicted
  x̃_t (which the next step needs anyway), re-do the step with that x̂0_t as one more point (r = 1):
  the order rises by one at no extra network call. The corrected x̃_t continues the chain; the x̂0_t
  stays the one evaluated at the predicted point (as the reference implementation and diffusers).
- B(h) = e^{hh} − 1 (``bh2``, recommended for few steps and guidance) or hh (``bh1``).

Warm-up and the final steps use lower orders as diffusers' UniPCMultistepScheduler (order ≤ steps
taken + 1, and ≤ steps left); the last step, to σ = 0, returns x̂0 and is not corrected. K network calls.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm.sampling.continuous import Denoiser, SigmaView, Trajectory
from ddpm.sampling.dpm_solver import DEFAULT_STEPS, QUANTIZE, SPACINGS
from ddpm.sampling.registry import Option, SamplerSpec


def _coefficients(h: float, rks: list[float], variant: str) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(e^{hh} − 1, B(h), R, g) for one step; ``rks`` are the r_k of the points used, ending with 1."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    order = len(rks)
    R = np.stack([np.asarray(rks, dtype=np.float64) ** i for i in range(order)])
    g = np.empty(order)
    h_phi_k, factorial = h_phi_1 / hh - 1.0, 1.0
    for i in range(order):
        g[i] = h_phi_k * factorial / b_h
        factorial *= i + 2
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, R, g


def _combine(weights, terms: list[torch.Tensor]):
    out = 0.0
    for w, d in zip(weights, terms):
        out = out + float(w) * d
    return out


def sample_unipc(model, diffusion, x, *, noise, steps=None, spacing="logsnr", clip_denoised=True,
                 model_kwargs=None, callback=None, progress=False, t_start=None, order=2, variant="bh2",
                 corrector=True, lower_order_final=True, quantize=False):
    """UniPC-p (UniP-p predictor + UniC corrector); the registry's contract."""
    view = SigmaView(diffusion)
    sig, ts = view.grid(min(steps or DEFAULT_STEPS, view.num_timesteps), spacing, quantize)
    den = Denoiser(diffusion, model, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                   quantize=quantize, view=view)
    tr = Trajectory(x, sig, ts, callback, noise, progress, "unipc")
    K = len(ts)
    lam = [-math.log(float(s)) if s > 0 else math.inf for s in sig]
    x = tr.start
    history: list[torch.Tensor] = []  # x̂0 at the previous grid points, newest last
    last = None  # (x̃ at the previous point, the order of the step that left it)
    for i in tr.steps:
        x0 = den(x, float(sig[i]), float(ts[i]))
        if corrector and last is not None:  # UniC: correct the point just reached with its own x̂0
            x_prev, p = last
            h = lam[i] - lam[i - 1]
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, p)] + [1.0]
            h_phi_1, b_h, R, g = _coefficients(h, rks, variant)
            rho = np.array([0.5]) if p == 1 else np.linalg.solve(R, g)
            m0 = history[-1]
            ds = [(history[-1 - k] - m0) / rks[k - 1] for k in range(1, p)] + [x0 - m0]
            x = (float(sig[i]) / float(sig[i - 1])) * x_prev - h_phi_1 * m0 - b_h * _combine(rho, ds)
        history = (history + [x0])[-order:]
        p = min(order, K - i) if lower_order_final else order
        p = min(p, len(history))  # warm-up
        s, t = float(sig[i]), float(sig[i + 1])
        if t == 0.0:
            x_next = x0  # first order to σ = 0
        else:
            h = lam[i + 1] - lam[i]
            rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0]
            h_phi_1, b_h, R, g = _coefficients(h, rks, variant)
            x_next = (t / s) * x - h_phi_1 * x0
            if p >= 2:
                rho = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], g[:-1])
                ds = [(history[-1 - k] - x0) / rks[k - 1] for k in range(1, p)]
                x_next = x_next - b_h * _combine(rho, ds)
        last = (x, p)
        x = x_next
        tr.report(i, x, x0)
    return x


UNIPC = SamplerSpec(
    name="unipc",
    fn=sample_unipc,
    summary="UniPC: multistep predictor with a free corrector (bh2 by default), x̂0 form",
    options=(Option("order", 2, "predictor order (the corrector adds one)", kind=int, low=1, high=3),
             Option("variant", "bh2", "B(h): bh2 = e^h − 1 (few steps), bh1 = h", kind=str, choices=("bh1", "bh2")),
             Option("corrector", True, "apply the UniC corrector (false: UniP alone)", kind=bool),
             Option("lower_order_final", True, "lower the order over the last steps", kind=bool),
             QUANTIZE),
    spacings=SPACINGS,
    deterministic=lambda o: True,
    noise_draws=lambda T, steps, spacing, o: 0,
    nfe=lambda T, steps, spacing, o: min(steps or DEFAULT_STEPS, T),
    references="Zhao et al. 2023 (UniPC), §3.1 (UniC), §3.2 (UniP), Theorem 3.1",
)
