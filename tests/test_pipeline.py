"""``ddpm.Pipeline`` / ``ddpm.load``: the notebook API over load_checkpoint and generate."""

import numpy as np
import pytest
import torch

import ddpm
from ddpm.errors import ConfigError
from ddpm.sampling.api import generate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ddpm.cli import main

    d = tmp_path_factory.mktemp("pipe") / "run"
    assert main(["train", "--preset", "digits-tiny", "--run-dir", str(d), "--steps", "1", "--batch-size", "2",
                 "--set", "diffusion.num_timesteps=8", "--set", "train.sample_every=0", "--no-progress"]) == 0
    return d


def test_load_and_call_give_the_images_generate_gives(run):
    pipe = ddpm.load(run)
    images = pipe(3, seed=5)
    assert len(images) == 3 and images[0].size == (28, 28) and images[0].mode == "L"
    want = generate(pipe.model, pipe.diffusion, 3, sampler=pipe.config.sampling, seed=5)
    x = pipe(3, seed=5, output="tensor")
    assert torch.equal(x, want)
    arr = pipe(3, seed=5, output="numpy")
    assert arr.dtype == np.uint8 and np.array_equal(np.asarray(images[1]), arr[1, ..., 0])
    ddim = pipe(2, sampler="ddim", steps=3, eta=0.5, output="tensor")
    assert torch.equal(ddim, generate(pipe.model, pipe.diffusion, 2, sampler="ddim", steps=3, eta=0.5))


def test_repr_is_one_short_line_and_to_moves(run):
    pipe = ddpm.Pipeline.from_pretrained(run, device="cpu")
    text = repr(pipe)
    assert "\n" not in text and "162,177 parameters" in text and "T=8" in text and "sampler ddpm" in text
    assert pipe.to("cpu") is pipe and pipe.device.type == "cpu"
    assert "\n" not in repr(ddpm.load_checkpoint(run))


def test_bad_arguments(run):
    pipe = ddpm.load(run)
    with pytest.raises(ConfigError, match="output must be one of"):
        pipe(1, output="jpeg")
    with pytest.raises(ConfigError, match="eta is an option of the ddim"):
        pipe(1, eta=0.5)


def test_public_names_are_listed():
    names = dir(ddpm)
    for name in ("Pipeline", "load", "generate", "sample", "load_checkpoint", "UNet", "GaussianDiffusion"):
        assert name in names and name in ddpm.__all__
        assert getattr(ddpm, name) is not None
