"""The sampler contract, checked for every entry of the registry (``ddpm.sampling.registry.SAMPLERS``).

A new sampler is covered here by registering it: shapes and dtype, image i depending only on
(seed, i) whatever the batch size or the number of processes, no noise drawn for the last step,
deterministic samplers ignoring the noise source, the declared NFE and noise-draw counts, one callback
per step, and classifier-free guidance and the fast path composing with it.
"""

import pytest
import torch

from ddpm.accel import FastPath
from ddpm.config import DiffusionConfig, SamplerConfig
from ddpm.models.unet import UNetConfig
from ddpm.sampling.api import generate, sample
from ddpm.sampling.guidance import guided_output
from ddpm.sampling.registry import get_sampler, resolve_sampler, sampler_names

T = 12
STEPS = 4
SHAPE = (1, 8, 8)
NAMES = sampler_names()
# every entry with its defaults, plus option settings that switch an entry's behaviour
CASES = [(name, {}) for name in NAMES] + [
    ("ddim", {"eta": 0.7}), ("euler", {"s_churn": 2.0}), ("heun", {"s_churn": 2.0, "quantize": True}),
    ("euler-ancestral", {"eta": 0.0}), ("dpm-solver", {"order": 2}), ("dpmpp-2m", {"sde": True}),
    ("dpmpp-2s", {"eta": 1.0}), ("dpmpp-3m", {"sde": True}), ("unipc", {"order": 3, "variant": "bh1"}),
    ("ode", {"method": "euler"}), ("pc", {"predictor": "ancestral", "corrector_steps": 2}),
    ("langevin", {"n_steps": 3})]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CASES]


class ToyNet(torch.nn.Module):
    """Network-shaped (``.config``, ``forward(x, t, y)``), cheap, and dependent on x, t and y."""

    def __init__(self, num_classes=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = UNetConfig(in_channels=1, out_channels=1, resolution=8, num_classes=num_classes)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.label = torch.nn.Embedding(num_classes + 1, 1) if num_classes else None
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        out = self.conv(torch.tanh(x)) * (1 + 0.3 * torch.sin(t.float() / 3)).reshape(-1, 1, 1, 1)
        if self.label is not None:
            y = torch.full_like(t, self.config.num_classes) if y is None else y
            out = out + self.label(y)[:, :, None, None]
        return out


def _tol(name, opts):
    """1e-5 (batched convolutions round differently); an adaptive solver (NFE None) turns rounding
    differences into different step choices, so its results agree to its own tolerance instead."""
    adaptive = resolve_sampler(SamplerConfig(sampler=name, steps=STEPS, options=opts), T).nfe(T) is None
    return 1e-4 if adaptive else 1e-5


@pytest.fixture(scope="module")
def diffusion():
    return DiffusionConfig(num_timesteps=T, beta_end=0.3).build()


def _x_T(n=2, seed=0):
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))


