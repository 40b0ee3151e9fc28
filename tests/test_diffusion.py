"""GaussianDiffusion: forward process, posterior, parameterisations, losses, bound and Algorithm 2."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpm.config import DiffusionConfig
from ddpm.diffusion import LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.likelihoods import discretized_gaussian_log_likelihood, normal_kl
from ddpm.schedules import get_beta_schedule


def make(T=1000, mean="eps", var="fixedlarge", loss="mse", schedule="linear"):
    return GaussianDiffusion(get_beta_schedule(schedule, beta_start=1e-4, beta_end=0.02, num_timesteps=T),
                             mean, var, loss)


class TinyNet(nn.Module):
    """A conv + per-timestep bias: enough to exercise shapes and gradients."""

    def __init__(self, c=3, out=3, T=1000):
        super().__init__()
        self.conv = nn.Conv2d(c, out, 3, padding=1)
        self.emb = nn.Embedding(T, out)

    def forward(self, x, t, y=None):
        return self.conv(x) + self.emb(t)[:, :, None, None]


def images(b=2, c=3, h=4, w=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (b, c, h, w), generator=g)
    return (levels.to(dtype) / 127.5 - 1.0)


# ---------------------------------------------------------------- options

def test_options_and_forbidden_combinations():
    for mean, var, loss in itertools.product(MEAN_TYPES, VAR_TYPES, LOSS_TYPES):
        learned = var in ("learned", "learned_range")
        if (loss == "mse" and learned) or (loss == "hybrid" and not learned):
            with pytest.raises(ConfigError, match="hybrid" if loss == "mse" else "learned"):
                make(10, mean, var, loss)
        else:
            d = make(10, mean, var, loss)
            assert (d.mean_type, d.var_type, d.loss_type, d.num_timesteps) == (mean, var, loss, 10)
    with pytest.raises(ConfigError, match="eps, xstart, xprev, v"):
        make(10, mean="epsilon")
    with pytest.raises(ConfigError, match="fixedlarge"):
        make(10, var="fixed_large")
    with pytest.raises(ConfigError, match="mse, kl, hybrid"):
        make(10, loss="l2")


def test_config_build_matches_direct_construction():
    d = DiffusionConfig(schedule="cosine", num_timesteps=50, var_type="learned_range", loss_type="hybrid").build()
    assert d.var_type == "learned_range" and d.num_timesteps == 50
    expect = get_beta_schedule("cosine", beta_start=1e-4, beta_end=0.02, num_timesteps=50)
    np.testing.assert_array_equal(d.betas, expect)


def test_tables_are_float64_and_cast_copies_are_cached():
    d = make()
    assert d.alphas_cumprod.dtype == np.float64 and isinstance(d.posterior_variance, np.ndarray)
    a = d.tables("cpu", torch.float32)
    assert a is d.tables("cpu", torch.float32)
    assert a["alphas_cumprod"].dtype == torch.float32
    x = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    g = d.gather("alphas_cumprod", torch.tensor([0, 999]), x)
    assert g.dtype == torch.float64 and g.shape == (2, 1, 1, 1)
    assert g[1].item() == d.alphas_cumprod[999]


def test_float32_tables_are_the_float64_values_rounded_once():
    d = make()
    t = torch.arange(1000)
    x = torch.zeros(1000, 1)
    for name in ("sqrt_alphas_cumprod", "posterior_mean_coef1", "sqrt_recipm1_alphas_cumprod"):
        expect = torch.from_numpy(getattr(d, name).astype(np.float32))
        assert torch.equal(d.gather(name, t, x)[:, 0], expect), name


def test_wrong_model_channel_count_is_a_clear_error():
    d = make(10, var="learned", loss="kl")
    x = images()
    with pytest.raises(ConfigError, match="out_channels to 6"):
        d.p_mean_variance(lambda x, t: x, x, torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- forward process and posterior

def test_prior_kl_reference_values():
    d = make()
    for value, bpd in [(0.0, 5.9e-10), (0.5, 7.3e-6), (1.0, 2.9e-5)]:
        x0 = torch.full((1, 3, 2, 2), value, dtype=torch.float64)
        assert d.prior_bpd(x0).item() == pytest.approx(bpd, rel=2e-2)


def test_q_sample_formula_and_moments():
    d = make()
    x0 = torch.full((20000, 1, 1, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 499)
    xt = d.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    mean, var, logvar = d.q_mean_variance(x0, t)
    ac = d.alphas_cumprod[499]
    assert mean[0].item() == pytest.approx(math.sqrt(ac) * 0.7, rel=1e-12)
    assert var[0].item() == pytest.approx(1 - ac, rel=1e-12) and logvar[0].item() == pytest.approx(math.log(1 - ac))
    assert xt.mean().item() == pytest.approx(math.sqrt(ac) * 0.7, abs=4 * math.sqrt((1 - ac) / 20000))
    assert xt.var().item() == pytest.approx(1 - ac, rel=0.03)
    eps = torch.randn(3, 3, 2, 2)
    x = images(3, 3, 2, 2)
    t = torch.tensor([0, 10, 999])
    expect = (torch.tensor(np.sqrt(d.alphas_cumprod[[0, 10, 999]])).float().view(3, 1, 1, 1) * x
              + torch.tensor(np.sqrt(1 - d.alphas_cumprod[[0, 10, 999]])).float().view(3, 1, 1, 1) * eps)
    torch.testing.assert_close(d.q_sample(x, t, noise=eps), expect)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(d.q_sample(x, t, generator=g1), d.q_sample(x, t, generator=g2))


def test_posterior_is_bayes_rule():
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): check mean and variance in closed form."""
    d = make()
    x0, xt = images(3, dtype=torch.float64), images(3, seed=1, dtype=torch.float64)
    idx = [1, 300, 999]
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, torch.tensor(idx))
    for k, i in enumerate(idx):
        a_prev, a, beta = d.alphas_cumprod[i - 1], 1 - d.betas[i], d.betas[i]
        precision = 1 / (1 - a_prev) + a / beta
        m = (math.sqrt(a_prev) * x0[k] / (1 - a_prev) + math.sqrt(a) * xt[k] / beta) / precision
        torch.testing.assert_close(mean[k], m, rtol=1e-10, atol=1e-12)
        assert var[k, 0, 0, 0].item() == pytest.approx(1 / precision, rel=1e-10)
        assert logvar[k, 0, 0, 0].item() == pytest.approx(math.log(1 / precision), rel=1e-10)


