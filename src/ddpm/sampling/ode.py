"""The probability-flow ODE (Song et al. 2021, "Score-based generative modeling through stochastic
differential equations", Eq. 13 and §4.3): an adaptive Dormand–Prince solver, or fixed-step Euler.

The ODE's flow is the same in every coordinate system; the solvers use two of :mod:`.continuous`:

- ``method=dopri5`` (default): the VP sample x integrated in u = log σ, where the right-hand side is
  dx/du = ᾱ(u)·x − √ᾱ(u)·x̂0(x, σ), ᾱ = 1/(1+e^{2u}) (the VP form of dx̃/dσ = ε̂ with x = √ᾱ x̃). Smooth
  in u, unit scale in x, so one rtol/atol fits all σ. From σ_max (code step T−1, x = x_T) down to
  σ_min (code step 0), then x̂0 there (score SDE's ``denoise``; Algorithm 2's last step). Only that
  final x̂0 is clipped (``clip_denoised``): a clamp inside would make the right-hand side non-smooth.
  Dormand & Prince's 5(4) pair with scipy's error norm, step-size rule and initial step (scipy's
  ``RK45``, the score-SDE authors' solver) — but written here with a *step size per image*: scipy
  integrates one system with one step size, so a batch solved jointly would let image i's
  trajectory depend on the other images in its batch, breaking the sampler contract. Images still
  share network calls: each stage evaluates all unfinished images in one batch, each at its own σ.
  tests/test_ode.py checks the solver against scipy's ``solve_ivp``. The NFE is not known ahead
  (registry ``nfe`` is None); callbacks carry ``nfe`` (network calls so far) and ``nfe_per_image``.
  ``steps`` only sets how many report points (callbacks) the run makes: the integration between them
  continues with each image's step size, so accuracy is set by ``rtol``/``atol`` alone.
- ``method=euler``: K fixed Euler steps of dx/dt = −½β(t)(x + s(x, t)) in the VP-SDE's time,
  t_k = 1 − k/(K−1) (score SDE's ``linspace(T, eps, N)``; network label t·(T−1)), the last
  evaluation (t = 0) returning x̂0. K network calls.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm.sampling.continuous import VPSDE, Denoiser, SigmaView
from ddpm.sampling.registry import Option, SamplerSpec

# Dormand & Prince (1980) 5(4), as tabulated in scipy.integrate.RK45
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
     (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
     (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0  # scipy's step-size rule
ERROR_EXPONENT = -1.0 / 5.0  # −1/(error estimator order + 1)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=1).sqrt()


class Dopri5:
    """Per-row adaptive Dormand–Prince 5(4) for dy/du = f(u, y), y of shape (B, D) in float64.

    ``f(rows, u, y)`` receives only the unfinished rows (their indices, each row's own u as a float64
    tensor (b,), and y).
    ``nfe[i]`` counts the evaluations of row i. Call :meth:`integrate` for consecutive segments.
    """

    def __init__(self, f, y: torch.Tensor, u0: float, rtol: float, atol: float):
        self.f, self.rtol, self.atol = f, float(rtol), float(atol)
        self.y = y.to(torch.float64).clone()  # updated in place; never the caller's tensor
        self.u = torch.full((y.shape[0],), float(u0), dtype=torch.float64, device=y.device)
        self.nfe = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        self.k1 = self._eval(torch.arange(y.shape[0], device=y.device), self.u, self.y)
        self.h = None  # per-row |step|, chosen on the first segment

    def _eval(self, idx, u, y):
        self.nfe[idx] += 1
        return self.f(idx, u, y).to(torch.float64)

    def _initial_step(self, direction: float, length: float) -> torch.Tensor:
        # scipy.integrate._ivp.common.select_initial_step (Hairer, Nørsett & Wanner, II.4)
        y, f0 = self.y, self.k1
        scale = self.atol + y.abs() * self.rtol
        d0, d1 = _rms(y / scale), _rms(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).clamp(max=length)
        idx = torch.arange(y.shape[0], device=y.device)
        f1 = self._eval(idx, self.u + direction * h0, y + (direction * h0)[:, None] * f0)
        d2 = _rms((f1 - f0) / scale) / h0
        big = torch.maximum(d1, d2)
        h1 = torch.where(big <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / big) ** (1.0 / 5.0))
        return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, length))

    def integrate(self, u1: float) -> torch.Tensor:
        """Advance every row to u = ``u1``; returns y there."""
        length = abs(u1 - float(self.u[0]))
        if length == 0.0:
            return self.y
        direction = math.copysign(1.0, u1 - float(self.u[0]))
        if self.h is None:
            self.h = self._initial_step(direction, length)
        rejected = torch.zeros_like(self.u, dtype=torch.bool)
        tiny = 1e-12 * max(1.0, abs(u1))
        while True:
            left = (u1 - self.u) * direction
            idx = (left > tiny).nonzero().flatten()
            if idx.numel() == 0:
                self.u.fill_(u1)
                return self.y
            u, y, k1 = self.u[idx], self.y[idx], self.k1[idx]
            h = direction * torch.minimum(self.h[idx], left[idx])
            ks = [k1]
            for c, a in zip(C[1:], A[1:]):
                dy = sum(coef * k for coef, k in zip(a, ks))
                ks.append(self._eval(idx, u + c * h, y + h[:, None] * dy))
            y_new = y + h[:, None] * sum(b * k for b, k in zip(B, ks))
            ks.append(self._eval(idx, u + h, y_new))  # FSAL: the next step's k1
            err = h[:, None] * sum(e * k for e, k in zip(E, ks))
            scale = self.atol + torch.maximum(y.abs(), y_new.abs()) * self.rtol
            norm = _rms(err / scale)
            ok = norm < 1.0
            growth = torch.where(norm == 0, torch.full_like(norm, MAX_FACTOR),
                                 (SAFETY * norm.clamp(min=1e-300) ** ERROR_EXPONENT).clamp(MIN_FACTOR, MAX_FACTOR))
            growth = torch.where(ok & rejected[idx], growth.clamp(max=1.0), growth)
            self.h[idx] = h.abs() * growth
            if bool((self.h[idx] < 1e-10 * u.abs().clamp(min=1.0)).any()) or not bool(torch.isfinite(norm).all()):
                raise RuntimeError("the ODE solver's step size underflowed (the solution blows up); "
                                   "loosen rtol/atol or check the model")
            rejected[idx] = ~ok
            acc = idx[ok]
            self.u[acc] = u[ok] + h[ok]
            self.y[acc] = y_new[ok]
            self.k1[acc] = ks[-1][ok]


def _report(callback, i: int, t: int, x, x0, den, nfe_rows) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "pred_xstart": x0, "nfe": den.nfe,
                  "nfe_per_image": None if nfe_rows is None else float(nfe_rows.double().mean())})


def sample_ode(model, diffusion, x, *, noise, steps=None, spacing="logsnr", clip_denoised=True,
               model_kwargs=None, callback=None, progress=False, t_start=None, method="dopri5",
               rtol=1e-5, atol=1e-5, quantize=False):
    """The probability-flow ODE, adaptive (``dopri5``) or fixed-step ``euler``; the registry's contract."""
    view = SigmaView(diffusion)
    den = Denoiser(diffusion, model, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                   quantize=quantize, view=view)
    K = min(steps or (view.num_timesteps if method == "euler" else 1), view.num_timesteps)
    if method == "euler":
        return _euler_vp(den, VPSDE(diffusion), x, K, callback)
    shape, dtype = x.shape, x.dtype
    # x̂0 is never clipped inside the adaptive solve (a clamp makes the right-hand side non-smooth, which
    # defeats the error control and couples images through rounding); the final x̂0 follows clip_denoised
    den.clip_denoised = False

    def rhs(rows: torch.Tensor, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(u).cpu().numpy()
        ab = 1.0 / (1.0 + sigma * sigma)
        x0 = den.xstart(y.to(dtype).view(-1, *shape[1:]), view.sigma_to_t(sigma, quantize), ab, rows=rows)
        x0 = x0.to(torch.float64)
        abt = torch.as_tensor(ab, dtype=torch.float64, device=y.device)[:, None]
        return abt * y - abt.sqrt() * x0.flatten(1)

    sigmas, ts = view.grid(K, spacing)
    ends = [max(float(s), view.sigma_min) for s in sigmas[1:K]] + [view.sigma_min]
    solver = Dopri5(rhs, x.flatten(1), math.log(view.sigma_max), rtol, atol)
    marks = range(K)
    if progress:
        from tqdm.auto import tqdm

        marks = tqdm(marks, desc="ode", leave=False)
    for i in marks:
        y = solver.integrate(math.log(ends[i])).to(dtype).view(shape).clone()
        if i < K - 1:
            _report(callback, i, int(round(float(view.sigma_to_t(ends[i])))), y, None, den, solver.nfe)
    den.clip_denoised = bool(clip_denoised)
    x0 = den(y * math.sqrt(1.0 + view.sigma_min**2), view.sigma_min, 0.0)
    _report(callback, K - 1, 0, x0, x0, den, solver.nfe + 1)
    return x0


def _euler_vp(den: Denoiser, sde: VPSDE, x: torch.Tensor, K: int, callback) -> torch.Tensor:
    times = np.linspace(1.0, 0.0, K) if K > 1 else np.array([1.0])
    for k, t in enumerate(times):
        t = float(t)
        if k == K - 1:  # the last evaluation returns x̂0
            x0 = den.xstart(x, float(sde.label(t)), float(sde.alpha_bar(t)))
            _report(callback, k, int(round(float(sde.label(t)))), x0, x0, den, None)
            return x0
        x = x + (float(times[k + 1]) - t) * sde.probability_flow(den, x, t)
        _report(callback, k, int(round(float(sde.label(t)))), x, None, den, None)
    raise AssertionError("unreachable")


ODE = SamplerSpec(
    name="ode",
    fn=sample_ode,
    summary="probability-flow ODE: adaptive Dormand-Prince 5(4) (rtol/atol), or fixed-step Euler",
    options=(Option("method", "dopri5", "dopri5 (adaptive, per-image steps) or euler (K fixed steps in t)",
                    kind=str, choices=("dopri5", "euler")),
             Option("rtol", 1e-5, "relative tolerance of dopri5 (score SDE: 1e-5)", low=1e-10, high=1.0),
             Option("atol", 1e-5, "absolute tolerance of dopri5 (score SDE: 1e-5)", low=1e-12, high=1.0),
             Option("quantize", False, "call the network at the nearest code timestep", kind=bool)),
    spacings=("logsnr", "karras", "time", "linspace", "trailing"),
    deterministic=lambda o: True,
    noise_draws=lambda T, steps, spacing, o: 0,
    nfe=lambda T, steps, spacing, o: min(steps or T, T) if o["method"] == "euler" else None,
    references="Song et al. 2021 (score SDE), Eq. 13, §4.3 and App. D; Dormand & Prince 1980",
)
