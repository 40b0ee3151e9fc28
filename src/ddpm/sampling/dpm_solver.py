"""DPM-Solver (Lu et al. 2022a, NeurIPS) and DPM-Solver++ (Lu et al. 2022b) on the σ grid.

Both are exponential integrators of the probability-flow ODE in λ = −log σ (the half log-SNR; σ of
the σ view in :mod:`ddpm.sampling.continuous`, where α = 1). With h = λ_t − λ_s and x̃ = x_t/√ᾱ_t:

- ``dpm-solver``, ε form, single-step of order k = 1, 2, 3 (2022a, Algorithms 1 (r₁ = ½, "DPM-Solver-2")
  and 2 (r₁ = ⅓, r₂ = ⅔, "DPM-Solver-3")). Order 1: x̃_t = x̃_s − σ_t(eʰ − 1)ε̂_s = x̃_s + (σ_t − σ_s)ε̂_s,
  which is DDIM. A step costs k network calls.
- ``dpmpp-2m``, x̂0 form, multistep second order (2022b, Algorithm 2):
  x̃_t = (σ_t/σ_s)x̃_s − (e^{−h} − 1)D with D = (1 + 1/2r)x̂0_s − (1/2r)x̂0_prev, r = h_prev/h.
- ``dpmpp-2s``, single-step second order with the midpoint r = ½ (2022b, Algorithm 1); with η > 0
  each step is followed by ancestral noise (k-diffusion's ``sample_dpmpp_2s_ancestral``).
- ``dpmpp-3m``, multistep third order (the data-prediction form of 2022a's multistep order 3, App. B;
  diffusers' DPMSolverMultistepScheduler ``solver_order=3``).
- ``sde=true`` (2m, 3m): SDE-DPM-Solver++ (2022b, §5 / App.; diffusers' ``sde-dpmsolver++``):
  x̃_t = (σ_t/σ_s)e^{−h}x̃_s + (1 − e^{−2h})D + σ_t√(1 − e^{−2h}) z.

Every run ends with a first-order step to σ = 0, which is x̂0 at the last grid point (h = ∞ there; DPM-
Solver's own code stops at σ_min instead). ``lower_order_final`` (3m) also lowers the second-to-last step
to second order when K < 15, and every multistep solver warms up with lower orders, as DPM-Solver's and
diffusers' code. Default spacing ``logsnr`` (uniform λ), which the DPM-Solver authors recommend for
low-resolution pixel models; ``time`` is their ``time_uniform`` (diffusers' ``linspace``); ``karras``.
"""

from __future__ import annotations

import math

from ddpm.sampling.continuous import SIGMA_SPACINGS, Denoiser, SigmaView, Trajectory, ancestral_split
from ddpm.sampling.registry import Option, SamplerSpec

DEFAULT_STEPS = 20
# diffusers' and DPM-Solver's code lower the order of the last steps below this many steps
LOWER_ORDER_FINAL_BELOW = 15
SPACINGS = ("logsnr", *(s for s in SIGMA_SPACINGS if s != "logsnr"))
QUANTIZE = Option("quantize", False, "call the network at the nearest code timestep instead of the "
                  "interpolated fractional one", kind=bool)
SDE = Option("sde", False, "the SDE variant (SDE-DPM-Solver++, one noise draw per step)", kind=bool)


def _steps(T, steps) -> int:
    return min(steps or DEFAULT_STEPS, T)


def _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback, noise,
           progress, name):
    view = SigmaView(diffusion)
    sigmas, ts = view.grid(_steps(view.num_timesteps, steps), spacing, quantize)
    den = Denoiser(diffusion, model, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                   quantize=quantize, view=view)
    return den, Trajectory(x, sigmas, ts, callback, noise, progress, name)


