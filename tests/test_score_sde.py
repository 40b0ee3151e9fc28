"""Predictor–corrector and annealed Langevin sampling land on the data distribution (Gaussian data,
exact score): N(μ, s²) with μ = 0.3, s² = 0.25, 32 images of 16×16 = 8192 draws (standard error of
the mean ≈ 0.006, of the variance ≈ 1.6 %)."""

import numpy as np
import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.sampling.api import sample
from ddpm.sampling.continuous import SigmaView
from gaussian_data import GaussianEps

MU, S2 = 0.3, 0.25


def _x_T():
    return torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _noise(like, seed=1):
    g = torch.Generator().manual_seed(seed)
    return lambda t: torch.randn(like.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("options", [{}, {"predictor": "ancestral", "corrector_steps": 2, "snr": 0.1},
                                     {"corrector_steps": 0}])
def test_predictor_corrector_samples_the_data_distribution(options):
    d = DiffusionConfig().build()
    x_T = _x_T()
    out = sample(GaussianEps(d, MU, S2), d, x_T, "pc", steps=200, clip_denoised=False, noise=_noise(x_T),
                 **options)
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.var().item() / S2 - 1) < 0.07  # 200 of the 1000 steps: a few % discretisation bias


def test_annealed_langevin_reaches_its_stationary_distribution():
    """At the last level the chain x̃ ← x̃ + (α/2)s̃ + √α z on N(μ, v), v = s² + σ_L², is stationary at
    variance w = v/(1 − α/4v) (the discretised chain's); the final denoising step μ + (s²/v)(x̃ − μ)
    then has variance (s²/v)²·w. A short schedule keeps σ_L (0.23) where 200 steps mix."""
    d = GaussianDiffusion(np.linspace(0.05, 0.9, 8))
    view = SigmaView(d)
    x_T = _x_T()
    step_lr = 0.05
    out = sample(GaussianEps(d, MU, S2), d, x_T, "langevin", steps=4, n_steps=200, step_lr=step_lr,
                 clip_denoised=False, noise=_noise(x_T))
    v = S2 + view.sigma_min**2
    want = (S2 / v) ** 2 * v / (1 - step_lr / (4 * v))  # α at the last level is step_lr itself
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.var().item() / want - 1) < 0.05


def test_sde_dpm_solver_samples_the_data_distribution():
    d = DiffusionConfig().build()
    x_T = _x_T()
    # the multistep SDE solvers' variance bias shrinks with the step (3M SDE more slowly: its noise
    # term is only first order)
    for name, steps, tol in (("dpmpp-2m", 50, 0.05), ("dpmpp-3m", 100, 0.08)):
        out = sample(GaussianEps(d, MU, S2), d, x_T, name, steps=steps, sde=True, clip_denoised=False,
                     noise=_noise(x_T))
        assert abs(out.mean().item() - MU) < 0.02 and abs(out.var().item() / S2 - 1) < tol
