"""Consistency models (Song et al. 2023; Song & Dhariwal 2023): the boundary parameterisation, the
teacher's ODE step against a closed form, the discretisations, the sampler, exact resume of both
objectives, and the CLI end to end on tiny models."""

import math

import numpy as np
import pytest
import torch

from ddpm import checkpoint as ckpt
from ddpm.cli import main
from ddpm.config import apply_overrides
from ddpm.diffusion import GaussianDiffusion
from ddpm.models.consistency import ConsistencyModel, boundary_coefficients
from ddpm.models.registry import build_model
from ddpm.models.unet import UNet
from ddpm.presets import get_preset
from ddpm.sampling.api import generate, sample
from ddpm.schedules import get_beta_schedule
from ddpm.train import consistency as cm
from ddpm.train.trainer import Trainer
from helpers import TINY_NET, tiny_teacher



def ct_config(*extra):
    cfg = apply_overrides(get_preset("digits-ct"), [*TINY_NET, "diffusion.num_timesteps=100",
                                                    "diffusion.beta_end=0.2", "train.batch_size=4",
                                                    "train.ckpt_every=2", "train.sample_every=0", *extra])
    return cfg


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny U-Net teacher (digits-tiny recipe, T = 100), trained a few steps."""
    return tiny_teacher(tmp_path_factory.mktemp("cm_teacher") / "teacher", steps=3)


# ----------------------------------------------------------------------------------------- the model
def test_boundary_condition_holds_exactly_for_any_weights():
    cfg = ct_config().model
    net = build_model(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)  # far from the near-zero output layer of a fresh network
    sigma = cfg.sigmas()
    x = torch.randn(3, 1, 28, 28)
    f = net(x, torch.zeros(3, dtype=torch.long), y=torch.tensor([0, 4, 10]))
    # f(x, σ_min) = x̃ = x/√ᾱ_0: c_skip is exactly 1 and c_out exactly 0 at t = 0
    assert torch.equal(f, x * np.float32(math.sqrt(1.0 + sigma[0] ** 2)))
    f_later = net(x, torch.full((3,), 50))
    assert (f_later - x * math.sqrt(1.0 + sigma[50] ** 2)).abs().max() > 1e-2  # the network matters elsewhere


def test_coefficients_are_the_papers():
    sigma = np.array([0.01, 0.5, 2.0, 80.0])
    c_skip, c_out = boundary_coefficients(sigma, 0.01, 0.5)
    # Song et al. 2023, App. C: c_skip = σ_d²/((σ−ε)² + σ_d²), c_out = σ_d(σ−ε)/√(σ² + σ_d²)
    np.testing.assert_allclose(c_skip, [1.0, 0.25 / (0.49**2 + 0.25), 0.25 / (1.99**2 + 0.25), 0.25 / (79.99**2 + 0.25)])
    np.testing.assert_allclose(c_out, [0.0, 0.5 * 0.49 / math.sqrt(0.5), 0.5 * 1.99 / math.sqrt(4.25),
                                       0.5 * 79.99 / math.sqrt(6400.25)])
    # large σ: f ≈ σ_d·F (bounded), the EDM limit
    assert c_out[-1] == pytest.approx(0.5, rel=1e-3) and c_skip[-1] < 1e-4


def test_a_unet_teachers_weights_load_and_the_schedule_is_derived():
    cfg = ct_config().model
    assert (cfg.num_timesteps, cfg.beta_end, cfg.schedule) == (100, 0.2, "linear")  # from diffusion.*
    unet_cfg = apply_overrides(get_preset("digits-tiny"), [*TINY_NET, "data.class_labels=true"]).model
    teacher = UNet(unet_cfg)
    student = ConsistencyModel(cfg)
    student.load_state_dict(teacher.state_dict())  # strict: same names and shapes, tables are not state
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([30, 70])
    sigma = torch.tensor(cfg.sigmas()[[30, 70]], dtype=torch.float32).view(-1, 1, 1, 1)
    c_skip, c_out = boundary_coefficients(sigma, float(cfg.sigmas()[0]), cfg.sigma_data)
    y = torch.tensor([3, 10])
    torch.testing.assert_close(student(x, t, y), c_skip * x * torch.sqrt(1 + sigma**2) - c_out * teacher(x, t, y))
    with pytest.raises(Exception, match="follows diffusion.num_timesteps"):
        apply_overrides(get_preset("digits-ct"), ["model.num_timesteps=10"])


# ----------------------------------------------------------------------------------------- ODE step
class GaussianEps(torch.nn.Module):
    """The exact ε-predictor for data x0 ~ N(0, I): E[ε | x_t] = √(1 − ᾱ_t)·x_t."""

    def __init__(self, diffusion):
        super().__init__()
        self.s = torch.tensor(np.sqrt(1 - diffusion.alphas_cumprod), dtype=torch.float64)

    def forward(self, x, t, y=None):
        return self.s[t].view(-1, 1, 1, 1).to(x.dtype) * x


def _cd_objective(solver, diffusion):
    """A distillation objective around the exact Gaussian teacher (no checkpoint needed)."""
    obj = cm.ConsistencyDistillationObjective.__new__(cm.ConsistencyDistillationObjective)
    obj.opts = {"solver": solver}
    obj.teacher, obj.teacher_diffusion = GaussianEps(diffusion), diffusion
    obj.sigma_t = torch.from_numpy(cm.vp_sigmas(diffusion))
    return obj


def test_teacher_ode_step_against_the_gaussian_closed_form():
    """For x0 ~ N(0, I) the probability-flow ODE dx̃/dσ = σx̃/(1+σ²) keeps x_t = x̃/√(1+σ²) constant, so
    one exact step returns its input; one Euler (= DDIM) step errs by O(Δσ²), one Heun step by O(Δσ³)."""
    d = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=1000))
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    errors = {}
    for solver in ("euler", "heun"):
        obj = _cd_objective(solver, d)
        for t_lo in (250, 275):
            hi, lo = torch.full((4,), 300), torch.full((4,), t_lo)
            errors[solver, t_lo] = float((obj.ode_step(x, hi, lo, {}) - x).abs().max() / x.abs().max())
    s = cm.vp_sigmas(d)
    r = (s[300] - s[275]) / (s[300] - s[250])  # ≈ 0.52: the shorter step's share of the longer
    assert errors["heun", 250] < errors["euler", 250] / 5 and errors["heun", 275] < errors["euler", 275] / 10
    assert 0.6 * r**2 < errors["euler", 275] / errors["euler", 250] < 1.4 * r**2
    assert 0.6 * r**3 < errors["heun", 275] / errors["heun", 250] < 1.4 * r**3
    # Euler in the σ view is exactly a DDIM step (Song et al. 2021, §4.3)
    from ddpm.sampling.ddim import ddim_step
    from ddpm.sampling.respace import SpacedDiffusion

    chain = SpacedDiffusion.from_diffusion(d, [500, 600])  # the network sees the original 600
    step = ddim_step(chain, GaussianEps(d), x, torch.ones(4, dtype=torch.long), clip_denoised=False)["sample"]
    euler = _cd_objective("euler", d).ode_step(x, torch.full((4,), 600), torch.full((4,), 500), {})
    torch.testing.assert_close(step, euler, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------------------- discretisation
def test_karras_grid_and_the_improved_curriculum():
    d = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=1000))
    s = cm.vp_sigmas(d)
    grid = cm.karras_timesteps(s, 18)
    assert grid[0] == 0 and grid[-1] == 999 and len(grid) == 18 and np.all(np.diff(grid) > 0)
    # each point is the code step nearest in log σ to (σ_min^(1/7) + i/17·(σ_max^(1/7) − σ_min^(1/7)))^7
    want = (s[0] ** (1 / 7) + 5 / 17 * (s[-1] ** (1 / 7) - s[0] ** (1 / 7))) ** 7
    assert abs(np.log(s[grid[5]] / want)) <= abs(np.log(s[grid[5] + 1] / want))
    assert len(cm.karras_timesteps(s, 1281)) < 1000  # the code grid caps the distinct points

    cfg = ct_config("train.steps=800")
    obj = cm.ConsistencyTrainingObjective(cfg, cfg.diffusion.build(), "cpu")
    # N(k) = min(s0·2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋ = ⌊800/8⌋ (Song & Dhariwal 2023, Eq. 7)
    assert [obj.num_points(k) for k in (0, 99, 100, 250, 700, 10_000)] == [11, 11, 21, 41, 1281, 1281]
    grid, p, lam = obj.schedule(11)
    sig = cm.vp_sigmas(cfg.diffusion.build())[grid.numpy()]
    erf = np.vectorize(math.erf)
    want = np.diff(erf((np.log(sig) + 1.1) / (math.sqrt(2) * 2.0)))
    np.testing.assert_allclose(p.numpy(), want / want.sum(), rtol=1e-6)
    np.testing.assert_allclose(lam.numpy(), 1 / np.diff(sig), rtol=1e-5)


def test_pseudo_huber_and_l2():
    a, b = torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)
    b[0, 0, 0, 0] = 3.0
    c = 0.00054 * 28
    torch.testing.assert_close(cm.distance(a, b, "pseudo-huber"), torch.tensor([math.sqrt(9 + c * c) - c, 0.0]))
    torch.testing.assert_close(cm.distance(a, b, "l2"), torch.tensor([9 / 784, 0.0]))


# ----------------------------------------------------------------------------------------- sampler
def test_one_and_two_step_consistency_sampling_by_hand():
    d = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-3, beta_end=0.2, num_timesteps=100),
                          mean_type="xstart")

    def f(x, t, y=None):
        return torch.tanh(x) * 0.5 + 0.001 * t.view(-1, 1, 1, 1)

    x_T, z = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    one = sample(f, d, x_T, "consistency", clip_denoised=False)
    torch.testing.assert_close(one, f(x_T, torch.full((2,), 99)))
    two = sample(f, d, x_T, "consistency", steps=2, clip_denoised=False, noise=lambda t: z)
    a, a0 = d.alphas_cumprod[49], d.alphas_cumprod[0]  # trailing: 99 then 49
    x_mid = math.sqrt(a) * f(x_T, torch.full((2,), 99)) + math.sqrt(1 - a / a0) * z
    torch.testing.assert_close(two, f(x_mid, torch.full((2,), 49)))


# ----------------------------------------------------------------------------------------- training
def _weights_equal(a, b):
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = ckpt.read_weights(a / name)[0], ckpt.read_weights(b / name)[0]
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_consistency_training_resumes_bit_identically(tmp_path):
    cfg = ct_config("train.steps=6", "train.objective_options.s0=2", "train.objective_options.s1=8")
    Trainer(cfg, tmp_path / "a", progress=False, tensorboard=False).train(steps=6)
    Trainer(cfg, tmp_path / "b", progress=False, tensorboard=False).train(steps=2)  # interrupted
    resumed = Trainer(None, tmp_path / "b", resume=True, progress=False, tensorboard=False)
    assert resumed.objective.step == 2
    resumed.train(steps=6)
    a, b = ckpt.latest_checkpoint(tmp_path / "a"), ckpt.latest_checkpoint(tmp_path / "b")
    _weights_equal(a, b)
    ta, tb = ckpt.load_train_state(a)[0], ckpt.load_train_state(b)[0]
    assert torch.equal(ta["objective.gen"], tb["objective.gen"])


def test_consistency_distillation_resumes_bit_identically_and_samples_without_flags(teacher, tmp_path, capsys):
    args = ["distill", "consistency", "--teacher", str(teacher), "--batch-size", "4", "--num-scales", "6",
            "--set", "train.ckpt_every=2", "--set", "train.sample_every=0", "--threads", "1", "--no-progress"]
    assert main([*args, "--run-dir", str(tmp_path / "a"), "--steps", "4"]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "b"), "--steps", "2"]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "b"), "--steps", "4"]) == 0  # resumes
    a, b = ckpt.latest_checkpoint(tmp_path / "a"), ckpt.latest_checkpoint(tmp_path / "b")
    _weights_equal(a, b)
    ta, tb = ckpt.load_train_state(a)[0], ckpt.load_train_state(b)[0]
    targets = [k for k in ta if k.startswith("objective.target.")]
    assert targets and all(torch.equal(ta[k], tb[k]) for k in targets)
    # the target network moved from the teacher's weights by μ-averaging
    teacher_w = ckpt.read_weights(ckpt.latest_checkpoint(teacher) / "ema.safetensors")[0]
    k = "conv_out.weight"
    assert not torch.equal(ta[f"objective.target.{k}"], teacher_w[k])
    loaded = ckpt.load_checkpoint(tmp_path / "a")
    assert loaded.config.sampling.sampler == "consistency" and loaded.config.sampling.steps == 1
    assert loaded.config.model.arch == "consistency" and loaded.config.diffusion.mean_type == "xstart"
    assert main(["sample", "--ckpt", str(tmp_path / "a"), "-n", "2", "--grid", str(tmp_path / "g.png"),
                 "--threads", "1"]) == 0
    x = generate(loaded.model, loaded.diffusion, 3, sampler=loaded.config.sampling, class_labels=[1, 2, 3])
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()


def test_distillation_errors_are_one_line(teacher, tmp_path, capsys):
    rc = main(["distill", "consistency", "--teacher", str(teacher), "--run-dir", str(tmp_path / "c"), "--steps", "1",
               "--set", "train.objective_options.solver=rk4"])
    err = capsys.readouterr().err
    assert rc == 2 and "solver must be one of heun, euler" in err and "Traceback" not in err
    with pytest.raises(Exception, match="consistency model"):
        cm.ConsistencyTrainingObjective(get_preset("digits-tiny"), get_preset("digits-tiny").diffusion.build(), "cpu")


# ------------------------------------------------------------------------------- the shipped model
def test_shipped_consistency_model_draws_legible_digits_in_one_step_where_ddim_cannot():
    """The distilled digits model of src/ddpm/assets/digits_consistency: its config alone asks for one
    consistency step, and that one network call gives digits the recognizer reads as the requested
    class; one DDIM step of the shipped diffusion model (a later run of the training its teacher came
    from, same network) gives blurred class means, more than ten times further from real digits (FD at
    n = 50)."""
    from dataclasses import replace

    from ddpm.evaluate.sweep import measure

    student = ckpt.load_checkpoint("src/ddpm/assets/digits_consistency")
    assert student.config.model.arch == "consistency"
    assert (student.config.sampling.sampler, student.config.sampling.steps) == ("consistency", 1)
    one = measure(student, student.config.sampling, n=50, with_floor=False)
    assert one["nfe"] == 1 and one["accuracy"] >= 0.85
    teacher = ckpt.load_checkpoint("src/ddpm/assets/digits")
    ddim = measure(teacher, replace(teacher.config.sampling, sampler="ddim", steps=1, spacing="trailing"), n=50,
                   with_floor=False)
    assert ddim["fd"] > 10 * one["fd"]  # 686 against 7.7 at n = 50 now; 182 when written, on the model shipped then
