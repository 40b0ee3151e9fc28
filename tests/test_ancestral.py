"""Progressive x̂0, shared-latent branching and latent interpolation (Ho et al. 2020, §4.3–4.4, Fig. 6–9)."""

import pytest
import torch
from torch import nn

import ddpm
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.sampling.ancestral import interpolate, progressive_samples, shared_latent_samples
from ddpm.schedules import get_beta_schedule

T = 20


class TinyNet(nn.Module):
    def __init__(self, T=T):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.Embedding(T, 3)

    def forward(self, x, t, y=None):
        return self.conv(x) + self.emb(t)[:, :, None, None]


@pytest.fixture
def setup():
    torch.manual_seed(0)
    d = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-3, beta_end=0.2, num_timesteps=T),
                          "eps", "fixedlarge", "mse")
    return d, TinyNet()


def test_lazy_exports():
    assert ddpm.progressive_samples is progressive_samples
    assert ddpm.shared_latent_samples is shared_latent_samples and ddpm.interpolate is interpolate


def test_progressive_slots(setup):
    d, net = setup
    shape = (2, 3, 4, 4)
    out = progressive_samples(d, net, shape, every=6, generator=torch.Generator().manual_seed(0))
    assert out["timesteps"] == [0, 6, 12, 18]
    assert out["pred_xstart"].shape == (2, 4, 3, 4, 4) and out["x_t"].shape == (2, 4, 3, 4, 4)
    assert torch.equal(out["pred_xstart"][:, 0], out["sample"])  # slot 0 is the final sample
    # same randomness as the plain loop, and slot k is x̂0 of code step 6k
    steps = list(d.p_sample_loop_progressive(net, shape, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(steps[-1]["sample"], out["sample"])
    by_t = {s["t"]: s["pred_xstart"] for s in steps}
    for k, i in enumerate(out["timesteps"]):
        assert torch.equal(out["pred_xstart"][:, k], by_t[i])
    assert torch.equal(out["x_t"][:, 3], steps[T - 1 - 19]["sample"])  # the state fed to step 18
    assert torch.equal(out["x_t"][:, 0], steps[T - 2]["sample"])  # the state fed to step 0
    with pytest.raises(ConfigError):
        progressive_samples(d, net, shape, every=0)


@pytest.mark.parametrize("share_until", [T, 12, 1])
def test_shared_latent_branches_exactly_at_share_until(setup, share_until):
    d, net = setup
    out = shared_latent_samples(d, net, (3, 3, 4, 4), share_until, generator=torch.Generator().manual_seed(1),
                                return_trajectory=True)
    traj = out["trajectory"]  # traj[i] is the paper's x_i
    assert traj.shape == (T + 1, 3, 3, 4, 4)
    assert torch.equal(traj[0], out["samples"])
    for i in range(T + 1):
        same = torch.equal(traj[i][0], traj[i][1]) and torch.equal(traj[i][0], traj[i][2])
        # the step to x_0 adds no noise: branching at 1 leaves the chains identical (same as 0)
        assert same == (i >= share_until or share_until == 1), i
    assert torch.equal(out["latent"], traj[share_until])


def test_shared_latent_edge_cases(setup):
    d, net = setup
    all_shared = shared_latent_samples(d, net, (2, 3, 4, 4), 0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(all_shared["samples"][0], all_shared["samples"][1])
    xT = torch.randn(3, 4, 4)
    out = shared_latent_samples(d, net, (2, 3, 4, 4), T, noise=xT, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["latent"][0], xT) and torch.equal(out["latent"][1], xT)
    assert not torch.equal(out["samples"][0], out["samples"][1])
    with pytest.raises(ConfigError, match="share_until"):
        shared_latent_samples(d, net, (2, 3, 4, 4), T + 1)


def test_interpolation_latents_and_shared_noise(setup):
    d, net = setup
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    eps_a, eps_b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    lams = [0.0, 0.25, 0.5, 1.0]
    t = 10
    out = interpolate(d, net, a, b, t, lams, noise=(eps_a, eps_b), generator=torch.Generator().manual_seed(3))
    assert out["samples"].shape == (4, 2, 3, 4, 4) and out["latents"].shape == (4, 2, 3, 4, 4)
    code_t = torch.full((2,), t - 1)
    xa, xb = d.q_sample(a, code_t, noise=eps_a), d.q_sample(b, code_t, noise=eps_b)
    assert torch.equal(out["latents"][0], xa) and torch.equal(out["latents"][3], xb)
    torch.testing.assert_close(out["latents"][2], (xa + xb) / 2)
    # λ only changes the latent: the λ = 0 / 1 chains are the reconstructions (same decoding noise)
    assert torch.equal(out["samples"][0], out["reconstructions"][0])
    assert torch.equal(out["samples"][3], out["reconstructions"][1])
    # the same image on both sides: every λ gives the same latent and hence the same decoded image
    same = interpolate(d, net, a, a, t, lams, noise=(eps_a, eps_a), generator=torch.Generator().manual_seed(3))
    for k in range(1, 4):
        torch.testing.assert_close(same["samples"][k], same["samples"][0], rtol=0, atol=1e-6)
    # chunking replays the step noise: identical result
    chunked = interpolate(d, net, a, b, t, lams, noise=(eps_a, eps_b), generator=torch.Generator().manual_seed(3),
                          chunk=2)
    assert torch.equal(chunked["samples"], out["samples"])
    # decoding is the reverse chain from code step t-1
    z = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(t - 1):
        z.append(torch.randn(2, 3, 4, 4, generator=gen))
    step = {i: z[t - 1 - i] for i in range(t - 1, 0, -1)}
    manual = d.p_sample_loop(net, None, noise=xa, step_noise=lambda i: step[i], t_start=t - 1)
    assert torch.equal(manual, out["reconstructions"][0])


def test_interpolation_at_zero_steps_is_pixel_mixing_and_noise_is_drawn_once(setup):
    d, net = setup
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    out = interpolate(d, net, a, b, 0, torch.tensor([0.0, 0.3, 1.0]))
    torch.testing.assert_close(out["samples"][:, 0, 0, 0, 0], torch.tensor([0.0, 0.3, 1.0]))
    assert torch.equal(out["reconstructions"][0], a)
    # without explicit noise the encoder draw is made once and reused across λ: the latents lie on a line
    out = interpolate(d, net, a, b, 15, [0.0, 0.5, 1.0], generator=torch.Generator().manual_seed(0))
    lat = out["latents"]
    torch.testing.assert_close(lat[1], (lat[0] + lat[2]) / 2)
    with pytest.raises(ConfigError, match="depth"):
        interpolate(d, net, a, b, T + 1, [0.5])
