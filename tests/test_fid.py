"""FID / IS statistics against closed forms, and the Inception pipeline with random weights."""

import numpy as np
import pytest
import torch

from ddpm.errors import UserError
from ddpm.evaluate import inception as inc
from ddpm.evaluate.fid import (InceptionStats, feature_statistics, frechet_distance, inception_score,
                               load_images, score_images)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_full_covariance_matches_eigenvalues_of_product():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    # Tr((S1 S2)^1/2) = sum of square roots of the (real, positive) eigenvalues of the product
    tr = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_feature_statistics_unbiased_covariance_and_roundtrip(tmp_path):
    f = np.random.default_rng(2).normal(size=(50, 5))
    s = feature_statistics(f)
    assert np.allclose(s.mu, f.mean(0))
    assert np.allclose(s.sigma, (f - f.mean(0)).T @ (f - f.mean(0)) / 49)
    back = InceptionStats.load(s.save(tmp_path / "ref.npz"))
    assert back.num == 50 and np.array_equal(back.mu, s.mu) and np.array_equal(back.sigma, s.sigma)


def test_inception_score_known_answers():
    assert inception_score(np.zeros((100, 1008)), splits=10) == pytest.approx((1.0, 0.0), abs=1e-12)
    k = 7  # confident predictions spread evenly over k classes -> IS = k
    logits = np.full((70, 1008), -50.0)
    logits[np.arange(70), np.arange(70) % k] = 50.0
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Two equally likely classes with p = (0.9, 0.1) / (0.1, 0.9): IS = exp(KL to the uniform mixture)
    lg = np.zeros((20, 2))
    lg[::2, 0] = lg[1::2, 1] = np.log(9.0)
    kl = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert inception_score(lg, splits=2)[0] == pytest.approx(np.exp(kl), rel=1e-12)


def test_inception_architecture_matches_the_fid_weights_layout():
    net = inc.FIDInceptionV3()
    sd = net.state_dict()
    # torchvision's Inception3 without the aux head, with a 1008-way fc: the pt_inception file's layout
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    assert sd["fc.weight"].shape == (1008, 2048)
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert sd["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert not any("AuxLogits" in k for k in sd)


def test_random_inception_pipeline_resize_and_scores():
    net = inc.random_inception(seed=0)
    imgs = np.random.default_rng(3).integers(0, 256, size=(2, 16, 16, 1), dtype=np.uint8)
    pre = net.preprocess(torch.from_numpy(imgs))
    assert pre.shape == (2, 3, 299, 299) and pre.min() >= -1 and pre.max() <= 1
    # uint8 NHWC and float [0, 1] NCHW inputs give the same network input
    as_float = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(net.preprocess(as_float), pre)
    ref = feature_statistics(np.random.default_rng(4).normal(size=(10, 2048)))
    out = score_images(net, imgs, ref, splits=2)
    assert out["num"] == 2 and np.isfinite(out["fid"]) and out["fid"] > 0 and out["is_mean"] >= 1.0


def test_missing_and_wrong_weights_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="Inception weights not found") as e:
        inc.find_weights(None, download=False)
    assert "\n" not in str(e.value) and inc.WEIGHTS_URL in str(e.value)
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not the weights")
    monkeypatch.setenv(inc.ENV_VAR, str(bad))
    with pytest.raises(UserError, match="is not pt_inception"):
        inc.find_weights(None, download=False)


def test_load_images_npz_and_folder(tmp_path):
    from ddpm.images import save_folder

    imgs = np.random.default_rng(5).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=imgs)
    assert np.array_equal(load_images(tmp_path / "s.npz"), imgs)
    save_folder(imgs, tmp_path / "png")
    assert np.array_equal(load_images(tmp_path / "png", num=2), imgs[:2])


