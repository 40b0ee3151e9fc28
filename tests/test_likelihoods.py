"""Gaussian KL, the tanh CDF and the discretized decoder (Ho et al. 2020, Eq. 5 and 13)."""

import math

import pytest
import torch

from ddpm.likelihoods import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    to_bits_per_dim,
)

LEVELS = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)  # the 256 pixel values in [-1, 1]


def test_normal_kl_closed_form_and_identities():
    # KL(N(1, 1) || N(0, 4)) = 0.5 (log 4 - 1 + 1/4 + 1/4)
    kl = normal_kl(torch.tensor(1.0, dtype=torch.float64), 0.0, 0.0, math.log(4.0))
    assert kl.item() == pytest.approx(0.5 * (math.log(4.0) - 0.5), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    l1, l2 = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    assert torch.all(normal_kl(m1, l1, m2, l2) >= 0)
    assert normal_kl(m1, l1, m1, l1).abs().max().item() < 1e-6  # zero up to float32 rounding


def test_normal_kl_broadcasts_scalars_and_needs_a_tensor():
    m = torch.zeros(2, 3)
    assert normal_kl(m, 0.0, 0.0, 0.0).shape == (2, 3)
    with pytest.raises(TypeError):
        normal_kl(0.0, 0.0, 0.0, 0.0)


def test_approx_cdf_is_a_close_symmetric_cdf():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    phi = approx_standard_normal_cdf(x)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert approx_standard_normal_cdf(torch.tensor(0.0)).item() == 0.5
    torch.testing.assert_close(phi + approx_standard_normal_cdf(-x), torch.ones_like(x))
    assert torch.all(torch.diff(phi) >= 0)
    err = (phi - exact).abs().max().item()
    assert 1e-5 < err < 3e-4  # an approximation, not erf — and a good one


@pytest.mark.parametrize("mean,log_scale", [(0.0, math.log(0.1)), (0.3, math.log(7.3846e-3)), (-0.98, -2.0),
                                           (0.999, math.log(0.02)), (0.5, 1.0)])
def test_decoder_integrates_to_one_over_the_256_levels(mean, log_scale):
    lp = discretized_gaussian_log_likelihood(
        LEVELS, means=torch.full_like(LEVELS, mean), log_scales=torch.full_like(LEVELS, log_scale)
    )
    assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_decoder_bins_and_open_edges_by_hand():
    mu, sigma = 0.1, 0.05
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    lp = discretized_gaussian_log_likelihood(
        x, means=torch.full_like(x, mu), log_scales=torch.full_like(x, math.log(sigma))
    )

    def cdf(v):
        return approx_standard_normal_cdf(torch.tensor(v, dtype=torch.float64)).item()

    d = 1 / 255
    assert lp[0].item() == pytest.approx(math.log(max(cdf((-1 + d - mu) / sigma), 1e-12)))  # floored: far tail
    assert lp[0].item() == pytest.approx(math.log(1e-12))
    assert lp[1].item() == pytest.approx(math.log(cdf((0 + d - mu) / sigma) - cdf((0 - d - mu) / sigma)), rel=1e-12)
    assert lp[2].item() == pytest.approx(math.log(max(1 - cdf((1 - d - mu) / sigma), 1e-12)))
    # the top bin is open: with the mean at 1 it holds half the mass plus half a bin
    top = discretized_gaussian_log_likelihood(torch.ones(1), means=torch.ones(1), log_scales=torch.full((1,), -3.0))
    assert torch.exp(top).item() == pytest.approx(1 - cdf(-d / math.exp(-3.0)), rel=1e-6)


def test_decoder_broadcasts_a_per_example_scale():
    x = LEVELS[torch.randint(0, 256, (2, 3, 4, 4))].float()
    lp = discretized_gaussian_log_likelihood(x, means=torch.zeros_like(x), log_scales=torch.full((2, 1, 1, 1), -1.0))
    assert lp.shape == x.shape and torch.all(lp <= 0)


def test_bits_per_dim_is_mean_over_dims_divided_by_ln2():
    nats = torch.stack([torch.full((3, 2, 2), math.log(2.0)), torch.zeros(3, 2, 2)])
    nats[1, 0, 0, 0] = 12 * math.log(2.0)
    torch.testing.assert_close(to_bits_per_dim(nats), torch.tensor([1.0, 1.0]))
    assert mean_flat(torch.arange(6.0).reshape(2, 3)).tolist() == [1.0, 4.0]
