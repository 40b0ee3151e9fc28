"""Classifier guidance (Dhariwal & Nichol 2021): the noisy classifier and its objective (with exact
resume), guided DDIM and ancestral steps against hand computations, the same guidance in every model
parameterisation, label routing, and the CLI."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm import checkpoint as ckpt
from ddpm.cli import main
from ddpm.config import apply_overrides
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.models.classifier import ClassifierConfig, NoisyClassifier
from ddpm.presets import get_preset
from ddpm.sampling.api import generate, sample
from ddpm.sampling.classifier_guidance import ClassifierGuidance, load_classifier
from ddpm.schedules import get_beta_schedule
from ddpm.train.trainer import Trainer

SMALL = ["model.ch=16", "model.ch_mult=1,2", "model.num_res_blocks=1", "model.attn_resolutions=14,",
         "model.head_channels=16", "diffusion.num_timesteps=100", "diffusion.beta_end=0.2", "train.batch_size=4",
         "train.ckpt_every=2"]


def classifier_config(*extra):
    return apply_overrides(get_preset("digits-classifier"), [*SMALL, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(classifier run, unconditional digits-tiny model run), both T = 100, a few steps each."""
    root = tmp_path_factory.mktemp("cg")
    Trainer(classifier_config(), root / "cls", progress=False, tensorboard=False).train(steps=2)
    model = apply_overrides(get_preset("digits-tiny"), ["train.batch_size=4", "train.ckpt_every=0"])
    Trainer(model, root / "model", progress=False, tensorboard=False).train(steps=2)
    return root / "cls", root / "model"


# ----------------------------------------------------------------------------------------- classifier
def test_classifier_shapes_and_the_objective_is_cross_entropy_on_x_t():
    cfg = classifier_config()
    net = NoisyClassifier(cfg.model)
    with torch.no_grad():
        for p in net.parameters():  # away from the near-zero residual branches of a fresh network
            p.normal_(0, 0.2)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 50, 99])
    logits = net(x, t)
    assert logits.shape == (3, 10)
    assert (net(x, torch.tensor([99, 50, 0])) - logits).abs().max() > 1e-4  # it sees t
    with pytest.raises(ConfigError, match="takes no labels"):
        net(x, t, y=torch.tensor([1, 2, 3]))
    from ddpm.train.classifier import ClassifierObjective

    d = cfg.diffusion.build()
    obj = ClassifierObjective(cfg, d, "cpu")
    y, noise = torch.tensor([3, 1, 4]), torch.randn(3, 1, 28, 28)
    out = obj.losses(net, x, t, noise, {"y": y})
    want = F.cross_entropy(net(d.q_sample(x, t, noise=noise), t), y, reduction="none")
    torch.testing.assert_close(out["loss"], want)
    with pytest.raises(ConfigError, match="class labels"):
        classifier_config("data.class_labels=false").model.validate()


def test_classifier_training_resumes_bit_identically(tmp_path):
    cfg = classifier_config()
    Trainer(cfg, tmp_path / "a", progress=False, tensorboard=False).train(steps=4)
    Trainer(cfg, tmp_path / "b", progress=False, tensorboard=False).train(steps=2)
    Trainer(None, tmp_path / "b", resume=True, progress=False, tensorboard=False).train(steps=4)
    a, b = ckpt.latest_checkpoint(tmp_path / "a"), ckpt.latest_checkpoint(tmp_path / "b")
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = ckpt.read_weights(a / name)[0], ckpt.read_weights(b / name)[0]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------- guidance maths
T = 20
DIFF = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-3, beta_end=0.3, num_timesteps=T))
AC = torch.tensor(DIFF.alphas_cumprod, dtype=torch.float64)


