"""Timestep respacing (Nichol & Dhariwal 2021, §4 and their respace.py) and the K-of-T step choices."""

import numpy as np
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.sampling.respace import SpacedDiffusion, respace, space_timesteps, timestep_subsequence
from ddpm.schedules import get_beta_schedule



def linear(T=1000):
    return get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=T)


def test_space_timesteps_golden_values():
    s = space_timesteps(1000, "250")
    assert len(s) == 250
    assert s[:5] == [0, 4, 8, 12, 16] and s[-3:] == [991, 995, 999]
    assert s == sorted({round(k * 999 / 249) for k in range(250)})  # ≈ round(k·999/249), as improved DDPM's space_timesteps
    s = space_timesteps(4000, "100")
    assert len(s) == 100 and s[:4] == [0, 40, 81, 121] and s[-1] == 3999
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "1000") == list(range(1000))


def test_space_timesteps_sections():
    # 10 steps split 4/3/3; counts 2,3,1: section starts 0, 4, 7
    assert space_timesteps(10, "2,3,1") == [0, 3, 4, 5, 6, 7]
    assert space_timesteps(10, [2, 3, 1]) == [0, 3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match="cannot keep 5"):
        space_timesteps(10, "5,5,5")
    with pytest.raises(ConfigError, match="ddim"):
        space_timesteps(10, "ddim7")  # strides give 10, 5, 4, 3, 2 steps
    with pytest.raises(ConfigError):
        space_timesteps(1000, "fast")


def test_subsequence_spacings():
    assert timestep_subsequence(1000, 50, "uniform") == list(range(0, 1000, 20))  # the DDIM repo's
    assert timestep_subsequence(1000, 300, "uniform") == [3 * k for k in range(300)]  # exactly K steps
    # the DDIM repo's quadratic skip: int((linspace(0, sqrt(800), 10))²)
    assert timestep_subsequence(1000, 10, "quadratic") == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    q = timestep_subsequence(1000, 200, "quadratic")  # many early duplicates collapse
    assert len(q) < 200 and q == sorted(set(q)) and q[-1] == 800
    assert timestep_subsequence(1000, 250, "even") == space_timesteps(1000, "250")
    # diffusers' trailing: round(arange(T, 0, -T/K)) - 1, always ending at T - 1
    assert timestep_subsequence(1000, 10, "trailing") == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    assert timestep_subsequence(1000, 7, "trailing") == [142, 285, 428, 570, 713, 856, 999]
    assert timestep_subsequence(1000, 3, "trailing") == [332, 666, 999]
    assert timestep_subsequence(10, 10, "trailing") == list(range(10))
    with pytest.raises(ConfigError, match="between 1 and"):
        timestep_subsequence(1000, 0)
    with pytest.raises(ConfigError, match="spacing"):
        timestep_subsequence(1000, 10, "log")


def test_trailing_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing")
    for k in (3, 7, 10, 25, 50, 333):
        sched.set_timesteps(k)
        assert sorted(sched.timesteps.tolist()) == timestep_subsequence(1000, k, "trailing")


def test_kept_alphas_cumprod_are_preserved():
    base = GaussianDiffusion(linear())
    kept = space_timesteps(1000, "250")
    spaced = SpacedDiffusion(kept, base.betas)
    assert spaced.num_timesteps == 250
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    # β̃ follows the new β: β̃'_k = β'_k (1 − ᾱ'_{k−1}) / (1 − ᾱ'_k)
    b = spaced.betas
    ac = spaced.alphas_cumprod
    np.testing.assert_allclose(spaced.posterior_variance[1:], b[1:] * (1 - ac[:-1]) / (1 - ac[1:]), rtol=1e-12)
    assert spaced.betas[1] > 3 * base.betas[4]  # coarser steps are bigger steps


def test_all_steps_equals_base_diffusion():
    base = GaussianDiffusion(linear(50), "eps", "fixedlarge")
    spaced = SpacedDiffusion(range(50), base.betas, "eps", "fixedlarge")
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_allclose(getattr(spaced, name), getattr(base, name), rtol=1e-10, atol=1e-15)

    def model(x, t):
        return torch.tanh(x) * (1 + t.float()[:, None, None, None] / 50)

    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(3, 2, 4, 4, generator=g)
    steps = torch.randn(50, 3, 2, 4, 4, generator=g)
    a = base.p_sample_loop(model, x_T.shape, noise=x_T, step_noise=steps)
    b = spaced.p_sample_loop(model, x_T.shape, noise=x_T, step_noise=steps)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert respace(base, 50, "uniform") is base and respace(base, None) is base


def test_model_receives_original_indices_everywhere():
    base = GaussianDiffusion(linear(), "eps", "fixedsmall", "mse")
    spaced = respace(base, 50, "uniform")
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    spaced.p_sample_loop(model, (2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert [s[0] for s in seen] == list(range(980, -1, -20))
    seen.clear()
    spaced.training_losses(model, torch.zeros(2, 1, 2, 2), torch.tensor([0, 49]))
    assert seen == [[0, 980]]
    seen.clear()
    spaced.calc_bpd_loop(model, torch.zeros(1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert sorted(s[0] for s in seen) == list(range(0, 1000, 20))


def test_respacing_a_respaced_chain_composes_the_maps():
    base = GaussianDiffusion(linear())
    once = respace(base, 100, "uniform")  # 0, 10, ..., 990
    twice = respace(once, 10, "uniform")  # positions 0, 10, ..., 90 of `once`
    np.testing.assert_array_equal(twice.timestep_map, np.arange(0, 1000, 100))
    np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[::100], rtol=1e-12)
    assert twice.original_num_steps == 1000


def test_learned_range_bounds_follow_the_new_betas():
    base = GaussianDiffusion(get_beta_schedule("cosine", beta_start=0, beta_end=0, num_timesteps=4000),
                             "eps", "learned_range", "hybrid")
    spaced = respace(base, 100, "even")
    x = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([5, 99])

    def model_v(v):
        return lambda x, t: torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)

    upper = spaced.p_mean_variance(model_v(1.0), x, t)["log_variance"][:, 0, 0, 0]
    lower = spaced.p_mean_variance(model_v(-1.0), x, t)["log_variance"][:, 0, 0, 0]
    torch.testing.assert_close(upper.double(), torch.from_numpy(np.log(spaced.betas[[5, 99]])), rtol=1e-5, atol=0)
    torch.testing.assert_close(lower.double(), torch.from_numpy(spaced.posterior_log_variance_clipped[[5, 99]]),
                               rtol=1e-5, atol=0)
    # and they differ from the base chain's bounds at the same original step
    orig = spaced.timestep_map[5]
    assert abs(np.log(spaced.betas[5]) - np.log(base.betas[orig])) > 1.0


def test_bad_subsets_are_rejected():
    with pytest.raises(ConfigError, match="subset"):
        SpacedDiffusion([], linear(10))
    with pytest.raises(ConfigError, match="subset"):
        SpacedDiffusion([0, 10], linear(10))