def test_cli_fid_and_is_with_random_extractor(tmp_path, capsys, monkeypatch):
    from ddpm.cli import main

    rng = np.random.default_rng(6)
    np.savez(tmp_path / "a.npz", arr_0=rng.integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8))
    feature_statistics(rng.normal(size=(10, 2048))).save(tmp_path / "ref.npz")
    assert main(["eval", "fid", "--samples", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--inception", "random", "--device", "cpu", "--splits", "2", "--num", "2", "--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "2 samples" in out and "fewer than the paper's 50,000" in out
    fid_line = next(line for line in out.splitlines() if line.startswith("FID"))
    assert "RANDOM Inception weights" in fid_line and "means nothing" in fid_line  # not a plain "FID x"
    import json

    record = json.loads((tmp_path / "o.json").read_text())
    assert record["inception_weights"].startswith("random") and record["meaningful"] is False
    monkeypatch.setenv(inc.ENV_VAR, str(tmp_path / "missing.pth"))
    assert main(["eval", "is", "--samples", str(tmp_path / "a.npz"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err


def test_low_rank_fid_equals_full_formula():
    from ddpm.evaluate.fid import frechet_distance_to

    rng = np.random.default_rng(7)
    b = rng.normal(size=(40, 40))
    ref = InceptionStats(rng.normal(size=40), b @ b.T / 40, 100)
    f = rng.normal(size=(12, 40)) * 2 + 1  # N < D: rank-deficient sample covariance
    s = feature_statistics(f)
    full = frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)
    # the full path takes √ of ~28 round-off eigenvalues (~1e-14 each): agreement to ~1e-8 relative
    assert frechet_distance_to(f, ref) == pytest.approx(full, rel=1e-7)
    many = rng.normal(size=(60, 40))  # N > D takes the general path
    s2 = feature_statistics(many)
    assert frechet_distance_to(many, ref) == pytest.approx(frechet_distance(s2.mu, s2.sigma, ref.mu, ref.sigma))


def test_cli_fid_from_checkpoint_generates_first(tmp_path, capsys):
    from ddpm.cli import main
    from test_likelihood_eval import save_tiny_checkpoint

    ck = save_tiny_checkpoint(tmp_path / "ck")
    feature_statistics(np.random.default_rng(8).normal(size=(4, 2048))).save(tmp_path / "ref.npz")
    assert main(["eval", "fid", "--ckpt", str(ck), "--num", "2", "--batch-size", "2", "--ref", str(tmp_path / "ref.npz"),
                 "--inception", "random", "--device", "cpu", "--splits", "2",
                 "--save-samples", str(tmp_path / "gen.npz")]) == 0
    assert "FID" in capsys.readouterr().out
    gen = np.load(tmp_path / "gen.npz")["arr_0"]
    assert gen.shape == (2, 8, 8, 1) and gen.dtype == np.uint8


def test_cli_fid_takes_the_sampler_options_and_records_them(tmp_path, capsys):
    """`ddpm eval fid --ckpt` draws its samples with the same sampler settings as `generate`."""
    import json

    from ddpm.checkpoint import load_checkpoint
    from ddpm.cli import main
    from ddpm.images import to_uint8
    from ddpm.sampling.api import generate
    from test_likelihood_eval import save_tiny_checkpoint

    ck = save_tiny_checkpoint(tmp_path / "ck")
    feature_statistics(np.random.default_rng(8).normal(size=(4, 2048))).save(tmp_path / "ref.npz")
    assert main(["eval", "fid", "--ckpt", str(ck), "--num", "3", "--batch-size", "2", "--ref", str(tmp_path / "ref.npz"),
                 "--inception", "random", "--device", "cpu", "--splits", "1", "--sampler", "ddim", "--steps", "3",
                 "--eta", "0.5", "--seed", "4", "--save-samples", str(tmp_path / "gen.npz"),
                 "--json", str(tmp_path / "o.json")]) == 0
    capsys.readouterr()
    loaded = load_checkpoint(ck, device="cpu")
    want = generate(loaded.model, loaded.diffusion, 3, sampler="ddim", steps=3, eta=0.5, seed=4)
    got = np.load(tmp_path / "gen.npz")["arr_0"]
    assert np.array_equal(got, to_uint8(want))
    record = json.loads((tmp_path / "o.json").read_text())["generated"]
    assert record["sampler"]["sampler"] == "ddim" and record["sampler"]["steps"] == 3
    assert record["sampler"]["options"] == {"eta": 0.5} and record["seed"] == 4
    assert main(["eval", "fid", "--samples", str(tmp_path / "gen.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--inception", "random", "--steps", "3"]) == 2
    assert "sampler options apply to --ckpt" in capsys.readouterr().err