def sample_dpm_solver(model, diffusion, x, *, noise, steps=None, spacing="logsnr", clip_denoised=True,
                      model_kwargs=None, callback=None, progress=False, t_start=None, order=3, quantize=False):
    """Single-step DPM-Solver-k in the ε form (Lu et al. 2022a); the registry's contract."""
    den, tr = _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback,
                     noise, progress, "dpm-solver")
    sig = tr.sigmas
    x = tr.start
    for i in tr.steps:
        s, t = float(sig[i]), float(sig[i + 1])
        eps, x0 = den.eps(x, s, float(tr.ts[i]))
        k = order if t > 0 else 1
        if k == 1:
            x = x + (t - s) * eps
        else:
            h = math.log(s / t)
            r1 = 0.5 if k == 2 else 1.0 / 3.0
            s1 = s * math.exp(-r1 * h)
            u1 = x - s1 * math.expm1(r1 * h) * eps
            d1 = den.eps(u1, s1)[0] - eps
            if k == 2:
                x = x - t * math.expm1(h) * eps - t / (2.0 * r1) * math.expm1(h) * d1
            else:
                r2 = 2.0 / 3.0
                s2 = s * math.exp(-r2 * h)
                phi = math.expm1(r2 * h) / (r2 * h) - 1.0
                u2 = x - s2 * math.expm1(r2 * h) * eps - s2 * (r2 / r1) * phi * d1
                d2 = den.eps(u2, s2)[0] - eps
                x = x - t * math.expm1(h) * eps - t / r2 * (math.expm1(h) / h - 1.0) * d2
        tr.report(i, x, x0)
    return x


def _multistep(model, diffusion, x, *, noise, steps, spacing, clip_denoised, model_kwargs, callback, progress,
               max_order, sde, lower_order_final, quantize, name):
    den, tr = _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback,
                     noise, progress, name)
    sig = tr.sigmas
    K = len(tr.ts)
    lam = [-math.log(float(s)) if s > 0 else math.inf for s in sig]
    x = tr.start
    history: list = []  # x̂0 of the previous steps, newest last
    for i in tr.steps:
        s, t = float(sig[i]), float(sig[i + 1])
        x0 = den(x, s, float(tr.ts[i]))
        history = (history + [x0])[-max_order:]
        if t == 0.0:
            x = x0  # the first-order step to σ = 0
            tr.report(i, x, x0)
            break
        order = min(max_order, len(history))
        if lower_order_final and K < LOWER_ORDER_FINAL_BELOW and i == K - 2:
            order = min(order, 2)
        h = lam[i + 1] - lam[i]
        if sde:  # SDE-DPM-Solver++ (2022b, App.): decay e^{−h}σ_t/σ_s, gain 1 − e^{−2h}
            decay, gain = (t / s) * math.exp(-h), -math.expm1(-2.0 * h)
            c1, c2 = gain / (-2.0 * h) + 1.0, (gain - 2.0 * h) / (2.0 * h) ** 2 - 0.5
        else:
            decay, gain = t / s, -math.expm1(-h)
            c1, c2 = math.expm1(-h) / h + 1.0, -((math.expm1(-h) + h) / h**2 - 0.5)
        x_next = decay * x + gain * x0
        if order >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (history[-1] - history[-2]) / r0
            if order == 2:  # the "midpoint" D0 + ½D1 of Algorithm 2
                x_next = x_next + 0.5 * gain * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (history[-2] - history[-3]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = x_next + c1 * d1 + c2 * d2
        if sde:
            x_next = x_next + t * math.sqrt(-math.expm1(-2.0 * h)) * tr.draw(i)
        x = x_next
        tr.report(i, x, x0)
    return x


def sample_dpmpp_2m(model, diffusion, x, *, noise, steps=None, spacing="logsnr", clip_denoised=True,
                    model_kwargs=None, callback=None, progress=False, t_start=None, sde=False, quantize=False):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), or its SDE variant; the registry's contract."""
    return _multistep(model, diffusion, x, noise=noise, steps=steps, spacing=spacing, clip_denoised=clip_denoised,
                      model_kwargs=model_kwargs, callback=callback, progress=progress, max_order=2, sde=sde,
                      lower_order_final=True, quantize=quantize, name="dpmpp-2m")


def sample_dpmpp_3m(model, diffusion, x, *, noise, steps=None, spacing="logsnr", clip_denoised=True,
                    model_kwargs=None, callback=None, progress=False, t_start=None, sde=False,
                    lower_order_final=True, quantize=False):
    """DPM-Solver++(3M), or its SDE variant; the registry's contract."""
    return _multistep(model, diffusion, x, noise=noise, steps=steps, spacing=spacing, clip_denoised=clip_denoised,
                      model_kwargs=model_kwargs, callback=callback, progress=progress, max_order=3, sde=sde,
                      lower_order_final=lower_order_final, quantize=quantize, name="dpmpp-3m")