# ---------------------------------------------------------------- parameterisations

def test_eps_mean_equals_paper_formula_without_clipping():
    d = make()
    xt, eps = images(4, dtype=torch.float64), torch.randn(4, 3, 4, 4, dtype=torch.float64)
    idx = torch.tensor([0, 1, 500, 999])
    out = d.p_mean_variance(lambda x, t: eps, xt, idx, clip_denoised=False)
    for k, i in enumerate(idx.tolist()):
        a, beta, ac = 1 - d.betas[i], d.betas[i], d.alphas_cumprod[i]
        paper = (xt[k] - beta / math.sqrt(1 - ac) * eps[k]) / math.sqrt(a)
        torch.testing.assert_close(out["mean"][k], paper, rtol=1e-9, atol=1e-9)
    clipped = d.p_mean_variance(lambda x, t: eps, xt, idx, clip_denoised=True)
    assert clipped["pred_xstart"].abs().max() <= 1 and out["pred_xstart"].abs().max() > 1


def test_xstart_and_xprev_parameterisations():
    d = make(mean="xstart")
    x0, xt = images(2, dtype=torch.float64), images(2, seed=3, dtype=torch.float64)
    t = torch.tensor([5, 700])
    out = d.p_mean_variance(lambda x, t: x0, xt, t)
    torch.testing.assert_close(out["mean"], d.q_posterior_mean_variance(x0, xt, t)[0])
    torch.testing.assert_close(out["pred_xstart"], x0)
    # xprev: the raw output is the mean, and x̂0 inverts the posterior mean
    dp = make(mean="xprev")
    mu = dp.q_posterior_mean_variance(x0, xt, t)[0]
    out = dp.p_mean_variance(lambda x, t: mu, xt, t, clip_denoised=False)
    assert torch.equal(out["mean"], mu)
    torch.testing.assert_close(out["pred_xstart"], x0, rtol=1e-8, atol=1e-8)
    wild = dp.p_mean_variance(lambda x, t: mu * 50, xt, t, clip_denoised=True)
    assert torch.equal(wild["mean"], mu * 50) and wild["pred_xstart"].abs().max() <= 1


