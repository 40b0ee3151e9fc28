"""Generation figures (Fig. 6, 7, 8/9): grid layout and the identities each figure rests on."""

import numpy as np
import torch

from ddpm.evaluate import figures
from test_likelihood_eval import images, save_tiny_checkpoint, tiny


def test_progressive_columns_end_with_the_sample():
    model, diff = tiny(T=6)
    f = figures.progressive_figure(model, diff, num_chains=2, num_frames=3, seed=0)
    assert f["frames"].shape == (2, 4, 1, 8, 8)  # 3 x̂0 snapshots + the final sample
    assert f["frames_t"] == [5, 3, 1, 0]
    # the x̂0 predicted at the last step (code t = 0) is the sample itself (Ho et al. 2020, §4.3, Fig. 6)
    assert torch.allclose(f["frames"][:, -2], f["frames"][:, -1])
    assert f["grid"].shape == (2 + 2 * (8 + 2), 2 + 4 * (8 + 2), 1) and f["grid"].dtype == np.uint8


def test_shared_latent_rows_share_then_branch():
    model, diff = tiny(T=6)
    f = figures.shared_latent_figure(model, diff, share_until=[6, 0], num_samples=3, seed=0)
    branch_at_T, never = f["samples"][0], f["samples"][1]
    assert not torch.allclose(branch_at_T[0], branch_at_T[1])  # only x_T shared: different images
    assert torch.allclose(never[0], never[1]) and torch.allclose(never[0], never[2])  # whole chain shared
    assert f["grid"].shape[1] == 2 + 4 * 10  # latent column + 3 samples


def test_interpolation_rows_pixel_mix_at_t0_and_reconstructions():
    model, diff = tiny(T=6)
    x = images(2)
    f = figures.interpolation_figure(model, diff, x[0], x[1], ts=[0, 3], num_lambdas=3, seed=0)
    rows = f["rows"]  # (2 rows, source, rec, 3 λ, rec, source)
    assert rows.shape == (2, 7, 1, 8, 8)
    assert torch.allclose(f["lambdas"], torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(rows[0, 1], x[0]) and torch.allclose(rows[0, 5], x[1])  # t = 0: no diffusion
    assert torch.allclose(rows[0, 3], 0.5 * x[0] + 0.5 * x[1], atol=1e-6)
    assert torch.equal(rows[1, 0], x[0]) and torch.equal(rows[1, 6], x[1])


def test_cli_figures(tmp_path, capsys):
    from PIL import Image

    from ddpm.cli import main

    ck = save_tiny_checkpoint(tmp_path / "ck")
    assert main(["figure", "progressive", "--ckpt", str(ck), "--out", str(tmp_path / "p.png"), "--chains", "2",
                 "--frames", "3", "--npz", str(tmp_path / "p.npz"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "p.png").size == (2 + 4 * 10, 2 + 2 * 10)
    assert np.load(tmp_path / "p.npz")["frames"].shape == (2, 4, 1, 8, 8)
    assert main(["figure", "shared", "--ckpt", str(ck), "--out", str(tmp_path / "s.png"), "--samples", "2",
                 "--branch-at", "6,3", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "s.png").size == (2 + 3 * 10, 2 + 2 * 10)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    assert main(["figure", "interpolate", "--ckpt", str(ck), "--images", str(tmp_path / "a.png"),
                 str(tmp_path / "b.png"), "--t", "0,2", "--lambdas", "1", "--out", str(tmp_path / "i.png"),
                 "--npz", str(tmp_path / "i.npz"), "--device", "cpu"]) == 0
    rows = np.load(tmp_path / "i.npz")["rows"]
    assert rows.shape == (2, 5, 1, 8, 8)
    assert np.allclose(rows[0, 2], (200 / 127.5 - 1) / 2 + (-1) / 2, atol=1e-6)  # λ = 0.5 pixel mix at t = 0
    assert main(["figure", "interpolate", "--ckpt", str(ck), "--images", str(tmp_path / "missing.png"),
                 str(tmp_path / "b.png"), "--out", str(tmp_path / "x.png")]) == 2


def test_cli_figure_with_another_sampler(tmp_path, capsys):
    """`ddpm figure progressive --sampler ddim --steps K` equals progressive_figure with that sampler."""
    from ddpm.checkpoint import load_checkpoint
    from ddpm.cli import main
    from ddpm.config import SamplerConfig
    from ddpm.evaluate.figures import progressive_figure

    ck = save_tiny_checkpoint(tmp_path / "ck")
    assert main(["figure", "progressive", "--ckpt", str(ck), "--out", str(tmp_path / "p.png"), "--chains", "2",
                 "--frames", "3", "--npz", str(tmp_path / "p.npz"), "--device", "cpu", "--sampler", "ddim",
                 "--steps", "3"]) == 0
    loaded = load_checkpoint(ck, device="cpu")
    want = progressive_figure(loaded.model, loaded.diffusion, num_chains=2, num_frames=3, seed=0,
                              sampler=SamplerConfig(sampler="ddim", steps=3))
    assert np.array_equal(np.load(tmp_path / "p.npz")["frames"], want["frames"].numpy())
    plain = progressive_figure(loaded.model, loaded.diffusion, num_chains=2, num_frames=3, seed=0)
    assert not np.array_equal(want["frames"].numpy(), plain["frames"].numpy())
    capsys.readouterr()
