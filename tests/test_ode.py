"""The probability-flow ODE sampler: the per-image Dormand–Prince solver against scipy's RK45, and the
exact transport of Gaussian data."""

import math

import numpy as np
import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.sampling.api import sample
from ddpm.sampling.continuous import SigmaView
from ddpm.sampling.ode import Dopri5
from gaussian_data import GaussianEps

scipy_integrate = pytest.importorskip("scipy.integrate")


def _field(u, y):
    """A smooth nonlinear test system dy/du, row-wise."""
    return torch.stack([torch.sin(3 * u)[:, None] * y[:, 1:2] - 0.5 * y[:, 0:1] ** 3,
                        torch.cos(u)[:, None] - y[:, 0:1] * y[:, 1:2]], dim=1).squeeze(-1)


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_dopri5_takes_scipy_rk45s_steps(rtol):
    y0 = torch.tensor([[0.7, -0.3], [1.5, 0.2], [-0.4, 0.9]], dtype=torch.float64)
    solver = Dopri5(lambda rows, u, y: _field(u, y), y0.clone(), 0.0, rtol, rtol)
    y1 = solver.integrate(4.0)
    for i in range(3):
        ref = scipy_integrate.solve_ivp(
            lambda u, y: _field(torch.tensor([u]), torch.as_tensor(y)[None])[0].numpy(), (0.0, 4.0),
            y0[i].numpy(), method="RK45", rtol=rtol, atol=rtol)
        assert int(solver.nfe[i]) == ref.nfev  # the same steps, accepted and rejected
        np.testing.assert_allclose(y1[i].numpy(), ref.y[:, -1], rtol=1e-10, atol=1e-12)


def test_dopri5_integrates_in_segments_and_stops_on_step_underflow():
    y0 = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    whole = Dopri5(lambda rows, u, y: _field(u, y), y0.clone(), 0.0, 1e-8, 1e-8).integrate(4.0)
    parts = Dopri5(lambda rows, u, y: _field(u, y), y0.clone(), 0.0, 1e-8, 1e-8)
    for u in (1.0, 2.5, 4.0):
        out = parts.integrate(u)
    torch.testing.assert_close(out, whole, atol=1e-7, rtol=0)
    # y' = y² from y(0) = 1 blows up at u = 1: a clear error, not an endless loop
    with pytest.raises(RuntimeError, match="step size"):
        Dopri5(lambda rows, u, y: y**2, torch.ones(1, 1, dtype=torch.float64), 0.0, 1e-6, 1e-6).integrate(2.0)


def test_ode_sampler_transports_gaussian_data_exactly():
    """x_T is carried along the exact flow x̃(σ) = μ + (x̃_T − μ)√((s²+σ²)/(s²+σ_max²)) to σ_min, then
    denoised; the NFE is reported through the callback."""
    d = DiffusionConfig().build()
    gauss = GaussianEps(d, mu=0.3, s2=0.25)
    view = SigmaView(d)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    infos = []
    out = sample(gauss, d, x_T, "ode", steps=4, clip_denoised=False, rtol=1e-6, atol=1e-6,
                 callback=infos.append)
    x_min = gauss.flow(x_T * math.sqrt(1 + view.sigma_max**2), view.sigma_max, view.sigma_min)
    torch.testing.assert_close(out, gauss.posterior_mean(x_min, view.sigma_min), atol=2e-5, rtol=0)
    assert [i["i"] for i in infos] == [0, 1, 2, 3]
    assert infos[-1]["nfe"] == gauss.calls and 20 < infos[-1]["nfe_per_image"] < 500
    # the report points lie on the flow too (VP units: x = x̃/√(1+σ²))
    sig = view.grid(4, "logsnr")[0]
    mid = gauss.flow(x_T * math.sqrt(1 + view.sigma_max**2), view.sigma_max, float(sig[1]))
    torch.testing.assert_close(infos[0]["x"], mid / math.sqrt(1 + float(sig[1]) ** 2), atol=1e-4, rtol=0)


def test_ode_tolerance_trades_accuracy_for_calls():
    d = DiffusionConfig().build()
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    view = SigmaView(d)
    results = {}
    for tol in (1e-2, 1e-6):
        gauss = GaussianEps(d, mu=-0.2, s2=0.5)
        out = sample(gauss, d, x_T, "ode", clip_denoised=False, rtol=tol, atol=tol)
        x_min = gauss.flow(x_T * math.sqrt(1 + view.sigma_max**2), view.sigma_max, view.sigma_min)
        results[tol] = ((out - gauss.posterior_mean(x_min, view.sigma_min)).abs().max().item(), gauss.calls)
    assert results[1e-6][0] < results[1e-2][0] and results[1e-6][1] > results[1e-2][1]
    assert results[1e-6][0] < 1e-4


def test_fixed_step_euler_in_vp_time_converges_to_the_flow():
    d = DiffusionConfig().build()
    gauss = GaussianEps(d, mu=0.3, s2=0.25)
    view = SigmaView(d)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = gauss.posterior_mean(gauss.flow(x_T * math.sqrt(1 + view.sigma_max**2), view.sigma_max,
                                           view.sigma_min), view.sigma_min)
    errors = [(sample(gauss, d, x_T, "ode", method="euler", steps=k, clip_denoised=False) - want).abs().max().item()
              for k in (100, 400)]
    assert errors[1] < 0.45 * errors[0] and errors[1] < 0.05  # first order in the step
