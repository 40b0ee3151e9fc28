"""NLL in bits/dim over a dataset: agreement with calc_bpd_loop, chunked resume, CLI."""

import json

import numpy as np
import pytest
import torch

from ddpm.config import Config, DataConfig, DiffusionConfig
from ddpm.models.unet import UNetConfig
from ddpm.errors import UserError
from ddpm.evaluate.likelihood import evaluate_bpd
from ddpm.models.unet import UNet

TINY = UNetConfig(in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  dropout=0.0, resolution=8)


def tiny(T=6):
    torch.manual_seed(0)
    return UNet(TINY).eval(), DiffusionConfig(num_timesteps=T, beta_start=1e-2, beta_end=0.5).build()


def save_tiny_checkpoint(path, T=6):
    from ddpm.checkpoint import save_checkpoint

    model, _ = tiny(T)
    cfg = Config(model=TINY, diffusion=DiffusionConfig(num_timesteps=T, beta_start=1e-2, beta_end=0.5),
                 data=DataConfig(source="digits", resolution=8, channels=1))
    return save_checkpoint(path, config=cfg, step=1, ema_state=model.state_dict())


def images(n=5):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 127.5 - 1


def test_matches_calc_bpd_loop_and_decomposes():
    model, diff = tiny()
    x = images(5)
    res = evaluate_bpd(model, diff, x, batch_size=5, seed=3)
    # one chunk: the same generator the evaluator derives for (seed 3, chunk 0)
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([3, 0]).generate_state(1)[0]))
    ref = diff.calc_bpd_loop(model, x, generator=g)
    assert np.allclose(res.total_bpd, ref["total_bpd"].double().numpy())
    assert np.allclose(res.terms_bpd, ref["terms_bpd"].double().mean(0).numpy())
    assert np.allclose(res.xstart_mse, ref["mse"].double().mean(0).numpy())
    assert res.bpd == pytest.approx(res.terms_bpd.sum() + res.prior, rel=1e-6)  # float32 per-image sums
    assert res.bpd == pytest.approx(res.rate_bpd + res.decoder_bpd, rel=1e-6)
    assert res.bpd_stderr == pytest.approx(res.total_bpd.std(ddof=1) / np.sqrt(5))
    assert np.all(res.xstart_rmse_per_image <= np.sqrt(res.xstart_mse) + 1e-12)  # Jensen


def test_chunks_resume_and_refuse_other_evaluations(tmp_path):
    model, diff = tiny()
    x = images(5)
    full = evaluate_bpd(model, diff, x, batch_size=2, chunk_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("chunk_*.npz")) == [f"chunk_0000{i}.npz" for i in range(3)]
    (tmp_path / "chunk_00001.npz").unlink()
    calls = []
    orig = diff.calc_bpd_loop
    diff.calc_bpd_loop = lambda *a, **k: calls.append(a[1].shape[0]) or orig(*a, **k)
    again = evaluate_bpd(model, diff, x, batch_size=2, chunk_dir=tmp_path)
    assert calls == [2]  # only the missing chunk was recomputed
    assert np.array_equal(again.total_bpd, full.total_bpd) and np.array_equal(again.terms_bpd, full.terms_bpd)
    with pytest.raises(UserError, match="different evaluation"):
        evaluate_bpd(model, diff, x, batch_size=2, chunk_dir=tmp_path, seed=1)


def test_csv_has_one_row_per_timestep(tmp_path):
    model, diff = tiny()
    res = evaluate_bpd(model, diff, images(3), batch_size=3)
    lines = res.write_csv(tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("t,paper_t,term_bpd,xstart_mse")
    assert len(lines) == 1 + diff.num_timesteps
    row = lines[1].split(",")
    assert float(row[2]) == pytest.approx(res.terms_bpd[0], rel=1e-6)
    assert float(row[4]) == pytest.approx(127.5 * np.sqrt(res.xstart_mse[0]), rel=1e-6)


def test_cli_nll(tmp_path, capsys):
    from ddpm.cli import main

    ck = save_tiny_checkpoint(tmp_path / "ck")
    out = tmp_path / "ev"
    args = ["eval", "nll", "--ckpt", str(ck), "--num", "4", "--batch-size", "2", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "nll.json").read_text())
    assert summary["num_images"] == 4 and summary["num_timesteps"] == 6
    assert f"NLL {summary['bpd']:.4f} ± {summary['bpd_stderr']:.4f} bits/dim" in text
    assert (out / "nll_terms.csv").is_file()
    assert main(args) == 0  # rerun: every chunk is reused, same answer
    assert json.loads((out / "nll.json").read_text())["bpd"] == summary["bpd"]
    assert main(["eval", "nll", "--ckpt", str(tmp_path / "nope")]) == 2


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    ck = save_tiny_checkpoint(tmp_path / "ck")
    ddpm = str(Path(sys.executable).with_name("ddpm"))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["eval", "nll", "--ckpt", str(ck), "--num-images", "6", "--batch-size", "2", "--device", "cpu"]
    subprocess.run([ddpm, *common, "--out", str(tmp_path / "one")], check=True, env=env)
    subprocess.run([torchrun, "--nproc_per_node", "2", ddpm, *common, "--out", str(tmp_path / "two")],
                   check=True, env=env)
    one = json.loads((tmp_path / "one" / "nll.json").read_text())
    two = json.loads((tmp_path / "two" / "nll.json").read_text())
    assert one["bpd"] == two["bpd"] and one["num_images"] == two["num_images"] == 6


def test_eval_images_from_npz_and_dataset_names(tmp_path):
    from ddpm.errors import DataError
    from ddpm.evaluate.inputs import eval_images

    cfg = Config(model=TINY, data=DataConfig(source="digits", resolution=8, channels=1))
    u8 = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=u8)
    x, labels, _ = eval_images(str(tmp_path / "a.npz"), cfg)
    assert torch.allclose(x, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1) and labels is None
    np.savez(tmp_path / "b.npz", arr_0=np.zeros((2, 9, 9, 1), np.uint8))
    with pytest.raises(DataError, match="the model needs"):
        eval_images(str(tmp_path / "b.npz"), cfg)
    x, _, name = eval_images("digits", cfg, split="test", num=4)
    assert x.shape == (4, 1, 8, 8) and name == "digits/test"  # resized to the network
    with pytest.raises(DataError):
        eval_images(str(tmp_path / "nowhere"), cfg)
