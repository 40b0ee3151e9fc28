"""The σ and VP-SDE views of a discrete model, and identities between the new samplers and the
paper's: x̂0 equal to p_mean_variance's on the grid, Euler = DPM-Solver-1 = DDIM, the ancestral
predictor = Algorithm 2, and closed forms on Gaussian data."""

import math

import numpy as np
import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.sampling.api import sample
from ddpm.sampling.continuous import VPSDE, Denoiser, SigmaView
from ddpm.schedules import get_beta_schedule
from gaussian_data import GaussianEps


class Net(torch.nn.Module):
    """A smooth, t-dependent stand-in for a network with ``channels`` outputs (float64)."""

    def __init__(self, channels=1, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(channels, 1, 3, 3, generator=g, dtype=torch.float64) * 0.3

    def forward(self, x, t, y=None):
        scale = (1 + 0.1 * torch.cos(t.double() / 50)).view(-1, 1, 1, 1)
        return torch.nn.functional.conv2d(torch.tanh(x), self.w, padding=1) * scale + 0.5 * x


def _diffusion(mean_type="eps", var_type="fixedlarge", T=50):
    loss = "hybrid" if var_type in ("learned", "learned_range") else "mse"
    return GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-3, beta_end=0.2, num_timesteps=T),
                             mean_type, var_type, loss)


@pytest.mark.parametrize("mean_type, var_type", [("eps", "fixedlarge"), ("xstart", "fixedsmall"),
                                                 ("v", "fixedlarge"), ("xprev", "fixedlarge"),
                                                 ("eps", "learned_range")])
@pytest.mark.parametrize("clip", [False, True])
def test_denoiser_is_p_mean_variance_on_the_grid(mean_type, var_type, clip):
    d = _diffusion(mean_type, var_type)
    net = Net(channels=2 if d.learns_variance else 1)
    view = SigmaView(d)
    den = Denoiser(d, net, clip_denoised=clip)
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i in (0, 17, 49):
        t = torch.full((3,), i)
        want = d.p_mean_variance(net, x, t, clip_denoised=clip)["pred_xstart"]
        sigma = float(view.sigmas[i])
        got = den(x * math.sqrt(1 + sigma**2), sigma)  # σ-view input x̃ = x_t/√ᾱ
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_sigma_view_maps_and_grids_golden():
    d = DiffusionConfig().build()  # the paper's linear schedule, T = 1000
    view = SigmaView(d)
    assert view.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-12)
    assert view.sigma_max == pytest.approx(157.4073, abs=1e-4)
    t = np.array([0.0, 3.25, 499.5, 998.9])
    np.testing.assert_allclose(view.sigma_to_t(view.t_to_sigma(t)), t, atol=1e-9)
    assert view.sigma_to_t(view.t_to_sigma(3.4), quantize=True) == 3.0
    sig, ts = view.grid(4, "time")
    assert ts.tolist() == [999.0, 749.0, 500.0, 250.0] and sig[-1] == 0.0  # diffusers' linspace (round)
    sig, ts = view.grid(4, "trailing")
    assert ts.tolist() == [999.0, 749.0, 499.0, 249.0]
    sig, ts = view.grid(3, "linspace")
    assert ts.tolist() == [999.0, 499.5, 0.0]
    assert sig[1] == pytest.approx(0.5 * (view.sigmas[499] + view.sigmas[500]))  # linear in σ
    sig, ts = view.grid(3, "karras")
    rho = 7.0
    mid = (0.5 * (view.sigma_max ** (1 / rho) + view.sigma_min ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig, [view.sigma_max, mid, view.sigma_min, 0.0], rtol=1e-12)
    sig, _ = view.grid(3, "logsnr")
    np.testing.assert_allclose(np.diff(np.log(sig[:3])), -np.log(view.sigma_max / view.sigma_min) / 3)


def test_vp_sde_view_follows_score_sde():
    d = DiffusionConfig().build()
    sde = VPSDE(d)
    assert float(sde.label(1.0)) == 999.0 and float(sde.label(0.5)) == 499.5
    np.testing.assert_allclose(sde.alpha_bar(np.arange(1000) / 999), d.alphas_cumprod, rtol=1e-12)
    # β(t) is −d log ᾱ/dt, and ≈ score SDE's linear β_min + t(β_max − β_min) for this schedule
    t = np.array([0.1, 0.37, 0.8])
    h = 1e-7
    numeric = -(np.log(sde.alpha_bar(t)) - np.log(sde.alpha_bar(t - h))) / h
    np.testing.assert_allclose(sde.beta(t), numeric, rtol=1e-4)
    np.testing.assert_allclose(sde.beta(t), 0.1 + 19.9 * t, rtol=0.01)
    x = torch.ones(1, 1, 2, 2)
    assert torch.allclose(sde.drift(x, 0.37), -0.5 * float(sde.beta(0.37)) * x)
    assert sde.diffusion(0.37) == pytest.approx(math.sqrt(float(sde.beta(0.37))))


def test_vp_sde_score_and_probability_flow_are_exact_on_gaussian_data():
    d = DiffusionConfig().build()
    sde, gauss = VPSDE(d), GaussianEps(d, mu=0.3, s2=0.25)
    den = Denoiser(d, gauss, clip_denoised=False)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = 0.42
    ab = float(sde.alpha_bar(t))
    var = ab * 0.25 + 1 - ab
    torch.testing.assert_close(sde.score(den, x, t), -(x - math.sqrt(ab) * 0.3) / var, atol=1e-8, rtol=0)


@pytest.mark.parametrize("mean_type, steps", [("eps", 7), ("xstart", 7), ("v", 7), ("xprev", None)])
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "even"])
def test_euler_and_dpm_solver_1_are_ddim(mean_type, steps, spacing):
    """DDIM is Euler's method on dx̃/dσ = ε̂ (Song et al. 2021, §4.3), and DPM-Solver-1 (Lu et al. 2022a).
    (xprev on the full chain only: on a respaced chain ddim reads the one-step posterior mean the network
    predicts with the respaced chain's coefficients, the σ view with the coefficients it was trained on.)"""
    d = _diffusion(mean_type)
    net = Net()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ddim = sample(net, d, x, "ddim", steps=steps, spacing=spacing, eta=0.0)
    euler = sample(net, d, x, "euler", steps=steps or 50, spacing=spacing)
    dpm1 = sample(net, d, x, "dpm-solver", steps=steps or 50, spacing=spacing, order=1)
    torch.testing.assert_close(euler, ddim, atol=1e-10, rtol=0)
    torch.testing.assert_close(dpm1, ddim, atol=1e-10, rtol=0)