def test_v_parameterisation():
    """v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022, App. D): the true v gives back x0 and the posterior
    mean, and x̂0 from v equals x̂0 from the ε that v implies (the rotation of (x0, ε) by φ_t)."""
    d = make(mean="v")
    x0, eps = images(3, dtype=torch.float64), torch.randn(3, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 300, 999])
    xt = d.q_sample(x0, t, noise=eps)
    v = d.v_target(x0, t, eps)
    out = d.p_mean_variance(lambda x, t: v, xt, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["mean"], d.q_posterior_mean_variance(x0, xt, t)[0], rtol=1e-10, atol=1e-10)
    # any output: x̂0(v) = x̂0(ε) with ε = √ᾱ v + √(1−ᾱ) x_t
    w = torch.randn_like(xt)
    sa, s1 = d.gather("sqrt_alphas_cumprod", t, xt), d.gather("sqrt_one_minus_alphas_cumprod", t, xt)
    torch.testing.assert_close(d.predict_xstart_from_v(xt, t, w), d.predict_xstart_from_eps(xt, t, sa * w + s1 * xt),
                               rtol=1e-9, atol=1e-9)


def test_v_prediction_matches_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction", clip_sample=False)
    d = make(mean="v")
    xt, out = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for step in (0, 10, 500, 999):
        theirs = sched.step(out, step, xt, generator=torch.Generator().manual_seed(0)).pred_original_sample
        ours = d.p_mean_variance(lambda x, t: out, xt, torch.full((2,), step), clip_denoised=False)["pred_xstart"]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_variance_types():
    x = images(3, dtype=torch.float64)
    t = torch.tensor([0, 1, 999])
    b = make().betas
    large = make(var="fixedlarge").p_mean_variance(lambda x, t: x, x, t)["log_variance"][:, 0, 0, 0]
    small = make(var="fixedsmall").p_mean_variance(lambda x, t: x, x, t)["log_variance"][:, 0, 0, 0]
    d = make()
    assert large[0].item() == small[0].item() == d.posterior_log_variance_clipped[1]  # same decoder variance
    assert large[1].item() == math.log(b[1]) and large[2].item() == math.log(b[999])
    assert small[1].item() == math.log(d.posterior_variance[1])
    v = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    learned = make(var="learned", loss="kl").p_mean_variance(lambda x, t: torch.cat([x, v], 1), x, t)
    assert torch.equal(learned["log_variance"], v)
    torch.testing.assert_close(learned["variance"], v.exp())
    rng = make(var="learned_range", loss="hybrid")
    for val, expect in [(1.0, d.log_betas), (-1.0, d.posterior_log_variance_clipped),
                        (0.0, (d.log_betas + d.posterior_log_variance_clipped) / 2)]:
        out = rng.p_mean_variance(lambda x, t: torch.cat([x, torch.full_like(x, val)], 1), x, t)
        np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0].numpy(), expect[[0, 1, 999]], rtol=1e-12)


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("mean", MEAN_TYPES)
def test_mse_loss_by_hand(mean):
    d = make(mean=mean)
    x0, eps = images(3), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 400, 999])
    pred = torch.randn(3, 3, 4, 4)
    losses = d.training_losses(lambda x, t: pred, x0, t, noise=eps)
    xt = d.q_sample(x0, t, noise=eps)
    sa, s1 = d.gather("sqrt_alphas_cumprod", t, x0), d.gather("sqrt_one_minus_alphas_cumprod", t, x0)
    target = {"eps": eps, "xstart": x0, "xprev": d.q_posterior_mean_variance(x0, xt, t)[0],
              "v": sa * eps - s1 * x0}[mean]
    expect = ((target - pred) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["loss"], expect)
    assert set(losses) == {"loss", "mse"}