def sample_dpmpp_2s(model, diffusion, x, *, noise, steps=None, spacing="logsnr", clip_denoised=True,
                    model_kwargs=None, callback=None, progress=False, t_start=None, eta=0.0, s_noise=1.0,
                    quantize=False):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = ½), ancestral with η > 0; the contract."""
    den, tr = _setup(model, diffusion, x, steps, spacing, clip_denoised, model_kwargs, quantize, callback,
                     noise, progress, "dpmpp-2s")
    sig = tr.sigmas
    x = tr.start
    for i in tr.steps:
        s, t = float(sig[i]), float(sig[i + 1])
        x0 = den(x, s, float(tr.ts[i]))
        down, up = ancestral_split(s, t, eta)
        if down == 0.0:
            x = x0
        else:
            h = math.log(s / down)
            mid = s * math.exp(-0.5 * h)
            u = (mid / s) * x - math.expm1(-0.5 * h) * x0
            x = (down / s) * x - math.expm1(-h) * den(u, mid)
        if up > 0:
            x = x + up * s_noise * tr.draw(i)
        tr.report(i, x, x0)
    return x


DPM_SOLVER = SamplerSpec(
    name="dpm-solver",
    fn=sample_dpm_solver,
    summary="DPM-Solver (ε form), single-step order 1-3; order 1 is DDIM",
    options=(Option("order", 3, "solver order (1: DDIM, 2: DPM-Solver-2, 3: DPM-Solver-3)", kind=int,
                    low=1, high=3), QUANTIZE),
    spacings=SPACINGS,
    deterministic=lambda o: True,
    noise_draws=lambda T, steps, spacing, o: 0,
    nfe=lambda T, steps, spacing, o: o["order"] * (_steps(T, steps) - 1) + 1,
    references="Lu et al. 2022a (DPM-Solver), Algorithms 1-2 and §3.4",
)

DPMPP_2M = SamplerSpec(
    name="dpmpp-2m",
    fn=sample_dpmpp_2m,
    summary="DPM-Solver++(2M): multistep 2nd order in the x̂0 form (optional SDE variant)",
    options=(SDE, QUANTIZE),
    spacings=SPACINGS,
    deterministic=lambda o: not o["sde"],
    noise_draws=lambda T, steps, spacing, o: _steps(T, steps) - 1,
    nfe=lambda T, steps, spacing, o: _steps(T, steps),
    references="Lu et al. 2022b (DPM-Solver++), Algorithm 2; SDE-DPM-Solver++(2M), §5",
)

DPMPP_2S = SamplerSpec(
    name="dpmpp-2s",
    fn=sample_dpmpp_2s,
    summary="DPM-Solver++(2S): single-step 2nd order (ancestral with eta > 0)",
    options=(Option("eta", 0.0, "ancestral noise fraction (0: the deterministic solver)", low=0.0, high=1.0),
             Option("s_noise", 1.0, "scale of the ancestral noise", low=0.0, high=10.0), QUANTIZE),
    spacings=SPACINGS,
    deterministic=lambda o: o["eta"] == 0.0,
    noise_draws=lambda T, steps, spacing, o: _steps(T, steps) - 1,
    nfe=lambda T, steps, spacing, o: 2 * _steps(T, steps) - 1,
    references="Lu et al. 2022b (DPM-Solver++), Algorithm 1; k-diffusion sample_dpmpp_2s_ancestral",
)

DPMPP_3M = SamplerSpec(
    name="dpmpp-3m",
    fn=sample_dpmpp_3m,
    summary="DPM-Solver++(3M): multistep 3rd order in the x̂0 form (optional SDE variant)",
    options=(SDE, Option("lower_order_final", True, "2nd order for the second-to-last step below 15 steps",
                         kind=bool), QUANTIZE),
    spacings=SPACINGS,
    deterministic=lambda o: not o["sde"],
    noise_draws=lambda T, steps, spacing, o: _steps(T, steps) - 1,
    nfe=lambda T, steps, spacing, o: _steps(T, steps),
    references="Lu et al. 2022b (DPM-Solver++), App. B; Lu et al. 2022a, multistep order 3",
)