class LinearClassifier(torch.nn.Module):
    """logits = W·x + b: ∇_x log p(y|x) = W_y − Σ_k p_k W_k in closed form."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = torch.nn.Parameter(torch.randn(4, 16, generator=g, dtype=torch.float64) * 0.3)
        self.b = torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        return x.flatten(1) @ self.W.T + self.b + 0.01 * t.view(-1, 1)

    def grad(self, x, t, y):
        p = torch.softmax(self.forward(x, t), dim=1)
        return (self.W[y] - p @ self.W).view_as(x)


def gaussian_eps(x, t, y=None):
    """The exact ε-predictor for x0 ~ N(0, I): √(1 − ᾱ_t)·x_t."""
    return torch.sqrt(1 - AC[t]).view(-1, 1, 1, 1) * x


def test_guided_ddim_is_algorithm_2_by_hand():
    clf, s = LinearClassifier(), 3.0
    x_T, y = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([2, 0])
    out = sample(gaussian_eps, DIFF, x_T, "ddim", steps=2, spacing="trailing", clip_denoised=False,
                 classifier=clf, classifier_scale=s, model_kwargs={"y": y})
    x = x_T
    for t, t_prev in ((19, 9), (9, None)):  # trailing 2 of 20: code steps 19 and 9
        tt = torch.full((2,), t)
        eps = gaussian_eps(x, tt) - torch.sqrt(1 - AC[t]) * s * clf.grad(x, tt, y)  # ε̂ = ε − √(1−ᾱ) s ∇log p
        x0 = (x - torch.sqrt(1 - AC[t]) * eps) / torch.sqrt(AC[t])
        a_prev = AC[t_prev] if t_prev is not None else torch.tensor(1.0, dtype=torch.float64)
        x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev) * eps
    torch.testing.assert_close(out, x, atol=1e-10, rtol=1e-10)
    plain = sample(gaussian_eps, DIFF, x_T, "ddim", steps=2, spacing="trailing", clip_denoised=False)
    assert (plain - out).abs().max() > 1e-2


def test_guided_ancestral_step_shifts_the_mean_as_algorithm_1():
    clf, s = LinearClassifier(), 2.0
    x_T, y = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([1, 3])
    z = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    out = sample(gaussian_eps, DIFF, x_T, "ddpm", t_start=1, clip_denoised=False, classifier=clf,
                 classifier_scale=s, model_kwargs={"y": y}, noise=lambda t: z)
    # step t = 1: μ from the unguided ε, then μ + s·Σ·∇log p(y|x_1) + σ z with Σ = σ² = β_2 (fixedlarge)
    t1 = torch.full((2,), 1)
    b, a = float(DIFF.betas[1]), float(DIFF.alphas[1])
    mu = (x_T - b / math.sqrt(1 - float(AC[1])) * gaussian_eps(x_T, t1)) / math.sqrt(a)
    x1 = mu + b * s * clf.grad(x_T, t1, y) + math.sqrt(b) * z
    # step t = 0: no noise; Σ is the fixedlarge variance β̃_2 there
    t0 = torch.zeros(2, dtype=torch.long)
    b0, a0 = float(DIFF.betas[0]), float(DIFF.alphas[0])
    mu0 = (x1 - b0 / math.sqrt(1 - float(AC[0])) * gaussian_eps(x1, t0)) / math.sqrt(a0)
    x0 = mu0 + float(DIFF.fixedlarge_variance[0]) * s * clf.grad(x1, t0, y)
    torch.testing.assert_close(out, x0, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mean_type", ["xstart", "v", "xprev"])
def test_the_shift_is_the_same_guidance_in_every_parameterisation(mean_type):
    """ε, x̂0, v and μ outputs of one model give the same classifier-guided DDIM sample (a μ-model is
    tied to the full chain's steps, so it runs all T)."""
    d = GaussianDiffusion(DIFF.betas, mean_type=mean_type)

    def model(x, t, y=None):
        eps = gaussian_eps(x, t)
        x0 = DIFF.predict_xstart_from_eps(x, t, eps)
        if mean_type == "xstart":
            return x0
        if mean_type == "v":
            a, s = DIFF.gather("sqrt_alphas_cumprod", t, x), DIFF.gather("sqrt_one_minus_alphas_cumprod", t, x)
            return a * eps - s * x0
        return DIFF.q_posterior_mean_variance(x0, x, t)[0]

    clf, x_T, y = LinearClassifier(), torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 3])
    kw = dict(steps=None if mean_type == "xprev" else 4, clip_denoised=False, classifier=clf, classifier_scale=2.5,
              model_kwargs={"y": y})
    torch.testing.assert_close(sample(model, d, x_T, "ddim", **kw), sample(gaussian_eps, DIFF, x_T, "ddim", **kw),
                               atol=1e-9, rtol=1e-9)


