"""Classifier-free guidance: ε̃ = (1+w)·ε(x,c) − w·ε(x,∅), in one forward of 2B."""

import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.errors import ConfigError
from ddpm.sampling.api import generate
from ddpm.sampling.guidance import ClassifierFreeGuidance

from test_generate import ToyNet, manual_noise, tiny_unet



NULL = 3


class ToyConditional:
    """out = x·(1 + 0.1·y) + 0.05·y, with ``channels_out`` = 2C repeating a 'variance' of y/10."""

    def __init__(self, learned_variance=False):
        self.calls = []
        self.learned_variance = learned_variance

    def __call__(self, x, t, y=None):
        self.calls.append(x.shape[0])
        y = torch.full((x.shape[0],), NULL) if y is None else y
        yf = y.float().reshape(-1, 1, 1, 1)
        out = x * (1 + 0.1 * yf) + 0.05 * yf
        if self.learned_variance:
            out = torch.cat([out, (yf / 10).expand_as(x)], dim=1)
        return out


def test_guided_output_is_the_formula_in_one_double_batch():
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 3, 5, 9])
    y = torch.tensor([0, 1, 2, 1])
    model = ToyConditional()
    guided = ClassifierFreeGuidance(model, 2.5, null_label=NULL, data_channels=2)(x, t, y=y)
    assert model.calls == [8]
    expected = 3.5 * model(x, t, y=y) - 2.5 * model(x, t, y=torch.full_like(y, NULL))
    torch.testing.assert_close(guided, expected)


def test_zero_guidance_is_the_conditional_model_alone():
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([1, 2]), torch.tensor([2, 0])
    model = ToyConditional()
    out = ClassifierFreeGuidance(model, 0.0, null_label=NULL, data_channels=2)(x, t, y=y)
    assert model.calls == [2]
    assert torch.equal(out, model(x, t, y=y))


def test_learned_variance_channels_come_from_the_conditional_pass():
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([1, 2]), torch.tensor([2, 0])
    model = ToyConditional(learned_variance=True)
    out = ClassifierFreeGuidance(model, 1.0, null_label=NULL, data_channels=2)(x, t, y=y)
    cond, uncond = model(x, t, y=y), model(x, t, y=torch.full_like(y, NULL))
    torch.testing.assert_close(out[:, :2], 2 * cond[:, :2] - uncond[:, :2])
    assert torch.equal(out[:, 2:], cond[:, 2:])


def test_no_labels_means_unguided():
    model = ToyConditional()
    x, t = torch.ones(1, 2, 1, 1), torch.tensor([0])
    assert torch.equal(ClassifierFreeGuidance(model, 3.0, NULL, 2)(x, t), model(x, t))
    with pytest.raises(ConfigError, match="guidance"):
        ClassifierFreeGuidance(model, -0.5, NULL, 2)


@pytest.fixture(scope="module")
def cond_model():
    return ToyNet(num_classes=3)


@pytest.fixture(scope="module")
def diffusion():
    return DiffusionConfig(num_timesteps=8, beta_end=0.25).build()


def test_generate_with_guidance_matches_a_hand_guided_chain(cond_model, diffusion):
    labels = [0, 2, 1]
    x = generate(cond_model, diffusion, 3, class_labels=labels, guidance=2.0, batch_size=2)
    assert x.shape == (3, 1, 8, 8)

    def guided(x, t, y):
        return 3.0 * cond_model(x, t, y=y) - 2.0 * cond_model(x, t, y=torch.full_like(y, 3))

    x_T, steps = manual_noise([0, 1, 2], 7)
    ref = diffusion.p_sample_loop(guided, x_T.shape, noise=x_T, step_noise=steps,
                                  model_kwargs={"y": torch.tensor(labels)})
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_generate_zero_guidance_equals_the_conditional_sample(cond_model, diffusion):
    x = generate(cond_model, diffusion, 2, class_labels=1, guidance=0.0)
    x_T, steps = manual_noise([0, 1], 7)
    ref = diffusion.p_sample_loop(cond_model, x_T.shape, noise=x_T, step_noise=steps,
                                  model_kwargs={"y": torch.tensor([1, 1])})
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(generate(cond_model, diffusion, 2, class_labels=torch.tensor(1)), x, rtol=0, atol=0)
    # labels matter, and no labels means the null label
    assert (generate(cond_model, diffusion, 2, class_labels=2) - x).abs().max() > 1e-3
    null = generate(cond_model, diffusion, 2)
    torch.testing.assert_close(null, generate(cond_model, diffusion, 2, class_labels=None), rtol=0, atol=0)


def test_guided_ddim_with_a_tiny_conditional_unet(diffusion):
    unet = tiny_unet(num_classes=3)
    x = generate(unet, diffusion, 2, class_labels=[0, 1], guidance=1.5, sampler="ddim", steps=4)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    same_noise_other_guidance = generate(unet, diffusion, 2, class_labels=[0, 1], guidance=0.0, sampler="ddim",
                                         steps=4)
    assert (x - same_noise_other_guidance).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs,message", [
    (dict(class_labels=3), "0..2"),
    (dict(class_labels=[0, 1, 2]), "one per image"),
    (dict(guidance=1.0), "class labels"),
    (dict(class_labels=0, guidance=-1.0), "guidance"),
])
def test_bad_conditioning(cond_model, diffusion, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(cond_model, diffusion, 2, **kwargs)