def test_kl_loss_equals_unclipped_vb_term():
    d = make(var="learned", loss="kl")
    net = TinyNet(out=6)
    x0, eps, t = images(3), torch.randn(3, 3, 4, 4), torch.tensor([0, 3, 999])
    losses = d.training_losses(net, x0, t, noise=eps)
    vb = d.vb_terms_bpd(net, x0, d.q_sample(x0, t, noise=eps), t, clip_denoised=False)["output"]
    torch.testing.assert_close(losses["loss"], vb)
    torch.testing.assert_close(losses["vb"], vb)


def test_vb_terms_by_hand_decoder_and_kl():
    d = make(var="fixedsmall", loss="kl")
    x0, xt = images(2, dtype=torch.float64), images(2, seed=9, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 250])
    out = d.vb_terms_bpd(lambda x, t: eps, x0, xt, t)
    pm = d.p_mean_variance(lambda x, t: eps, xt, t)
    nll = -discretized_gaussian_log_likelihood(x0[0], means=pm["mean"][0], log_scales=0.5 * pm["log_variance"][0])
    assert out["output"][0].item() == pytest.approx(nll.mean().item() / math.log(2), rel=1e-12)
    qm, _, qlv = d.q_posterior_mean_variance(x0, xt, t)
    kl = normal_kl(qm[1], qlv[1], pm["mean"][1], pm["log_variance"][1])
    assert out["output"][1].item() == pytest.approx(kl.mean().item() / math.log(2), rel=1e-12)
    # the decoder term is identical for fixedsmall and fixedlarge
    large = make(var="fixedlarge", loss="kl").vb_terms_bpd(lambda x, t: eps, x0, xt, t)["output"]
    assert large[0].item() == out["output"][0].item() and large[1].item() != out["output"][1].item()


@pytest.mark.parametrize("var", ["learned", "learned_range"])
def test_hybrid_loss_and_stop_gradient(var):
    T = 200
    d = make(T, var=var, loss="hybrid")
    w_mean = torch.tensor(0.3, requires_grad=True)
    w_var = torch.tensor(-0.2, requires_grad=True)

    def model(x, t):
        return torch.cat([w_mean * x, w_var * torch.ones_like(x)], 1)

    x0, eps, t = images(4), torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 50, 199])
    losses = d.training_losses(model, x0, t, noise=eps)
    xt = d.q_sample(x0, t, noise=eps)
    mse = ((eps - w_mean * xt) ** 2).mean(dim=(1, 2, 3))
    vb = d.vb_terms_bpd(model, x0, xt, t, clip_denoised=False)["output"]
    torch.testing.assert_close(losses["mse"], mse)
    torch.testing.assert_close(losses["vb"], vb * T / 1000)
    torch.testing.assert_close(losses["loss"], mse + vb * T / 1000)
    losses["vb"].sum().backward()
    assert w_mean.grad is None or w_mean.grad.item() == 0.0  # the VLB term does not move the mean
    assert w_var.grad is not None and w_var.grad.abs().item() > 0
    w_var.grad = None
    losses = d.training_losses(model, x0, t, noise=eps)
    losses["loss"].sum().backward()
    (g_mse,) = torch.autograd.grad(mse.sum(), w_mean)
    torch.testing.assert_close(w_mean.grad, g_mse)


ALLOWED = [c for c in itertools.product(MEAN_TYPES, VAR_TYPES, LOSS_TYPES)
           if not (c[2] == "mse" and c[1] in ("learned", "learned_range"))
           and not (c[2] == "hybrid" and c[1] not in ("learned", "learned_range"))]


def test_allowed_combinations_count():
    assert len(ALLOWED) == 4 * (2 * 2 + 2 * 2)  # per mean type: fixed × {mse, kl} + learned × {kl, hybrid}