def test_labels_reach_the_model_only_when_asked_and_cfg_composes():
    seen = []

    class Conditional(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen.append(None if y is None else y.tolist())
            return gaussian_eps(x, t) * (1.0 if y is None else 1.0 + 0.05 * y.view(-1, 1, 1, 1))

    clf, x = LinearClassifier(), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t, y = torch.full((2,), 5), torch.tensor([1, 2])
    null = ClassifierGuidance(Conditional(), clf, 1.0, DIFF, data_channels=1, condition_model=False,
                              model_num_classes=4)
    null(x, t, y=y)
    assert seen == [None]
    from ddpm.sampling.guidance import ClassifierFreeGuidance

    seen.clear()
    cfg_net = ClassifierFreeGuidance(Conditional(), 2.0, null_label=4, data_channels=1)
    both = ClassifierGuidance(cfg_net, clf, 1.5, DIFF, data_channels=1, model_num_classes=4)
    out = both(x, t, y=y)
    assert seen == [[1, 2, 4, 4]]  # one batched CFG call: the classes, then the null label
    want = cfg_net(x, t, y=y) - torch.sqrt(1 - AC[5]) * 1.5 * clf.grad(x, t, y)
    torch.testing.assert_close(out, want)


# ----------------------------------------------------------------------------------------- end to end
def test_generate_and_cli_on_an_unconditional_model(trained, tmp_path, capsys):
    cls_dir, model_dir = trained
    ck = ckpt.load_checkpoint(model_dir)
    clf = load_classifier(cls_dir, ck.diffusion)
    a = generate(ck.model, ck.diffusion, 3, sampler="ddim", steps=5, class_labels=[1, 2, 3], classifier=clf,
                 classifier_scale=10.0, seed=0)
    b = generate(ck.model, ck.diffusion, 3, sampler="ddim", steps=5, seed=0)
    zero = generate(ck.model, ck.diffusion, 3, sampler="ddim", steps=5, class_labels=[1, 2, 3], classifier=clf,
                    classifier_scale=0.0, seed=0)
    assert torch.equal(zero, b) and (a - b).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="needs the classes"):
        generate(ck.model, ck.diffusion, 2, classifier=clf, classifier_scale=1.0)
    other = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=1000))
    with pytest.raises(ConfigError, match="another noise schedule"):
        load_classifier(cls_dir, other)
    with pytest.raises(ConfigError, match="not a noisy classifier"):
        load_classifier(model_dir, ck.diffusion)
    with pytest.raises(ConfigError, match="does not draw images"):
        generate(clf, ck.diffusion, 1)
    grid = tmp_path / "g.png"
    assert main(["sample", "--ckpt", str(model_dir), "-n", "2", "--steps", "3", "--classifier", str(cls_dir),
                 "--classifier-scale", "2", "--class", "3", "--grid", str(grid), "--threads", "1"]) == 0
    assert grid.is_file()
    rc = main(["sample", "--ckpt", str(model_dir), "-n", "2", "--classifier-scale", "2", "--grid",
               str(tmp_path / "other.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "need --classifier CKPT" in err and "Traceback" not in err


def test_eval_sweep_over_classifier_scales(trained, tmp_path, capsys):
    cls_dir, model_dir = trained
    out = tmp_path / "sweep.json"
    args = ["eval", "sweep", "--ckpt", str(model_dir), "-n", "10", "--batch-size", "10", "--samplers", "ddim",
            "--steps", "2", "--classifier", str(cls_dir), "--classifier-scale", "0,4", "--json", str(out),
            "--threads", "1"]
    assert main(args) == 0
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [r["classifier_scale"] for r in rows] == [0.0, 4.0] and all(r["accuracy"] is not None for r in rows)
    assert rows[0]["classes"] == "all" and rows[0]["classifier"] == str(cls_dir)
    assert main(args) == 0 and "done before, kept" in capsys.readouterr().out
    np.testing.assert_equal(len(json.loads(out.read_text())["rows"]), 2)


def test_accuracy_by_noise_level_on_a_planted_label():
    """Images carry their label as the one bright pixel among the first ten; a 'classifier' reading those
    pixels is perfect at t = 0 and at chance once the noise drowns them."""
    from ddpm.evaluate.noisy_classifier import accuracy_by_noise, parse_ranges

    labels = torch.arange(500) % 10
    images = -torch.ones(500, 1, 28, 28)
    images.view(500, -1)[torch.arange(500), labels] = 1.0
    d = GaussianDiffusion(get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_timesteps=1000))
    rows = accuracy_by_noise(lambda x, t: x.flatten(1)[:, :10], d, images, labels, [(0, 0), (990, 999)])
    assert [r["t_range"] for r in rows] == [[0, 0], [990, 999]] and rows[0]["n"] == 500
    assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] < 0.2
    assert rows[1]["accuracy_std"] == pytest.approx(math.sqrt(rows[1]["accuracy"] * (1 - rows[1]["accuracy"]) / 500))
    assert parse_ranges("0-99, 100-299,5", 1000) == [(0, 99), (100, 299), (5, 5)]
    with pytest.raises(ConfigError, match="within 0..999"):
        parse_ranges("900-1000", 1000)


def test_eval_classifier_cli(trained, tmp_path, capsys):
    import json

    cls_dir, model_dir = trained
    out = tmp_path / "acc.json"
    assert main(["eval", "classifier", "--ckpt", str(cls_dir), "--ranges", "0-0,50-99", "--json", str(out),
                 "--threads", "1", "--no-progress"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["t_range"] for r in rows] == [[0, 0], [50, 99]] and all(r["n"] == 500 for r in rows)  # held out
    rc = main(["eval", "classifier", "--ckpt", str(model_dir)])
    assert rc == 2 and "not a noisy classifier" in capsys.readouterr().err


@pytest.mark.parametrize("mean_type", ["xstart", "v"])
def test_guidance_between_code_steps_matches_across_parameterisations(mean_type):
    """The σ-grid solvers call the model at fractional t; the shift there uses the σ view's ᾱ, so an ε,
    an x̂0 and a v model of the same continuous predictor give the same guided DPM-Solver++ sample."""
    from ddpm.sampling.continuous import SigmaView

    view = SigmaView(DIFF)

    def alpha_bar(t):
        sigma = torch.as_tensor(view.t_to_sigma(t.double().numpy()))
        return (1.0 / (1.0 + sigma**2)).view(-1, 1, 1, 1)

    def eps_model(x, t, y=None):
        return torch.sqrt(1 - alpha_bar(t)) * x

    def other(x, t, y=None):
        ab = alpha_bar(t)
        eps = eps_model(x, t)
        x0 = (x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
        return x0 if mean_type == "xstart" else torch.sqrt(ab) * eps - torch.sqrt(1 - ab) * x0

    d = GaussianDiffusion(DIFF.betas, mean_type=mean_type)
    clf, x_T, y = LinearClassifier(), torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([1, 2])
    kw = dict(steps=4, clip_denoised=False, classifier=clf, classifier_scale=2.0, model_kwargs={"y": y})
    guided = sample(eps_model, DIFF, x_T, "dpmpp-2m", **kw)
    torch.testing.assert_close(sample(other, d, x_T, "dpmpp-2m", **kw), guided, atol=1e-9, rtol=1e-9)
    assert (sample(eps_model, DIFF, x_T, "dpmpp-2m", steps=4, clip_denoised=False) - guided).abs().max() > 1e-2
    # on the grid the coefficient is the table's, whether t comes as integers or as whole floats
    wrapper = ClassifierGuidance(eps_model, clf, 1.0, DIFF, data_channels=1)
    t_int = torch.tensor([3, 17])
    torch.testing.assert_close(wrapper._shift(t_int.double(), x_T), wrapper._shift(t_int, x_T))
    between = wrapper._shift(torch.tensor([3.5, 17.25], dtype=torch.float64), x_T).flatten()
    lo, hi = wrapper._shift(torch.tensor([3, 17]), x_T).flatten(), wrapper._shift(torch.tensor([4, 18]), x_T).flatten()
    assert bool(((between < lo) & (between > hi)).all())  # −√(1−ᾱ) falls with t