def test_pc_ancestral_predictor_without_corrector_is_algorithm_2():
    d = _diffusion("eps", "fixedlarge")
    net = Net()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def source(seed):
        g = torch.Generator().manual_seed(seed)
        return lambda t: torch.randn(x.shape, generator=g, dtype=torch.float64)

    ddpm = sample(net, d, x, "ddpm", noise=source(4))
    pc = sample(net, d, x, "pc", predictor="ancestral", corrector_steps=0, noise=source(4))
    torch.testing.assert_close(pc, ddpm, atol=1e-10, rtol=0)
    rd = sample(net, d, x, "pc", predictor="reverse-diffusion", corrector_steps=0, noise=source(4))
    assert 1e-6 < (rd - ddpm).abs().max() < 0.5  # first-order equivalent (β_t = 0.2 here), not equal


@pytest.mark.parametrize("name, options, ratio, tol", [
    ("euler", {}, 0.6, 0.07), ("heun", {}, 0.3, 5e-3), ("dpmpp-2m", {}, 0.3, 5e-3), ("dpmpp-2s", {}, 0.3, 3e-3),
    ("dpmpp-3m", {}, 0.45, 1e-3), ("unipc", {}, 0.2, 1e-3), ("dpm-solver", {"order": 3}, 0.1, 1e-6),
])
def test_ode_solvers_converge_to_the_exact_flow_on_gaussian_data(name, options, ratio, tol):
    """On N(μ, s²) data the exact answer is D(x̃(σ_{K−1}); σ_{K−1}) with x̃ carried along the exact flow.
    Doubling the Karras steps from 40 to 80 must shrink the error by the solver's order (2^{-p})."""
    d = DiffusionConfig().build()
    gauss = GaussianEps(d, mu=0.3, s2=0.25)
    view = SigmaView(d)
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (40, 80):
        out = sample(gauss, d, x_T, name, steps=steps, spacing="karras", clip_denoised=False, **options)
        sigma_last = float(view.grid(steps, "karras")[0][-2])
        x_last = gauss.flow(x_T * math.sqrt(1 + view.sigma_max**2), view.sigma_max, sigma_last)
        errors.append((out - gauss.posterior_mean(x_last, sigma_last)).abs().max().item())
    assert errors[1] <= ratio * errors[0] and errors[1] <= tol