class RecordingNoise:
    """A noise source that logs each draw into a shared event list (seeded, so runs repeat)."""

    def __init__(self, events, seed=1, n=2):
        self.events, self.n = events, n
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, t):
        self.events.append(("noise", t))
        return torch.randn((self.n, *SHAPE), generator=self.gen)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_shape_dtype_and_range(name, opts, diffusion):
    x = generate(ToyNet(), diffusion, 3, batch_size=2, sampler=name, steps=STEPS, options=opts, seed=0)
    assert x.shape == (3, *SHAPE) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0
    assert x.std() > 0.05  # not a constant image


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_image_i_depends_only_on_seed_and_i(name, opts, diffusion):
    model = ToyNet()
    full = generate(model, diffusion, 5, batch_size=5, sampler=name, steps=STEPS, options=opts, seed=3)
    first = generate(model, diffusion, 2, batch_size=1, sampler=name, steps=STEPS, options=opts, seed=3)
    shard = generate(model, diffusion, 5, batch_size=2, sampler=name, steps=STEPS, options=opts, seed=3,
                     rank=1, world_size=2)
    torch.testing.assert_close(first, full[:2], atol=_tol(name, opts), rtol=0)
    torch.testing.assert_close(shard, full[1::2], atol=_tol(name, opts), rtol=0)
    other = generate(model, diffusion, 2, batch_size=2, sampler=name, steps=STEPS, options=opts, seed=4)
    assert (other - full[:2]).abs().max() > 1e-3  # the seed matters


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_callback_nfe_noise_draws_and_no_noise_at_the_last_step(name, opts, diffusion):
    resolved = resolve_sampler(SamplerConfig(sampler=name, steps=STEPS, options=opts), T)
    model, events, infos = ToyNet(), [], []
    out = sample(model, diffusion, _x_T(), resolved, noise=RecordingNoise(events),
                 callback=lambda info: (events.append(("step", info["i"])), infos.append(info)))
    steps = [e for e in events if e[0] == "step"]
    draws = [e for e in events if e[0] == "noise"]
    assert [i for _, i in steps] == list(range(len(steps))) and len(steps) == STEPS
    declared = resolved.nfe(T)
    if declared is None:  # adaptive: the count is reported after the run
        assert model.calls == infos[-1]["nfe"] > 0
    else:
        assert model.calls == declared  # batch of 2, no guidance: one call per evaluation
    declared = resolved.noise_draws(T)
    if declared is not None:
        assert len(draws) <= declared
    last_two = [k for k, e in enumerate(events) if e[0] == "step"][-2:]
    assert all(e[0] != "noise" for e in events[last_two[0] + 1:last_two[1]]), "noise drawn for the last step"
    assert out.shape == (2, *SHAPE)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_deterministic_entries_ignore_the_noise_source(name, opts, diffusion):
    resolved = resolve_sampler(SamplerConfig(sampler=name, steps=STEPS, options=opts), T)
    model, x_T = ToyNet(), _x_T()
    a_events, b_events = [], []
    a = sample(model, diffusion, x_T, resolved, noise=RecordingNoise(a_events, seed=1))
    b = sample(model, diffusion, x_T, resolved, noise=RecordingNoise(b_events, seed=2))
    if resolved.deterministic():
        assert not a_events and not b_events
        assert torch.equal(a, b)
    else:
        assert a_events and (a - b).abs().max() > 1e-4
        c = sample(model, diffusion, x_T, resolved, noise=RecordingNoise([], seed=1))
        assert torch.equal(a, c)  # same noise, same images


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_guidance_composes_with_every_sampler(name, opts, diffusion):
    """sample(guidance=w) equals the sampler run on a hand-written (1+w)ε(x,c) − wε(x,∅) network."""
    model, w = ToyNet(num_classes=3), 1.5
    x_T, y = _x_T(), torch.tensor([0, 2])

    def by_hand(x, t, y=None):
        null = torch.full_like(y, 3)
        return guided_output(model(x, t, y=y), model(x, t, y=null), w, 1)

    by_hand.config = model.config
    guided = sample(model, diffusion, x_T, name, steps=STEPS, **opts, guidance=w, model_kwargs={"y": y},
                    noise=RecordingNoise([], seed=5))
    manual = sample(by_hand, diffusion, x_T, name, steps=STEPS, **opts, model_kwargs={"y": y},
                    noise=RecordingNoise([], seed=5))
    plain = sample(model, diffusion, x_T, name, steps=STEPS, **opts, model_kwargs={"y": y},
                   noise=RecordingNoise([], seed=5))
    torch.testing.assert_close(guided, manual, atol=1e-5, rtol=0)
    assert (guided - plain).abs().max() > 1e-3  # guidance changed something


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_fast_path_composes_with_every_sampler(name, opts, diffusion):
    model = ToyNet()
    plain = generate(model, diffusion, 2, sampler=name, steps=STEPS, options=opts, seed=0)
    fast = generate(model, diffusion, 2, sampler=name, steps=STEPS, options=opts, seed=0,
                    fast=FastPath(channels_last=True, precision="fp32"))
    torch.testing.assert_close(fast, plain, atol=_tol(name, opts), rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_declares_its_options_and_spacings(name):
    spec = get_sampler(name)
    assert spec.name == name and spec.summary and spec.spacings
    for opt in spec.options:
        assert opt.help and opt.check(opt.default, name) == opt.default
