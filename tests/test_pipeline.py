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


def test_class_labels_all_guidance_and_clip_reach_generate():
    pipe = ddpm.load("src/ddpm/assets/digits")
    got = pipe(3, class_labels="all", guidance=1.0, steps=2, sampler="ddim", seed=4, clip_denoised=False,
               output="tensor")
    want = generate(pipe.model, pipe.diffusion, 3, class_labels=[0, 1, 2], guidance=1.0, steps=2, sampler="ddim",
                    seed=4, clip_denoised=False)
    assert torch.equal(got, want)
    assert not torch.equal(got, pipe(3, class_labels="all", guidance=1.0, steps=2, sampler="ddim", seed=4,
                                     output="tensor"))  # clipping x̂0 changes the images
    with pytest.raises(ConfigError, match="only 'all'"):
        pipe(2, class_labels="some")


def test_three_lines_from_a_hub_layout_folder(tmp_path, monkeypatch):
    """The README's snippet: `ddpm.load(<Hub id or diffusers pipeline folder>)(n)` -> PIL images, offline
    from a cache laid out as huggingface_hub lays it out."""
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    from ddpm.models.convert_diffusers import save_diffusers_folder

    src = ddpm.load("src/ddpm/assets/digits")
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "models--acme--digits"
    save_diffusers_folder(src.model, src.config.diffusion, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)

    pipe = ddpm.load("acme/digits")                         # 1
    images = pipe(2, sampler="ddim", steps=2, seed=0)       # 2
    images[0].save(tmp_path / "sample.png")                 # 3
    assert (tmp_path / "sample.png").is_file() and images[0].size == (28, 28)
    x = pipe(2, sampler="ddim", steps=2, seed=0, output="tensor")
    assert torch.equal(x, src(2, sampler="ddim", steps=2, seed=0, output="tensor"))
    assert "acme/digits" in repr(pipe) and "\n" not in repr(pipe)