@pytest.mark.parametrize("mean,var,loss", ALLOWED)
def test_every_allowed_combination_trains_samples_and_scores(mean, var, loss):
    T = 6
    x0 = images(2)
    learned = var in ("learned", "learned_range")
    torch.manual_seed(0)
    d = make(T, mean, var, loss)
    net = TinyNet(out=6 if learned else 3, T=T)
    losses = d.training_losses(net, x0, torch.tensor([0, T - 1]), generator=torch.Generator().manual_seed(0))
    assert losses["loss"].shape == (2,) and torch.isfinite(losses["loss"]).all()
    losses["loss"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    sample = d.p_sample_loop(net, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, 4, 4) and torch.isfinite(sample).all()
    if mean != "xprev":  # xprev samples are the raw predicted mean, never clipped
        assert sample.abs().max() <= 1
    bpd = d.calc_bpd_loop(net, x0, generator=torch.Generator().manual_seed(0))
    assert bpd["terms_bpd"].shape == (2, T) and torch.isfinite(bpd["total_bpd"]).all()
    assert torch.all(bpd["terms_bpd"] >= -1e-6)  # KLs and a discrete NLL are non-negative


# ---------------------------------------------------------------- the bound

def _bound_setup(T=40):
    d = GaussianDiffusion(get_beta_schedule("cosine", beta_start=1e-4, beta_end=0.02, num_timesteps=T),
                          "eps", "fixedsmall", "kl")
    x0 = images(2)

    def perfect(x, t):  # knows x0: returns the true ε of x_t
        return (x - d.gather("sqrt_alphas_cumprod", t, x) * x0) / d.gather("sqrt_one_minus_alphas_cumprod", t, x)

    return d, x0, perfect


def test_calc_bpd_loop_perfect_model_vs_zero_model():
    d, x0, perfect = _bound_setup()
    T = d.num_timesteps
    noise = torch.randn(T, *x0.shape, generator=torch.Generator().manual_seed(0))
    good = d.calc_bpd_loop(perfect, x0, noise=noise)
    bad = d.calc_bpd_loop(lambda x, t: torch.zeros_like(x), x0, noise=noise)
    for out in (good, bad):
        assert out["terms_bpd"].shape == (2, T) and out["mse"].shape == (2, T) and out["prior_bpd"].shape == (2,)
        torch.testing.assert_close(out["total_bpd"], out["terms_bpd"].sum(1) + out["prior_bpd"])
        assert torch.isfinite(out["total_bpd"]).all()
    # perfect model: every KL term vanishes (fixedsmall = the true posterior), x̂0 is exact,
    # and what is left is the decoder and the prior
    assert good["terms_bpd"][:, 1:].abs().max().item() < 1e-4
    assert good["mse"].max().item() < 1e-8
    # the decoder term of a perfect mean: −log of the mass of N(x0, β̃_1) in x0's bin, by hand
    sigma = math.exp(0.5 * d.posterior_log_variance_clipped[0])
    phi = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 / 255 / sigma + 0.044715 * (1 / 255 / sigma) ** 3)))
    edge = (x0.abs() > 0.999).double()
    nats = edge * -math.log(phi) + (1 - edge) * -math.log(2 * phi - 1)
    torch.testing.assert_close(good["terms_bpd"][:, 0].double(), nats.mean((1, 2, 3)) / math.log(2), rtol=1e-3, atol=0)
    assert torch.all(good["total_bpd"] < bad["total_bpd"])
    torch.testing.assert_close(good["prior_bpd"], d.prior_bpd(x0))


