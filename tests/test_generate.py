"""``ddpm.sampling.api.generate``: sampler choice, per-image seeding, sharding, argument checks."""

import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.models.unet import UNetConfig
from ddpm.errors import ConfigError
from ddpm.models.unet import UNet
from ddpm.sampling.api import PerImageNoise, generate, image_generator
from ddpm.sampling.ddim import ddim_sample_loop
from ddpm.sampling.respace import respace



T = 10


def tiny_unet(num_classes=None, out_channels=1, seed=0):
    """The real U-Net, small, with the authors' near-zero layers (conv2, proj_out, conv_out) re-drawn
    so that the output depends on x, t and the label from the start. ch=64, not 32: with one channel
    per GroupNorm group the per-channel time/label bias is normalised away entirely."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(in_channels=1, out_channels=out_channels, ch=64, ch_mult=(1,), num_res_blocks=1,
                            attn_resolutions=(), dropout=0.0, resolution=8, num_classes=num_classes))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("conv2.weight", "proj_out.weight", "conv_out.weight")):
                p.normal_(0.0, 0.05)
    return model.eval()


class ToyNet(torch.nn.Module):
    """A network-shaped stand-in (``.config``, parameters, ``forward(x, t, y)``) that costs nothing."""

    def __init__(self, num_classes=None, out_channels=1, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = UNetConfig(in_channels=1, out_channels=out_channels, resolution=8, num_classes=num_classes)
        self.conv = torch.nn.Conv2d(1, out_channels, 3, padding=1)
        self.label = torch.nn.Embedding(num_classes + 1, out_channels) if num_classes else None

    def forward(self, x, t, y=None):
        out = self.conv(torch.tanh(x)) * (1 + 0.3 * torch.sin(t.float() / 3)).reshape(-1, 1, 1, 1)
        if self.label is not None:
            y = torch.full_like(t, self.config.num_classes) if y is None else y
            out = out + self.label(y)[:, :, None, None]
        return out


@pytest.fixture(scope="module")
def model():
    return ToyNet()


@pytest.fixture(scope="module")
def diffusion():
    return DiffusionConfig(num_timesteps=T, beta_end=0.2).build()


def manual_noise(indices, steps, seed=0):
    noise = PerImageNoise([image_generator(seed, i, "cpu") for i in indices], (1, 8, 8), steps, "cpu")
    return noise.initial(), noise.step


def test_shape_range_and_full_algorithm_2(model, diffusion):
    x = generate(model, diffusion, 3, batch_size=2, seed=7)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
    # the same as diffusion.p_sample_loop fed with image i's own generator stream
    x_T, steps = manual_noise([0, 1, 2], T - 1, seed=7)
    ref = diffusion.p_sample_loop(model, x_T.shape, noise=x_T, step_noise=steps)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_images_depend_only_on_seed_and_index(model, diffusion):
    full = generate(model, diffusion, 5, batch_size=5, seed=3)
    torch.testing.assert_close(generate(model, diffusion, 5, batch_size=2, seed=3), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(generate(model, diffusion, 3, batch_size=1, seed=3), full[:3], rtol=0, atol=1e-5)
    shards = [generate(model, diffusion, 5, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    assert shards[0].shape[0] == 3 and shards[1].shape[0] == 2
    torch.testing.assert_close(shards[0], full[0::2], rtol=0, atol=1e-5)
    torch.testing.assert_close(shards[1], full[1::2], rtol=0, atol=1e-5)
    other = generate(model, diffusion, 5, batch_size=5, seed=4)
    assert (other - full).abs().amax(dim=(1, 2, 3)).min() > 1e-2  # every image changes with the seed


def test_respaced_ancestral(model, diffusion):
    assert torch.equal(generate(model, diffusion, 2, steps=T), generate(model, diffusion, 2))
    x = generate(model, diffusion, 2, steps=4, spacing="even")
    chain = respace(diffusion, 4, "even")
    x_T, steps = manual_noise([0, 1], 3)
    ref = chain.p_sample_loop(model, x_T.shape, noise=x_T, step_noise=steps)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    assert (x - generate(model, diffusion, 2)).abs().max() > 1e-3


def test_ddim(model, diffusion):
    x = generate(model, diffusion, 2, sampler="ddim", steps=5)
    x_T, _ = manual_noise([0, 1], 0)
    ref = ddim_sample_loop(respace(diffusion, 5, "uniform"), model, x_T.shape, eta=0.0, noise=x_T)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    x_eta = generate(model, diffusion, 2, sampler="ddim", steps=5, eta=0.7)
    assert (x_eta - x).abs().max() > 1e-3


def test_ddim_eta_one_equals_ancestral_on_the_posterior_variance(model):
    diffusion = DiffusionConfig(num_timesteps=T, beta_end=0.2, var_type="fixedsmall").build()
    a = generate(model, diffusion, 3, sampler="ddim", eta=1.0, seed=1)
    b = generate(model, diffusion, 3, sampler="ddpm", seed=1)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_the_real_unet_end_to_end(diffusion):
    unet = tiny_unet()
    x = generate(unet, diffusion, 3, batch_size=2, sampler="ddim", steps=4, eta=0.5, seed=2)
    assert x.shape == (3, 1, 8, 8) and x.std() > 0.05
    torch.testing.assert_close(generate(unet, diffusion, 3, batch_size=3, sampler="ddim", steps=4, eta=0.5,
                                        seed=2), x, rtol=0, atol=1e-5)


def test_learned_range_with_respacing():
    diffusion = DiffusionConfig(num_timesteps=T, beta_end=0.2, schedule="cosine", var_type="learned_range",
                                loss_type="hybrid").build()
    x = generate(ToyNet(out_channels=2), diffusion, 2, steps=3)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_training_mode_is_restored(diffusion):
    m = ToyNet().train()
    generate(m, diffusion, 1)
    assert m.training


def test_models_without_config_need_a_shape(diffusion):
    with pytest.raises(ConfigError, match="image_shape"):
        generate(lambda x, t: x, diffusion, 1)
    x = generate(lambda x, t: 0.5 * x, diffusion, 2, image_shape=(2, 3, 3))
    assert x.shape == (2, 2, 3, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_images=0), "num_images"),
    (dict(batch_size=0), "batch_size"),
    (dict(seed=-1), "seed"),
    (dict(steps=0), "steps"),
    (dict(steps=T + 1), "steps"),
    (dict(sampler="euler-maruyama"), "sampler"),
    (dict(sampler="ddim", eta=1.5), "eta"),
    (dict(eta=0.5), "ddim"),
    (dict(spacing="log", steps=3), "spacing"),
    (dict(guidance=-1.0), "guidance"),
    (dict(guidance=1.0), "class-conditional"),
    (dict(class_labels=1), "class-conditional"),
    (dict(rank=2, world_size=2), "rank"),
])
def test_bad_arguments(model, diffusion, kwargs, message):
    kwargs = {"num_images": 2, **kwargs}
    n = kwargs.pop("num_images")
    with pytest.raises(ConfigError, match=message):
        generate(model, diffusion, n, **kwargs)


def test_fast_path_option_computes_the_same_images(diffusion):
    from ddpm.accel import FastPath

    unet = tiny_unet()
    plain = generate(unet, diffusion, 2, sampler="ddim", steps=2)
    fast = generate(unet, diffusion, 2, sampler="ddim", steps=2, fast=FastPath(channels_last=True, precision="fp32"))
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
