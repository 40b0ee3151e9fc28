"""Training objectives: the registry, option checking, the default objective being the paper's loss,
and an objective with its own state resuming bit for bit."""

import pytest
import torch

from ddpm import checkpoint as ckpt
from ddpm.config import apply_overrides
from ddpm.errors import ConfigError
from ddpm.presets import get_preset
from ddpm.sampling.registry import Option
from ddpm.train import objectives
from ddpm.train.trainer import Trainer
from ddpm.train.validate import validate_config


def config(*extra):
    return apply_overrides(get_preset("digits-tiny"), ["train.batch_size=4", "train.ckpt_every=2", *extra])


class CountingObjective(objectives.Objective):
    """L_simple plus a resumable counter and its own random stream, to test state round trips."""

    name = "counting"
    makes_samples = False
    options = (Option("scale", 1.0, "loss scale", low=0.0, high=10.0),)

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = torch.zeros((), dtype=torch.long)
        self.gen = torch.Generator().manual_seed(self.config.train.seed + 7)

    def losses(self, model, x0, t, noise, model_kwargs):
        jitter = 1.0 + 0.01 * torch.rand((), generator=self.gen)
        out = self.diffusion.training_losses(model, x0, t, noise=noise, model_kwargs=model_kwargs)
        return {"loss": out["loss"] * self.opts["scale"] * jitter}

    def after_step(self, model):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls.clone(), "gen": self.gen.get_state(), "note": "json part"}

    def load_state_dict(self, state):
        assert state["note"] == "json part"
        self.calls = state["calls"].clone()
        self.gen.set_state(state["gen"])


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "counting", f"{__name__}:CountingObjective")


def test_default_objective_is_the_diffusion_loss():
    cfg = validate_config(config())
    assert cfg.train.objective == "diffusion"
    obj = objectives.build_objective(cfg, cfg.diffusion.build(), "cpu")
    d = cfg.diffusion.build()
    x0, noise = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28)
    t = torch.tensor([3, 70])
    net = lambda x, t, **k: x * 0.5  # noqa: E731
    assert torch.equal(obj.losses(net, x0, t, noise, {})["loss"],
                       d.training_losses(net, x0, t, noise=noise)["loss"])


def test_unknown_objective_and_bad_options_are_one_line_errors(counting):
    with pytest.raises(ConfigError, match="unknown train.objective 'nope'; choose one of diffusion"):
        validate_config(config("train.objective=nope"))
    with pytest.raises(ConfigError, match="has no option speed"):
        validate_config(config("train.objective=counting", "train.objective_options.speed=2"))
    with pytest.raises(ConfigError, match=r"scale must be in \[0, 10\]"):
        validate_config(config("train.objective=counting", "train.objective_options.scale=11"))
    cfg = validate_config(config("train.objective=counting", "train.objective_options.scale=2"))
    assert objectives.build_objective(cfg, cfg.diffusion.build(), "cpu").opts == {"scale": 2.0}


def test_objective_state_resumes_bit_identically(counting, tmp_path):
    cfg = config("train.objective=counting", "train.objective_options.scale=0.5", "train.sample_every=1")
    straight = Trainer(cfg, tmp_path / "a", progress=False, tensorboard=False)
    straight.train(steps=4)
    assert int(straight.objective.calls) == 4
    assert not list((tmp_path / "a" / "samples").glob("*.png"))  # makes_samples = False
    Trainer(cfg, tmp_path / "b", progress=False, tensorboard=False).train(steps=2)
    resumed = Trainer(None, tmp_path / "b", resume=True, progress=False, tensorboard=False)
    assert int(resumed.objective.calls) == 2
    resumed.train(steps=4)
    a, b = ckpt.latest_checkpoint(tmp_path / "a"), ckpt.latest_checkpoint(tmp_path / "b")
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = ckpt.read_weights(a / name)[0], ckpt.read_weights(b / name)[0]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, ja = ckpt.load_train_state(a)
    tb, jb = ckpt.load_train_state(b)
    assert torch.equal(ta["objective.calls"], tb["objective.calls"]) and int(ta["objective.calls"]) == 4
    assert ja["objective"] == jb["objective"] == {"note": "json part"}