def test_calc_bpd_loop_noise_forms_agree():
    d, x0, perfect = _bound_setup(T=12)
    noise = torch.randn(12, *x0.shape, generator=torch.Generator().manual_seed(3))
    net = TinyNet(T=12)
    a = d.calc_bpd_loop(net, x0, noise=noise)
    b = d.calc_bpd_loop(net, x0, noise=lambda t: noise[t])
    assert torch.equal(a["terms_bpd"], b["terms_bpd"]) and torch.equal(a["mse"], b["mse"])
    c1 = d.calc_bpd_loop(net, x0, generator=torch.Generator().manual_seed(1))
    c2 = d.calc_bpd_loop(net, x0, noise=torch.Generator().manual_seed(1))
    c3 = d.calc_bpd_loop(net, x0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(c1["total_bpd"], c2["total_bpd"]) and not torch.equal(c1["total_bpd"], c3["total_bpd"])
    # term t uses noise[t] to draw x_t: perturbing noise[5] changes only term 5
    noise2 = noise.clone()
    noise2[5] += 1
    e = d.calc_bpd_loop(net, x0, noise=noise2)
    changed = (e["terms_bpd"] != a["terms_bpd"]).any(0)
    assert changed.tolist() == [i == 5 for i in range(12)]


# ---------------------------------------------------------------- sampling

def test_p_sample_masks_noise_at_t0_and_is_deterministic():
    d = make(var="fixedlarge")
    net = TinyNet()
    x = torch.randn(2, 3, 4, 4)
    big = 100 * torch.ones_like(x)
    out = d.p_sample(net, x, torch.zeros(2, dtype=torch.long), noise=big)
    assert torch.equal(out["sample"], out["mean"])
    t = torch.tensor([500, 0])
    out = d.p_sample(net, x, t, noise=big)
    assert torch.equal(out["sample"][1], out["mean"][1]) and not torch.equal(out["sample"][0], out["mean"][0])
    std = math.sqrt(d.betas[500])
    torch.testing.assert_close(out["sample"][0], out["mean"][0] + std * big[0])
    a = d.p_sample(net, x, t, generator=torch.Generator().manual_seed(0))["sample"]
    b = d.p_sample(net, x, t, generator=torch.Generator().manual_seed(0))["sample"]
    c = d.p_sample(net, x, t, generator=torch.Generator().manual_seed(1))["sample"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_p_sample_loop_is_algorithm_2():
    """Without clipping, the loop is exactly x_{t-1} = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t + σ_t z, σ² = β_t."""
    T = 20
    d = make(T, var="fixedlarge")
    net = TinyNet(T=T).double()
    xT = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    z = torch.randn(T, 2, 3, 4, 4, dtype=torch.float64)
    got = d.p_sample_loop(net, xT.shape, noise=xT, step_noise=z, clip_denoised=False)
    x = xT
    with torch.no_grad():
        for i in range(T - 1, -1, -1):
            t = torch.full((2,), i)
            beta, ac = d.betas[i], d.alphas_cumprod[i]
            x = (x - beta / math.sqrt(1 - ac) * net(x, t)) / math.sqrt(1 - beta) + (math.sqrt(beta) * z[i] if i else 0)
    torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)


def test_p_sample_loop_reproducibility_and_clipping():
    T = 15
    d = make(T)
    net = TinyNet(T=T)
    shape = (3, 3, 4, 4)
    a = d.p_sample_loop(net, shape, generator=torch.Generator().manual_seed(0))
    b = d.p_sample_loop(net, shape, generator=torch.Generator().manual_seed(0))
    c = d.p_sample_loop(net, shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max().item() <= 1.0
    xT, z = torch.randn(shape), torch.randn(T, *shape)
    s1 = d.p_sample_loop(net, shape, noise=xT, step_noise=z)
    s2 = d.p_sample_loop(net, shape, noise=xT, step_noise=lambda t: z[t])
    assert torch.equal(s1, s2)
    z2 = z.clone()
    z2[0] += 5  # the step at t = 0 adds no noise
    assert torch.equal(s1, d.p_sample_loop(net, shape, noise=xT, step_noise=z2))
    with torch.no_grad():
        net.conv.bias += 30  # a model whose x̂0 runs far outside [-1, 1]
    unclipped = d.p_sample_loop(net, shape, noise=xT, step_noise=z, clip_denoised=False)
    clipped = d.p_sample_loop(net, shape, noise=xT, step_noise=z)
    assert unclipped.abs().max().item() > 1 and clipped.abs().max().item() <= 1


def test_progressive_loop_and_start_step():
    T = 10
    d = make(T)
    net = TinyNet(T=T)
    xT, z = torch.randn(2, 3, 4, 4), torch.randn(T, 2, 3, 4, 4)
    steps = list(d.p_sample_loop_progressive(net, xT.shape, noise=xT, step_noise=z))
    assert [s["t"] for s in steps] == list(range(T - 1, -1, -1))
    final = d.p_sample_loop(net, xT.shape, noise=xT, step_noise=z)
    assert torch.equal(steps[-1]["sample"], final) and torch.equal(steps[-1]["pred_xstart"], final)
    # resuming from the state fed to step 4 reproduces the end of the chain
    resumed = d.p_sample_loop(net, None, noise=steps[T - 1 - 5]["sample"], step_noise=z, t_start=4)
    assert torch.equal(resumed, final)
    with pytest.raises(ConfigError, match="t_start"):
        d.p_sample_loop(net, xT.shape, t_start=T)
    assert torch.is_grad_enabled()  # the loop turned autograd off only inside its own steps


def test_model_kwargs_reach_the_model():
    d = make(5)
    seen = []

    def model(x, t, y=None):
        seen.append(y)
        return torch.zeros_like(x)

    y = torch.tensor([1, 2])
    d.p_sample_loop(model, (2, 3, 2, 2), model_kwargs={"y": y}, generator=torch.Generator().manual_seed(0))
    d.training_losses(model, images(2, h=2, w=2), torch.tensor([0, 1]), model_kwargs={"y": y})
    d.calc_bpd_loop(model, images(2, h=2, w=2), model_kwargs={"y": y})
    assert len(seen) == 5 + 1 + 5 and all(s is y for s in seen)


def test_public_signatures_follow_the_contract():
    """Other modules call these positionally in this order (common contract)."""
    import inspect

    def names(f):
        return list(inspect.signature(f).parameters)[1:]

    d = GaussianDiffusion
    assert names(d.p_sample_loop)[:9] == ["model", "shape", "noise", "step_noise", "clip_denoised", "progress",
                                          "model_kwargs", "generator", "device"]
    assert names(d.p_sample)[:7] == ["model", "x_t", "t", "noise", "clip_denoised", "model_kwargs", "generator"]
    assert names(d.p_mean_variance)[:5] == ["model", "x_t", "t", "clip_denoised", "model_kwargs"]
    assert names(d.training_losses)[:5] == ["model", "x0", "t", "noise", "model_kwargs"]
    assert names(d.vb_terms_bpd)[:6] == ["model", "x0", "x_t", "t", "clip_denoised", "model_kwargs"]
    assert names(d.calc_bpd_loop)[:7] == ["model", "x0", "clip_denoised", "noise", "model_kwargs", "generator",
                                          "progress"]


def test_progress_bar_and_device_inference(capsys):
    d = make(4)

    class Wrapper:  # a parameter-less wrapper around a network, as respacing/guidance use
        def __init__(self, model):
            self.model = model

        def __call__(self, x, t):
            return self.model(x, t)

    net = Wrapper(TinyNet(T=4))
    out = d.p_sample_loop(net, (1, 3, 2, 2), progress=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 2, 2)
    assert "sampling" in capsys.readouterr().err
    from ddpm.diffusion import model_device

    assert model_device(Wrapper(nn.Linear(1, 1, device="meta"))).type == "meta"
    assert model_device(lambda x, t: x).type == "cpu"


@pytest.mark.parametrize("mean,var", [("eps", "fixedlarge"), ("xstart", "fixedsmall")])
def test_algorithm_2_with_the_exact_denoiser_samples_the_data_distribution(mean, var):
    """Data: two constant 2×2 images (−0.5 w.p. 0.3, +0.5 w.p. 0.7). With the Bayes-optimal
    E[x0 | x_t] as the model, ancestral sampling must land on the two images in those proportions."""
    T = 200
    d = GaussianDiffusion(get_beta_schedule("linear", beta_start=5e-4, beta_end=0.1, num_timesteps=T),
                          mean, var, "mse")
    pts = torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1, 1)
    prior = torch.tensor([0.3, 0.7]).log().view(2, 1)

    def model(x, t):
        sa, s1 = d.gather("sqrt_alphas_cumprod", t, x), d.gather("sqrt_one_minus_alphas_cumprod", t, x)
        sq = ((x.unsqueeze(0) - sa.unsqueeze(0) * pts) ** 2).sum((2, 3, 4))
        post = torch.softmax(prior - sq / (2 * s1.view(1, -1) ** 2), dim=0).view(2, -1, 1, 1, 1)
        x0 = (post * pts).sum(0).expand_as(x)
        return x0 if mean == "xstart" else (x - sa * x0) / s1

    n = 1000
    s = d.p_sample_loop(model, (n, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    upper = s.mean((1, 2, 3)) > 0
    assert abs(upper.float().mean().item() - 0.7) < 4 * math.sqrt(0.21 / n)
    nearest = torch.where(upper.view(-1, 1, 1, 1), 0.5, -0.5)
    assert (s - nearest).abs().max().item() < 1e-4
